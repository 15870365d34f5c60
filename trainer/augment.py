"""Label-preserving augmentation of training batches: mirrored pairs, varied colours, blur, grain.

A generator draws its objects in a narrow range of colours and textures over smoother grounds,
so a U-Net fitted to its pairs can learn "this colour, this grain is the object" instead of
"this region stands out", which does not carry over to photos.  Each pair is mirrored left to
right with probability 1/2 (image and mask).  Each image then has, in this order:
- its hue rotated by an angle drawn from [-pi, pi) and its chroma scaled by a factor from
  [0, 1.5] (a rotation and scaling of the chroma plane of YIQ, which keeps luma; 0 is grey);
- its contrast about its mean luma scaled by a factor from [0.7, 1.3] and its brightness shifted
  by up to +-0.1 of the range;
- with probability 1/2, a Gaussian blur of width 0.3 to 1.5 pixels, which hides fine texture;
- with probability 1/2, Gaussian grain of standard deviation up to 0.08 of the range, which
  gives smooth regions texture.
Masks only follow the mirror.

Every draw comes from a CPU `torch.Generator` the caller seeds, so a batch's augmentation is a
pure function of that seed and the batch.  The work runs where the batch is: on a GPU only the
per-image parameters are drawn on the CPU, and the grain comes from a generator on the device
seeded from the caller's (the same seed gives other grain there than on the CPU).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

HUE_RANGE = (-math.pi, math.pi)
CHROMA_RANGE = (0.0, 1.5)
CONTRAST_RANGE = (0.7, 1.3)
BRIGHTNESS_SHIFT = 0.1  # in units of the [0, 1] range
BLUR_PROBABILITY = 0.5
BLUR_SIGMA_RANGE = (0.3, 1.5)  # pixels
BLUR_RADIUS = 4
NOISE_PROBABILITY = 0.5
NOISE_STD_RANGE = (0.0, 0.08)  # in units of the [0, 1] range

# RGB -> YIQ (NTSC); the inverse is computed once so the round trip is exact to float precision.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.595716, -0.274453, -0.321263],
                            [0.211456, -0.522591, 0.311135]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def colour_matrices(count: int, generator: torch.Generator) -> torch.Tensor:
    """count x 3 x 3 RGB -> RGB matrices: hue rotation and chroma scaling, applied in YIQ."""
    angle = _uniform(count, HUE_RANGE, generator)
    chroma = _uniform(count, CHROMA_RANGE, generator)
    in_yiq = torch.zeros(count, 3, 3, dtype=torch.float64)
    in_yiq[:, 0, 0] = 1.0
    in_yiq[:, 1, 1] = in_yiq[:, 2, 2] = chroma * torch.cos(angle)
    in_yiq[:, 1, 2] = -chroma * torch.sin(angle)
    in_yiq[:, 2, 1] = chroma * torch.sin(angle)
    return _YIQ_TO_RGB @ in_yiq @ _RGB_TO_YIQ


def augment_pairs(images: torch.Tensor, masks: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of a batch: images N x 3 x H x W in [-1, 1], masks N x 1 x H x W."""
    if images.ndim != 4 or images.shape[1] != 3 or masks.shape[0] != images.shape[0] \
            or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"expected N x 3 x H x W images and N x 1 x H x W masks, got {tuple(images.shape)} "
                         f"and {tuple(masks.shape)}")
    count, device, dtype = images.shape[0], images.device, images.dtype
    mirrored = (torch.rand(count, generator=generator) < 0.5).to(device)
    matrices = colour_matrices(count, generator).to(device, dtype)
    contrast = _uniform(count, CONTRAST_RANGE, generator).to(device, dtype)
    brightness = _uniform(count, (-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT), generator).to(device, dtype)

    images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    masks = torch.where(mirrored[:, None, None, None], masks.flip(-1), masks)
    unit = (images + 1.0) / 2.0
    coloured = torch.einsum("nij,njhw->nihw", matrices, unit)
    luma = (coloured * _RGB_TO_YIQ[0].to(device, dtype)[None, :, None, None]).sum(1, keepdim=True)
    mean_luma = luma.mean(dim=(2, 3), keepdim=True)
    adjusted = mean_luma + contrast[:, None, None, None] * (coloured - mean_luma) + brightness[:, None, None, None]
    blurred = _blurred(adjusted, generator)
    chosen = torch.rand(count, generator=generator) < NOISE_PROBABILITY
    noise_std = (_uniform(count, NOISE_STD_RANGE, generator) * chosen).to(device, dtype)
    noisy = blurred + noise_std[:, None, None, None] * _grain(blurred.shape, dtype, device, generator)
    return noisy.clamp(0.0, 1.0) * 2.0 - 1.0, masks


def _grain(shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Standard normal grain of `shape` on `device`, drawn there (a full-size draw on the CPU would
    hold a GPU back)."""
    if device.type == "cpu":
        return torch.randn(shape, generator=generator, dtype=dtype)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), dtype=dtype, device=device)


def _blurred(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image blurred by a Gaussian of a drawn width with probability BLUR_PROBABILITY."""
    count, channels, height, width = images.shape
    chosen = torch.rand(count, generator=generator) < BLUR_PROBABILITY
    sigma = _uniform(count, BLUR_SIGMA_RANGE, generator)
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=torch.float64)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)
    identity = (offsets == 0).to(torch.float64).expand(count, -1)
    kernels = torch.where(chosen[:, None], kernels, identity).to(images.device, images.dtype)
    kernels = kernels.repeat_interleave(channels, 0)  # one per image channel
    flat = images.reshape(1, count * channels, height, width)
    flat = F.conv2d(F.pad(flat, (BLUR_RADIUS, BLUR_RADIUS, 0, 0), mode="replicate"),
                    kernels[:, None, None, :], groups=count * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, BLUR_RADIUS, BLUR_RADIUS), mode="replicate"),
                    kernels[:, None, :, None], groups=count * channels)
    return flat.reshape(count, channels, height, width)
