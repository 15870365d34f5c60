"""Losses for training on soft pseudo-labels: pixel-wise BCE, and A2S's BCE + SSIM + IoU.

A2S (Zhou et al.) trains its second stage with the hybrid loss of BASNet (Qin et al., 2019):
BCE for pixels, 1 - SSIM for local structure (11 x 11 Gaussian window, sigma 1.5, zero padding,
C1 = 0.01^2, C2 = 0.03^2) and 1 - soft IoU for the whole map.  Each term is a mean over the batch;
labels may be soft (in [0, 1]).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise binary cross-entropy (the E-BigBiGAN U-Net's loss)."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    line = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    line = line / line.sum()
    return (line[:, None] * line[None, :])[None, None]


def ssim_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM between N x 1 x H x W maps in [0, 1]."""
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, probabilities.device)
    pad = SSIM_WINDOW // 2

    def local_mean(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window, padding=pad)

    mean_p, mean_l = local_mean(probabilities), local_mean(labels)
    var_p = local_mean(probabilities * probabilities) - mean_p ** 2
    var_l = local_mean(labels * labels) - mean_l ** 2
    covariance = local_mean(probabilities * labels) - mean_p * mean_l
    ssim = ((2 * mean_p * mean_l + SSIM_C1) * (2 * covariance + SSIM_C2)) / \
        ((mean_p ** 2 + mean_l ** 2 + SSIM_C1) * (var_p + var_l + SSIM_C2))
    return 1 - ssim.mean()


def iou_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - soft IoU per image, averaged over the batch."""
    intersection = (probabilities * labels).flatten(1).sum(1)
    union = (probabilities + labels - probabilities * labels).flatten(1).sum(1)
    return (1 - intersection / union.clamp(min=1e-6)).mean()


def a2s_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + SSIM + IoU, equally weighted, as A2S trains its second stage."""
    probabilities = torch.sigmoid(logits)
    return bce_loss(logits, labels) + ssim_loss(probabilities, labels) + iou_loss(probabilities, labels)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"bce": bce_loss, "a2s": a2s_loss}
