"""A small analytic generator for the test suite and benchmarks (never the default).

It draws a soft ellipse (the object) on a textured background, fully differentiable and with no
weights, so it is exact and fast.  Its latent space has known, planted directions:

    axis 0  saliency lighting: object lighter, background darker (the h_bg the method looks for)
    axis 1  global brightness              axes 2, 3  object translation (x, y)
    axis 4  object size                    axes 5-10  object and background colour
    axis 11 object aspect                  axes 12+   texture phase

With `mixing_seed` set, the latent space is rotated by a seeded orthogonal matrix so the planted
directions are not axis-aligned; `planted_direction` returns them in the caller's coordinates.
With `fixed_shape`, every object has the same size and aspect (axes 4 and 11 change nothing), so
the only distractors left beside the lighting are brightness, translation, colour and texture.
The optional encoder is a fixed seeded projection of a pooled image: deterministic, so it exercises
the encoding plumbing, but it is not an inverse of the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from generator.interface import Generator, digest_bytes

PLANTED_AXES = {"lighting": 0, "brightness": 1, "translate_x": 2, "translate_y": 3, "size": 4,
                "object_colour": 5, "background_colour": 8}
#: Axes of object size and aspect, which `fixed_shape` turns off.
SHAPE_AXES = {"size": 4, "aspect": 11}
MIN_LATENT_DIM = 14
# Pre-tanh lighting change per latent unit: a shift of norm 5 drives object and background
# close to the ends of [-1, 1], as BigBiGAN's saliency direction does.
LIGHTING_GAIN = 0.4


class ShapesGenerator(Generator):
    """Analytic ellipse-on-background generator with planted latent directions."""

    name = "testing"
    differentiable = True

    def __init__(self, latent_dim: int = 16, resolution: int = 64, mixing_seed: int | None = None,
                 with_encoder: bool = True, fixed_shape: bool = False) -> None:
        super().__init__()
        if latent_dim < MIN_LATENT_DIM:
            raise ValueError(f"the testing generator needs latent_dim >= {MIN_LATENT_DIM}, got {latent_dim}")
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {resolution}")
        self._latent_dim = int(latent_dim)
        self._resolution = int(resolution)
        self.mixing_seed = mixing_seed
        self._with_encoder = with_encoder
        self.fixed_shape = bool(fixed_shape)
        rng = torch.Generator().manual_seed(0 if mixing_seed is None else int(mixing_seed))
        if mixing_seed is None:
            self._rotation = torch.eye(latent_dim)
        else:
            q, r = torch.linalg.qr(torch.randn(latent_dim, latent_dim, generator=rng, dtype=torch.float64))
            self._rotation = (q * torch.sign(torch.diagonal(r))).float()
        self._encoder_projection = torch.randn(3 * 8 * 8, latent_dim, generator=rng) / (3 * 8 * 8) ** 0.5
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution),
                                indexing="ij")
        self._grid = torch.stack([xs, ys])  # 2 x H x W

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def weights_digest(self) -> str:
        description = f"shapes-v1:{self._latent_dim}:{self._resolution}:{self.mixing_seed}"
        if self.fixed_shape:  # only when set, so the default generator keeps its identity
            description += ":fixed-shape"
        return digest_bytes(description.encode())

    @property
    def has_encoder(self) -> bool:
        return self._with_encoder

    @property
    def planted_names(self) -> list[str]:
        """Names of the planted directions that change the image (size is fixed with `fixed_shape`)."""
        return [name for name in PLANTED_AXES if not (self.fixed_shape and name in SHAPE_AXES)]

    def planted_direction(self, name: str = "lighting") -> torch.Tensor:
        """Unit latent vector (caller's coordinates) of a planted direction, e.g. 'lighting'."""
        if name not in self.planted_names:
            raise ValueError(f"{name!r} is not a planted direction of this generator; it has "
                             f"{', '.join(self.planted_names)}")
        return self._rotation[:, PLANTED_AXES[name]].clone()

    def object_mask(self, z: torch.Tensor) -> torch.Tensor:
        """Boolean N x H x W mask of the ellipse each latent draws (the planted foreground)."""
        return self._soft_mask(self.check_latents(z) @ self._rotation) > 0.5

    def _soft_mask(self, u: torch.Tensor) -> torch.Tensor:
        x, y = self._grid.to(u.device)
        cx = 0.35 * torch.tanh(u[:, 2, None, None])
        cy = 0.35 * torch.tanh(u[:, 3, None, None])
        if self.fixed_shape:  # the size and aspect of a latent at the origin
            a = torch.full_like(cx, 0.45)
            b = a
        else:
            a = 0.45 + 0.15 * torch.tanh(u[:, 4, None, None])
            b = a * (1 + 0.3 * torch.tanh(u[:, 11, None, None]))
        dist = torch.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + 1e-8)
        return torch.sigmoid((1 - dist) * 12)

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        u = z @ self._rotation.to(z.device)
        mask = self._soft_mask(u)[:, None]
        x, y = self._grid.to(z.device)
        object_colour = 0.5 * torch.tanh(u[:, 5:8])[:, :, None, None]
        background_colour = 0.5 * torch.tanh(u[:, 8:11])[:, :, None, None]
        light = LIGHTING_GAIN * u[:, 0, None, None, None]
        brightness = 0.1 * u[:, 1, None, None, None]
        texture = 0.08 * torch.sin(7 * x + u[:, 12, None, None]) * torch.cos(5 * y + u[:, 13, None, None])
        image = (mask * (object_colour + light) + (1 - mask) * (background_colour - light)
                 + brightness + texture[:, None])
        return torch.tanh(image)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images, 8).flatten(1)
        return pooled @ self._encoder_projection.to(images.device)


def build_testing_generator(latent_dim: int = 16, resolution: int = 64, mixing_seed: int | None = None,
                            with_encoder: bool = True, fixed_shape: bool = False) -> ShapesGenerator:
    """Registry factory: the analytic test generator takes options and no weights."""
    return ShapesGenerator(latent_dim, resolution, mixing_seed, with_encoder, fixed_shape)
