"""The reconstructor R of latent discovery: from an image pair, which direction moved it and how far.

R sees G(z) and G(z + eps * A e_k) stacked on the channel axis (6 channels) and predicts the index
k (K logits) and the shift eps (one number).  A small strided CNN: the pair is first resized to
`input_size` so that the cost does not grow with the generator's resolution, then halved
`depth` times, pooled and read out by two linear heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Reconstructor(nn.Module):
    """Small CNN: 6 x S x S pair -> (K index logits, shift)."""

    def __init__(self, count: int, width: int = 32, input_size: int = 64, depth: int = 4) -> None:
        super().__init__()
        if count < 1 or width < 1 or depth < 1:
            raise ValueError(f"count, width and depth must be positive, got {count}, {width}, {depth}")
        if input_size < 2 ** depth:
            raise ValueError(f"input_size {input_size} is too small for {depth} halvings")
        self.count = int(count)
        self.input_size = int(input_size)
        layers: list[nn.Module] = []
        channels = 6
        for level in range(depth):
            out = width * 2 ** min(level, 3)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.index_head = nn.Linear(channels, count)
        self.shift_head = nn.Linear(channels, 1)

    def forward(self, images: torch.Tensor, shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index logits (N x K) and predicted shifts (N,) for two N x 3 x H x W batches."""
        pair = torch.cat([images, shifted], dim=1)
        if pair.shape[-1] != self.input_size or pair.shape[-2] != self.input_size:
            pair = F.interpolate(pair, size=(self.input_size, self.input_size), mode="bilinear",
                                 align_corners=False, antialias=True)
        features = self.features(pair).mean(dim=(2, 3))
        return self.index_head(features), self.shift_head(features).squeeze(1)
