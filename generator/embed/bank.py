"""The latent bank on disk (contract 2): `latents.npy` and `index.json` in one folder.

`latents.npy` is float32 N x latent_dim written by `np.save` (read back without pickle);
`index.json` is {"format_version": 1, "generator": identity, "count": N, "files": [one path per
row, in row order], "skipped": [{"path", "reason"}], "source": how the rows were made}.  `files`
is empty when the rows came from a bundled bank shipped without an index.

Both files are written under a temporary name and renamed; the old index is removed before the
new latents are written, so a crash leaves a folder without an index (visibly incomplete), never
latents paired with another run's index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from generator.interface import Generator

BANK_FILE = "latents.npy"
INDEX_FILE = "index.json"
FORMAT_VERSION = 1


class BankError(ValueError):
    """A latent bank that is missing, malformed, or made for another generator."""


@dataclass(frozen=True)
class LatentBank:
    """Latents (float32 N x latent_dim) and their index."""

    latents: np.ndarray
    index: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.latents.shape[0])

    @property
    def generator(self) -> str | None:
        return self.index.get("generator")

    @property
    def files(self) -> list[str]:
        return list(self.index.get("files", []))

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self.index.get("skipped", []))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bank(folder: str | Path, latents: np.ndarray, generator_identity: str, files: list[str],
               skipped: list[dict[str, str]], source: dict[str, Any]) -> LatentBank:
    """Write `latents.npy` and `index.json` into `folder` (created if needed) and return the bank."""
    latents = np.asarray(latents)
    if latents.ndim != 2 or latents.shape[0] == 0:
        raise BankError(f"a latent bank is a non-empty N x latent_dim array, got shape {latents.shape}")
    if not np.isfinite(latents).all():
        raise BankError("the latents contain NaN or infinite values")
    if files and len(files) != latents.shape[0]:
        raise BankError(f"{len(files)} file names for {latents.shape[0]} latents")
    latents = latents.astype(np.float32, copy=False)
    index = {"format_version": FORMAT_VERSION, "generator": generator_identity, "count": int(latents.shape[0]),
             "files": [str(f) for f in files],
             "skipped": [{"path": str(s["path"]), "reason": str(s["reason"])} for s in skipped],
             "source": source}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_FILE).unlink(missing_ok=True)
    _atomic_write(folder / BANK_FILE, lambda f: np.save(f, latents, allow_pickle=False))
    _atomic_write(folder / INDEX_FILE, lambda f: f.write((json.dumps(index, indent=2) + "\n").encode()))
    return LatentBank(latents, index)


def index_path_for(bank_path: Path) -> Path:
    """The index beside a bank: `<stem>.json` when present, else `index.json`."""
    same_stem = bank_path.with_suffix(".json")
    return same_stem if same_stem.is_file() else bank_path.with_name(INDEX_FILE)


def read_bank_index(index_path: Path, bank_path: Path, rows: int) -> dict[str, Any]:
    """The index beside a bank of `rows` latents; BankError when it is not one, or counts other rows."""
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        raise BankError(f"{index_path} is not a bank index: {error}") from error
    version = index.get("format_version") if isinstance(index, dict) else None
    if version != FORMAT_VERSION:
        raise BankError(f"{index_path}: unsupported bank index (format_version {version!r})")
    if index.get("count") != rows:
        raise BankError(f"{index_path} counts {index.get('count')} rows, {bank_path} holds {rows}")
    return index


def read_bank(path: str | Path, latent_dim: int | None = None, generator_identity: str | None = None,
              require_index: bool = True) -> LatentBank:
    """Read a bank from its folder or its `.npy` (index: `<stem>.json` beside it, else `index.json`).

    With `latent_dim` or `generator_identity`, a bank made for another generator is refused.
    """
    path = Path(path)
    bank_path = path / BANK_FILE if path.is_dir() else path
    if not bank_path.is_file():
        raise BankError(f"no latent bank at {bank_path}")
    try:
        latents = np.load(bank_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:   # EOFError: an empty or cut file
        raise BankError(f"{bank_path} is not a latent bank (.npy): {error}") from error
    if latents.ndim != 2 or latents.dtype != np.float32:
        raise BankError(f"{bank_path} holds {latents.dtype} {latents.shape}, expected float32 N x latent_dim")
    if latent_dim is not None and latents.shape[1] != latent_dim:
        raise BankError(f"{bank_path} holds latents of size {latents.shape[1]}, the generator's are {latent_dim}")
    index_path = index_path_for(bank_path)
    if index_path.is_file():
        index = read_bank_index(index_path, bank_path, latents.shape[0])
    elif require_index:
        raise BankError(f"{bank_path} has no index ({index_path}); the bank is incomplete")
    else:
        index = {"format_version": FORMAT_VERSION, "generator": None, "count": int(latents.shape[0]),
                 "files": [], "skipped": []}
    recorded = index.get("generator")
    if generator_identity is not None and recorded is not None and recorded != generator_identity:
        raise BankError(f"{bank_path} was encoded by {recorded}, not by {generator_identity}")
    return LatentBank(latents, index)


def copy_bundled_bank(generator: Generator, folder: str | Path) -> LatentBank:
    """Write the generator's bundled bank into `folder` in the bank format."""
    source = generator.bundled_latent_bank
    if source is None:
        raise BankError(f"generator {generator.identity} ships no latent bank")
    bundled = read_bank(source, generator.latent_dim, generator.identity, require_index=False)
    return write_bank(folder, bundled.latents, generator.identity, bundled.files, bundled.skipped,
                      source={"kind": "bundled", "file": Path(source).name})
