"""`train-house-gan`: train the house generator and its encoder on photos (a folder or a pack).
`pack-house-photos`: crop and pack photos into one file for a training machine."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from generator.house import PACKAGE_DIR
from generator.house.architectures import (ARCHITECTURE_DEFAULTS, ARCHITECTURES, LAYERED_BACKGROUND_DIM,
                                          SHIPPED_ARCHITECTURE, latent_dim_problem, make_config)
from generator.house.pack import pack_photos
from generator.house.training import (CHECKPOINT_NAME, LOG_NAME, SETTINGS_NAME, TrainingInterrupted, TrainSettings,
                                      train)

#: seconds of a --minutes budget kept for the export (TrainSettings' default)
EXPORT_RESERVE_SECONDS = TrainSettings.export_reserve_seconds


def _learning_rate(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def defaults_of(name: str, shown=str) -> str:
    """Each architecture's default of a setting, the shipped one first: 'layered: 128, v1: 64, v2: 128'."""
    names = [SHIPPED_ARCHITECTURE, *sorted(a for a in ARCHITECTURE_DEFAULTS if a != SHIPPED_ARCHITECTURE)]
    return ", ".join(f"{a}: {shown(ARCHITECTURE_DEFAULTS[a][name])}" for a in names)


def resume_command(command: list[str], checkpoint: Path) -> str:
    """The command line that continues a run: its own, with --resume CHECKPOINT instead of any other."""
    kept, skip = [], False
    for argument in command:
        if skip:
            skip = False
        elif argument == "--resume":
            skip = True
        elif not argument.startswith("--resume="):
            kept.append(argument)
    return shlex.join([*kept, "--resume", str(checkpoint)])


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA was asked for but torch sees no CUDA device", param_hint="--device")
    return name


