"""Loads a folder of photos once into memory as a float tensor at the training resolution.

Every photo goes through the project's one image rule (`generator.image_io.load_square`: 8-bit
RGB, shorter side resized, centre square crop), the same rule the embedding stage applies before
it calls the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from generator.image_io import load_square

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_photos(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (the bank's row order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def load_photos(folder: str | Path, side: int) -> tuple[torch.Tensor, list[Path], list[dict]]:
    """All readable photos of a folder as N x 3 x side x side float32 in [-1, 1].

    Returns the tensor, the files in row order and the unreadable files with the reason.
    """
    loaded, files, skipped = [], [], []
    for path in list_photos(folder):
        try:
            loaded.append(load_square(path, side))
            files.append(path)
        except (OSError, ValueError) as error:
            skipped.append({"path": str(path), "reason": f"{type(error).__name__}: {error}"})
    if not loaded:
        raise ValueError(f"no readable photos in {folder}")
    return torch.cat(loaded).clamp_(-1, 1), files, skipped
