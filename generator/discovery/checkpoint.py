"""Checkpoints of the discovery loops: written atomically, read without unpickling.

A checkpoint holds the step reached, the state dicts of the learned modules and of their
optimisers, the loss history and a fingerprint of everything that shaped the run (method,
settings, generator identity).  The randomness is counter-based (see `randomness.py`), so these
are all a resumed run needs to continue exactly as an uninterrupted one.  A checkpoint whose
fingerprint differs belongs to another run and is never resumed from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from generator.files import atomic_write_bytes
from generator.interface import digest_bytes


class CheckpointMismatch(ValueError):
    """A checkpoint file written by a run with other settings or another generator."""


def fingerprint(method: str, settings: dict[str, Any], generator_identity: str) -> str:
    """Digest of what makes two runs the same run (settings that only say how long or how
    often to save are left out by the caller, so a run can be extended)."""
    text = json.dumps({"method": method, "settings": settings, "generator": generator_identity}, sort_keys=True)
    return digest_bytes(text.encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at path, or None when there is none; `CheckpointMismatch` when it is another run's."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and why
        raise CheckpointMismatch(f"{path} is not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        raise CheckpointMismatch(f"{path} was written by a run with other settings or another generator")
    return state