class _CommandRecordingArguments(click.Command):
    """A command that keeps the arguments it was given (ctx.meta["argv"]), so the run can record
    the exact command that made it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


@click.command(cls=_CommandRecordingArguments, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True), required=True,
              help="Folder of unlabeled photos to train on (e.g. ../shared/datasets/DUTS-TR/images), or a "
                   "photo pack written by pack-house-photos. Never a benchmark used for evaluation.")
@click.option("--out", type=click.Path(file_okay=False), default="data/house_gan", show_default=True,
              help=f"Folder for the resumable checkpoint ({CHECKPOINT_NAME}), the log ({LOG_NAME}: step, "
                   f"seconds, losses, steps/s, images/s) and the run's settings ({SETTINGS_NAME}). A folder "
                   "that already holds a checkpoint is refused unless --resume is given.")
@click.option("--export-to", type=click.Path(file_okay=False), default=None,
              help="Folder for the shipped files (house_gan.pt, latent_bank.npy/.json, samples.png, "
                   f"reconstructions.png); default: --out. The package's own copy is {PACKAGE_DIR}.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default=SHIPPED_ARCHITECTURE, show_default=True,
              help="layered (the architecture of the shipped weights, trained on a CPU): 64 x 64, an object "
                   "(colour inside a smooth outline) over a coarse background, the object shifted at random in "
                   "training. v2: 128 x 128 BigGAN-style residual GAN (latent batch norm, spectral-norm "
                   "discriminator, hinge loss), meant for a GPU. v1: 64 x 64 DCGAN, logistic loss (the previous "
                   "default). Options left out take the architecture's defaults.")
@click.option("--steps", type=click.IntRange(min=0), default=6000, show_default=True,
              help="GAN steps (one discriminator and one generator update each) in total, resumed runs included.")
@click.option("--encoder-steps", type=click.IntRange(min=0), default=1500, show_default=True,
              help="Encoder refinement steps after the GAN phase (generator frozen).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock budget of the whole run, export included: each phase stops early when its share "
                   "is spent (--steps and --encoder-steps become upper bounds). "
                   f"{EXPORT_RESERVE_SECONDS:.0f} s of it are kept for the export, so it must be longer.")
@click.option("--encoder-share", type=click.FloatRange(0, 1), default=0.15, show_default=True,
              help="With --minutes: the share of the budget kept for the encoder phase (below 1, so that "
                   "the GAN phase has time).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help=f"Photos and generated images per step [{defaults_of('batch_size')}].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, the photo draws, the augmentation and the latents.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=None,
              help=f"Size of z [{defaults_of('latent_dim')}]; layered: its first "
                   f"{LAYERED_BACKGROUND_DIM} coordinates draw the background, "
                   "so it must be larger.")
@click.option("--resolution", type=click.Choice(["16", "32", "64", "128"]), default=None,
              help=f"Side of the generated images [{defaults_of('resolution')}; 64 for a CPU run of v2]; the "
                   "photos are resized (shorter side) and centre-cropped to it.")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Generator channels at the finest layer, doubled at each coarser one "
                   f"[{defaults_of('width')}].")
@click.option("--encoder-width", type=click.IntRange(min=1), default=None,
              help="v2 only: encoder channels at full size, doubled at each halving [8].")
@click.option("--discriminator-width", type=click.IntRange(min=1), default=None,
              help="Discriminator channels at the first layer (doubled at each coarser layer) "
                   f"[{defaults_of('discriminator_width')}].")
@click.option("--lr-generator", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Adam learning rate of G [{defaults_of('lr_generator', _learning_rate)}].")
@click.option("--lr-discriminator", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Adam learning rate of D [{defaults_of('lr_discriminator', _learning_rate)}].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto: CUDA when torch sees it.")
@click.option("--bf16/--no-bf16", default=True, show_default=True,
              help="bf16 autocast of the forward passes on CUDA (ignored on a CPU).")
@click.option("--compile", "compile_", is_flag=True, default=False,
              help="torch.compile the generator and discriminator (pays on long GPU runs; compiling takes minutes).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True,
              help="Write the resumable checkpoint every this many steps (atomically).")
@click.option("--export-every", type=click.IntRange(min=0), default=1000, show_default=True,
              help="During the GAN phase, also export usable weights, bank and samples every this many "
                   "steps (0: only at the end).")
@click.option("--log-every", type=click.IntRange(min=1), default=25, show_default=True,
              help="Write a log line every this many steps.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Generated images that measure the exported generator's batch-norm statistics.")
@click.option("--no-bank", is_flag=True, default=False,
              help="Do not encode the photos into a latent bank at export (make it later with embed-images).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Continue from this checkpoint up to --steps / --encoder-steps, with the settings it was made "
                   "with (architecture, seed, batch size, learning rates; a checkpoint of others is refused, "
                   "naming them).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: torch's choice).")
def main(data, out, export_to, arch, steps, encoder_steps, minutes, encoder_share, batch_size, seed, latent_dim,
         resolution, width, encoder_width, discriminator_width, lr_generator, lr_discriminator, device, bf16,
         compile_, checkpoint_every, export_every, log_every, calibration_images, no_bank, resume,
         threads) -> None:
    """Train the house GAN (differentiable augmentation, EMA of the generator's weights) and an
    encoder that inverts it, then export the weights, the latent bank of the photos, a sample grid
    and reconstructions of photos.

    Interrupt at any time with Ctrl-C: the run stops after its current step, saves OUT/checkpoint.pt
    and prints the command that continues it (the same one with --resume OUT/checkpoint.pt).
    """
    if minutes is not None and minutes * 60 <= EXPORT_RESERVE_SECONDS:
        raise click.BadParameter(
            f"{minutes:g} minutes ({minutes * 60:.1f} s) leave no time to train: {EXPORT_RESERVE_SECONDS:.0f} s of the "
            f"budget are kept for the export; give more than {EXPORT_RESERVE_SECONDS / 60:.2f}", param_hint="--minutes")
    if minutes is not None and encoder_share >= 1 and steps > 0:
        raise click.BadParameter(f"{encoder_share:g} leaves no time for a single GAN step: give a share below 1",
                                 param_hint="--encoder-share")
    if threads:
        torch.set_num_threads(threads)
    settings = build_settings(
        data=data, out=out, export_to=export_to, arch=arch, steps=steps, encoder_steps=encoder_steps,
        minutes=minutes, encoder_share=encoder_share, batch_size=batch_size, seed=seed, latent_dim=latent_dim,
        resolution=resolution, width=width, encoder_width=encoder_width, discriminator_width=discriminator_width,
        lr_generator=lr_generator, lr_discriminator=lr_discriminator, device=resolve_device(device), bf16=bf16,
        compile=compile_, checkpoint_every=checkpoint_every, export_every=export_every, log_every=log_every,
        calibration_images=calibration_images, bank=not no_bank)
    bars: dict[str, tqdm] = {}
    started = time.monotonic()

    def progress(done: int, total: int, phase: str, losses: dict) -> None:
        if phase not in bars:
            bars[phase] = tqdm(total=total, initial=done - 1, desc=phase, unit="step", dynamic_ncols=True)
        bar = bars[phase]
        bar.update(1)
        shown = {k: f"{v:.3f}" for k, v in losses.items()}
        if minutes:               # with a time budget the step count is only a ceiling: show the time left
            shown["budget_left"] = f"{max(0.0, minutes - (time.monotonic() - started) / 60):.1f}min"
        bar.set_postfix(shown, refresh=False)

    command = ["train-house-gan", *click.get_current_context().meta["argv"]]
    try:
        weights = train(settings, resume=Path(resume) if resume else None, progress=progress, command=command)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    except TrainingInterrupted as stop:
        for bar in bars.values():
            bar.close()
        click.echo(f"\n{stop}", err=True)
        if stop.checkpoint is not None:
            click.echo(f"continue with: {resume_command(command, stop.checkpoint)}", err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted before training started: nothing was saved", err=True)
        raise SystemExit(130) from None
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"weights: {weights}")


def build_settings(*, data, out, export_to=None, arch=SHIPPED_ARCHITECTURE, steps=6000, encoder_steps=1500,
                   minutes=None, encoder_share=0.15, batch_size=None, seed=0, latent_dim=None, resolution=None,
                   width=None, encoder_width=None, discriminator_width=None, lr_generator=None, lr_discriminator=None,
                   device="cpu", bf16=True, compile=False, checkpoint_every=250, export_every=1000, log_every=25,
                   calibration_images=4096, bank=True) -> TrainSettings:
    """TrainSettings from command-line values; None takes the architecture's default."""
    defaults = ARCHITECTURE_DEFAULTS[arch]

    def pick(value, name):
        return defaults[name] if value is None else value

    fields = {"latent_dim": pick(latent_dim, "latent_dim"), "resolution": int(pick(resolution, "resolution")),
              "width": pick(width, "width")}
    if encoder_width is not None:
        if arch != "v2":
            raise click.BadParameter("only v2 has a separate encoder width", param_hint="--encoder-width")
        fields["encoder_width"] = encoder_width
    problem = latent_dim_problem(arch, fields["latent_dim"])
    if problem:
        raise click.BadParameter(problem, param_hint="--latent-dim")
    try:
        config = make_config(arch, fields)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return TrainSettings(
        data=Path(data), out=Path(out), export_to=Path(export_to or out), steps=steps, encoder_steps=encoder_steps,
        batch_size=pick(batch_size, "batch_size"), seed=seed, lr_generator=pick(lr_generator, "lr_generator"),
        lr_discriminator=pick(lr_discriminator, "lr_discriminator"), adam_betas=defaults["adam_betas"],
        discriminator_width=pick(discriminator_width, "discriminator_width"), checkpoint_every=checkpoint_every,
        export_every=export_every, log_every=log_every, config=config, device=device, bf16=bf16, compile=compile,
        time_budget_seconds=None if minutes is None else minutes * 60, encoder_share=encoder_share,
        calibration_images=calibration_images, bank=bank)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--photos", "folders", type=click.Path(exists=True, file_okay=False), multiple=True, required=True,
              help="Folder of photos (repeat for several, e.g. DUTS-TR/images and MSRA1000/images).")
