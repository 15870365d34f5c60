"""The optimisation loop both discovery methods share: steps, progress bar, checkpoints, resume.

A method supplies its modules, their optimisers and a `step(t)` that performs optimisation step t
and returns its metrics.  The loop resumes from a matching checkpoint, saves one every
`checkpoint_every` steps and at the end, and shows a tqdm bar with running means of the metrics.
A checkpoint of another run record is refused (generator/runs.py's policy), naming the settings
that differ, and kept; only a finished run's checkpoint gives way to a new run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from generator.discovery.checkpoint import digest, load_checkpoint, save_checkpoint
from generator.interface import Generator
from generator.runs import may_resume

RUNNING_WINDOW = 50
POSTFIX_EVERY = 10


@dataclass
class LoopOutcome:
    """What a finished loop reports: per-step metrics, where it started, how long it ran."""

    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: int = 0
    seconds: float = 0.0
    steps_run: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.seconds if self.seconds > 0 else float("nan")


def require_gradients(generator: Generator, method: str) -> None:
    """Both methods back-propagate through G: refuse a generator that cannot give gradients."""
    if not generator.differentiable:
        raise ValueError(f"{method} needs gradients through the generator; {generator.identity} is not "
                         f"differentiable in PyTorch")


def run_loop(*, description: str, steps: int, step: Callable[[int], dict[str, float]],
             modules: dict[str, torch.nn.Module], optimisers: dict[str, torch.optim.Optimizer],
             fingerprint: dict | str, checkpoint_path: str | Path | None = None, checkpoint_every: int = 0,
             progress: bool = True, message: Callable[[str], None] = tqdm.write) -> LoopOutcome:
    """Run steps [start, steps) where start is 0 or the step a matching checkpoint reached.

    `fingerprint` is the run record (checkpoint.fingerprint).  Raises generator.runs.RecordMismatch
    for an unfinished checkpoint of another record (or beyond `steps`), which is kept.
    """
    outcome = LoopOutcome()
    record = fingerprint if isinstance(fingerprint, dict) else {"fingerprint": fingerprint}
    if checkpoint_path is not None:
        state = load_checkpoint(checkpoint_path)
        if state is not None:
            saved = state.get("record") or {"fingerprint": state["fingerprint"]}
            current = record if "record" in state else {"fingerprint": digest(fingerprint)}
            if state["step"] > steps:
                saved, current = {**saved, "step": state["step"]}, {**current, "step": f"<= {steps}"}
            hint = f"Delete or move {checkpoint_path} to start afresh, or run with --no-checkpoint."
            if not may_resume(saved, current, what=f"the checkpoint {checkpoint_path}", hint=hint,
                              finished=bool(state.get("finished")), replace_finished=True, log=message):
                state = None
        if state is not None:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            for name, optimiser in optimisers.items():
                optimiser.load_state_dict(state["optimisers"][name])
            outcome.history = {key: list(values) for key, values in state["history"].items()}
            outcome.resumed_from = int(state["step"])
            if outcome.resumed_from:
                message(f"{description}: resuming from step {outcome.resumed_from} of {steps} ({checkpoint_path})")

    def save(reached: int) -> None:
        if checkpoint_path is None:
            return
        save_checkpoint(checkpoint_path, {
            "fingerprint": digest(fingerprint), "record": record, "step": reached, "finished": reached >= steps,
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimisers": {name: optimiser.state_dict() for name, optimiser in optimisers.items()},
            "history": outcome.history,
        })

    start_time = time.perf_counter()
    bar = tqdm(range(outcome.resumed_from, steps), total=steps, initial=outcome.resumed_from,
               desc=description, disable=not progress, dynamic_ncols=True, mininterval=0.5)
    for t in bar:
        metrics = step(t)
        for key, value in metrics.items():
            outcome.history.setdefault(key, []).append(float(value))
        if progress and (t + 1) % POSTFIX_EVERY == 0:
            bar.set_postfix({key: f"{sum(v[-RUNNING_WINDOW:]) / len(v[-RUNNING_WINDOW:]):.3f}"
                             for key, v in outcome.history.items() if key in ("loss", "accuracy")}, refresh=False)
        if checkpoint_every and (t + 1) % checkpoint_every == 0 and t + 1 < steps:
            save(t + 1)
    bar.close()
    outcome.steps_run = steps - outcome.resumed_from
    outcome.seconds = time.perf_counter() - start_time
    if outcome.steps_run:
        save(steps)
    return outcome
