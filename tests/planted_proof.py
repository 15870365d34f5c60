"""The planted-direction proof: discovery, the automatic choice and refinement, run on generators
whose saliency lighting is known, and measured against it.

Two planted generators written in different ways (see tests/test_discovery_planted.py):
`ShapesGenerator(mixing_seed=1, fixed_shape=True)` (32 px, latent 16, a centred-ish ellipse) and
`SpotlightGenerator` (48 px, latent 24, a rounded square anywhere in the frame, saturating light).
For each method and seed the proof records the chosen direction's cosine to the planted lighting
(the sign counts: a negative cosine is the wrong sign) and the IoU of its masks with the planted
foreground, before and after refinement.

    python -m tests.planted_proof        # prints the per-seed table (about 2.5 CPU minutes)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from generator.backends.testing import ShapesGenerator
from generator.discovery.config import DiscoverConfig
from generator.discovery.scoring import score_candidates
from generator.discovery.selection import choose_direction
from generator.discovery.stage import discover, refine_chosen
from generator.synth.masks import synthesize_masks
from tests.fixtures.spotlight_generator import SpotlightGenerator

MAGNITUDE = 5.0
SEEDS = range(10)
SETTINGS = {
    "magnitude": MAGNITUDE,
    "checkpoint_dir": None,
    "latent_discovery": {"steps": 200, "batch_size": 16, "lr_directions": 3e-2,
                         "lr_reconstructor": 1e-3, "reconstructor_width": 32, "reconstructor_input_size": 32,
                         "reconstructor_depth": 3, "checkpoint_every": 0},
    "single_direction": {"steps": 150, "batch_size": 16, "edge_weight": 10.0, "circle_radius": 0.3,
                         "checkpoint_every": 0},
    "scoring": {"batch_size": 64},
    "refine": {"steps": 100, "batch_size": 16},
}


def planted_generators() -> dict:
    return {"shapes": ShapesGenerator(latent_dim=16, resolution=32, mixing_seed=1, fixed_shape=True),
            "spotlight": SpotlightGenerator(latent_dim=24, resolution=48)}


def config(method: str, seed: int, latent_dim: int) -> DiscoverConfig:
    """The proof's settings; latent discovery learns K = half the latent size directions."""
    settings = {**SETTINGS, "method": method, "seed": seed,
                "latent_discovery": {**SETTINGS["latent_discovery"], "directions": latent_dim // 2}}
    return DiscoverConfig.from_params(settings)


def mask_iou(generator, unit_direction: torch.Tensor) -> float:
    """IoU of M = [gray(G(z + 5 v)) > gray(G(z))] with the planted foreground, on a fresh batch."""
    z = torch.randn(256, generator.latent_dim, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        masks = synthesize_masks(generator.generate(z), generator.generate(z + MAGNITUDE * unit_direction))
    truth = generator.object_mask(z)
    return ((masks & truth).sum() / (masks | truth).sum()).item()


@dataclass(frozen=True)
class ProofRow:
    generator: str
    method: str
    seed: int
    chosen_cosine: float
    chosen_iou: float
    cosine: float          # after refinement (or the chosen direction, when refinement kept it)
    iou: float
    refined: bool

    @property
    def passed(self) -> bool:
        return self.cosine > 0.9 and self.iou > 0.9


def prove(name: str, generator, method: str, seed: int) -> ProofRow:
    """Discovery, the automatic choice and refinement, measured against the planted lighting."""
    settings = config(method, seed, generator.latent_dim)
    candidates = discover(generator, settings, progress=False).candidates
    scores = score_candidates(generator, candidates, MAGNITUDE, settings.scoring, seed, progress=False)
    choice = choose_direction(scores, candidates.shape[1])
    chosen = choice.sign * candidates[:, choice.index]
    outcome = refine_chosen(generator, chosen, choice, settings, progress=False)
    lighting = generator.planted_direction("lighting")
    return ProofRow(name, method, seed, float(chosen @ lighting), mask_iou(generator, chosen),
                    float(outcome.vector @ lighting), mask_iou(generator, outcome.vector), outcome.refined)


def main() -> None:
    import time
    torch.set_num_threads(1)
    started = time.process_time()
    print("| generator | method | seed | chosen cos | chosen IoU | refined? | cos | IoU | pass |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, generator in planted_generators().items():
        for method in ("latent-discovery", "single-direction"):
            for seed in SEEDS:
                row = prove(name, generator, method, seed)
                print(f"| {name} | {method} | {seed} | {row.chosen_cosine:.3f} | {row.chosen_iou:.3f} | "
                      f"{'yes' if row.refined else 'no'} | {row.cosine:.3f} | {row.iou:.3f} | "
                      f"{'yes' if row.passed else 'NO'} |", flush=True)
    print(f"CPU time: {time.process_time() - started:.0f} s")


if __name__ == "__main__":
    main()
