"""Wraps a user's own PyTorch generator (an `nn.Module` mapping z to images) as a `Generator`.

A factory named in a spec as `python:package.module:factory` may return a ready `Generator`,
or a module that declares `latent_dim` (and `resolution`, or it is measured with one forward
pass).  An optional `encoder` attribute (a module mapping images to z) enables `encode`.
"""

from __future__ import annotations

import torch

from generator.interface import Generator, GeneratorSpecError, digest_bytes, digest_module


class TorchModuleGenerator(Generator):
    """A differentiable generator around any `nn.Module` z -> N x 3 x H x W in [-1, 1]."""

    differentiable = True

    def __init__(self, module: torch.nn.Module, name: str = "torch-module",
                 encoder: torch.nn.Module | None = None) -> None:
        super().__init__()
        latent_dim = getattr(module, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise GeneratorSpecError(
                f"{type(module).__name__} must declare a positive integer attribute `latent_dim`")
        self.name = name
        self.module = module.eval()
        self.encoder = encoder.eval() if encoder is not None else None
        self._latent_dim = latent_dim
        self._resolution = getattr(module, "resolution", None) or self._measure_resolution()
        parts = [digest_module(module)] + ([digest_module(encoder)] if encoder is not None else [])
        self._digest = digest_bytes(*(p.encode() for p in parts))

    def _measure_resolution(self) -> int:
        with torch.no_grad():
            out = self.module(torch.zeros(1, self._latent_dim))
        if out.ndim != 4 or out.shape[1] != 3 or out.shape[2] != out.shape[3]:
            raise GeneratorSpecError(
                f"{type(self.module).__name__} must return N x 3 x H x H images, got {tuple(out.shape)}")
        return int(out.shape[-1])

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(z)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def to(self, device):
        super().to(device)
        self.module.to(self.device)
        if self.encoder is not None:
            self.encoder.to(self.device)
        return self

