"""Writes an evaluation's results: DVC metrics, curves as DVC plots, a report, and PNG grids.

Under the output folder (`data/eval/` in the pipeline):

- `metrics.json`: DVC metrics, `{benchmark: {convention: {row: {metric: value}}}}`; the rows are
  `model` (the U-Net trained on synthetic pairs), `selftrained` (after self-training on photos, when
  present) and the `centre_prior` baseline, each followed by `<row>_refined` when refinement is on,
  so every number sits beside its trivial counterpart, and the convention's name is part of every
  key.  `report.json`'s `rows` says each row's model and whether refinement was applied.
- `plots/pr/<benchmark>.<convention>.<predictor>.csv` (threshold, precision, recall) and
  `plots/f_threshold/...csv` (threshold, f, e, box_acc): DVC plots.
- `report.json`: the conventions' definitions, the model, every benchmark's pairing problems
  (unmatched files listed), the benchmarks skipped and why, timings.
- `grids/<benchmark>.png`: a few images, each as image | ground truth | one column per predictor.

Every file is written under a temporary name and renamed, so none is ever half-written.
`report.json`'s `files` lists the curves and grids written; the next run removes those (and
only those: other files under `plots/` and `grids/` are a user's) before writing its own.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw

from evaluation.evaluate import BenchmarkResult
from generator.files import atomic_write_bytes

FORMAT_VERSION = 1
TILE = 128


def _plain(value: Any) -> Any:
    """JSON-ready: NaN becomes null, numpy scalars and arrays plain Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, content: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_plain(content), indent=2) + "\n").encode())


def metrics_content(results: Iterable[BenchmarkResult]) -> dict:
    return {result.name: result.metrics for result in results}


def write_curves(results: Iterable[BenchmarkResult], folder: Path) -> list[Path]:
    """One CSV per (benchmark, convention, predictor) for each of the two plots."""
    written = []
    for result in results:
        for convention, by_predictor in result.curves.items():
            for predictor, curves in by_predictor.items():
                stem = f"{result.name}.{convention}.{predictor}.csv"
                f_curves = curves.get("FMeasure")
                if f_curves is None:
                    continue
                pr_rows = zip(f_curves["threshold"], f_curves["precision"], f_curves["recall"])
                written.append(_write_csv(folder / "pr" / stem, ("threshold", "precision", "recall"), pr_rows))
                columns = {"threshold": f_curves["threshold"], "f": f_curves["f"]}
                if "EMeasure" in curves:
                    columns["e"] = curves["EMeasure"]["e"]
                if "MaxBoxAcc" in curves:
                    columns["box_acc"] = curves["MaxBoxAcc"]["box_acc"]
                written.append(_write_csv(folder / "f_threshold" / stem, tuple(columns), zip(*columns.values())))
    return written


def _write_csv(path: Path, header: tuple[str, ...], rows: Iterable[tuple]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{float(value):.6f}" for value in row])
    atomic_write_bytes(path, text.getvalue().encode())
    return path


def _tile(array: np.ndarray) -> Image.Image:
    """An image or map letterboxed into a TILE x TILE square on grey."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    image = Image.fromarray(array)
    image.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (TILE, TILE), (64, 64, 64))
    canvas.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return canvas


def grid_image(result: BenchmarkResult) -> Image.Image | None:
    """Rows of image | ground truth | predictors' maps, with a header naming the columns."""
    if not result.examples:
        return None
    predictors = list(result.examples[0].maps)
    titles = ["image", "ground truth", *predictors]
    header = 18
    grid = Image.new("RGB", (TILE * len(titles), header + TILE * len(result.examples)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(titles):
        draw.text((column * TILE + 4, 3), title, fill=(0, 0, 0))
    for row, example in enumerate(result.examples):
        image = example.image
        if image.shape[:2] != example.mask.shape:
            image = np.array(Image.fromarray(image).resize(example.mask.shape[::-1], Image.Resampling.BILINEAR))
        cells = [image, example.mask] + [np.rint(example.maps[name] * 255).astype(np.uint8) for name in predictors]
        for column, cell in enumerate(cells):
            grid.paste(_tile(cell), (column * TILE, header + row * TILE))
    return grid


def write_grid(result: BenchmarkResult, path: Path) -> Path | None:
    grid = grid_image(result)
    if grid is None:
        return None
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


CURVE_FOLDERS = ("pr", "f_threshold")


def _output_names(benchmark: str, metrics: dict) -> list[str]:
    """The curves and grid a run writes for one benchmark of {convention: {row: values}} `metrics`."""
    stems = [f"{benchmark}.{convention}.{row}.csv" for convention, rows in metrics.items() for row in rows]
    return [f"plots/{plot}/{stem}" for plot in CURVE_FOLDERS for stem in stems] + [f"grids/{benchmark}.png"]


def _is_output_name(relative: str) -> bool:
    """Whether `relative` (to the output folder) is named as a curve or grid is: a report edited by
    hand never makes a file elsewhere, or of another kind, pass for a previous run's."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        return False
    if path.suffix == ".csv":
        return len(path.parts) == 3 and path.parts[0] == "plots" and path.parts[1] in CURVE_FOLDERS
    return path.suffix == ".png" and len(path.parts) == 2 and path.parts[0] == "grids"


def previous_files(output: Path) -> list[str]:
    """The curves and grids the previous run wrote, relative to `output`: as its report.json lists
    them, or, in a report written before the list was kept, as they follow from its metrics."""
    try:
        report = json.loads((output / "report.json").read_text())
        if "files" in report:
            return [name for name in report["files"] if isinstance(name, str)]
        return [name for benchmark, entry in report.get("benchmarks", {}).items()
                for name in _output_names(benchmark, entry.get("metrics", {}))]
    except (OSError, ValueError, TypeError, AttributeError):   # no report, or not one this module wrote
        return []


def remove_previous_outputs(output: Path) -> None:
    """Remove the previous run's curves and grids, so none is left from a benchmark or row no
    longer evaluated; a user's own files there stay, and so do the folders that hold them."""
    for name in previous_files(output):
        if _is_output_name(name):
            (output / name).unlink(missing_ok=True)
    for folder in (*(f"plots/{plot}" for plot in CURVE_FOLDERS), "plots", "grids"):
        with contextlib.suppress(OSError):     # not empty, or not there
            (output / folder).rmdir()


def write_outputs(output: Path, results: list[BenchmarkResult], report: dict) -> dict[str, Any]:
    """Everything under `output`, in place of the previous run's; returns the paths written."""
    output = Path(output)
    remove_previous_outputs(output)
    write_json(output / "metrics.json", metrics_content(results))
    curves = write_curves(results, output / "plots")
    grids = [path for result in results if (path := write_grid(result, output / "grids" / f"{result.name}.png"))]
    full = {"format_version": FORMAT_VERSION, **report,
            "benchmarks": {result.name: {**result.summary, "evaluated": result.count,
                                         "seconds": round(result.seconds, 2), "metrics": result.metrics}
                           for result in results},
            "files": [path.relative_to(output).as_posix() for path in [*curves, *grids]]}
    write_json(output / "report.json", full)
    return {"metrics": output / "metrics.json", "report": output / "report.json", "curves": curves, "grids": grids}
