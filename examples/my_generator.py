"""A worked example: your own PyTorch generator (and optional encoder) in the pipeline.

Any factory reachable as `python:package.module:factory` can stand in for the built-in generators.
This one is named in params.yaml as

    generator:
      name: python:examples.my_generator:factory
      weights: my_generator.pt          # written by save_weights below; null: seeded random weights
      options: {latent_dim: 32, width: 32}

(run the commands from the project folder with PYTHONPATH=. , or install your own package).

What the pipeline needs from a generator module:
  - `latent_dim` (int) and `resolution` (int) attributes;
  - `forward(z)`: z float32 N x latent_dim -> images float32 N x 3 x H x W in [-1, 1] (end with
    tanh), differentiable with respect to z (direction discovery follows gradients through it).
An encoder (images N x 3 x H x W in [-1, 1] -> N x latent_dim) is optional: with one,
`embed-images` can encode your photos into a latent bank.  A factory may return the bare
`nn.Module` (it is wrapped for you) or, as here, a `TorchModuleGenerator` to pass the encoder too.
The identity written into every manifest is the factory's name plus a digest of the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from generator.backends.torch_module import TorchModuleGenerator


class MyGenerator(nn.Module):
    """DCGAN-style: z -> 4 x 4 feature map -> three doublings -> 32 x 32 RGB in [-1, 1]."""

    resolution = 32

    def __init__(self, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.project = nn.Linear(latent_dim, 4 * width * 4 * 4)
        self.width = width

        def up(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU())

        self.body = nn.Sequential(up(4 * width, 2 * width), up(2 * width, width),
                                  nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, 4 * self.width, 4, 4))


class MyEncoder(nn.Module):
    """The mirror image: 32 x 32 RGB -> latent_dim."""

    def __init__(self, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()

        def down(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2))

        self.body = nn.Sequential(down(3, width), down(width, 2 * width), down(2 * width, 4 * width),
                                  nn.Flatten(), nn.Linear(4 * width * 4 * 4, latent_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def save_weights(generator: MyGenerator, encoder: MyEncoder | None, path: str | Path) -> None:
    """The weights file `factory` reads: plain state dicts, loadable without unpickling code."""
    payload = {"generator": generator.state_dict()}
    if encoder is not None:
        payload["encoder"] = encoder.state_dict()
    torch.save(payload, path)


def factory(weights: str | None = None, latent_dim: int = 32, width: int = 32, seed: int = 0) -> TorchModuleGenerator:
    """Build the example generator: trained weights from `weights`, or seeded random ones."""
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's random state
        torch.manual_seed(seed)
        generator, encoder = MyGenerator(latent_dim, width), MyEncoder(latent_dim, width)
    if weights is not None:
        payload = torch.load(weights, map_location="cpu", weights_only=True)
        generator.load_state_dict(payload["generator"])
        if "encoder" in payload:
            encoder.load_state_dict(payload["encoder"])
        else:
            encoder = None
    return TorchModuleGenerator(generator, name="my_generator", encoder=encoder)
