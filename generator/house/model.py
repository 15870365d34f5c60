"""Networks of the house GAN: generator, discriminator and encoder (DCGAN layout, 64 x 64).

The generator doubles a 4 x 4 seed with transposed convolutions until it reaches the output
side, halving the channels at each step (base width `width` at the last hidden layer).  The
discriminator mirrors it (batch norm, leaky ReLU, one logit); the encoder has the same layout
with group normalisation and ends in a linear map to the latent space.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

SEED_SIDE = 4


def doublings_to(side: int) -> int:
    """How many doublings take the 4 x 4 seed to `side` (a side check_side accepts)."""
    return int(math.log2(side // SEED_SIDE))


def check_side(name: str, side: int) -> None:
    """Sides are doublings of the 4 x 4 seed: a power of two of at least 8."""
    steps = math.log2(side / SEED_SIDE) if side >= 8 else 0
    if side < 8 or steps != int(steps):
        raise ValueError(f"{name} must be a power of two >= 8, got {side}")


@dataclass(frozen=True)
class HouseConfig:
    """Architecture of the three networks; stored beside the weights so they can be rebuilt."""

    latent_dim: int = 64
    resolution: int = 64
    width: int = 32

    def __post_init__(self) -> None:
        check_side("resolution", self.resolution)
        if self.latent_dim < 1 or self.width < 1:
            raise ValueError(f"latent_dim and width must be positive, got {self.latent_dim}, {self.width}")

    @property
    def doublings(self) -> int:
        return doublings_to(self.resolution)

    def as_dict(self) -> dict:
        return asdict(self)


def _channels(config: HouseConfig) -> list[int]:
    """Channel counts from the 4 x 4 seed down to the last hidden layer, e.g. 256,128,64,32."""
    n = config.doublings
    return [config.width * 2 ** (n - 1 - i) for i in range(n)]


class HouseGeneratorNet(nn.Module):
    """z (N x latent_dim) -> images N x 3 x R x R in [-1, 1]."""

    def __init__(self, config: HouseConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.resolution = config.resolution
        channels = _channels(config)
        self.seed = nn.Sequential(nn.Linear(config.latent_dim, channels[0] * SEED_SIDE ** 2, bias=False))
        self.seed_norm = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        blocks += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.seed(z).view(z.shape[0], -1, SEED_SIDE, SEED_SIDE)
        return self.blocks(self.seed_norm(x))


def _downsampling_stack(config: HouseConfig, width: int, norm: str) -> tuple[nn.Sequential, int]:
    """Stride-2 4 x 4 convolutions from R x R down to 4 x 4, `width` channels first, doubling."""
    channels = [width * 2 ** i for i in range(config.doublings)]  # e.g. 32, 64, 128, 256
    layers: list[nn.Module] = []
    c_in = 3
    for i, c_out in enumerate(channels):
        layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
        if i > 0:
            layers.append(nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(8 if c_out % 8 == 0 else 1, c_out))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        c_in = c_out
    return nn.Sequential(*layers), c_in * SEED_SIDE ** 2


class HouseDiscriminatorNet(nn.Module):
    """Images -> one logit per image (real vs generated); DCGAN layout with batch norm."""

    def __init__(self, config: HouseConfig, width: int = 48) -> None:
        super().__init__()
        self.features, n_features = _downsampling_stack(config, width, norm="batch")
        self.head = nn.Linear(n_features, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1)).squeeze(1)


class HouseEncoderNet(nn.Module):
    """Images N x 3 x R x R in [-1, 1] -> latents N x latent_dim (inverts the generator)."""

    def __init__(self, config: HouseConfig) -> None:
        super().__init__()
        self.config = config
        # group norm, not batch norm: an image's code must not depend on its batch-mates
        self.features, n_features = _downsampling_stack(config, config.width, norm="group")
        self.head = nn.Linear(n_features, config.latent_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))
