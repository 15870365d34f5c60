"""Checkpoints of the discovery loops: written atomically, read without unpickling.

A checkpoint holds the step reached, the state dicts of the learned modules and of their
optimisers, the loss history and the run record of everything that shaped the run (method,
settings, generator identity) with its digest, the fingerprint.  The randomness is counter-based
(see `randomness.py`), so these are all a resumed run needs to continue exactly as an
uninterrupted one.  A checkpoint of another record belongs to another run and is never resumed
from (the loop refuses it, naming the settings that differ: generator/runs.py).  Checkpoints are
read on the CPU whatever device wrote them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from generator.files import atomic_write_bytes
from generator.runs import load_on_cpu, record_digest


#: What a resumed loop reads back from a checkpoint.
CHECKPOINT_KEYS = ("fingerprint", "step", "modules", "optimisers", "history")


class CheckpointMismatch(ValueError):
    """A checkpoint file written by a run with other settings or another generator."""


def fingerprint(method: str, settings: dict[str, Any], generator_identity: str) -> dict[str, Any]:
    """The run record: what makes two runs the same run (settings that only say how long or how
    often to save are left out by the caller, so a run can be extended).  `digest` hashes it."""
    return {"method": method, "settings": settings, "generator": generator_identity}


def digest(record: dict[str, Any] | str) -> str:
    """The fingerprint stored in a checkpoint: the record's digest (a string is taken as one)."""
    return record if isinstance(record, str) else record_digest(record)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, expected_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The checkpoint at path (on the CPU), or None when there is none; `CheckpointMismatch` when
    it cannot be read, or when `expected_fingerprint` is given and it is another run's."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = load_on_cpu(path)
    except Exception as error:  # a truncated or foreign file: say which and why
        raise CheckpointMismatch(f"{path} is not a readable checkpoint ({error})") from error
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path} is not a discovery checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointMismatch(f"{path} is not a discovery checkpoint: it lacks {', '.join(missing)}")
    if expected_fingerprint is not None and state["fingerprint"] != expected_fingerprint:
        raise CheckpointMismatch(f"{path} was written by a run with other settings or another generator")
    return state
