"""The segmentation network: a U-Net (Ronneberger et al., 2015) with one logit per pixel.

The paper trains it with 64 base channels and bilinear up-sampling; the width, the depth and
the up-sampling mode are arguments so a small model fits a CPU demo.  Any input side works:
the decoder pads each up-sampled map to its skip connection's size, so odd sizes lose nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURE = "unet"


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU: the U-Net's basic block."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid_channels = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution with 2x2 max pooling, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Double the resolution, concatenate the encoder's skip map, then a double convolution.

    Bilinear up-sampling has no weights and keeps the channel count, so the block halves the
    channels in its convolutions instead; a transposed convolution halves them itself.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            up_channels = in_channels
            self.conv = DoubleConv(up_channels + skip_channels, out_channels, (up_channels + skip_channels) // 2)
        else:
            up_channels = in_channels // 2
            self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
            self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes: pooling floored them, so pad back to the skip map's size.
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Maps N x in_channels x H x W images (in [-1, 1]) to N x 1 x H x W saliency logits.

    `base_channels` is the first level's width; each of the `depth` down-sampling levels doubles
    it.  With bilinear up-sampling the bottleneck is halved (as in common U-Net variants), which
    keeps the parameter count of the bilinear and transposed versions close.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 4,
                 bilinear: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 2 or depth < 1:
            raise ValueError(f"U-Net needs in_channels >= 1, base_channels >= 2 and depth >= 1, "
                             f"got {in_channels}, {base_channels}, {depth}")
        self.in_channels, self.base_channels, self.depth, self.bilinear = in_channels, base_channels, depth, bilinear
        widths = [base_channels * 2 ** level for level in range(depth + 1)]
        bottom_factor = 2 if bilinear else 1
        widths[-1] //= bottom_factor
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[level], widths[level + 1]) for level in range(depth))
        ups = []
        in_width = widths[-1]
        for level in reversed(range(depth)):
            out_width = widths[level] // bottom_factor if level > 0 else widths[0]
            ups.append(Up(in_width, widths[level], out_width, bilinear))
            in_width = out_width
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(images)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    @property
    def architecture(self) -> dict[str, Any]:
        """Everything `from_architecture` needs to rebuild this network (weights aside)."""
        return {"architecture": ARCHITECTURE, "in_channels": self.in_channels,
                "base_channels": self.base_channels, "depth": self.depth, "bilinear": self.bilinear}

    @classmethod
    def from_architecture(cls, config: dict[str, Any]) -> "UNet":
        """Rebuild from a dict holding (at least) the keys of `architecture`."""
        if config.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ValueError(f"not a U-Net configuration: architecture is {config.get('architecture')!r}")
        return cls(in_channels=int(config.get("in_channels", 3)), base_channels=int(config["base_channels"]),
                   depth=int(config.get("depth", 4)), bilinear=bool(config.get("bilinear", True)))
