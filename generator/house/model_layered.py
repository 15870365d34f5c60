"""Networks of the layered house GAN: an object pasted over a background, 64 x 64.

The generator draws two layers from two disjoint parts of z: a background from the first
`background_dim` coordinates, and an object from the rest.  The object is a colour layer and an
outline, alpha: a smooth closed curve around a centre (`StarOutline`).  The image is
alpha * colour + (1 - alpha) * background.

Why this design, where compute is a laptop's and not a GPU's: a plain DCGAN trained for an hour of
CPU draws layouts, and the direction found on it lights a fixed central region whatever the image
holds.  A learned free-form alpha did no better in short CPU runs: it became a see-through veil
or a texture spread over the whole frame.  Here the generator always draws an object, and
training decides what it looks like, where it sits, how big it is and what surrounds it:
- The outline is a shape, never a veil: centre, size and a few Fourier harmonics of its radius
  come from z, so outlines are blobs, ovals and lobed or dented shapes anywhere in the frame.
- The background is drawn at `background_side` and enlarged smoothly.  In object-centric photos
  it is mostly out of focus, and a coarse layer cannot draw an object of its own.
- During training the object layer moves by a random offset before it is pasted (Bielski &
  Favaro, "Emergence of Object Segmentation in Perturbed Generative Models", NeurIPS 2019).  A
  composite stays realistic under such moves only when the object layer holds a whole object and
  the background is complete behind it.
- A hinge on alpha's mean keeps objects between 10% and 40% of the image without penalty
  (`generator.house.training.COVERAGE_RANGE`), and a mode-seeking hinge keeps the object's
  colour layer varied with its code: without it, short runs drew one texture inside every outline.

Because object and background draw on separate coordinates of z, a latent direction can lighten
one and darken the other, which is what the saliency method looks for.  The discovered direction
still makes every mask; alpha itself is never read outside training.  The discriminator and the
encoder are v1's (`generator.house.model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generator.house.augment import random_translation
from generator.house.model import SEED_SIDE, check_side, doublings_to

ARCHITECTURE = "layered"


@dataclass(frozen=True)
class HouseLayeredConfig:
    """Architecture of the layered networks; stored beside the weights so they can be rebuilt."""

    latent_dim: int = 128
    background_dim: int = 32
    resolution: int = 64
    width: int = 32
    background_side: int = 16
    harmonics: int = 5

    def __post_init__(self) -> None:
        check_side("resolution", self.resolution)
        check_side("background_side", self.background_side)
        if self.background_side > self.resolution:
            raise ValueError(f"background_side {self.background_side} exceeds resolution {self.resolution}")
        for name in ("width", "harmonics"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.background_dim < self.latent_dim:
            raise ValueError(f"background_dim must be in [1, latent_dim - 1], got {self.background_dim} "
                             f"with latent_dim {self.latent_dim}")

    @property
    def architecture(self) -> str:
        return ARCHITECTURE

    @property
    def doublings(self) -> int:
        return doublings_to(self.resolution)

    def as_dict(self) -> dict:
        return asdict(self)


def _up_blocks(channels: list[int]) -> list[nn.Sequential]:
    """DCGAN up-sampling: batch norm and ReLU on the seed, then one doubling per channel step."""
    blocks = [nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))]
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        blocks.append(nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                                    nn.ReLU(inplace=True)))
    return blocks


class StarOutline(nn.Module):
    """Object code -> alpha N x 1 x R x R: a filled smooth closed curve, its edge anti-aliased.

    The curve is r(t) = radius * (1 + sum_k a_k cos(k t) + b_k sin(k t)) around a centre, in
    polar coordinates t; centre, radius and the `harmonics` pairs (a_k, b_k) are a linear map of
    the code, squashed into fixed ranges.  Coefficient k is at most HARMONIC_SCALE / k, so outlines
    are blobs, ovals, lobed and dented shapes, never noise; a fresh network draws a centred circle.
    """

    CENTRE_RANGE = 0.25            # the centre lies within this distance of the middle (side units), per axis
    RADIUS_RANGE = (0.1, 0.4)      # mean radius, in sides: about 3% to 50% of the image
    HARMONIC_SCALE = 0.35
    EDGE_PIXELS = 0.4              # alpha goes from 0.1 to 0.9 within 1.8 pixels across the boundary

    def __init__(self, code_dim: int, harmonics: int, resolution: int) -> None:
        super().__init__()
        self.harmonics = harmonics
        self.resolution = resolution
        self.shape_code = nn.Linear(code_dim, 3 + 2 * harmonics)
        nn.init.zeros_(self.shape_code.bias)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast (a GPU run): bf16's 8-bit mantissa puts pixel coordinates
        # near the far edge 1/256 of a side apart and the edge's slope turns that into jagged steps
        with torch.autocast(code.device.type, enabled=False):
            return self._alpha(code.float())

    def _alpha(self, code: torch.Tensor) -> torch.Tensor:
        side, k = self.resolution, self.harmonics
        params = self.shape_code(code)
        centre = 0.5 + self.CENTRE_RANGE * torch.tanh(params[:, :2])
        low, high = self.RADIUS_RANGE
        radius = low + (high - low) * torch.sigmoid(params[:, 2])
        orders = torch.arange(1, k + 1, device=code.device, dtype=params.dtype)
        cosines, sines = (torch.tanh(params[:, 3:]) * self.HARMONIC_SCALE / orders.repeat(2)).split(k, dim=1)
        pixel = (torch.arange(side, device=code.device, dtype=params.dtype) + 0.5) / side
        dy = pixel[None, :, None] - centre[:, 1, None, None]       # N x R x 1
        dx = pixel[None, None, :] - centre[:, 0, None, None]       # N x 1 x R
        distance = torch.sqrt(dx ** 2 + dy ** 2 + 1e-12)           # N x R x R
        angle = torch.atan2(dy, dx)[..., None] * orders            # N x R x R x k
        wobble = (torch.cos(angle) * cosines[:, None, None, :] + torch.sin(angle) * sines[:, None, None, :]).sum(-1)
        boundary = radius[:, None, None] * (1 + wobble)
        return torch.sigmoid((boundary - distance) * side / self.EDGE_PIXELS)[:, None]


class HouseLayeredGeneratorNet(nn.Module):
    """z (N x latent_dim) -> images N x 3 x R x R in [-1, 1], composed of an object and a background."""

    # during training, the object layer moves by up to this share of the side (both axes)
    SHIFT_RATIO = 0.125

    def __init__(self, config: HouseLayeredConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.resolution = config.resolution
        object_dim = config.latent_dim - config.background_dim
        n = config.doublings
        object_channels = [config.width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 256, 128, 64, 32
        self.object_seed = nn.Linear(object_dim, object_channels[0] * SEED_SIDE ** 2, bias=False)
        self.object_blocks = nn.Sequential(*_up_blocks(object_channels))
        self.object_colour = nn.ConvTranspose2d(object_channels[-1], 3, 4, 2, 1)
        self.outline = StarOutline(object_dim, config.harmonics, config.resolution)
        m = doublings_to(config.background_side)
        background_channels = [min(config.width * 2 ** (m + 1 - i), 256) for i in range(m)]
        self.background_seed = nn.Linear(config.background_dim, background_channels[0] * SEED_SIDE ** 2, bias=False)
        self.background_blocks = nn.Sequential(*_up_blocks(background_channels))
        self.background_colour = nn.ConvTranspose2d(background_channels[-1], 3, 4, 2, 1)

    def layers(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(object colour in [-1, 1], alpha in [0, 1], background in [-1, 1]), each N x C x R x R."""
        n, split = z.shape[0], self.config.background_dim
        object_code = z[:, split:]
        x = self.object_blocks(self.object_seed(object_code).view(n, -1, SEED_SIDE, SEED_SIDE))
        colour = torch.tanh(self.object_colour(x))
        x = self.background_blocks(self.background_seed(z[:, :split]).view(n, -1, SEED_SIDE, SEED_SIDE))
        background = torch.tanh(self.background_colour(x))
        if background.shape[-1] != self.resolution:
            background = F.interpolate(background, size=self.resolution, mode="bilinear", align_corners=False)
        return colour, self.outline(object_code), background

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        colour, alpha, background = self.layers(z)
        return alpha * colour + (1 - alpha) * background

    def training_images(self, z: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Images with each object layer shifted at random (the uncovered border is transparent),
        and the layers as drawn (colour, alpha, background) for the training penalties."""
        colour, alpha, background = layers = self.layers(z)
        moved = random_translation(torch.cat([colour, alpha], dim=1), rng, self.SHIFT_RATIO)
        colour, alpha = moved[:, :3], moved[:, 3:]
        return alpha * colour + (1 - alpha) * background, layers


def coverage_penalty(alpha: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Mean over images of how far alpha's mean lies outside [low, high] (0 inside)."""
    coverage = alpha.mean(dim=(1, 2, 3))
    return (F.relu(low - coverage) + F.relu(coverage - high)).mean()


def diversity_penalty(layer: torch.Tensor, codes: torch.Tensor, target: float) -> torch.Tensor:
    """How far a layer's variety falls short of `target`, after mode seeking (Mao et al., CVPR 2019):
    the first half of the batch is paired with the second, and the mean absolute difference of the
    pair's layers is divided by that of their codes.  A layer drawn the same for every code scores
    `target`; one that varies at least that much with its code, 0."""
    half = layer.shape[0] // 2
    if half == 0:
        return layer.new_zeros(())
    layer_change = (layer[:half] - layer[half:2 * half]).abs().mean(dim=(1, 2, 3))
    code_change = (codes[:half] - codes[half:2 * half]).abs().mean(dim=1)
    return F.relu(target - layer_change / code_change).mean()

