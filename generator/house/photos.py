"""Loads the training photos once into memory at the training resolution.

From a folder, every photo goes through the project's one image rule
(`generator.image_io.load_square`: 8-bit RGB, shorter side resized, centre square crop), the same
rule the embedding stage applies before it calls the encoder, and is kept as float32 in [-1, 1].
From a photo pack (`generator.house.pack`, the same crops stored as JPEG) the photos stay uint8,
a quarter of the memory, and become float per batch (`as_unit_range`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_photos(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (the bank's row order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def photo_name(path: str | Path, folder: str | Path) -> str:
    """A photo's name from its folder's grandparent, which keeps the data set's name
    (DUTS-TR/images/x.jpg).  Symlinks are not followed: a folder of links to photos elsewhere
    names the links."""
    root = Path(os.path.abspath(folder)).parent.parent
    return str(Path(os.path.abspath(path)).relative_to(root))


def load_photos(folder: str | Path, side: int) -> tuple[torch.Tensor, list[Path], list[dict]]:
    """All readable photos of a folder as N x 3 x side x side float32 in [-1, 1].

    Returns the tensor, the files in row order and the unreadable files with the reason.
    """
    from generator.image_io import load_square  # needs numpy and Pillow; a pack needs neither

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


def as_unit_range(photos: torch.Tensor) -> torch.Tensor:
    """uint8 photos -> float32 in [-1, 1] (x / 127.5 - 1); float photos are returned as they are."""
    if photos.dtype == torch.uint8:
        return photos.float() / 127.5 - 1.0
    return photos


def load_training_photos(data: str | Path, side: int) -> tuple[torch.Tensor, list[Path], list[dict]]:
    """Photos from a folder (float, with files and skipped) or from a pack file (uint8, no files)."""
    data = Path(data)
    if data.is_file():
        from generator.house.pack import load_pack

        photos, _ = load_pack(data, side)
        return photos, [], []
    return load_photos(data, side)
