"""Pseudo-labels and their online rectification (OLR, A2S).

G^1 are the synthetic-trained U-Net's predictions on the photos.  After epoch j the labels move
towards the model's own predictions Y^j made during that epoch:
G^{j+1} = lambda_j G^j + (1 - lambda_j) Y^j, with lambda_j = 1 for the first `warmup` epochs (the
labels are not contaminated while the model is still fitting them) and `lambda` afterwards.
Labels and predictions are N x S x S float16 arrays in `.npy` files (about 8 KB a photo at 64 px),
read with `allow_pickle=False`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from generator.files import atomic_write_bytes

LABEL_DTYPE = np.float16
CHUNK = 512  # photos updated at a time: bounds the float32 working copy


def label_weight(epoch: int, warmup_epochs: int, olr_lambda: float) -> float:
    """lambda applied after epoch `epoch` (counted from 1): 1 during the warm-up, then `olr_lambda`."""
    if epoch < 1:
        raise ValueError(f"epochs are counted from 1, got {epoch}")
    return 1.0 if epoch <= warmup_epochs else float(olr_lambda)


def rectify(labels: np.ndarray, predictions: np.ndarray, weight: float) -> tuple[np.ndarray, float, float]:
    """G^{j+1} = weight G^j + (1 - weight) Y^j.

    Returns the new labels (float16, same shape), how much they moved (mean |G^{j+1} - G^j|) and
    how far the predictions were from the labels (mean |Y^j - G^j|).
    """
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the label weight must lie in [0, 1], got {weight}")
    updated = np.empty(labels.shape, dtype=LABEL_DTYPE)
    moved = gap = 0.0
    for start in range(0, len(labels), CHUNK):
        old = labels[start:start + CHUNK].astype(np.float32)
        new_predictions = predictions[start:start + CHUNK].astype(np.float32)
        new = np.clip(weight * old + (1.0 - weight) * new_predictions, 0.0, 1.0).astype(LABEL_DTYPE)
        updated[start:start + CHUNK] = new
        moved += float(np.abs(new.astype(np.float32) - old).sum(dtype=np.float64))
        gap += float(np.abs(new_predictions - old).sum(dtype=np.float64))
    count = max(labels.size, 1)
    return updated, moved / count, gap / count


def mean_distance(first: np.ndarray, second: np.ndarray) -> float:
    """mean |first - second| of two label arrays, a chunk at a time (float16 in, float32 working copy)."""
    if first.shape != second.shape:
        raise ValueError(f"arrays of shapes {first.shape} and {second.shape} cannot be compared")
    total = sum(float(np.abs(first[start:start + CHUNK].astype(np.float32)
                             - second[start:start + CHUNK].astype(np.float32)).sum(dtype=np.float64))
                for start in range(0, len(first), CHUNK))
    return total / max(first.size, 1)


def save_array(path: str | Path, array: np.ndarray) -> None:
    """An array as `.npy`, written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_array(path: str | Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def open_predictions(path: str | Path, shape: tuple[int, ...], fresh: bool) -> np.ndarray:
    """The epoch's prediction buffer Y^j on disk: a new one (zeros) or the interrupted epoch's."""
    path = Path(path)
    if fresh or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=LABEL_DTYPE, shape=shape)
    buffer = np.load(path, mmap_mode="r+", allow_pickle=False)
    if buffer.shape != tuple(shape) or buffer.dtype != LABEL_DTYPE:
        raise ValueError(f"{path} holds {buffer.dtype} {buffer.shape}, expected {np.dtype(LABEL_DTYPE)} {shape}")
    return buffer
