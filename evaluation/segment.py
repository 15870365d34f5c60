"""`segment-images`: a trained U-Net applied to a folder of photos, one 8-bit PNG per photo.

Photos go through the evaluator's inference protocol (evaluation/inference.py: shorter side to
the model's input size, [-1, 1], the probability map resized back to the photo's size), batched
by resized shape while the next batch decodes.  Outputs mirror the input's relative paths
(evaluation/photos.py) and are written atomically, so an interrupted run leaves only whole files
and a rerun skips them.  A photo that cannot be read, or too elongated for the protocol, is
skipped, named and counted.

The output folder keeps a run record (generator/runs.py), `.segment-images.json`: what shapes the
outputs' bytes (the model's weights digest and architecture, --threshold, --refine, --overlay),
written before any output.  A rerun with other settings is refused naming them, since skipping
finished outputs would otherwise mix two kinds of mask silently; --overwrite redoes every photo,
first deleting its outputs made with other settings.  A run holds the folder's lock, so the temporary files it finds
(`.NAME.XXXXXXXX.tmp`, generator/files.py) are certainly an interrupted run's, and removes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from evaluation import refinement
from evaluation.inference import plan_shape_batches, predict_images, prefetched, protocol_size
from generator.parallel import run_parts
from trainer.model_folders import DEFAULT_MODEL_FOLDERS, default_model_folder
from evaluation.photos import NoPhotosError, Photo, UnsafeOutputError, find_photos, output_path
from evaluation.predictors import UNetPredictor
from generator.files import TEMPORARY_SUFFIX, atomic_write_bytes, atomic_write_json
from generator.image_io import PHOTO_SUFFIXES, UnreadableImageError, load_rgb
from generator.runs import FolderLocked, OutputLock, RecordMismatch, may_resume, record_differences, resolve_device

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = ".overlay.png"
OVERLAY_COLOUR = np.array([255.0, 0.0, 0.0], np.float32)
OVERLAY_OPACITY = 0.5
#: Exit status when the run finished but skipped photos it could not read or write.
EXIT_SKIPPED = 3
#: The output folder's run record: the settings its outputs were made with.
SETTINGS_NAME = ".segment-images.json"
#: generator/files.py's temporary names, `.NAME.XXXXXXXX.tmp` (tempfile's 8 random characters).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX) + "$")

#: A refinement step: (H x W x 3 uint8 photo, H x W float32 probabilities) -> refined probabilities
#: of the same shape, e.g. an edge-aware filter guided by the photo.
Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Job:
    """One photo to segment and the files it gets (the overlay only when asked)."""

    photo: Photo
    mask: Path
    overlay: Path | None = None

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.mask,) if self.overlay is None else (self.mask, self.overlay)


@dataclass
class Skipped:
    """A photo left out, and why."""

    path: Path
    reason: str


def map_to_uint8(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Probabilities in [0, 1] as 8-bit grey: round(255 p), or 0/255 at p > threshold (the
    evaluator's binarisation rule)."""
    if threshold is not None:
        return np.where(probabilities > threshold, np.uint8(255), np.uint8(0))
    return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_image(image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The photo tinted red where the model sees the object (opacity OVERLAY_OPACITY x p)."""
    weight = (OVERLAY_OPACITY * np.clip(probabilities, 0.0, 1.0))[:, :, None]
    blended = image.astype(np.float32) * (1.0 - weight) + OVERLAY_COLOUR * weight
    return np.rint(blended).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def plan_jobs(photos: Sequence[Photo], output: Path, overlay: bool) -> tuple[list[Job], list[Skipped]]:
    """(every photo's job, photos refused): a photo whose output would leave OUTPUT, or that
    another photo's outputs would overwrite (a.jpg and a.png in one folder), is refused."""
    jobs, refused = [], []
    claimed: dict[Path, Path] = {}
    for photo in photos:
        try:
            job = Job(photo, output_path(output, photo.relative, MASK_SUFFIX),
                      output_path(output, photo.relative, OVERLAY_SUFFIX) if overlay else None)
        except UnsafeOutputError as error:
            refused.append(Skipped(photo.path, str(error)))
            continue
        clash = next((claimed[path] for path in job.outputs if path in claimed), None)
        if clash is not None:
            refused.append(Skipped(photo.path, f"its output would overwrite the one of {clash}"))
            continue
        claimed.update({path: photo.path for path in job.outputs})
        jobs.append(job)
    return jobs, refused


def unfinished(jobs: Sequence[Job], overwrite: bool) -> tuple[list[Job], int]:
    """(jobs to run, photos already done): a photo whose outputs all exist is done unless `overwrite`."""
    todo = [job for job in jobs if overwrite or not all(path.is_file() for path in job.outputs)]
    return todo, len(jobs) - len(todo)


def weights_digest(folder: str | Path) -> str:
    """sha256 of the model folder's weights file (the same weights always give the same bytes)."""
    from trainer.export import WEIGHTS_NAME
    with open(Path(folder) / WEIGHTS_NAME, "rb") as weights:
        return hashlib.file_digest(weights, "sha256").hexdigest()


def settings_record(predictor: UNetPredictor, threshold: float | None, refine: bool, overlay: bool) -> dict:
    """What shapes the outputs' bytes.  The device, batch size, threads and processes are left out:
    they change how a map is computed, not what (at most the last float bits)."""
    model = {"weights_sha256": weights_digest(predictor.folder), "input_size": predictor.input_size,
             **predictor.model.architecture}
    return {"model": model, "threshold": threshold, "refine": refine, "overlay": overlay}


def read_settings(output: Path) -> dict | None:
    """The folder's saved run record; None when there is none, {} when it cannot be read."""
    try:
        saved = json.loads((output / SETTINGS_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


OVERWRITE_HINT = "Pass --overwrite to redo every photo with these settings, or choose another output folder."


def adopt_settings(output: Path, record: dict, jobs: Sequence[Job], overwrite: bool) -> None:
    """Make `record` the folder's run record before any output is written.

    Outputs made with other settings are never reused: without `overwrite` a saved record that
    differs raises RecordMismatch naming the settings (outputs without a record count as made
    with other settings); with it, this run's existing outputs are deleted first, so that an
    interrupted --overwrite cannot leave old ones to pass as done under the new record."""
    saved = read_settings(output)
    # an overlay counts whether this run asks for one or not: --overwrite without --overlay must not
    # leave the overlays of other settings beside the new masks
    possible = (path for job in jobs for path in (job.mask, job.overlay or _overlay_of(output, job)))
    existing = [path for path in dict.fromkeys(possible) if path is not None and path.is_file()]
    if saved is None and not existing:
        atomic_write_json(output / SETTINGS_NAME, record)
        return
    if saved is not None and not record_differences(saved, record):
        return
    if not overwrite:
        if saved is None:
            raise RecordMismatch(f"the output folder {output}", [f"no {SETTINGS_NAME} records them"], OVERWRITE_HINT)
        may_resume(saved, record, what=f"the output folder {output}", hint=OVERWRITE_HINT)
    for path in existing:
        path.unlink()
    atomic_write_json(output / SETTINGS_NAME, record)


def _overlay_of(output: Path, job: Job) -> Path | None:
    """Where the job's overlay goes when overlays are asked for; None where it could not be written."""
    try:
        return output_path(output, job.photo.relative, OVERLAY_SUFFIX)
    except UnsafeOutputError:
        return None


def remove_leftovers(output: Path, photos: Sequence[Photo]) -> int:
    """Delete the temporary files of interrupted writes of this folder's record and of the photos'
    masks and overlays (their names only); call with the folder's lock held.  Returns how many."""
    ours: dict[Path, set[str]] = defaultdict(set)
    ours[output].add(SETTINGS_NAME)
    for photo in photos:
        for suffix in (MASK_SUFFIX, OVERLAY_SUFFIX):
            try:
                path = output_path(output, photo.relative, suffix)
            except UnsafeOutputError:
                continue
            ours[path.parent].add(path.name)
    removed = 0
    for folder, names in ours.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = _TEMPORARY.match(entry.name)
            if match and match["name"] in names and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed


def _load(jobs: list[Job]) -> list[np.ndarray | UnreadableImageError]:
    loaded: list[np.ndarray | UnreadableImageError] = []
    for job in jobs:
        try:
            loaded.append(load_rgb(job.photo.path))
        except UnreadableImageError as error:
            loaded.append(error)
    return loaded


def segment_photos(jobs: Sequence[Job], predictor: UNetPredictor, batch_size: int = 16,
                   threshold: float | None = None, refine: Refiner | None = None,
                   progress: bool = True, processes: int = 1) -> tuple[int, list[Skipped]]:
    """Segment every job's photo and write its outputs; returns (photos written, photos skipped).

    With `processes` > 1 (CPU only) the batches are dealt out to that many worker processes; a
    batch is never split, so every file is the one a single process writes (at one torch thread
    each).  Skipped photos are listed in path order."""
    skipped: list[Skipped] = []
    readable, shapes = [], []
    for job in jobs:
        try:
            shapes.append(protocol_size(job.photo.path, predictor.input_size))
            readable.append(job)
        except UnreadableImageError as error:
            skipped.append(Skipped(job.photo.path, error.reason))
    batches = [[readable[i] for i in batch]
               for batch in plan_shape_batches(shapes, predictor.input_size, batch_size)]
    work = _Segmenting(batches, predictor, threshold, refine)
    processes = max(1, min(processes, len(batches)))
    with tqdm(total=len(jobs), initial=len(skipped), unit="photo", desc="segment-images", dynamic_ncols=True,
              disable=not progress) as bar:
        if processes == 1:
            results = [_segment_part(work, 0, 1, lambda: bar.update(1))]
        else:
            results = run_parts(_segment_part, work, processes, bar, "segment-images")
    written = sum(part_written for part_written, _ in results)
    skipped += [item for _, part_skipped in results for item in part_skipped]
    return written, sorted(skipped, key=lambda item: str(item.path))


@dataclass
class _Segmenting:
    """What segmenting a share of the batches needs; a worker process receives it whole."""

    batches: list[list[Job]]
    predictor: UNetPredictor
    threshold: float | None
    refine: Refiner | None


def _segment_part(work: _Segmenting, part: int, parts: int, tick: Callable[[], None]) -> tuple[int, list[Skipped]]:
    """Batches part, part + parts, ... : their photos predicted, refined and written."""
    written, skipped = 0, []
    predictor = work.predictor
    for batch, loaded in prefetched(work.batches[part::parts], _load):
        good = []
        for job, image in zip(batch, loaded):
            if isinstance(image, UnreadableImageError):
                skipped.append(Skipped(job.photo.path, image.reason))
                tick()
            else:
                good.append((job, image))
        if not good:
            continue
        maps = predict_images([predictor], [image for _, image in good], [image.shape[:2] for _, image in good])
        for (job, image), by_name in zip(good, maps):
            probabilities = by_name[predictor.name]
            if work.refine is not None:
                probabilities = work.refine(image, probabilities)
            try:
                if job.overlay is not None:
                    atomic_write_bytes(job.overlay, encode_png(overlay_image(image, probabilities)))
                atomic_write_bytes(job.mask, encode_png(map_to_uint8(probabilities, work.threshold)))
                written += 1
            except OSError as error:
                skipped.append(Skipped(job.photo.path, f"cannot write its output: {error}"))
            tick()
    return written, skipped


def resolve_model_folder(model: str | None, echo=click.echo) -> Path:
    """--model as given, else the first of DEFAULT_MODEL_FOLDERS holding a model (saying which)."""
    if model is not None:
        folder = Path(model)
        if not folder.is_dir():
            raise click.ClickException(f"model folder {folder} not found")
        return folder
    folder = default_model_folder()
    if folder is None:
        raise click.ClickException(
            f"no trained model: none of {', '.join(DEFAULT_MODEL_FOLDERS)} holds unet.pt + unet.json; "
            f"run `dvc repro train` or pass --model")
    if Path(folder) != Path(DEFAULT_MODEL_FOLDERS[-1]):
        echo(f"segment-images: using the model in {folder} (preferred over {DEFAULT_MODEL_FOLDERS[-1]})", err=True)
    return folder


def load_predictor(folder: Path, device: str) -> UNetPredictor:
    from trainer.export import TrainedModelError
    try:
        parsed = resolve_device(device)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    try:
        return UNetPredictor.from_folder(folder, device=parsed)
    except (TrainedModelError, ValueError, RuntimeError) as error:
        raise click.ClickException(f"{folder} is not a usable trained-model folder: {error}") from error


def _photos(count: int) -> str:
    return f"{count} photo" if count == 1 else f"{count} photos"


def checked_output_folder(output: str) -> Path:
    """OUTPUT as a folder path; refused when it is a file, or named like one (mask.png)."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise click.ClickException(f"output {folder} exists and is not a folder")
    if folder.suffix.lower() in PHOTO_SUFFIXES and not folder.is_dir():
        raise click.ClickException(
            f"output {folder} looks like a file name, but OUTPUT is the folder the masks go in, even for one "
            f"photo: `segment-images photo.jpg masks/` writes masks/photo.png")
    return folder


def photos_outside(source: str, output_folder: Path) -> list[Photo]:
    """SOURCE's photos, less those inside OUTPUT (OUTPUT within SOURCE): earlier outputs are never segmented."""
    try:
        photos = find_photos(source)
    except NoPhotosError as error:
        raise click.ClickException(str(error)) from error
    inside = {photo for photo in photos if photo.path.resolve().is_relative_to(output_folder.resolve())}
    if inside:
        click.echo(f"segment-images: ignoring {len(inside)} files inside the output folder {output_folder}", err=True)
        photos = [photo for photo in photos if photo not in inside]
        if not photos:
            raise click.ClickException(f"no photos found in {source} outside the output folder {output_folder}")
    return photos


def _segment_folder(photos: list[Photo], output_folder: Path, predictor: UNetPredictor, record: dict,
                    overwrite: bool, batch_size: int, quiet: bool, processes: int) -> list[Skipped]:
    """The run itself, with the folder's lock held: clean up, check the settings, segment; the skipped photos."""
    remove_leftovers(output_folder, photos)
    jobs, skipped = plan_jobs(photos, output_folder, record["overlay"])
    adopt_settings(output_folder, record, jobs, overwrite)
    jobs, done = unfinished(jobs, overwrite)
    threshold, refine = record["threshold"], record["refine"]
    click.echo(f"segment-images: {_photos(len(photos))}, {done} already done, {len(jobs)} to segment "
               f"-> {output_folder} ({'binary masks at > ' + str(threshold) if threshold is not None else 'probability maps'}"
               f"{', refined' if refine else ''}{', overlays' if record['overlay'] else ''}"
               f"{f', {processes} processes' if processes > 1 else ''})", err=True)
    start = time.perf_counter()
    written, failed = segment_photos(jobs, predictor, batch_size, threshold,
                                     refine=refinement.refine if refine else None, progress=not quiet,
                                     processes=processes)
    elapsed = time.perf_counter() - start
    skipped += failed
    click.echo(f"segment-images: wrote {_photos(written)} in {elapsed:.1f} s"
               + (f" ({written / elapsed:.1f} photos/s)" if written and elapsed > 0 else "")
               + f", {done} already done, {len(skipped)} skipped", err=True)
    return skipped


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--model", default=None,
              help=f"Trained-model folder (unet.pt + unet.json). Default: the first of "
                   f"{', '.join(DEFAULT_MODEL_FOLDERS)} that holds a model.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Write binary masks, 255 where the probability exceeds this, 0 elsewhere. Default: "
                   "probability maps, 8-bit (round(255 p)).")
@click.option("--overlay", is_flag=True,
              help="Also write STEM.overlay.png beside each mask: the photo tinted red by the probability.")
@click.option("--refine", is_flag=True,
              help="Refine each map against its photo (fast bilateral solver, evaluation/refinement.py): edges "
                   "follow the photo's colour edges. About 25 ms per 300 x 400 photo.")
@click.option("--overwrite", is_flag=True,
              help="Redo every photo, first deleting its existing outputs when they were made with other "
                   "settings. Default: skip photos whose outputs exist, and refuse a folder whose outputs were "
                   "made with another model or another --threshold, --refine or --overlay (the folder's "
                   f"{SETTINGS_NAME} records them).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the model: auto (cuda when a GPU is present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Photos predicted together (photos are grouped by resized shape).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads on the CPU; photos decode in one more thread. More help only on idle cores "
                   "(on a busy 2-core machine 2 threads ran 6x slower than 1).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on the CPU, each decoding, predicting, refining and writing its share of "
                   "the batches with --threads torch threads; one per idle core is the usual choice. The files "
                   "are those one process writes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(source: str, output: str, model: str | None, threshold: float | None, overlay: bool, refine: bool,
         overwrite: bool, device: str, batch_size: int, threads: int, processes: int, quiet: bool) -> None:
    """Segment the photos in SOURCE with a trained model; write one 8-bit PNG per photo under OUTPUT.

    SOURCE is a folder (searched recursively), a glob pattern in quotes ('photos/**/*.jpg') or one
    photo; .jpg, .jpeg, .png, .bmp, .tif, .tiff and .webp files count, in any case. OUTPUT is always
    a folder, even for one photo (`segment-images photo.jpg masks/` writes masks/photo.png); a name
    ending like an image (mask.png) is refused. Each output keeps the photo's relative path and
    stem, and the photo's own size (its stored pixels: EXIF orientation is not applied, as in
    evaluation). Photos are resized so the shorter side is the model's input size, predicted, and
    the map is resized back, exactly as evaluate-saliency does.

    Photos whose outputs exist are skipped, so an interrupted run resumes; files are written whole
    or not at all. OUTPUT/.segment-images.json records the model and the settings that change the
    outputs (--threshold, --refine, --overlay); a rerun with others is refused, naming them
    (--overwrite redoes every photo). Exit status: 0 when every photo was done, 1 on an error (no
    photos, no model, other settings), 3 when photos were skipped (unreadable, too elongated for
    the model's input, or an output that would fall outside OUTPUT or clash with another's); they
    are listed at the end.
    """
    output_folder = checked_output_folder(output)
    photos = photos_outside(source, output_folder)
    predictor = load_predictor(resolve_model_folder(model), device)
    if processes > 1 and predictor.device.type != "cpu":
        raise click.ClickException(f"--processes {processes} runs on the CPU only; the device is {device}")
    torch.set_num_threads(threads)
    record = settings_record(predictor, threshold, refine, overlay)
    try:
        with OutputLock(output_folder):
            skipped = _segment_folder(photos, output_folder, predictor, record, overwrite, batch_size,
                                      quiet, processes)
    except (FolderLocked, RecordMismatch) as error:
        raise click.ClickException(str(error)) from error
    if skipped:
        for item in skipped:
            click.echo(f"skipped: {item.path}: {item.reason}", err=True)
        click.echo(f"segment-images: {_photos(len(skipped))} skipped", err=True)
        raise SystemExit(EXIT_SKIPPED)


if __name__ == "__main__":
    main()
