"""The unlabeled photos, brought once to the squares the model trains on and cached.

Photos are every image file under the folder (generator.embed.images.find_images: recursive,
sorted, hidden files skipped).  A subset (`max_photos`) is a seeded random choice, kept in that
sorted order.  Each photo is read as 8-bit RGB and goes through the evaluator's inference protocol
(evaluation.inference.protocol_input: shorter side to S, bilinear, [-1, 1]) and the centre S x S
crop; the squares are stored as N x S x S x 3 uint8 in `photos.npy` (12 KB a photo at 64 px)
beside `photos.json` (files, skipped files with reasons, and a key of what made the cache).  A
file that cannot be decoded is skipped and counted; a folder without a readable photo is an error.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluation.inference import protocol_input
from generator.embed.images import IMAGE_SUFFIXES, find_images
from generator.files import atomic_write_json
from generator.image_io import UnreadableImageError, centre_crop, load_rgb
from trainer.selftrain.labels import load_array, save_array

PHOTOS_NAME = "photos.npy"
INDEX_NAME = "photos.json"


class PhotoFolderError(ValueError):
    """A photo folder that gives nothing to train on."""


@dataclass
class PhotoSet:
    """The cached squares, in `files` order (paths relative to the folder)."""

    squares: np.ndarray
    files: list[str]
    folder: Path
    skipped: list[dict[str, str]] = field(default_factory=list)
    key: str = ""


def choose_photos(folder: str | Path, max_photos: int | None, seed: int) -> list[Path]:
    """The photo files used: all of them, or a seeded random subset of `max_photos`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PhotoFolderError(f"photo folder {folder} not found")
    paths = find_images(folder)
    if not paths:
        raise PhotoFolderError(f"no photo ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    if max_photos is not None and max_photos < len(paths):
        chosen = np.random.default_rng(seed).choice(len(paths), size=max_photos, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return paths


def square_photo(rgb: np.ndarray, side: int) -> np.ndarray:
    """One photo as the model's S x S x 3 uint8 input: the inference protocol, then the centre crop."""
    square = centre_crop(protocol_input(rgb, side), side)[0]
    # C order, as the cache reads back from disk: a batch's memory layout picks the convolution's
    # summation order, so a channels-last first run and a C-order resumed one would differ
    return np.ascontiguousarray(
        torch.round((square + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def _cache_key(folder: Path, paths: list[Path], side: int) -> str:
    digest = hashlib.sha256(f"{folder.resolve()}\n{side}\n".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _read(path: Path, side: int) -> np.ndarray | UnreadableImageError:
    try:
        return square_photo(load_rgb(path), side)
    except UnreadableImageError as error:
        return error


def prepare_photos(folder: str | Path, side: int, max_photos: int | None, seed: int, work_dir: str | Path,
                   progress: bool = True) -> PhotoSet:
    """The photo squares, from the cache in `work_dir` when it was made from the same files and size."""
    folder, work_dir = Path(folder), Path(work_dir)
    paths = choose_photos(folder, max_photos, seed)
    key = _cache_key(folder, paths, side)
    index_path, photos_path = work_dir / INDEX_NAME, work_dir / PHOTOS_NAME
    if index_path.is_file() and photos_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("key") == key:
            return PhotoSet(load_array(photos_path), index["files"], folder, index["skipped"], key)
    squares, files, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        loaded = pool.map(lambda path: _read(path, side), paths)
        for path, result in tqdm(zip(paths, loaded), total=len(paths), desc="photos", unit="photo",
                                 disable=not progress):
            relative = path.relative_to(folder).as_posix()
            if isinstance(result, UnreadableImageError):
                skipped.append({"file": relative, "reason": result.reason})
            else:
                squares.append(result)
                files.append(relative)
    if not squares:
        raise PhotoFolderError(f"none of the {len(paths)} photos under {folder} could be read "
                               f"(first: {skipped[0]['file']}: {skipped[0]['reason']})")
    array = np.stack(squares)
    save_array(photos_path, array)
    atomic_write_json(index_path, {"key": key, "side": side, "files": files, "skipped": skipped})
    return PhotoSet(array, files, folder, skipped, key)
