"""`gen-synth`: render filtered (image, mask) pairs from a generator and a direction into shards.

Settings come from params.yaml (`generator` and `synth` sections) and the pipeline's outputs
(the discovered direction, the latent bank); options on the command line override them, so after
`dvc repro` a bare `gen-synth --n 1000000 --alpha 0.2` just works.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from generator.direction import DirectionError, load_direction
from generator.interface import Generator, GeneratorSpecError, digest_file
from generator.params import load_params
from generator.registry import build_generator, command_spec
from generator.runs import FolderLocked, RecordMismatch, resolve_device
from generator.synth import folder as output_folder
from generator.synth.card import write_card
from generator.synth.distributor import WorkerFailed, run_shards
from generator.synth.manifest import (MANIFEST_NAME, build_manifest, code_digest, config_digest, run_record,
                                     write_manifest)
from generator.synth.samplers import LatentBankError, load_latent_bank, resolve_bank_path
from generator.synth.ray_distributor import RayNotInstalled
from generator.synth.settings import DISTRIBUTORS, SAMPLERS, SynthSettings
from generator.synth.worker import CandidateBudgetExceeded, RenderJob
from generator.synth.store import StoreError, is_url, open_output
from generator.synth.writer import ShardStats, json_file_bytes, stats_name


def resolve_bank(settings: SynthSettings, generator: Generator, bank_given: bool) -> Path | None:
    """The bank the neighbourhood sampler draws from: --bank, the embed stage's, or the bundled one."""
    try:
        return resolve_bank_path(settings.sampler, settings.bank, generator.bundled_latent_bank, bank_given)
    except LatentBankError as error:
        raise click.ClickException(f"{error} (for {generator.identity})") from error


def describe_run(settings: SynthSettings, generator: Generator, spec: dict[str, Any], direction,
                 bank_path: Path | None, bank: np.ndarray | None) -> dict[str, Any]:
    """Everything that shapes the data, as the manifest records it."""
    members = ["jpg", "mask.png", "json"] + (["latent.npy"] if settings.save_latents else [])
    return {
        "generator": {"identity": generator.identity, "spec": spec, "latent_dim": generator.latent_dim,
                      "resolution": generator.resolution},
        "direction": {"digest": direction.digest, "path": settings.direction, "magnitude": direction.magnitude,
                      "method": direction.method, "index": direction.index, "sign": direction.sign,
                      "chosen_by": direction.chosen_by, "found_for": direction.generator,
                      "refinement": direction.extra.get("refinement")},
        "latents": {"sampler": settings.sampler,
                    "alpha": float(settings.alpha) if settings.sampler == "neighbourhood" else None,
                    "bank": None if bank_path is None else
                    {"path": str(bank_path), "digest": digest_file(bank_path), "count": int(bank.shape[0])}},
        "parameters": settings.data_parameters(),
        "members": members,
        "image_size": generator.resolution,
        "code": code_digest(),
    }


def check_device(settings: SynthSettings) -> SynthSettings:
    """The settings with their device resolved (auto, cpu, cuda or cuda:N)."""
    try:
        device = resolve_device(settings.device)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    return settings.override(device=str(device))


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
               overwrite: bool = False, replace_finished: bool = False, generator: Generator | None = None,
               echo=click.echo) -> RunSummary:
    """Make (or finish, or extend) the shard set the settings describe.

    The output folder is locked for the run.  Shards already complete for the same run record are
    kept; a folder of shards made under another record is refused (naming the settings that
    differ) unless `overwrite`, or unless it holds a finished set and `replace_finished` (the set
    is kept elsewhere, as DVC's cache keeps it).  A failing shard leaves every finished one in
    place.  Raises click.ClickException with a clear message on any bad input.
    """
    settings = check_device(settings)
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

    description = describe_run(settings, generator, spec, direction, bank_path, bank)
    record, digest = run_record(description), config_digest(description)
    try:
        folder = open_output(settings.output)
        lock, created = output_folder.lock_folder(folder)
    except (StoreError, output_folder.FolderError, FolderLocked) as error:
        raise click.ClickException(str(error)) from error
    try:
        return _synthesize_locked(settings, spec, generator, direction, bank_path, bank, description, record,
                                  digest, folder, lock, overwrite, replace_finished, echo)
    finally:
        lock.release()
        if created:
            folder.remove_if_empty()             # a run that made nothing leaves no empty folder


