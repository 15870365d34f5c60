"""Training checkpoints: everything a resumed run needs to continue exactly where one stopped.

A checkpoint holds the model, optimiser and scheduler states, the step (which is also the data
stream's position, see trainer/shards.py), the RNG states, the curves so far and the run record:
every setting that shapes the weights (generator/runs.py), compared key by key on resume.  It is
written atomically and read on the CPU with `torch.load(weights_only=True)` (generator/runs.py's
`load_on_cpu`), so a crash never leaves a half-written file, loading one never runs code, and a
checkpoint saved on a GPU resumes on the CPU or another GPU: module and optimiser states reach the
run's device through `load_state_dict`, and the RNG states stay on the CPU, where torch needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from generator.files import atomic_write_bytes
from generator.runs import load_on_cpu
from trainer.export import serialized

CHECKPOINT_NAME = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read."""


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore the saved generators; GPUs this machine lacks (a run on fewer GPUs) are skipped."""
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        for index, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.cpu(), index)


def save_checkpoint(state: dict[str, Any], folder: str | Path) -> Path:
    """Write `folder/last.pt` through a temporary file and a rename."""
    path = Path(folder) / CHECKPOINT_NAME
    atomic_write_bytes(path, serialized(state))
    return path


def load_checkpoint(folder: str | Path) -> dict[str, Any] | None:
    """The checkpoint in `folder`, every tensor on the CPU, or None when there is none."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = load_on_cpu(path)
    except Exception as error:  # refusals of non-tensor objects and truncated files alike
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or not {"step", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"{path} is not a training checkpoint")
    return state
