"""`segment-images`: a trained U-Net applied to a folder of photos, one 8-bit PNG per photo.

Photos go through the evaluator's inference protocol (evaluation/inference.py: shorter side to
the model's input size, [-1, 1], the probability map resized back to the photo's size), batched
by resized shape while the next batch decodes.  Outputs mirror the input's relative paths
(evaluation/photos.py) and are written atomically, so an interrupted run leaves only whole files
and a rerun skips them.  A photo that cannot be read is skipped, named and counted.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from evaluation import refinement
from evaluation.inference import image_size, plan_shape_batches, predict_images, prefetched
from evaluation.parallel import run_parts
from trainer.model_folders import DEFAULT_MODEL_FOLDERS, default_model_folder
from evaluation.photos import NoPhotosError, Photo, UnsafeOutputError, find_photos, output_path
from evaluation.predictors import UNetPredictor
from generator.files import atomic_write_bytes
from generator.image_io import UnreadableImageError, load_rgb
from generator.runs import resolve_device

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = ".overlay.png"
OVERLAY_COLOUR = np.array([255.0, 0.0, 0.0], np.float32)
OVERLAY_OPACITY = 0.5
#: Exit status when the run finished but skipped photos it could not read or write.
EXIT_SKIPPED = 3

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


def plan_jobs(photos: Sequence[Photo], output: Path, overlay: bool,
              overwrite: bool) -> tuple[list[Job], int, list[Skipped]]:
    """(jobs to run, photos already done, photos refused): a photo whose outputs all exist is done
    unless `overwrite`; one whose output would leave OUTPUT, or that another photo's outputs
    would overwrite (a.jpg and a.png in one folder), is refused."""
    jobs, refused, done = [], [], 0
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
        if not overwrite and all(path.is_file() for path in job.outputs):
            done += 1
        else:
            jobs.append(job)
    return jobs, done, refused


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
            shapes.append(image_size(job.photo.path))
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
              help="Redo photos whose outputs already exist (default: skip them; also needed after changing "
                   "--threshold or --refine).")
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
    photo; .jpg, .jpeg, .png, .bmp and .webp files count, in any case. Each output keeps the
    photo's relative path and stem, and the photo's own size (its stored pixels: EXIF orientation
    is not applied, as in evaluation). Photos are resized so the shorter side is the model's
    input size, predicted, and the map is resized back, exactly as evaluate-saliency does.

    Photos whose outputs exist are skipped, so an interrupted run resumes (--overwrite redoes
    them); files are written whole or not at all. Exit status: 0 when every photo was done,
    1 on an error (no photos, no model), 3 when photos were skipped (unreadable, or an output
    that would fall outside OUTPUT or clash with another's); they are listed at the end.
    """
    output_folder = Path(output)
    if output_folder.exists() and not output_folder.is_dir():
        raise click.ClickException(f"output {output_folder} exists and is not a folder")
    try:
        photos = find_photos(source)
    except NoPhotosError as error:
        raise click.ClickException(str(error)) from error
    # Never segment earlier outputs: photos inside OUTPUT (OUTPUT within SOURCE) are left out.
    inside = {photo for photo in photos if photo.path.resolve().is_relative_to(output_folder.resolve())}
    if inside:
        click.echo(f"segment-images: ignoring {len(inside)} files inside the output folder {output_folder}", err=True)
        photos = [photo for photo in photos if photo not in inside]
        if not photos:
            raise click.ClickException(f"no photos found in {source} outside the output folder {output_folder}")
    predictor = load_predictor(resolve_model_folder(model), device)
    if processes > 1 and predictor.device.type != "cpu":
        raise click.ClickException(f"--processes {processes} runs on the CPU only; the device is {device}")
    torch.set_num_threads(threads)

    jobs, done, skipped = plan_jobs(photos, output_folder, overlay, overwrite)
    click.echo(f"segment-images: {_photos(len(photos))}, {done} already done, {len(jobs)} to segment "
               f"-> {output_folder} ({'binary masks at > ' + str(threshold) if threshold is not None else 'probability maps'}"
               f"{', refined' if refine else ''}{', overlays' if overlay else ''}"
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
    if skipped:
        for item in skipped:
            click.echo(f"skipped: {item.path}: {item.reason}", err=True)
        click.echo(f"segment-images: {_photos(len(skipped))} skipped", err=True)
        raise SystemExit(EXIT_SKIPPED)


if __name__ == "__main__":
    main()
