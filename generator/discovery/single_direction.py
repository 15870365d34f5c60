"""Single-direction discovery after Melas-Kyriazi et al.: optimise one unit direction d directly.

Each step draws z ~ N(0, I) and a radius r ~ N(radius_mean, radius_std) clipped at radius_min,
renders G(z) and G(z + r d), and minimises

    darken_weight * mean(gray(G(z + r d)) * C)
  + edge_weight   * mean((sobel(gray(G(z))) - sobel(gray(G(z + r d))))^2)

where C is a centred radial map, positive outside a circle and negative inside: the shift should
darken the surround, lighten the centre and keep the edges where they are.  d is re-normalised to
unit length after every Adam step.

Before each Adam step the gradient is projected onto the tangent space of the unit sphere at d:
the radial part is undone by the re-normalisation anyway, but Adam's per-coordinate scaling would
turn it into a sideways drift, so that the loop would settle near a sign pattern of the gradient
instead of at the constrained optimum.

C is balanced (its positive and negative parts have equal mass, so it sums to zero): a uniform
change of brightness then leaves the first term unchanged, and the direction has to separate
centre from surround instead of simply darkening everything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from generator.discovery.checkpoint import fingerprint
from generator.discovery.config import RefineConfig, SingleDirectionConfig
from generator.discovery.latent_discovery import DiscoveryResult
from generator.discovery.loop import require_gradients, run_loop
from generator.discovery.randomness import frozen, step_rng
from generator.interface import Generator
from generator.synth.masks import gray

METHOD = "single-direction"
_NOT_IN_FINGERPRINT = ("steps", "checkpoint_every")
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def radial_map(resolution: int, circle_radius: float) -> torch.Tensor:
    """C (H x W): positive outside the centred circle of `circle_radius` (in half-sides), negative
    inside, each part scaled so the map sums to zero and its mean absolute value is 1."""
    coords = torch.linspace(-1, 1, resolution)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    signed = torch.sqrt(xs ** 2 + ys ** 2) - circle_radius
    outside, inside = signed.clamp_min(0), (-signed).clamp_min(0)
    if outside.sum() == 0 or inside.sum() == 0:
        raise ValueError(f"circle_radius {circle_radius} leaves no pixel on one side of the circle")
    balanced = outside / outside.sum() - inside / inside.sum()
    return balanced / balanced.abs().mean()


def sobel_magnitude(intensity: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude (N x H x W) of intensity images N x H x W, replicate-padded."""
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].to(intensity)
    padded = F.pad(intensity[:, None], (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)
    return torch.sqrt((gradients ** 2).sum(dim=1) + 1e-8)


def draw_step(config: SingleDirectionConfig | RefineConfig, latent_dim: int, seed: int, t: int,
              stream: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """z and r of step t: a pure function of (seed, stream, t).  Refinement draws the same way from
    its own stream."""
    rng = step_rng(seed, stream, t)
    z = torch.randn(config.batch_size, latent_dim, generator=rng)
    radius = config.radius_mean + config.radius_std * torch.randn(config.batch_size, generator=rng)
    return z, radius.clamp_min(config.radius_min)


def discover_single_direction(generator: Generator, config: SingleDirectionConfig, seed: int = 0,
                              checkpoint_path: str | Path | None = None, progress: bool = True) -> DiscoveryResult:
    """Optimise d for `config.steps` steps (resuming from a matching checkpoint); one candidate."""
    require_gradients(generator, "single-direction discovery")
    device = generator.device
    start = torch.randn(generator.latent_dim, generator=step_rng(seed, "init"))
    holder = torch.nn.Module()
    holder.direction = torch.nn.Parameter((start / start.norm()).to(device))
    optimiser = torch.optim.Adam(holder.parameters(), lr=config.lr)
    contrast = radial_map(generator.resolution, config.circle_radius).to(device)

    def step(t: int) -> dict[str, float]:
        z, radius = (x.to(device) for x in draw_step(config, generator.latent_dim, seed, t))
        with torch.no_grad():
            edges = sobel_magnitude(gray(generator.generate(z)))
        shifted = gray(generator.generate(z + radius[:, None] * holder.direction))
        darken_loss = (shifted * contrast).mean()
        edge_loss = ((edges - sobel_magnitude(shifted)) ** 2).mean()
        loss = config.darken_weight * darken_loss + config.edge_weight * edge_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep only the gradient's component along the sphere (see module docstring)
            d = holder.direction
            d.grad -= (d.grad @ d) * d
        optimiser.step()
        with torch.no_grad():
            holder.direction /= holder.direction.norm().clamp_min(1e-12)
        return {"loss": loss.item(), "darken_loss": darken_loss.item(), "edge_loss": edge_loss.item()}

    settings = {key: value for key, value in dataclasses.asdict(config).items() if key not in _NOT_IN_FINGERPRINT}
    with frozen(generator):
        outcome = run_loop(description="single-direction discovery", steps=config.steps, step=step,
                           modules={"direction": holder}, optimisers={"direction": optimiser},
                           fingerprint=fingerprint(METHOD, {**settings, "seed": seed}, generator.identity),
                           checkpoint_path=checkpoint_path, checkpoint_every=config.checkpoint_every,
                           progress=progress)
    return DiscoveryResult(METHOD, holder.direction.detach().cpu()[:, None].clone(), outcome)
