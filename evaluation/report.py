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
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
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


def write_outputs(output: Path, results: list[BenchmarkResult], report: dict) -> dict[str, Any]:
    """Everything under `output`; returns the paths written."""
    output = Path(output)
    write_json(output / "metrics.json", metrics_content(results))
    curves = write_curves(results, output / "plots")
    grids = [path for result in results if (path := write_grid(result, output / "grids" / f"{result.name}.png"))]
    full = {"format_version": FORMAT_VERSION, **report,
            "benchmarks": {result.name: {**result.summary, "evaluated": result.count,
                                         "seconds": round(result.seconds, 2), "metrics": result.metrics}
                           for result in results}}
    write_json(output / "report.json", full)
    return {"metrics": output / "metrics.json", "report": output / "report.json", "curves": curves, "grids": grids}
