"""The inference protocol (DESIGN.md section 1), batched where image sizes allow.

Each image is read as 8-bit RGB (`generator.image_io.load_rgb`), resized so its shorter side is
the model's input size (bilinear, antialiased when shrinking: `resize_shorter_side`), scaled to
[-1, 1], predicted, and the probability map is resized back to the mask's size (bilinear).
Images whose resized shapes agree are predicted together; their shapes are read from the file
headers first, so grouping costs no decoding.  Images are decoded in a background thread while
the previous batch is predicted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.datasets import Benchmark, Pair
from evaluation.predictors import Predictor
from generator.image_io import UnreadableImageError, load_rgb, resize_shorter_side, to_unit_range


def input_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """The size `resize_shorter_side` gives an image of height x width (shorter side = side)."""
    scale = side / min(height, width)
    return max(side, round(height * scale)), max(side, round(width * scale))


def protocol_input(rgb: np.ndarray, side: int) -> torch.Tensor:
    """One 8-bit RGB photo as the model sees it: 1 x 3 x H' x W' in [-1, 1], shorter side `side`."""
    return resize_shorter_side(to_unit_range(rgb)[None], side)


def image_size(path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(path, f"cannot read image header ({error})") from error
    return height, width


def plan_batches(pairs: Sequence[Pair], side: int, batch_size: int) -> list[list[int]]:
    """Indices of `pairs` grouped by resized input shape, at most batch_size each, in a fixed order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, pair in enumerate(pairs):
        groups.setdefault(input_shape(*image_size(pair.image), side), []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


@dataclass
class Prediction:
    """One benchmark image after the protocol: its pixels, mask and each predictor's map at mask size."""

    pair: Pair
    image: np.ndarray
    mask: np.ndarray
    maps: dict[str, np.ndarray]


def resize_to(probabilities: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """An H x W probability map resized (bilinear) to `size`, as float32 in [0, 1]."""
    if tuple(probabilities.shape[-2:]) != tuple(size):
        probabilities = F.interpolate(probabilities[None, None], size=size, mode="bilinear",
                                      align_corners=False)[0, 0]
    return probabilities.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


def _load(benchmark: Benchmark, pairs: list[Pair]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(load_rgb(pair.image), benchmark.read_mask(pair)) for pair in pairs]


def predict_benchmark(benchmark: Benchmark, predictors: Sequence[Predictor], batch_size: int = 16,
                      limit: int | None = None) -> Iterator[Prediction]:
    """Run every predictor over the benchmark's pairs by the protocol; yields one `Prediction` per image."""
    sides = {predictor.input_size for predictor in predictors}
    if len(sides) != 1:
        raise ValueError(f"predictors evaluated together must share an input size, got {sorted(sides)}")
    side = sides.pop()
    pairs = benchmark.pairs[:limit] if limit else benchmark.pairs
    batches = [[pairs[i] for i in batch] for batch in plan_batches(pairs, side, batch_size)]
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(_load, benchmark, batches[0]) if batches else None
        for number, batch in enumerate(batches):
            loaded = pending.result()
            if number + 1 < len(batches):
                pending = reader.submit(_load, benchmark, batches[number + 1])
            inputs = torch.cat([protocol_input(image, side) for image, _ in loaded])
            outputs = {predictor.name: predictor(inputs) for predictor in predictors}
            for index, (pair, (image, mask)) in enumerate(zip(batch, loaded)):
                maps = {name: resize_to(output[index], mask.shape) for name, output in outputs.items()}
                yield Prediction(pair, image, mask, maps)
