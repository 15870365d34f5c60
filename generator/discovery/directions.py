"""The K candidate directions of latent discovery: the columns of a matrix A (latent_dim x K).

Two parametrisations, as in Voynov & Babenko:
  plain        A is a free matrix; a column's length is part of what is learned.
  orthonormal  A = Q from the QR decomposition of a free matrix (signs fixed so the map is
               smooth), so the K columns stay orthonormal through training; needs K <= latent_dim.

`shift(index, eps)` is eps * A e_k for a batch, the latent offset the generator sees.
"""

from __future__ import annotations

import torch
from torch import nn

DIRECTION_TYPES = ("plain", "orthonormal")


class LatentDirections(nn.Module):
    """K learnable latent directions; `matrix()` returns A with one direction per column."""

    def __init__(self, latent_dim: int, count: int, direction_type: str = "orthonormal",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if direction_type not in DIRECTION_TYPES:
            raise ValueError(f"direction_type must be one of {', '.join(DIRECTION_TYPES)}, got {direction_type!r}")
        if count < 1 or latent_dim < 1:
            raise ValueError(f"need at least one direction and one latent dimension, got K={count}, "
                             f"latent_dim={latent_dim}")
        if direction_type == "orthonormal" and count > latent_dim:
            raise ValueError(f"{count} orthonormal directions do not fit in a latent space of size {latent_dim}; "
                             f"use at most {latent_dim} or direction_type 'plain'")
        self.latent_dim = int(latent_dim)
        self.count = int(count)
        self.direction_type = direction_type
        weight = torch.randn(latent_dim, count, generator=generator)
        # Unit columns at the start, so a shift of eps moves the latent by |eps| in both types.
        self.weight = nn.Parameter(weight / weight.norm(dim=0, keepdim=True))

    def matrix(self) -> torch.Tensor:
        """A, latent_dim x K."""
        if self.direction_type == "plain":
            return self.weight
        q, r = torch.linalg.qr(self.weight)
        # QR is unique up to column signs; pin them to the sign of R's diagonal so that
        # a small change of the parameter is a small change of Q.
        return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))

    def unit_matrix(self) -> torch.Tensor:
        """A with each column scaled to unit length: the candidate directions, detached."""
        a = self.matrix().detach()
        return a / a.norm(dim=0, keepdim=True).clamp_min(1e-12)

    def shift(self, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Latent offsets eps_i * A e_{k_i}, N x latent_dim, for indices k (N,) and shifts eps (N,)."""
        return self.matrix().t()[index] * eps[:, None]

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, count={self.count}, type={self.direction_type}"
