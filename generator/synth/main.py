"""`gen-synth`: render filtered (image, mask) pairs from a generator and a direction into shards.

Settings come from params.yaml (`generator` and `synth` sections) and the pipeline's outputs
(the discovered direction, the latent bank); options on the command line override them, so after
`dvc repro` a bare `gen-synth --n 1000000 --alpha 0.2` just works.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from tqdm import tqdm

from generator.direction import DirectionError, load_direction
from generator.interface import Generator, GeneratorSpecError, digest_file
from generator.params import load_params
from generator.registry import build_generator
from generator.synth import folder as output_folder
from generator.synth.card import write_card
from generator.synth.distributor import run_shards
from generator.synth.manifest import MANIFEST_NAME, build_manifest, config_digest, write_manifest
from generator.synth.samplers import LatentBankError, load_latent_bank
from generator.synth.settings import SAMPLERS, SynthSettings
from generator.synth.worker import CandidateBudgetExceeded, RenderJob
from generator.synth.writer import ShardStats, stats_name, write_json_atomic


def resolve_bank(settings: SynthSettings, generator: Generator, bank_given: bool) -> Path | None:
    """The bank the neighbourhood sampler draws from: --bank, the embed stage's, or the bundled one."""
    if settings.sampler == "gaussian":
        return None
    path = Path(settings.bank)
    if path.is_file() or bank_given:
        return path
    if generator.bundled_latent_bank is not None:
        return Path(generator.bundled_latent_bank)
    raise click.ClickException(
        f"no latent bank: {path} does not exist and {generator.identity} ships none; run the embed stage "
        f"(dvc repro embed), pass --bank, or use --sampler gaussian")


def describe_run(settings: SynthSettings, generator: Generator, spec: dict[str, Any], direction,
                 bank_path: Path | None, bank: np.ndarray | None) -> dict[str, Any]:
    """Everything that shapes the data, as the manifest records it."""
    members = ["jpg", "mask.png", "json"] + (["latent.npy"] if settings.save_latents else [])
    return {
        "generator": {"identity": generator.identity, "spec": spec, "latent_dim": generator.latent_dim,
                      "resolution": generator.resolution},
        "direction": {"digest": direction.digest, "path": settings.direction, "magnitude": direction.magnitude,
                      "method": direction.method, "index": direction.index, "sign": direction.sign,
                      "chosen_by": direction.chosen_by, "found_for": direction.generator},
        "latents": {"sampler": settings.sampler,
                    "alpha": float(settings.alpha) if settings.sampler == "neighbourhood" else None,
                    "bank": None if bank_path is None else
                    {"path": str(bank_path), "digest": digest_file(bank_path), "count": int(bank.shape[0])}},
        "parameters": settings.data_parameters(),
        "members": members,
        "image_size": generator.resolution,
    }


def check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise click.ClickException(f"unknown device {device!r}: {error}") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.ClickException(f"device {device!r} asked for, but CUDA is not available here")


class SynthProgress:
    """The progress bar: samples/s and the share of candidates kept."""

    def __init__(self, total: int, done: int) -> None:
        self.bar = tqdm(total=total, initial=done, unit="sample", desc="gen-synth", mininterval=0.5,
                        dynamic_ncols=True)
        self.kept = self.candidates = 0

    def __call__(self, kept: int, candidates: int) -> None:
        self.kept += kept
        self.candidates += candidates
        self.bar.update(kept)
        if self.candidates:
            self.bar.set_postfix(accepted=f"{100 * self.kept / self.candidates:.1f}%", refresh=False)

    def close(self, total: int) -> None:
        self.bar.n = total
        self.bar.close()


@dataclass
class RunSummary:
    """A finished run: the set's manifest, the shards this run made (with timings), wall time."""

    manifest: dict[str, Any]
    made: list[ShardStats]
    seconds: float


