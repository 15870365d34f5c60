"""Counter-based randomness for the optimisation loops, and freezing the generator.

Step t of a run draws everything from a torch Generator seeded by (seed, stream, t) alone, so a
run resumed at step t draws what an uninterrupted run would have: there is no RNG state to carry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from generator.interface import Generator

STREAMS = {"init": 0, "train": 1, "score": 2, "refine": 3}


def step_rng(seed: int, stream: str, step: int = 0) -> torch.Generator:
    """A torch Generator that depends only on (seed, stream, step)."""
    state = np.random.SeedSequence([int(seed), STREAMS[stream], int(step)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@contextlib.contextmanager
def frozen(generator: Generator) -> Iterator[None]:
    """Stop gradients from accumulating in the generator's own weights while directions are learned.

    Gradients still flow through G to the latent code; G's parameters are restored afterwards.
    """
    modules = [value for value in vars(generator).values() if isinstance(value, torch.nn.Module)]
    parameters = [p for module in modules for p in module.parameters()]
    was_trainable = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, was_trainable):
            p.requires_grad_(flag)
