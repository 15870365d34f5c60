"""Reading ground-truth masks as 8-bit grey (H x W uint8), whatever mode the file is stored in.

Soft values are kept (PASCAL-S averages annotators, CUB's segmentations are soft); the metric's
convention binarises them (>= 128 for the paper's, > 128 for the toolboxes').  Per mode:

- `1`, `L`: as stored (`1` becomes 0 / 255).
- `P` (palette): through the palette when every used entry is grey; otherwise a label image, so
  index 0 is background (0) and every other index foreground (255).
- `RGB`, `CMYK`, `YCbCr`, ...: the brightest channel of the RGB conversion, so grey masks keep
  their values and a coloured object on black counts as foreground.
- `LA`, `RGBA`, `PA`: the colour part as above, unless it is constant while the alpha channel
  varies (a cut-out stored in the alpha channel): then the alpha channel.
- 16-bit (`I;16*`, `I`): value * 255 / 65535, rounded; `F` (float): taken as [0, 1] when its
  maximum is <= 1, else as 0..255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class UnreadableMaskError(OSError):
    """A mask file that cannot be decoded."""


def load_mask(path: str | Path, convert: Callable[[Image.Image], np.ndarray] | None = None) -> np.ndarray:
    """A mask file as H x W uint8: by the rules in the module docstring, or by `convert` (a
    benchmark's own rule); a file that cannot be decoded raises `UnreadableMaskError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return (convert or mask_from_image)(image)
    except UnreadableMaskError:
        raise
    except FileNotFoundError as error:
        raise UnreadableMaskError(f"{path}: file not found") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableMaskError(f"{path}: cannot decode mask ({type(error).__name__}: {error})") from error


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=2).astype(np.uint8)


def mask_from_image(image: Image.Image) -> np.ndarray:
    """An opened Pillow image as H x W uint8 mask values."""
    mode = image.mode
    if mode in ("1", "L"):
        return np.array(image.convert("L"), dtype=np.uint8)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        return np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        return np.rint(np.clip(np.nan_to_num(values) * scale, 0, 255)).astype(np.uint8)
    if mode == "P":
        return _palette_mask(image)
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = np.array(image.convert("RGBA"), dtype=np.uint8)
        colour, alpha = _brightest_channel(rgba[..., :3]), rgba[..., 3]
        if colour.min() == colour.max() and alpha.min() != alpha.max():
            return alpha.copy()
        return colour
    return _brightest_channel(np.array(image.convert("RGB"), dtype=np.uint8))


def _palette_mask(image: Image.Image) -> np.ndarray:
    indices = np.array(image, dtype=np.uint8)
    palette = np.array(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if palette.shape[0] > used.max() and np.all(palette[used, 0] == palette[used, 1]) \
            and np.all(palette[used, 1] == palette[used, 2]):
        return palette[indices, 0]
    return np.where(indices > 0, 255, 0).astype(np.uint8)
