"""Atomic file writes: a temporary file in the same folder, then a rename, so a crash never leaves
a file under its final name that looks complete but is not.  The file gets the permissions a plain
`open()` would give it (mkstemp's are private), so outputs can be shared.

Temporary names are unique (`.NAME.XXXXXXXX.tmp`), so two writers of one folder never write into
each other's temporary file.  Removing leftovers is the job of a run that holds the folder's lock
(generator/runs.py), since only then are they certainly a dead run's."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    current = os.umask(0)  # the only way to read it; done once, at import, before any threads
    os.umask(current)
    return current


_UMASK = _read_umask()


TEMPORARY_SUFFIX = ".tmp"


def blocking_file(path: str | Path, itself: bool = True) -> Path | None:
    """The file (not a folder) standing where `path` (with `itself`) or one of the folders above it
    should be, if any: nothing can be written there.  Checked before long work, not after it."""
    path = Path(path)
    for folder in ((path,) if itself else ()) + tuple(path.parents):
        if folder.is_dir():
            return None
        if folder.exists() or folder.is_symlink():
            return folder
    return None


def temporary_beside(path: str | Path) -> Path:
    """A new, empty file with a unique hidden name beside `path` (same folder: the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)
    return Path(temporary)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, record: Any) -> None:
    """`record` as indented JSON with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
