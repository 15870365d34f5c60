"""Differentiable augmentation for GAN training on about 1,000 photos.

The same random colour, translation and cutout changes are applied to real and generated images
before the discriminator sees them, and gradients flow through them to the generator, so the
discriminator cannot memorise the small training set while the generator still learns the
un-augmented distribution (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN
Training", 2020).  All randomness comes from the caller's `torch.Generator`, drawn on
that generator's device (a CUDA generator keeps training free of host round trips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=rng, device=rng.device).to(device)


def random_colour(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random brightness shift, saturation and contrast scaling per image."""
    n = x.shape[0]
    x = x + (_uniform(n, rng, x.device) - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (_uniform(n, rng, x.device) * 2) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, rng, x.device) + 0.5) + mean


def random_translation(x: torch.Tensor, rng: torch.Generator, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by up to `ratio` of its side, filling the uncovered border with zeros."""
    n, _, h, w = x.shape
    pad_h, pad_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-pad_h, pad_h + 1, (n, 1), generator=rng, device=rng.device).to(x.device)
    shift_x = torch.randint(-pad_w, pad_w + 1, (n, 1), generator=rng, device=rng.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + pad_h + shift_y  # n x h
    cols = torch.arange(w, device=x.device)[None, :] + pad_w + shift_x  # n x w
    padded = F.pad(x, [pad_w, pad_w, pad_h, pad_h])
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one square of side `ratio` x side at a random place in each image."""
    n, _, h, w = x.shape
    cut_h, cut_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h - cut_h + 1, (n, 1, 1), generator=rng, device=rng.device).to(x.device)
    left = torch.randint(0, w - cut_w + 1, (n, 1, 1), generator=rng, device=rng.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Colour, then translation, then cutout: the policy used for both real and fake batches."""
    return random_cutout(random_translation(random_colour(x, rng), rng), rng)
