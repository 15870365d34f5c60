"""The saved background direction h_bg: a unit vector, its magnitude and its provenance.

Stored as plain JSON (never a pickle) so another team can read it without this code:

    {"format_version": 1, "generator": "house@0123abcd...", "latent_dim": 64,
     "vector": [... unit vector ...], "magnitude": 5.0,
     "method": "latent-discovery", "index": 7, "sign": -1, "chosen_by": "automatic",
     "digest": "sha256 prefix of the float32 vector times magnitude"}

`shift` is h_bg = magnitude * vector.  Loading checks the vector against the generator it will be
used with, so a direction found for one generator is never applied to another.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generator.files import atomic_write_json
from generator.interface import Generator, digest_bytes

FORMAT_VERSION = 1
DEFAULT_MAGNITUDE = 5.0


class DirectionError(ValueError):
    """A direction file that cannot be used, with a message saying why."""


@dataclass(frozen=True)
class Direction:
    """A unit latent direction with the magnitude it is applied at and where it came from."""

    generator: str
    vector: tuple[float, ...]
    magnitude: float = DEFAULT_MAGNITUDE
    method: str = "unknown"
    index: int | None = None
    sign: int = 1
    chosen_by: str = "automatic"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a NaN, infinite or zero shift makes every mask empty, and every empty mask passes the filters
        if not math.isfinite(self.magnitude) or self.magnitude <= 0:
            raise DirectionError(f"a direction's magnitude must be a positive, finite number (the sign is in "
                                 f"its vector), got {self.magnitude}")

    @classmethod
    def from_vector(cls, vector, generator: str, **kwargs) -> "Direction":
        """Normalise any non-zero vector (array or tensor) to unit length and wrap it."""
        v = np.asarray(vector.detach().cpu() if isinstance(vector, torch.Tensor) else vector, dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if v.ndim != 1 or not math.isfinite(norm) or norm == 0:
            raise DirectionError("a direction must be a finite, non-zero 1-D vector")
        return cls(generator=generator, vector=tuple(float(x) for x in (v / norm).astype(np.float32)), **kwargs)

    @property
    def latent_dim(self) -> int:
        return len(self.vector)

    def shift(self) -> torch.Tensor:
        """h_bg = magnitude * unit vector, float32, shape (latent_dim,)."""
        return torch.tensor(self.vector, dtype=torch.float32) * self.magnitude

    @property
    def digest(self) -> str:
        return digest_bytes(self.shift().numpy().tobytes())

    def check_compatible(self, generator: Generator) -> None:
        """Refuse, with a clear message, a generator other than the one this was found for."""
        if self.latent_dim != generator.latent_dim:
            raise DirectionError(
                f"the direction has {self.latent_dim} dimensions but {generator.identity} has a latent "
                f"size of {generator.latent_dim}")
        if self.generator != generator.identity:
            raise DirectionError(
                f"the direction was found for {self.generator}, not for {generator.identity}; "
                f"run discovery for this generator (dvc repro discover)")

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["vector"] = list(self.vector)
        return {"format_version": FORMAT_VERSION, "latent_dim": self.latent_dim, **record,
                "digest": self.digest}


def save_direction(direction: Direction, path: str | Path) -> None:
    """Write the direction as JSON, atomically (a temporary name, then a rename)."""
    atomic_write_json(path, direction.to_json())


def load_direction(path: str | Path, generator: Generator | None = None) -> Direction:
    """Read a direction file; with a generator, also check that it was found for that generator."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"direction file {path} not found (run the discover stage: dvc repro discover)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DirectionError(f"{path} is not a direction file: {error}") from error
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise DirectionError(f"{path} is not a direction file of format version {FORMAT_VERSION}")
    try:
        direction = Direction.from_vector(
            record["vector"], generator=str(record["generator"]), magnitude=float(record["magnitude"]),
            method=str(record.get("method", "unknown")), index=record.get("index"),
            sign=int(record.get("sign", 1)), chosen_by=str(record.get("chosen_by", "automatic")),
            extra=dict(record.get("extra") or {}))
    except (KeyError, TypeError, ValueError) as error:
        raise DirectionError(f"{path} is missing or has a malformed field: {error}") from error
    if record.get("latent_dim") not in (None, direction.latent_dim):
        raise DirectionError(f"{path}: latent_dim {record['latent_dim']} does not match its vector")
    if generator is not None:
        direction.check_compatible(generator)
    return direction
