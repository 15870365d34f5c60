"""Mask synthesis: a pixel is foreground when the shift h_bg makes it lighter.

M = [gray(G(z + h_bg)) > gray(G(z))], with the luma weights the paper uses.
"""

from __future__ import annotations

import torch

#: ITU-R BT.601 luma weights of R, G and B, as in the paper's reference code.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def gray(images: torch.Tensor) -> torch.Tensor:
    """Intensity of images N x 3 x H x W as N x H x W (0.2989 R + 0.5870 G + 0.1140 B)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"gray expects a tensor of N x 3 x H x W images, got {shape}")
    r, g, b = images.unbind(1)
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def synthesize_masks(images: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    """Boolean masks N x H x W: where G(z + h_bg) (`shifted`) is lighter than G(z) (`images`)."""
    if images.shape != shifted.shape:
        raise ValueError(f"images {tuple(images.shape)} and shifted images {tuple(shifted.shape)} "
                         f"must have the same shape")
    return gray(shifted) > gray(images)