@click.option("--out", type=click.Path(dir_okay=False), default="data/house_photos_128.pt", show_default=True,
              help="The pack file to write (atomically).")
@click.option("--side", type=click.IntRange(8, 1024), default=128, show_default=True,
              help="Side of the square centre crops (shorter side resized to it first).")
@click.option("--quality", type=click.IntRange(1, 95), default=75, show_default=True,
              help="JPEG quality of the packed crops (75: all of DUTS-TR at 128 px fits beside the code "
                   "and a Pillow wheel in 64 MiB).")
@click.option("--max-photos", type=click.IntRange(min=1), default=None,
              help="Keep an evenly spaced subset of at most this many photos per folder.")
def pack_main(folders, out, side, quality, max_photos) -> None:
    """Centre-crop photos to SIDE x SIDE and pack them as JPEG into one file that torch loads with
    weights_only=True and train-house-gan --data reads (Pillow or torchvision decodes it; numpy
    is not needed), so a bare PyTorch machine can train from it."""
    bar = tqdm(desc="pack", unit="photo", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = pack_photos(folders, out, side=side, quality=quality, max_photos=max_photos, progress=progress)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    finally:
        bar.close()
    click.echo(f"{out}: {summary['count']} photos ({summary['skipped']} unreadable skipped), "
               f"{summary['bytes'] / 2 ** 20:.1f} MiB, {side} x {side}, JPEG quality {quality}")
