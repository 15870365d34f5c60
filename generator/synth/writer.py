"""The writer: samples to bytes, bytes to a tar shard, the shard to its final name.

The same samples always give the same bytes: JPEG with a fixed quality and no optimisation
pass, PNG at a fixed compression level, JSON with sorted keys, and tar members with a fixed
mtime, owner and mode.  A shard is written under a unique hidden temporary name
(generator/files.py) and renamed only when complete (uploaded whole, for a URL folder), so a file
named `synth-000003.tar` is always a whole shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generator.files import TEMPORARY_SUFFIX
from generator.synth.store import LocalFolder

SHARD_PREFIX = "synth"
STATS_SUFFIX = ".stats.json"
TEMP_SUFFIX = TEMPORARY_SUFFIX
PNG_COMPRESS_LEVEL = 3          # masks are flat: level 3 is near level 6's size at 2/3 of the time


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"{SHARD_PREFIX}-{index:06d}{STATS_SUFFIX}"


def sample_key(shard: int, position: int) -> str:
    """Key of a sample: shard and position in it, no dots (WebDataset splits names at dots)."""
    return f"{shard:06d}_{position:06d}"


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """H x W x 3 uint8 to JPEG bytes (baseline, 4:2:0, no optimisation pass: deterministic)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=int(quality), optimize=False,
                                            progressive=False, subsampling=2)
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """H x W bool to an 8-bit grey PNG holding 0 and 255."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_json(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def json_file_bytes(record: dict[str, Any]) -> bytes:
    """A JSON file of the set (stats, manifest): indented, sorted keys, a final newline."""
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ShardStats:
    """What one shard holds and cost: the per-shard stats file, and a row of the manifest."""

    shard: int
    name: str
    samples: int
    candidates: int
    rejected_by: dict[str, int]
    bytes: int = 0
    sha256: str = ""
    config_digest: str = ""
    # Kept samples whose mask is empty (no filter rejects them; counted so a set says how many).
    empty_masks: int = 0
    # The run record the digest is of: a mismatch can then name the settings that differ.
    record: dict[str, Any] | None = None
    # Seconds in G and in the rest; kept in memory only, so files stay the same bytes.
    timing: dict[str, float] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("timing")
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "ShardStats":
        fields = {key: record[key] for key in
                  ("shard", "name", "samples", "candidates", "rejected_by", "bytes", "sha256", "config_digest")}
        return cls(**fields, empty_masks=int(record.get("empty_masks", 0)), record=record.get("record"))


class ShardWriter:
    """Writes one tar shard: members added in order, put in place on `close`.

    `path` is the shard's file, or with `store` (generator/synth/store.py) its name in that
    folder, which may be a URL: the tar is then written to a local staging file and uploaded
    whole.  Use as a context manager; leaving the block by an exception removes the staging file.
    """

    def __init__(self, path: str | Path, store=None) -> None:
        if store is None:
            path = Path(path)
            store, path = LocalFolder(path.parent), path.name
        self.store, self.name = store, str(path)
        self.tmp = store.staging(self.name)
        self._tar = tarfile.open(self.tmp, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def add_sample(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample's members, e.g. {"jpg": ..., "mask.png": ..., "json": ...}."""
        for extension, data in members.items():
            self.add(f"{key}.{extension}", data)

    def close(self) -> tuple[int, str]:
        """Finish the tar, put it under its final name; return its byte size and sha256."""
        self._tar.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        size, digest = self.tmp.stat().st_size, file_sha256(self.tmp)
        self.store.publish(self.tmp, self.name)
        return size, digest

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
