"""Training checkpoints: everything a resumed run needs to continue exactly where one stopped.

A checkpoint holds the model, optimiser and scheduler states, the step (which is also the data
stream's position, see trainer/shards.py), the RNG states, the curves so far and a fingerprint of
every setting that shapes the run.  It is written atomically and read with
`torch.load(weights_only=True)`, so a crash never leaves a half-written file and loading one
never runs code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from trainer.export import serialized
from generator.files import atomic_write_bytes

CHECKPOINT_NAME = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read."""


def fingerprint(settings: dict[str, Any]) -> str:
    """Digest of the settings that decide the trajectory; a resume needs the same digest."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(state: dict[str, Any], folder: str | Path) -> Path:
    """Write `folder/last.pt` through a temporary file and a rename."""
    path = Path(folder) / CHECKPOINT_NAME
    atomic_write_bytes(path, serialized(state))
    return path


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint in `folder`, or None when there is none."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # refusals of non-tensor objects and truncated files alike
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or not {"step", "fingerprint", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"{path} is not a training checkpoint")
    return state