def synthesize(settings: SynthSettings, spec: dict[str, Any], *, bank_given: bool = False,
               overwrite: bool = False, generator: Generator | None = None, echo=click.echo) -> RunSummary:
    """Make (or finish) the shard set the settings describe.

    Raises click.ClickException with a clear message on any bad input.
    """
    check_device(settings.device)
    try:
        generator = generator or build_generator(spec)
    except GeneratorSpecError as error:
        raise click.ClickException(str(error)) from error
    try:
        direction = load_direction(settings.direction, generator)
    except DirectionError as error:
        hint = "" if Path(settings.direction).is_file() else " or pass --direction"
        raise click.ClickException(f"{error}{hint}") from error
    bank_path = resolve_bank(settings, generator, bank_given)
    try:
        bank = load_latent_bank(bank_path, generator.latent_dim, generator.identity) if bank_path is not None else None
    except LatentBankError as error:
        raise click.ClickException(str(error)) from error

    run_record = describe_run(settings, generator, spec, direction, bank_path, bank)
    digest = config_digest(run_record)
    plan = settings.shard_plan()
    folder = Path(settings.output)
    try:
        created = output_folder.prepare(folder, settings.resume, overwrite)
        done = output_folder.complete_shards(folder, plan, digest)
    except output_folder.FolderError as error:
        raise click.ClickException(str(error)) from error
    todo = [(index, count) for index, count in plan if index not in done]
    if todo:
        (folder / MANIFEST_NAME).unlink(missing_ok=True)   # the manifest marks a complete set only
    echo(f"gen-synth: {settings.n} samples in {len(plan)} shards of up to {settings.shard_size} -> {folder} "
         f"({len(done)} already complete) with {generator.identity}, direction {direction.digest} "
         f"({direction.method}, chosen {direction.chosen_by}), sampler {settings.sampler}"
         + (f" alpha {settings.alpha} over {bank.shape[0]} latents" if bank is not None else ""), err=True)

    job = RenderJob(settings=settings, generator_spec=spec, generator_identity=generator.identity,
                    shift=tuple(direction.shift().tolist()), bank_path=None if bank_path is None else str(bank_path),
                    output=str(folder), config_digest=digest)

    def record(stats: ShardStats) -> None:
        write_json_atomic(folder / stats_name(stats.shard), stats.to_json())

    progress = SynthProgress(settings.n, sum(stats.samples for stats in done.values()))
    start = time.perf_counter()
    try:
        made = run_shards(job, todo, settings.workers, progress, record, generator=generator)
    except CandidateBudgetExceeded as error:
        progress.close(progress.bar.n)
        _clean_up_after_failure(folder, created)
        raise click.ClickException(str(error)) from error
    except BaseException:
        progress.close(progress.bar.n)
        output_folder.remove_temporary(folder)
        raise
    progress.close(settings.n)
    elapsed = time.perf_counter() - start

    manifest = build_manifest(run_record, [*done.values(), *made])
    manifest["card"] = write_card(folder, manifest)     # before the manifest, which lists its checksum
    write_manifest(folder, manifest)
    _report(manifest, made, elapsed, echo)
    return RunSummary(manifest, made, elapsed)


def _clean_up_after_failure(folder: Path, created: bool) -> None:
    """A set that cannot be finished: leave no temporary files, and no folder this run created."""
    output_folder.remove_temporary(folder)
    if created and folder.is_dir():
        output_folder.remove_ours(folder)
        if not any(folder.iterdir()):
            shutil.rmtree(folder)


def _report(manifest: dict[str, Any], made: list[ShardStats], elapsed: float, echo) -> None:
    totals = manifest["totals"]
    rejected = ", ".join(f"{name} {count}" for name, count in totals["rejected_by"].items())
    echo(f"{totals['samples']} samples from {totals['candidates']} candidates "
         f"(accepted {100 * (totals['acceptance_rate'] or 0):.1f}%; rejected by {rejected or 'none'})")
    if made:
        samples = sum(stats.samples for stats in made)
        seconds = {key: sum(stats.timing.get(key, 0.0) for stats in made)
                   for key in ("sample_s", "generate_s", "postprocess_s")}
        busy = sum(seconds.values()) or 1.0
        echo(f"made {len(made)} shards, {samples} samples in {elapsed:.1f} s ({samples / elapsed:.0f} samples/s); "
             f"time in G {100 * seconds['generate_s'] / busy:.0f}%, post-processing "
             f"{100 * seconds['postprocess_s'] / busy:.0f}%, latents {100 * seconds['sample_s'] / busy:.0f}%")


