"""Finding photos in a folder and encoding them with a generator's encoder.

Photos are every `.jpg`, `.jpeg`, `.png` and `.bmp` (any letter case) under the folder, recursively,
skipping hidden files and folders (names starting with a dot) and not following folder links.
They are ordered by their path relative to the folder, so the bank's rows do not depend on the
file system.  Each is read by `generator.image_io.load_rgb` (EXIF orientation applied: the encoder
expects upright photos) and brought to the encoder's square input by `fit_square` (shorter side
resized, centre crop).  A file that cannot be decoded is skipped and reported, never fatal.
Decoding runs in a few threads, one batch ahead of the encoder.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from generator.image_io import PHOTO_SUFFIXES, UnreadableImageError, load_square
from generator.interface import Generator

IMAGE_SUFFIXES = frozenset(PHOTO_SUFFIXES)


@dataclass
class EncodedImages:
    """Latents in `files` order (paths relative to the folder, with forward slashes) and the skipped files."""

    latents: np.ndarray
    files: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path.  Links to folders are
    followed (a folder met again through a link is not searched twice); hidden files and folders
    (names starting with a dot) are left out."""
    folder = Path(folder)
    found, searched = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched:            # a link back to a folder above, or a second link to one
            dirs[:] = []
            continue
        searched.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))   # in name order: which link wins is fixed
        found.extend(Path(root) / name for name in names
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def encode_images(generator: Generator, folder: str | Path, batch_size: int = 32, workers: int = 2,
                  progress: bool = True) -> EncodedImages:
    """Encode every image under `folder` with the generator's encoder, `batch_size` at a time."""
    if not generator.has_encoder:
        raise ValueError(f"generator {generator.identity} has no encoder")
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be positive, got {batch_size} and {workers}")
    folder = Path(folder)
    paths = find_images(folder)
    side = generator.encoder_resolution

    def load(path: Path) -> torch.Tensor | UnreadableImageError:
        try:
            return load_square(path, side, exif_orientation=True)
        except UnreadableImageError as error:
            return error

    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    latents: list[np.ndarray] = []
    files: list[str] = []
    skipped: list[dict[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(paths), unit="img", desc="embed", disable=not progress) as bar:
        upcoming: list[Future] = [pool.submit(load, path) for path in batches[0]] if batches else []
        for number, batch in enumerate(batches):
            current = upcoming
            upcoming = [pool.submit(load, path) for path in batches[number + 1]] if number + 1 < len(batches) else []
            images = []
            for path, future in zip(batch, current):
                loaded = future.result()
                relative = path.relative_to(folder).as_posix()
                if isinstance(loaded, UnreadableImageError):
                    skipped.append({"path": relative, "reason": loaded.reason})
                else:
                    images.append(loaded)
                    files.append(relative)
            if images:
                with torch.no_grad():
                    codes = generator.encode(torch.cat(images))
                latents.append(codes.detach().to("cpu", torch.float32).numpy())
            bar.update(len(batch))
    stacked = np.concatenate(latents) if latents else np.zeros((0, generator.latent_dim), np.float32)
    return EncodedImages(stacked, files, skipped)
