"""Self-training's DVC plots and pictures: the loss curve, the labels' movement per epoch, a grid
of pseudo-labels across epochs; the summary goes through trainer.curves.write_summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from generator.files import atomic_write_bytes
from trainer.curves import _csv, write_summary  # noqa: F401  (write_summary is re-exported)

LOSS_CURVE = "loss.csv"
LABELS_CURVE = "labels.csv"
LOSS_COLUMNS = ("step", "epoch", "loss")
LABEL_COLUMNS = ("epoch", "round", "lambda", "label_change", "prediction_gap", "loss")
TILE = 64


def write_curves(history: dict[str, list[dict[str, Any]]], folder: str | Path) -> None:
    """`loss.csv` (step, epoch, loss) and `labels.csv` (epoch, round, lambda (empty where the round's
    end relabelled the photos), mean |G^{j+1} - G^j|, mean |Y^j - G^j|, the epoch's mean loss)."""
    folder = Path(folder)
    atomic_write_bytes(folder / LOSS_CURVE, _csv(history["loss"], LOSS_COLUMNS).encode())
    atomic_write_bytes(folder / LABELS_CURVE, _csv(history["labels"], LABEL_COLUMNS).encode())


def label_grid(squares: np.ndarray, snapshots: Sequence[torch.Tensor]) -> Image.Image:
    """One row per photo: the photo, then its label G^1, G^2, ... as grey maps."""
    columns = ["photo"] + [f"G{version + 1}" for version in range(len(snapshots))]
    header = 14
    grid = Image.new("RGB", (TILE * len(columns), header + TILE * len(squares)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(columns):
        draw.text((column * TILE + 3, 1), title, fill=(0, 0, 0))
    for row, square in enumerate(squares):
        cells = [Image.fromarray(square)] + [Image.fromarray(snapshot[row].numpy()).convert("RGB")
                                             for snapshot in snapshots]
        for column, cell in enumerate(cells):
            grid.paste(cell.resize((TILE, TILE), Image.Resampling.BILINEAR), (column * TILE, header + row * TILE))
    return grid


def write_label_grid(squares: np.ndarray, snapshots: Sequence[torch.Tensor], path: str | Path) -> None:
    buffer = io.BytesIO()
    label_grid(squares, snapshots).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