def _finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file: its `generator` section is the generator, its `synth` section the defaults "
                   "of every option below.")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Number of samples to keep (after the filters), over all shards. [params: synth.n]")
@click.option("--alpha", type=click.FloatRange(min=0), default=None, callback=_finite,
              help="Noise scale of encoder-neighbourhood sampling z = E(I_i) + alpha * xi; 0 uses the bank's "
                   "latents as they are. [params: synth.alpha]")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder for synth-NNNNNN.tar shards and manifest.json. [params: synth.output]")
@click.option("--generator", "generator_name", default=None,
              help="Generator to use instead of params' `generator` section: a built-in name or "
                   "python:package.module:factory.")
@click.option("--weights", default=None, help="Weights path or module handle for --generator.")
@click.option("--direction", type=click.Path(dir_okay=False), default=None,
              help="Direction file (h_bg) from the discover stage. [params: synth.direction]")
@click.option("--bank", type=click.Path(dir_okay=False), default=None,
              help="Latent bank, an N x latent_dim float32 .npy, for the neighbourhood sampler. Without it: "
                   "synth.bank if it exists, else the generator's bundled bank. [params: synth.bank]")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="neighbourhood: z = E(I_i) + alpha * xi over the bank; gaussian: z ~ N(0, I). "
                   "[params: synth.sampler]")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Samples per shard; the last shard may hold fewer. [params: synth.shard_size]")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed: sample j of shard k is a function of (seed, k, j) only. [params: synth.seed]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes on CPU, one shard each at a time (one torch thread each). "
                   "[params: synth.workers]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Candidates per generator call. [params: synth.batch_size]")
@click.option("--device", default=None,
              help="cpu, or cuda[:N] to render in this process in batches on a GPU. [params: synth.device]")
@click.option("--resume/--no-resume", default=None,
              help="Finish a run that was interrupted: keep its complete shards, remake the rest (the "
                   "parameters must be the same). [params: synth.resume]")
@click.option("--overwrite", is_flag=True, help="Delete the shards already in the output folder first.")
@click.option("--save-latents/--no-save-latents", default=None,
              help="Also store each sample's latent z as KEY.latent.npy. [params: synth.save_latents]")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None,
              help="JPEG quality of the images. [params: synth.jpeg_quality]")
@click.option("--max-candidates-per-sample", type=click.IntRange(min=1), default=None,
              help="A shard that needs more candidates than this per sample stops with an error naming the "
                   "filter that rejected most. [params: synth.max_candidates_per_sample]")
def main(params_path: str, generator_name: str | None, weights: str | None, overwrite: bool,
         **options: Any) -> None:
    """Render filtered (image, mask) pairs into WebDataset shards.

    Each candidate z gives an image G(z) and a mask [gray(G(z + h_bg)) > gray(G(z))]; the size,
    histogram and connected-component filters of params.yaml (synth.filters) decide which are
    kept. Shards appear under their final names only when complete; rerunning the same command
    after an interruption finishes the set with the same bytes. Check a set with synth-verify
    and look at it with synth-preview.
    """
    try:
        params = load_params(params_path)
        settings = SynthSettings.from_params(params.get("synth")).override(**options)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    if generator_name:
        spec: dict[str, Any] = {"name": generator_name, "weights": weights}
    elif "generator" in params:
        spec = dict(params["generator"])
    else:
        raise click.ClickException(f"{params_path} has no `generator` section; pass --generator")
    synthesize(settings, spec, bank_given=options.get("bank") is not None, overwrite=overwrite)


if __name__ == "__main__":
    main()