def _synthesize_locked(settings, spec, generator, direction, bank_path, bank, description, record, digest,
                       folder, lock, overwrite, replace_finished, echo) -> RunSummary:
    plan = settings.shard_plan()
    try:
        output_folder.prepare(folder, settings.resume, overwrite)
        done = output_folder.complete_shards(folder, plan, record, digest, replace_finished=replace_finished,
                                             log=lambda message: echo(f"gen-synth: {message}", err=True))
    except (output_folder.FolderError, RecordMismatch) as error:
        raise click.ClickException(str(error)) from error
    todo = [(index, count) for index, count in plan if index not in done]
    if todo:
        folder.remove(MANIFEST_NAME)                       # the manifest marks a complete set only
    echo(f"gen-synth: {settings.n} samples in {len(plan)} shards of up to {settings.shard_size} -> {folder.location} "
         f"({len(done)} already complete) with {generator.identity}, direction {direction.digest} "
         f"({direction.method}, chosen {direction.chosen_by}), sampler {settings.sampler}"
         + (f" alpha {settings.alpha} over {bank.shape[0]} latents" if bank is not None else ""), err=True)

    job = RenderJob(settings=settings, generator_spec=spec, generator_identity=generator.identity,
                    shift=tuple(direction.shift().tolist()), bank_path=None if bank_path is None else str(bank_path),
                    output=folder.location, config_digest=digest, record=record)

    def commit(stats: ShardStats) -> None:
        folder.write_bytes(stats_name(stats.shard), json_file_bytes(stats.to_json()))   # marks the shard complete

    progress = SynthProgress(settings.n, sum(stats.samples for stats in done.values()))
    start = time.perf_counter()
    try:
        made = run_shards(job, todo, settings.workers, progress, commit, generator=generator)
    except RayNotInstalled as error:
        progress.close(progress.bar.n)
        raise click.ClickException(str(error)) from error
    except (CandidateBudgetExceeded, WorkerFailed) as error:
        progress.close(progress.bar.n)
        output_folder.remove_temporary(folder)        # finished shards stay: a rerun goes on from them
        advice = " (with a larger --max-candidates-per-sample)" if isinstance(error, CandidateBudgetExceeded) else ""
        finished = len(done) + output_folder.finished_among(folder, [index for index, _ in todo])
        raise click.ClickException(f"{error}; the {finished} finished shard(s) "
                                   f"are kept, and a rerun{advice} goes on from them") from error
    except BaseException:
        progress.close(progress.bar.n)
        output_folder.remove_temporary(folder)
        raise
    progress.close(settings.n)
    elapsed = time.perf_counter() - start

    try:
        lock.check()                                   # no manifest over a set another run took over
    except FolderLocked as error:
        raise click.ClickException(str(error)) from error
    manifest = build_manifest(description, [*done.values(), *made])
    manifest["card"] = write_card(folder, manifest)     # before the manifest, which lists its checksum
    write_manifest(folder, manifest)
    _report(manifest, made, elapsed, echo)
    return RunSummary(manifest, made, elapsed)


def _report(manifest: dict[str, Any], made: list[ShardStats], elapsed: float, echo) -> None:
    totals = manifest["totals"]
    rejected = ", ".join(f"{name} {count}" for name, count in totals["rejected_by"].items())
    echo(f"{totals['samples']} samples from {totals['candidates']} candidates "
         f"(accepted {100 * (totals['acceptance_rate'] or 0):.1f}%; rejected by {rejected or 'none'})")
    if totals["empty_masks"]:
        echo(f"gen-synth: warning: {totals['empty_masks']} of the {totals['samples']} masks are empty (no pixel "
             f"lighter after the shift): look at the direction (synth-preview shows the pairs), or keep empty "
             f"masks out with synth.filters.size.min_foreground above 0", err=True)
    if made:
        samples = sum(stats.samples for stats in made)
        seconds = {key: sum(stats.timing.get(key, 0.0) for stats in made)
                   for key in ("sample_s", "generate_s", "postprocess_s")}
        busy = sum(seconds.values()) or 1.0
        echo(f"made {len(made)} shards, {samples} samples in {elapsed:.1f} s ({_rate(samples / elapsed)} samples/s); "
             f"time in G {100 * seconds['generate_s'] / busy:.0f}%, post-processing "
             f"{100 * seconds['postprocess_s'] / busy:.0f}%, latents {100 * seconds['sample_s'] / busy:.0f}%")


