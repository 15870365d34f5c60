"""A stand-in for BigBiGAN's generator cost, for benchmarks only: BigGAN's 128 x 128 generator
(Brock et al. 2019, the architecture BigBiGAN uses) with random weights.

Same shape and arithmetic as the real one: a 120-d latent split into six chunks of 20 (one for the
4 x 4 x 1536 linear input, one per residual block for its conditional batch norms, as in the
unconditional BigGAN of BigBiGAN), five up-sampling residual blocks 1536 -> 1536 -> 768 -> 384 ->
192 -> 96 channels (ch = 96), a non-local attention block at 64 x 64, and a 3 x 3 convolution to
RGB with tanh: about 70 M parameters.  Its images are noise, so it measures throughput, never
quality.  It is not a registered generator: benchmarks name it as
`python:benchmarks.bigbigan_standin:build_standin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generator.interface import Generator, digest_bytes

LATENT_DIM = 120
RESOLUTION = 128
CHUNK = 20                                       # 120 = 6 chunks of 20
CHANNELS = (16, 16, 8, 4, 2, 1)                  # multiples of ch per stage, 4 x 4 to 128 x 128
CH = 96


class ConditionalBatchNorm(nn.Module):
    """Batch norm (inference statistics) whose gain and bias are linear in a latent chunk."""

    def __init__(self, channels: int, condition: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(condition, channels, bias=False)
        self.bias = nn.Linear(condition, channels, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


class UpBlock(nn.Module):
    """BigGAN's generator block: CBN, ReLU, 2x up, 3x3 conv, CBN, ReLU, 3x3 conv; 1x1 conv skip."""

    def __init__(self, inputs: int, outputs: int, condition: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(inputs, condition)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(outputs, condition)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1)
        self.skip = nn.Conv2d(inputs, outputs, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Attention(nn.Module):
    """BigGAN's non-local block (theta, phi, g with 2 x 2 max-pooling on phi and g)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.out = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).flatten(2)                                   # n x c/8 x hw
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)                      # n x c/8 x hw/4
        g = F.max_pool2d(self.g(x), 2).flatten(2)                          # n x c/2 x hw/4
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)     # n x hw x hw/4
        o = (g @ attention.transpose(1, 2)).view(n, c // 2, h, w)
        return x + self.gamma * self.out(o)


class BigGANGenerator128(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        widths = [CH * m for m in CHANNELS]
        self.linear = nn.Linear(CHUNK, 4 * 4 * widths[0])
        self.blocks = nn.ModuleList(UpBlock(widths[i], widths[i + 1], CHUNK) for i in range(5))
        self.attention = Attention(widths[4])                             # at 64 x 64
        self.final_norm = nn.BatchNorm2d(widths[5])
        self.to_rgb = nn.Conv2d(widths[5], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        chunks = z.split(CHUNK, dim=1)
        h = self.linear(chunks[0]).view(z.shape[0], -1, 4, 4)
        for index, block in enumerate(self.blocks):
            h = block(h, chunks[index + 1])
            if index == 3:
                h = self.attention(h)
        return torch.tanh(self.to_rgb(F.relu(self.final_norm(h))))


class BigBiGANStandIn(Generator):
    """BigGAN-128's generator with random weights (seeded), behind the project's Generator interface."""

    name = "bigbigan-standin"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.seed = int(seed)
        self.network = BigGANGenerator128().eval()

    @property
    def latent_dim(self) -> int:
        return LATENT_DIM

    @property
    def resolution(self) -> int:
        return RESOLUTION

    @property
    def weights_digest(self) -> str:
        return digest_bytes(f"bigbigan-standin-v1:random:{self.seed}".encode())

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def to(self, device):
        super().to(device)
        self.network.to(self.device)
        return self

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.network(z.to(self.device))


def build_standin(seed: int = 0, weights=None) -> BigBiGANStandIn:
    """Factory for `python:benchmarks.bigbigan_standin:build_standin` (weights: none, always random)."""
    return BigBiGANStandIn(seed=seed)
