"""Latent discovery after Voynov & Babenko (ICML 2020): K directions and a reconstructor.

Each step draws z ~ N(0, I), an index k ~ U{0..K-1} and a shift eps, uniform over
[-shift_max, -shift_min] U [shift_min, shift_max]; renders G(z) and G(z + eps A e_k); the
reconstructor R sees the pair and is scored by cross-entropy on k plus `shift_loss_weight` x L1 on
eps.  G is frozen; A and R are trained jointly with Adam.  Directions that R can tell apart are
directions that change the image in distinct ways, which is why interpretable ones emerge.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from generator.discovery.checkpoint import fingerprint
from generator.discovery.config import LatentDiscoveryConfig
from generator.discovery.directions import LatentDirections
from generator.discovery.loop import LoopOutcome, require_gradients, run_loop
from generator.discovery.randomness import frozen, step_rng
from generator.discovery.reconstructor import Reconstructor
from generator.interface import Generator

METHOD = "latent-discovery"


def learning_rate_factor(config: LatentDiscoveryConfig, t: int) -> float:
    """Multiplier of both learning rates at step t: 1 (constant) or a cosine from 1 down to 0."""
    if config.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t / config.steps))
    return 1.0


def _fingerprint_settings(config: LatentDiscoveryConfig) -> dict:
    """Settings that make two runs the same run.  How often to save never does, and with a constant
    rate neither does the length, so a finished run can be extended; a cosine rate depends on it."""
    left_out = {"checkpoint_every"} | ({"steps"} if config.lr_schedule == "constant" else set())
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in left_out}


@dataclass
class DiscoveryResult:
    """Candidate directions (unit columns, latent_dim x K) and how they were found."""

    method: str
    candidates: torch.Tensor
    outcome: LoopOutcome
    column_methods: tuple[str, ...] = ()   # pooled results: the method behind each column

    @property
    def final_metrics(self) -> dict[str, float]:
        """Mean of each metric over the last 50 steps."""
        return {key: sum(values[-50:]) / len(values[-50:]) for key, values in self.outcome.history.items() if values}

    def method_of(self, index: int) -> str:
        """The method that found candidate `index`."""
        return self.column_methods[index] if self.column_methods else self.method


def pool_results(method: str, results: list[DiscoveryResult]) -> DiscoveryResult:
    """Several methods' candidates side by side (in the order given), to be scored as one set.

    The pooled history keeps each method's metrics under `<method>/<metric>`; time and steps add up."""
    history = {f"{result.method}/{key}": values for result in results for key, values in result.outcome.history.items()}
    outcome = LoopOutcome(history=history, resumed_from=sum(result.outcome.resumed_from for result in results),
                          seconds=sum(result.outcome.seconds for result in results),
                          steps_run=sum(result.outcome.steps_run for result in results))
    columns = tuple(result.method_of(i) for result in results for i in range(result.candidates.shape[1]))
    return DiscoveryResult(method, torch.cat([result.candidates for result in results], dim=1), outcome, columns)


def draw_step(config: LatentDiscoveryConfig, latent_dim: int, seed: int, t: int):
    """z, k and eps of step t: a pure function of (seed, t)."""
    rng = step_rng(seed, "train", t)
    z = torch.randn(config.batch_size, latent_dim, generator=rng)
    index = torch.randint(config.directions, (config.batch_size,), generator=rng)
    size = config.shift_min + (config.shift_max - config.shift_min) * torch.rand(config.batch_size, generator=rng)
    sign = torch.randint(2, (config.batch_size,), generator=rng) * 2 - 1
    return z, index, size * sign


def build_models(config: LatentDiscoveryConfig, latent_dim: int, seed: int) -> tuple[LatentDirections, Reconstructor]:
    """A and R, initialised from the seed alone (the global torch RNG is left untouched)."""
    init = step_rng(seed, "init")
    directions = LatentDirections(latent_dim, config.directions, config.direction_type, generator=init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2 ** 62, (), generator=init)))
        reconstructor = Reconstructor(config.directions, config.reconstructor_width,
                                      config.reconstructor_input_size, config.reconstructor_depth)
    return directions, reconstructor


def discover_latent_directions(generator: Generator, config: LatentDiscoveryConfig, seed: int = 0,
                               checkpoint_path: str | Path | None = None, progress: bool = True) -> DiscoveryResult:
    """Train A and R for `config.steps` steps (resuming from a matching checkpoint) and return A."""
    require_gradients(generator, "latent discovery")
    device = generator.device
    directions, reconstructor = build_models(config, generator.latent_dim, seed)
    directions.to(device)
    reconstructor.to(device).train()
    optimisers = {"directions": torch.optim.Adam(directions.parameters(), lr=config.lr_directions),
                  "reconstructor": torch.optim.Adam(reconstructor.parameters(), lr=config.lr_reconstructor)}
    base_rates = {"directions": config.lr_directions, "reconstructor": config.lr_reconstructor}

    def step(t: int) -> dict[str, float]:
        for name, optimiser in optimisers.items():  # a function of t alone: nothing to checkpoint
            for group in optimiser.param_groups:
                group["lr"] = base_rates[name] * learning_rate_factor(config, t)
        z, index, eps = (x.to(device) for x in draw_step(config, generator.latent_dim, seed, t))
        with torch.no_grad():
            images = generator.generate(z)
        shifted = generator.generate(z + directions.shift(index, eps))
        logits, predicted_shift = reconstructor(images, shifted)
        index_loss = F.cross_entropy(logits, index)
        shift_loss = (predicted_shift - eps).abs().mean()
        loss = index_loss + config.shift_loss_weight * shift_loss
        for optimiser in optimisers.values():
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for optimiser in optimisers.values():
            optimiser.step()
        accuracy = (logits.argmax(dim=1) == index).float().mean()
        return {"loss": loss.item(), "index_loss": index_loss.item(), "shift_loss": shift_loss.item(),
                "accuracy": accuracy.item()}

    settings = _fingerprint_settings(config)
    with frozen(generator):
        outcome = run_loop(description="latent discovery", steps=config.steps, step=step,
                           modules={"directions": directions, "reconstructor": reconstructor},
                           optimisers=optimisers, fingerprint=fingerprint(METHOD, {**settings, "seed": seed},
                                                                         generator.identity),
                           checkpoint_path=checkpoint_path, checkpoint_every=config.checkpoint_every,
                           progress=progress)
    return DiscoveryResult(METHOD, directions.unit_matrix().cpu(), outcome)
