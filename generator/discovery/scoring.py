"""Scores every candidate direction and sign by the masks it makes (DESIGN.md section 3).

All candidates are scored on one fixed, seeded batch z_1..z_n at the same magnitude, drawn by the
synthesis sampler and judged by the synthesis filters (both from the `synth` section), so that h_bg
is chosen under the rules gen-synth will use it with.  For a
candidate v and sign s, each sample i gives M_i = [gray(G(z_i + s m v)) > gray(G(z_i))], which
the synthesis filters then judge and edit.  Per sample:

    passed_i      1 when the sample passes every enabled filter (size, histogram), else 0
    in_range_i    1 when the filtered mask's foreground fraction lies in
                  [foreground_min, foreground_max], else 0
    border_i      share of the border band (border_width of the side, all four edges) that is
                  foreground: a background mask covers the border, an object mask rarely does
    coherence_i   share of the mask's foreground in its largest connected component (0 when empty)

    quality_i = passed_i * in_range_i * (1 - border_i) * coherence_i
    total     = mean_i quality_i

The total is the expected quality of one mask from this candidate: a candidate wins only where
its masks are kept by the filters, have a plausible size, stay off the border and are one piece.
scores.json lists every candidate with the batch means of the four components and the total, and

    mask_quality = mean_i in_range_i * (1 - border_i) * coherence_i

the same judgement of the masks alone, whether or not the histogram filter keeps their images:
refinement is held to it (see refinement.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from generator.discovery.config import ScoringConfig
from generator.discovery.randomness import step_rng
from generator.interface import Generator
from generator.synth.filters import FilterConfig, FilterResult, apply_filters, component_structure
from generator.synth.masks import synthesize_masks
from generator.synth.samplers import NeighbourhoodSampler, load_latent_bank, resolve_bank_path

SCORE_FORMULA = "total = mean over the batch of passed * in_range * (1 - border) * coherence"


@dataclass(frozen=True)
class CandidateScore:
    """The score of one candidate direction with one sign."""

    index: int
    sign: int
    total: float
    pass_rate: float
    in_range_rate: float
    border: float
    coherence: float
    foreground_fraction: float
    rejected_by: dict[str, int] = field(default_factory=dict)
    mask_quality: float = 0.0

    def to_json(self) -> dict:
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in asdict(self).items()}


@dataclass
class Rendered:
    """A candidate applied to a batch: images, shifted images, raw masks and the filters' verdict."""

    images: torch.Tensor
    shifted: torch.Tensor
    masks: torch.Tensor
    filtered: FilterResult


def scoring_latents(generator: Generator, config: ScoringConfig, seed: int) -> torch.Tensor:
    """The fixed batch every candidate is scored on, drawn as synthesis draws its latents: z ~ N(0, I)
    from the seed alone, or the neighbourhood sampler over the bank (its stream for shard 0)."""
    if config.sampler == "gaussian":
        return torch.randn(config.batch_size, generator.latent_dim, generator=step_rng(seed, "score"))
    path = resolve_bank_path(config.sampler, config.bank, generator.bundled_latent_bank)
    bank = load_latent_bank(path, generator.latent_dim, generator.identity)
    batch = NeighbourhoodSampler(bank, config.alpha).sample(seed, 0, np.arange(config.batch_size))
    return torch.from_numpy(batch.z)


def filter_config(config: ScoringConfig) -> FilterConfig:
    """The synthesis filters, in params.yaml's nested form (empty: the paper's text)."""
    return FilterConfig.from_params(config.filters)


@torch.no_grad()
def render(generator: Generator, z: torch.Tensor, shift: torch.Tensor, filters: FilterConfig,
           images: torch.Tensor | None = None) -> Rendered:
    """G(z), G(z + shift), their masks and the filters' verdict (all on the CPU)."""
    z = z.to(generator.device)
    if images is None:
        images = generator.generate(z).cpu()
    shifted = generator.generate(z + shift.to(generator.device)).cpu()
    masks = synthesize_masks(images, shifted)
    filtered = apply_filters(masks.numpy(), shifted.numpy().astype(np.float32, copy=False), filters)
    return Rendered(images, shifted, masks, filtered)


def border_coverage(masks: np.ndarray, border_width: float) -> np.ndarray:
    """Share of each mask's border band (all four edges) that is foreground, N x H x W -> N."""
    n, h, w = masks.shape
    band = np.zeros((h, w), dtype=bool)
    rows, cols = max(1, round(border_width * h)), max(1, round(border_width * w))
    band[:rows], band[-rows:], band[:, :cols], band[:, -cols:] = True, True, True, True
    return masks[:, band].mean(axis=1)


def largest_component_share(masks: np.ndarray, connectivity: int) -> np.ndarray:
    """Share of each mask's foreground in its largest connected component (0 for an empty mask)."""
    structure = component_structure(connectivity)
    shares = np.zeros(len(masks))
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=structure)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            shares[i] = sizes.max() / sizes.sum()
    return shares


def score_rendered(rendered: Rendered, index: int, sign: int, config: ScoringConfig,
                   filters: FilterConfig) -> CandidateScore:
    """The score of one candidate from its rendered batch (see the module docstring)."""
    result = rendered.filtered
    fraction = result.foreground_fraction
    passed = result.keep.astype(np.float64)
    in_range = ((fraction >= config.foreground_min) & (fraction <= config.foreground_max)).astype(np.float64)
    border = border_coverage(result.masks, config.border_width)
    coherence = largest_component_share(rendered.masks.numpy(), filters.connectivity)
    mask_quality = in_range * (1.0 - border) * coherence
    quality = passed * mask_quality
    return CandidateScore(index=index, sign=sign, total=float(quality.mean()), pass_rate=float(passed.mean()),
                          in_range_rate=float(in_range.mean()), border=float(border.mean()),
                          coherence=float(coherence.mean()), foreground_fraction=float(fraction.mean()),
                          rejected_by=dict(result.rejected_by), mask_quality=float(mask_quality.mean()))


def score_candidates(generator: Generator, candidates: torch.Tensor, magnitude: float, config: ScoringConfig,
                     seed: int = 0, progress: bool = True) -> list[CandidateScore]:
    """Scores of every column of `candidates` (latent_dim x K, unit columns) with both signs,
    best first (ties: lower index, then + before -)."""
    if candidates.ndim != 2 or candidates.shape[0] != generator.latent_dim:
        raise ValueError(f"candidates must be latent_dim x K = {generator.latent_dim} x K, "
                         f"got {tuple(candidates.shape)}")
    filters = filter_config(config)
    z = scoring_latents(generator, config, seed)
    with torch.no_grad():
        images = generator.generate(z.to(generator.device)).cpu()
    scores = []
    jobs = [(k, s) for k in range(candidates.shape[1]) for s in (1, -1)]
    for k, s in tqdm(jobs, desc="scoring candidates", disable=not progress, dynamic_ncols=True):
        rendered = render(generator, z, s * magnitude * candidates[:, k], filters, images=images)
        scores.append(score_rendered(rendered, k, s, config, filters))
    return sorted(scores, key=lambda score: (-score.total, score.index, -score.sign))
