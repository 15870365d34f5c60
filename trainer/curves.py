"""Training and validation curves as DVC plots (CSV) and the run's summary as DVC metrics (JSON)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from generator.files import atomic_write_bytes

TRAIN_CURVE = "train_loss.csv"
VAL_CURVE = "val.csv"
SUMMARY = "summary.json"
TRAIN_COLUMNS = ("step", "loss", "lr")
VAL_COLUMNS = ("step", "loss", "iou", "accuracy")


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # a column a row lacks (a curve resumed from an older run) is left empty
        writer.writerow({key: (f"{row[key]:.6g}" if isinstance(row.get(key), float) else row.get(key))
                         for key in columns})
    return buffer.getvalue()


def write_curves(history: dict[str, list[dict[str, Any]]], folder: str | Path) -> None:
    """`train_loss.csv` (step, loss, lr) and `val.csv` (step, loss, iou, accuracy)."""
    folder = Path(folder)
    atomic_write_bytes(folder / TRAIN_CURVE, _csv(history["train"], TRAIN_COLUMNS).encode())
    atomic_write_bytes(folder / VAL_CURVE, _csv(history["val"], VAL_COLUMNS).encode())


def write_summary(summary: dict[str, Any], folder: str | Path) -> None:
    atomic_write_bytes(Path(folder) / SUMMARY, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