def _rate(per_second: float) -> str:
    """A rate as a reader wants it: whole numbers, but two significant digits below 10 (not "0")."""
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2g}"


def _output_location(ctx, param, value):
    if value is not None and not is_url(value) and Path(value).exists() and not Path(value).is_dir():
        raise click.BadParameter(f"{value} is a file, not a folder")
    return value


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
@click.option("--output", "-o", default=None, callback=_output_location,
              help="Output folder for synth-NNNNNN.tar shards and manifest.json: a path, or any fsspec URL "
                   "(s3://bucket/set, gs://..., with that protocol's package installed, e.g. s3fs). "
                   "[params: synth.output]")
@click.option("--generator", "generator_name", default=None,
              help="Generator to use instead of params' `generator` section: a built-in name or "
                   "python:package.module:factory.")
@click.option("--weights", default=None,
              help="Weights path or module handle: for --generator, or else for params' generator.")
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
              help="Seed: sample j of shard k is a function of (seed, k, j) and the settings, whichever process "
                   "or machine renders it. [params: synth.seed]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes on CPU, one shard each at a time (one torch thread each). "
                   "[params: synth.workers]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Candidates per generator call. It is among the settings a set resumes with: a batched "
                   "generator's arithmetic may depend on it. [params: synth.batch_size]")
@click.option("--device", default=None,
              help="cpu (worker processes), cuda or cuda:N (render in this process in batches on a GPU), or "
                   "auto (cuda when present). [params: synth.device]")
@click.option("--distributor", type=click.Choice(DISTRIBUTORS), default=None,
              help="multiprocessing: whole shards in --workers processes on this machine (with a GPU and --workers "
                   "above 1: G renders in this process while --workers processes post-process); pipeline: that split on any device; "
                   "ray: each shard a Ray task, over a cluster (see --ray-address). The bytes are the same "
                   "whichever is used. [params: synth.distributor]")
@click.option("--ray-address", default=None,
              help="For --distributor ray: the cluster to join, host:port or auto (the one `ray start` made on "
                   "this machine); empty starts a local cluster of --workers CPUs. The output folder must be the "
                   "same path on every machine. [params: synth.ray_address]")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="For --distributor ray: times a failed shard (its worker killed, a node lost, an I/O error) "
                   "is rendered again before the run stops with its error. [params: synth.retries]")
@click.option("--resume/--no-resume", default=None,
              help="Finish a run that was interrupted, or extend a set to a larger --n: keep its complete "
                   "shards, make the rest. The settings that shape the bytes must be the same (a different "
                   "--n or --max-candidates-per-sample is fine); otherwise the run stops naming the settings "
                   "that differ, and keeps every file. [params: synth.resume]")
@click.option("--overwrite", is_flag=True, help="Delete the shards already in the output folder first.")
@click.option("--replace-finished", is_flag=True,
              help="When the output folder holds a finished set (with its manifest) made with other settings, "
                   "replace it instead of refusing; an unfinished one is still refused. For pipelines that keep "
                   "every finished set elsewhere: dvc.yaml passes it, since DVC's cache holds the old set.")
@click.option("--save-latents/--no-save-latents", default=None,
              help="Also store each sample's latent z as KEY.latent.npy. [params: synth.save_latents]")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None,
              help="JPEG quality of the images. [params: synth.jpeg_quality]")
@click.option("--max-candidates-per-sample", type=click.IntRange(min=1), default=None,
              help="A shard that needs more candidates than this per sample stops with an error naming the "
                   "filter that rejected most. [params: synth.max_candidates_per_sample]")
def main(params_path: str, generator_name: str | None, weights: str | None, overwrite: bool,
         replace_finished: bool, **options: Any) -> None:
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
        spec = command_spec(params.get("generator"), generator_name, weights)
    except (FileNotFoundError, ValueError, GeneratorSpecError) as error:
        raise click.ClickException(str(error)) from error
    synthesize(settings, spec, bank_given=options.get("bank") is not None, overwrite=overwrite,
               replace_finished=replace_finished)


if __name__ == "__main__":
    main()
