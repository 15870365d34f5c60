"""Finding a user's photos and the output path each one gets, never outside the output folder.

The input is a folder (searched recursively), a glob pattern (`**` recurses) or one file.  Each
photo has a relative path: below the folder, below the glob's fixed leading folders, or its bare
name.  Its output is OUTPUT / that relative path with the stem kept and the suffix replaced, and
a path that would leave OUTPUT (`..` in a glob, a symlinked folder inside OUTPUT pointing
elsewhere) is refused for that photo, never written.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from generator.image_io import PHOTO_SUFFIXES


class NoPhotosError(ValueError):
    """An input that names no photo, with a message saying what was searched."""


class UnsafeOutputError(ValueError):
    """An output path that would fall outside the output folder."""


@dataclass(frozen=True)
class Photo:
    """A photo file and its path relative to the input (what its outputs mirror)."""

    path: Path
    relative: Path


def is_photo(path: str | Path) -> bool:
    """A regular file whose suffix (any case) is one of generator.image_io.PHOTO_SUFFIXES."""
    return Path(path).suffix.lower() in PHOTO_SUFFIXES and os.path.isfile(path)


def _glob_base(pattern: str) -> str:
    """The pattern's leading folders that hold no wildcard: what relative paths start below."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _walk(folder: Path) -> list[str]:
    """Every file below `folder`; symlinked folders are not entered (no loops, no escapes)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files)
    return found


def find_photos(source: str | Path) -> list[Photo]:
    """The photos `source` names, sorted by relative path; NoPhotosError when there are none."""
    source = str(source)
    if os.path.isdir(source):
        base, candidates = source, _walk(Path(source))
    elif os.path.isfile(source):
        base, candidates = os.path.dirname(source) or ".", [source]
    elif glob.has_magic(source):
        base, candidates = _glob_base(source), glob.glob(source, recursive=True)
    else:
        raise NoPhotosError(f"{source} does not exist (expected a folder, a photo or a glob pattern)")
    photos = []
    for candidate in candidates:
        if not is_photo(candidate):
            continue
        relative = os.path.relpath(os.path.abspath(candidate), os.path.abspath(base))
        photos.append(Photo(Path(candidate), Path(relative)))
    if not photos:
        raise NoPhotosError(f"no photos found in {source} (looked for {', '.join(PHOTO_SUFFIXES)}, "
                            f"any case{', recursively' if os.path.isdir(source) else ''})")
    return sorted(photos, key=lambda photo: photo.relative.as_posix())


def output_path(output: Path, relative: Path, suffix: str) -> Path:
    """OUTPUT / relative with its suffix replaced by `suffix` (e.g. ".png", ".overlay.png").

    Raises UnsafeOutputError for a path that leaves OUTPUT, lexically (absolute, `..`) or through
    a symlink already inside OUTPUT.
    """
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise UnsafeOutputError(f"{relative} would be written outside the output folder")
    target = output / relative.with_name(relative.stem + suffix)
    root = output.resolve()
    if not target.resolve().is_relative_to(root):
        raise UnsafeOutputError(f"{target} resolves to {target.resolve()}, outside the output folder {root}")
    return target
