"""Where an interrupted self-training run resumes from: the one place that saves and restores it.

The checkpoint (trainer.checkpoint: atomic, read with weights_only=True) holds the epoch to run,
the next batch in it, the model, optimiser and RNG states, the curves and the label snapshots,
and the run record of every setting that shapes the run (generator/runs.py).  The labels G^j of
that epoch are `labels-<j>.npy` beside it; the predictions Y^j of the batches already run are in
`predictions.npy`, flushed before each checkpoint, so a resumed epoch rewrites only the batches
after it and ends with the same Y^j as an uninterrupted one.  The resume policy is the project's
one: an unfinished run of another record is refused, naming the settings that differ, and its
files are kept; a finished run of another record gives way to a new run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from generator.runs import may_resume
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.selftrain.config import SelfTrainConfig


def labels_path(work_dir: str | Path, epoch: int) -> Path:
    """G^epoch's file."""
    return Path(work_dir) / f"labels-{epoch:03d}.npy"


def predictions_path(work_dir: str | Path) -> Path:
    return Path(work_dir) / "predictions.npy"


def save_state(state: dict[str, Any], config: SelfTrainConfig) -> None:
    """Checkpoint `state`, then drop label files no longer needed (older than its epoch)."""
    save_checkpoint(state, config.work_dir)
    for path in Path(config.work_dir).glob("labels-*.npy"):
        if path != labels_path(config.work_dir, state["epoch"]):
            path.unlink(missing_ok=True)


def resumable_state(config: SelfTrainConfig, record: dict[str, Any],
                    log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start over (with a line saying why).  Raises
    generator.runs.RecordMismatch for an unfinished run with other settings."""
    if not config.resume:
        return None
    state = load_checkpoint(config.work_dir)
    if state is None:
        return None
    saved = state.get("record") or {"fingerprint": state.get("fingerprint")}
    current = dict(record)
    if state["epoch"] > config.total_epochs + 1:
        saved, current = {**saved, "epoch": state["epoch"]}, {**current, "epoch": f"<= {config.total_epochs + 1}"}
    if not may_resume(saved, current, what=f"the self-training checkpoint in {config.work_dir}",
                      hint="Pass --no-resume (selftrain.resume: false) to self-train from the start.",
                      finished=bool(state.get("finished")), replace_finished=True, log=log):
        return None
    missing = [path for path in (labels_path(config.work_dir, state["epoch"]), predictions_path(config.work_dir))
               if not path.is_file() and (path.name != "predictions.npy" or state["batch"] > 0)]
    if missing:
        log(f"{missing[0]} is missing; self-training from the start")
        return None
    return state
