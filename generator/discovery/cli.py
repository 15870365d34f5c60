"""`discover-direction`: find h_bg for the configured generator and write data/directions/."""

from __future__ import annotations

import click
import torch

from generator.discovery.config import METHODS, POOLED_METHOD, ConfigError, DiscoverConfig, Override
from generator.discovery.stage import run_stage
from generator.interface import GeneratorSpecError
from generator.params import load_params
from generator.registry import build_generator
from generator.runs import resolve_device


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file: its `generator` section is the generator, its `discover` section the settings.")
@click.option("--out", "output", type=click.Path(file_okay=False), default="data/directions", show_default=True,
              help="Folder for direction.json, scores.json, contact_sheet.png, candidates.npy, history/, "
                   "metrics.json.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="latent-discovery (K directions and a reconstructor, Voynov & Babenko), single-direction "
                   "(one direction darkening the surround, Melas-Kyriazi et al.), or both: each runs and all K + 1 "
                   "candidates are scored together, so the choice picks the better method's. Default: "
                   "discover.method.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimisation steps of the chosen method (not with both: set each method's in the parameters).")
@click.option("--directions", type=click.IntRange(min=1), default=None,
              help="K, the number of directions latent discovery learns.")
@click.option("--seed", type=int, default=None, help="Seed of initialisation, training batches and the scoring batch.")
@click.option("--magnitude", type=click.FloatRange(min=0, min_open=True), default=None,
              help="||h_bg||: the shift used for scoring and saved with the direction (the paper: 5).")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="Override the automatic choice with this candidate index (with --sign).")
@click.option("--sign", type=click.Choice(["1", "-1"]), default=None, help="Sign of the overriding candidate.")
@click.option("--automatic", is_flag=True, help="Ignore an override in the parameters file and choose automatically.")
@click.option("--checkpoint-dir", default=None,
              help="Folder of the resumable checkpoints (default: discover.checkpoint_dir).")
@click.option("--no-checkpoint", is_flag=True, help="Neither resume from nor write checkpoints.")
@click.option("--no-refine", is_flag=True,
              help="Save the chosen direction as it is, without refinement (discover.refine.enabled: false).")
@click.option("--device", default=None,
              help="Torch device for the generator and the networks: auto, cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(params_path, output, method, steps, directions, seed, magnitude, index, sign, automatic, checkpoint_dir,
         no_checkpoint, no_refine, device, quiet) -> None:
    """Learn candidate latent directions, score every candidate and sign by the saliency masks it
    makes, and save the best as h_bg (or the one named by an override).

    The chosen direction is then refined (discover.refine): polished so its shift lights the
    object without moving it, and kept only when it stays within refine.min_cosine of the choice
    and its masks' quality drops by no more than refine.score_tolerance (scores.json records both
    scores).  When no candidate scores above discover.min_score the command stops with an error
    (an override is kept, with a warning).

    Scores are written for every candidate so the choice can be audited; the contact sheet shows
    images, shifted images and masks of the best candidates with both signs.  A long run saves
    checkpoints and resumes from them when started again with the same settings; rerunning with
    an override therefore costs only the scoring.
    """
    if (index is None) != (sign is None):
        raise click.BadParameter("give --index and --sign together", param_hint="--index/--sign")
    if automatic and index is not None:
        raise click.BadParameter("--automatic and --index/--sign contradict each other", param_hint="--automatic")
    try:
        params = load_params(params_path)
        config = DiscoverConfig.from_params(params.get("discover"), synth=params.get("synth") or {})
        config = apply_options(config, method=method, steps=steps, directions=directions, seed=seed,
                               magnitude=magnitude, index=index, sign=sign, automatic=automatic,
                               checkpoint_dir=checkpoint_dir, no_checkpoint=no_checkpoint, device=device)
        if no_refine:
            config = config.with_changes(**{"refine.enabled": False})
        if "generator" not in params:
            raise ConfigError(f"{params_path} has no `generator` section")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        try:
            device = resolve_device(config.device)
        except ValueError as error:
            raise ConfigError(f"discover.device: {error}") from error
        generator = build_generator(params["generator"]).to(device)
        outcome = run_stage(generator, config, output, progress=not quiet)
    except (ConfigError, GeneratorSpecError, FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    choice, run = outcome.choice, outcome.discovery.outcome
    if outcome.warning:
        click.echo(f"warning: {outcome.warning}", err=True)
    speed = f", {run.steps_per_second:.1f} steps/s" if run.steps_run else " (all steps from the checkpoint)"
    click.echo(f"{outcome.discovery.method}: {run.steps_run} steps in {run.seconds:.1f} s{speed}")
    click.echo(f"h_bg = direction {choice.index}, sign {choice.sign:+d} ({choice.chosen_by}), "
               f"score {choice.score.total:.3f}, magnitude {config.magnitude:g}, for {generator.identity}")
    click.echo(f"refinement: {outcome.refinement.reason}")
    click.echo(f"wrote {', '.join(str(path) for path in outcome.files.values())}")


def apply_options(config: DiscoverConfig, *, method, steps, directions, seed, magnitude, index, sign, automatic,
                  checkpoint_dir, no_checkpoint, device) -> DiscoverConfig:
    """Command-line options over the parameters file."""
    changes = {key: value for key, value in
               {"method": method, "seed": seed, "magnitude": magnitude, "device": device,
                "checkpoint_dir": checkpoint_dir}.items() if value is not None}
    config = config.with_changes(**changes)
    if no_checkpoint:
        config = config.with_changes(checkpoint_dir=None)
    if steps is not None:
        if config.method == POOLED_METHOD:
            raise ConfigError("--steps sets one method's steps; with method both, set discover.latent_discovery.steps "
                              "and discover.single_direction.steps in the parameters file")
        section = "latent_discovery" if config.method == "latent-discovery" else "single_direction"
        config = config.with_changes(**{f"{section}.steps": steps})
    if directions is not None:
        if config.method == "single-direction":
            raise ConfigError("--directions sets latent discovery's K, and the method is single-direction, which "
                              "learns one direction")
        config = config.with_changes(**{"latent_discovery.directions": directions})
    if automatic:
        config = config.with_changes(override=None)
    elif index is not None:
        config = config.with_changes(override=Override(index, int(sign)))
    return config
