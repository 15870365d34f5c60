"""Refinement of the chosen direction: polish h_bg until its shift is lighting and nothing else.

Both discovery methods return a direction that is mostly the saliency lighting with a little of
something else mixed in: latent discovery's objective rewards directions that R can tell apart,
and a little translation makes a direction easier to tell apart; the single-direction method's
centred contrast pulls towards whatever lights the middle of the frame.  At ||h|| = 5 even a small
translation moves the mask's outline off the object.

Refinement starts from the chosen direction d and optimises it on the unit sphere.  Each step
draws z ~ N(0, I) and a radius r ~ N(radius_mean, radius_std) clipped at radius_min, renders
gray(G(z)) and gray(G(z + r d)) and minimises

    - mean_i  sum_p S_i(p) gray(G(z_i + r_i d))(p)                  (contrast)
    + edge_weight * mean_i (1 - cos(sobel(gray G(z_i)), sobel(gray G(z_i + r_i d))))   (edges stay)

where S_i is the mask the current direction makes, M_i = [gray(G(z_i + r_i d)) > gray(G(z_i))],
weighted +1/|M_i| inside and -1/|not M_i| outside (zero when either side is empty).  The contrast
term asks for the object, wherever it is, to get lighter and the rest darker; S sums to zero, so
a uniform change of brightness earns nothing.  The edge term compares where the edges are, not
how strong they are (a cosine of the two edge maps): lighting strengthens the object's outline
but leaves it in place, while translation moves it and a colour change that alters shapes of
edges pays too.  Gradients are projected on the sphere's tangent and d is re-normalised after
every Adam step, as in the single-direction method.

The stage keeps the result only when it stays within `min_cosine` of the chosen direction and its
masks do not get worse by the selection scores: their `mask_quality` (plausible size, off the
border, one piece; scoring.py) may not drop by more than `score_tolerance`.  The filters' pass rate
is left out of that test on purpose: the histogram filter judges the shifted image's histogram,
and on a saturating generator it passes more images when some brightness is mixed into the
lighting, which is the very impurity refinement removes.  The total scores before and after are
recorded all the same.  A drop within `score_tolerance` (0.1) is within the sampling noise of a
64-sample batch.  When the test fails, the chosen direction is kept and the record says why
(see `RefinementOutcome`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from generator.discovery.config import RefineConfig
from generator.discovery.randomness import frozen
from generator.discovery.single_direction import draw_step, sobel_magnitude
from generator.interface import Generator
from generator.synth.masks import gray


@dataclass(frozen=True)
class RefinementOutcome:
    """What refinement did: the direction kept, and the figures behind the decision."""

    vector: torch.Tensor            # the unit direction to save (refined, or the chosen one)
    refined: bool                   # True when the refined direction was kept
    reason: str                     # why it was kept or not
    cosine_to_chosen: float | None  # cosine between the refined and the chosen direction
    score_before: float             # the chosen direction's selection score (total)
    score_after: float | None       # the refined direction's selection score (total)
    steps: int
    mask_quality_before: float | None = None  # the masks' part of the score, which the test uses
    mask_quality_after: float | None = None

    def to_json(self) -> dict:
        rounded = (lambda value: None if value is None else round(value, 6))
        return {"refined": self.refined, "reason": self.reason, "steps": self.steps,
                "cosine_to_chosen": rounded(self.cosine_to_chosen), "score_before": rounded(self.score_before),
                "score_after": rounded(self.score_after), "mask_quality_before": rounded(self.mask_quality_before),
                "mask_quality_after": rounded(self.mask_quality_after)}


def balanced_mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """S (N x H x W): +1/|M| on the mask, -1/|not M| off it, zero for a mask that is empty or full."""
    masks = masks.float()
    inside = masks.sum(dim=(1, 2), keepdim=True)
    outside = masks[0].numel() - inside
    both_sides = ((inside > 0) & (outside > 0)).float()
    return both_sides * (masks / inside.clamp_min(1) - (1 - masks) / outside.clamp_min(1))


def edge_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the Sobel edge maps of two gray batches, per image (0: edges in place)."""
    edges_before, edges_after = sobel_magnitude(before).flatten(1), sobel_magnitude(after).flatten(1)
    return 1 - F.cosine_similarity(edges_before, edges_after, dim=1, eps=1e-6)


def refine_direction(generator: Generator, start: torch.Tensor, config: RefineConfig, seed: int = 0,
                     progress: bool = True) -> torch.Tensor:
    """Optimise the unit direction `start` (signed: its shift lights the object) for `config.steps`
    steps; returns the refined unit vector on the CPU."""
    device = generator.device
    holder = torch.nn.Module()
    holder.direction = torch.nn.Parameter((start / start.norm()).detach().clone().float().to(device))
    optimiser = torch.optim.Adam(holder.parameters(), lr=config.lr)
    with frozen(generator):
        for t in tqdm(range(config.steps), desc="refining h_bg", disable=not progress, dynamic_ncols=True,
                      mininterval=0.5):
            z, radius = (x.to(device) for x in draw_step(config, generator.latent_dim, seed, t, "refine"))
            with torch.no_grad():
                before = gray(generator.generate(z))
            after = gray(generator.generate(z + radius[:, None] * holder.direction))
            weights = balanced_mask_weights((after > before).detach())
            contrast = (after * weights).sum(dim=(1, 2)).mean()
            loss = -contrast + config.edge_weight * edge_change(before, after).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # the sphere's tangent only (see single_direction.py)
                d = holder.direction
                d.grad -= (d.grad @ d) * d
            optimiser.step()
            with torch.no_grad():
                holder.direction /= holder.direction.norm().clamp_min(1e-12)
    return holder.direction.detach().cpu().clone()
