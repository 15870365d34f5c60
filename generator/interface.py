"""The one interface every generator backend implements (DESIGN.md section 3).

A generator maps latent codes z (N x latent_dim, float32) to images (N x 3 x H x W, float32 in
[-1, 1], NCHW).  It may also encode images back to latents, and it may be differentiable in
PyTorch (direction discovery needs gradients through G).  Its `identity` (name + weights digest)
goes into every manifest and direction file, so data made with one generator is never silently
mixed with another's.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path

import torch


class GeneratorSpecError(ValueError):
    """A generator spec that cannot be turned into a generator, with a message saying why."""


class Generator(abc.ABC):
    """Base class of every backend: house model, TF-Hub BigBiGAN, a user's own PyTorch module."""

    #: Short backend name, the first half of `identity`.
    name: str = "generator"
    #: True when gradients flow from `generate`'s output back to z through torch autograd.
    differentiable: bool = False
    #: A latent bank (N x latent_dim float32 .npy) shipped with the weights, or None.
    bundled_latent_bank: Path | None = None

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @property
    @abc.abstractmethod
    def latent_dim(self) -> int:
        """Size of the latent code z."""

    @property
    @abc.abstractmethod
    def resolution(self) -> int:
        """Side of the square images `generate` returns."""

    @property
    @abc.abstractmethod
    def weights_digest(self) -> str:
        """Short hex digest of the weights (or of whatever defines the function z -> image)."""

    @property
    def identity(self) -> str:
        """Stable identity string: backend name and weights digest."""
        return f"{self.name}@{self.weights_digest}"

    @property
    def has_encoder(self) -> bool:
        """Whether `encode` is available."""
        return False

    @property
    def encoder_resolution(self) -> int:
        """Side of the square images `encode` expects."""
        return self.resolution

    @abc.abstractmethod
    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        """Backend-specific forward pass on a validated batch of latents on `self.device`."""

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Render latents z (N x latent_dim) to images N x 3 x H x W in [-1, 1]."""
        z = self.check_latents(z)
        return self._generate(z.to(self.device))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map images N x 3 x S x S in [-1, 1] (S = `encoder_resolution`) to latents N x latent_dim."""
        if not self.has_encoder:
            raise NotImplementedError(f"generator {self.identity} has no encoder")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects N x 3 x H x W images, got shape {tuple(images.shape)}")
        return self._encode(images.to(self.device, torch.float32))

    def check_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raise a clear error unless z is a float batch N x latent_dim; return it as float32."""
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{self.identity} expects latents of shape N x {self.latent_dim}, got {tuple(z.shape)}"
            )
        if not z.is_floating_point():
            raise ValueError(f"latents must be floating point, got {z.dtype}")
        return z.float()

    def to(self, device: str | torch.device) -> "Generator":
        """Move the generator to a device; returns self."""
        self.device = torch.device(device)
        return self

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.identity} latent_dim={self.latent_dim} "
                f"resolution={self.resolution} encoder={self.has_encoder}>")


def digest_bytes(*chunks: bytes) -> str:
    """First 16 hex digits of the sha256 of the concatenated chunks."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def digest_file(path: str | Path) -> str:
    """First 16 hex digits of a file's sha256, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def digest_module(module: torch.nn.Module) -> str:
    """Digest of a module's state dict: parameter names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
