"""Reading image files as 8-bit RGB, and bringing images to a square input by one rule.

`load_rgb` turns any image Pillow reads into an H x W x 3 uint8 array:

- L, 1, RGB, YCbCr, ...: converted to RGB by Pillow.
- LA, RGBA, PA and P with a transparent palette entry: composited over **white** (a transparent
  pixel's stored colour is often arbitrary, while white is how such images are usually shown).
- CMYK: Pillow's conversion, R = (255 - K)(255 - C) / 255 and so on (embedded ICC profiles are
  not applied).
- 16-bit grey (I;16, I;16B, I;16L) and 32-bit integer grey (I, assumed to hold 16-bit values, as
  Pillow gives for 16-bit PNG and TIFF): scaled to 8 bits by value * 255 / 65535, rounded; values
  outside 0..65535 are clipped.  (Pillow's own conversion clips at 255, which turns most 16-bit
  photos white.)
- F (32-bit float grey): Pillow's conversion (values taken as 0..255, clipped).

A file that cannot be read or decoded raises `UnreadableImageError`.  EXIF orientation is applied
only when asked (`exif_orientation=True`): benchmark masks are aligned with the stored pixels.

`fit_square` is the rule every encoder input and square crop follows: resize so the shorter side
is S (bilinear, antialiased when shrinking), then crop the centre S x S.

`PHOTO_SUFFIXES` is the one list of photo file suffixes the photo-reading commands accept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA_MODES = {"LA", "RGBA", "PA", "La", "RGBa"}
WHITE = (255, 255, 255)

#: Photo files the commands take from a user's folder (any letter case): the common photo formats
#: `load_rgb` decodes, the benchmarks' image suffixes (evaluation/datasets.py) included.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class UnreadableImageError(OSError):
    """A file that is not an image Pillow can decode (corrupt, truncated, empty, unsupported)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # rebuilt from both arguments when it comes back from a worker process
        return type(self), (self.path, self.reason)


def load_rgb(path: str | Path, exif_orientation: bool = False) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (conversion rules in the module docstring)."""
    try:
        with Image.open(path) as image:
            image.load()
            if exif_orientation:
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except UnreadableImageError:
        raise
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "file not found") from error
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(path, f"too many pixels ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow signals undecodable data with any of these, depending on the format and the damage
        raise UnreadableImageError(path, f"cannot decode image ({type(error).__name__}: {error})") from error
    return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        grey = _sixteen_bit_to_eight(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _sixteen_bit_to_eight(values: np.ndarray) -> np.ndarray:
    scaled = np.clip(values.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return np.rint(scaled).astype(np.uint8)


def to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [-1, 1] (x / 127.5 - 1)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}")
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 127.5 - 1.0


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """The (height, width) `resize_shorter_side` gives: min == side, the aspect ratio kept (rounded)."""
    scale = side / min(height, width)
    return max(side, round(height * scale)), max(side, round(width * scale))


def resize_shorter_side(images: torch.Tensor, side: int) -> torch.Tensor:
    """Resize N x C x H x W so min(H, W) == side, keeping the aspect ratio (rounded)."""
    height, width = images.shape[-2:]
    size = shorter_side_size(height, width, side)
    if size == (height, width):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=side < min(height, width))


def centre_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    """The central side x side window of N x C x H x W (H, W >= side); odd margins lose one more at the end."""
    height, width = images.shape[-2:]
    if height < side or width < side:
        raise ValueError(f"cannot crop {side} x {side} from {height} x {width}")
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top:top + side, left:left + side]


def fit_square(images: torch.Tensor, side: int) -> torch.Tensor:
    """The documented rule: shorter side resized to `side`, then the centre side x side crop."""
    if images.ndim != 4:
        raise ValueError(f"expected N x C x H x W images, got shape {tuple(images.shape)}")
    if side < 1:
        raise ValueError(f"side must be positive, got {side}")
    return centre_crop(resize_shorter_side(images, side), side)


def load_square(path: str | Path, side: int, exif_orientation: bool = False) -> torch.Tensor:
    """An image file as 1 x 3 x side x side float32 in [-1, 1], by `load_rgb` and `fit_square`."""
    return fit_square(to_unit_range(load_rgb(path, exif_orientation))[None], side)
