"""The inference protocol (DESIGN.md section 1), batched where image sizes allow.

Each image is read as 8-bit RGB (`generator.image_io.load_rgb`), resized so its shorter side is
the model's input size (bilinear, antialiased when shrinking: `resize_shorter_side`), scaled to
[-1, 1], predicted, and the probability map is resized back to the mask's size (bilinear).
Images whose resized shapes agree are predicted together; their shapes are read from the file
headers first, so grouping costs no decoding.  Images are decoded in a background thread while
the previous batch is predicted.

The evaluator (`predict_benchmark`) and `segment-images` both go through `plan_shape_batches`,
`prefetched` and `predict_images`, so a photo is segmented exactly as a benchmark image is.  Both
read shapes with `protocol_size`, which refuses an image so elongated that its resized input would
exhaust memory (`MAX_SIDE_RATIO`): segment-images skips and lists it, evaluation stops naming it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.datasets import Benchmark, Pair
from evaluation.predictors import Predictor
from generator.image_io import UnreadableImageError, load_rgb, resize_shorter_side, shorter_side_size, to_unit_range

#: The longest side a resized input may have, in multiples of the model's input size (so at most
#: 32 squares' worth of pixels).  The U-Net's memory grows with the input's area: a 1500 x 1 image,
#: resized to 96,000 x 64, took 3.1 GB and 16 s with the demo model.  Ordinary photos and most
#: panoramas stay well under 32:1, and 32 x 64 by 64 pixels is about one 360 x 360 input.
MAX_SIDE_RATIO = 32


class ElongatedImageError(ValueError):
    """An image whose resized input would be longer than MAX_SIDE_RATIO times the input size."""


def input_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """The size `resize_shorter_side` gives an image of height x width (shorter side = side);
    ElongatedImageError when its longer side would exceed MAX_SIDE_RATIO x side."""
    shape = shorter_side_size(height, width, side)
    if max(shape) > MAX_SIDE_RATIO * side:
        raise ElongatedImageError(
            f"too elongated: {height} x {width} would be resized to {shape[0]} x {shape[1]}, longer than "
            f"{MAX_SIDE_RATIO} times the model's input size {side} (the limit that keeps memory bounded)")
    return shape


def protocol_input(rgb: np.ndarray, side: int) -> torch.Tensor:
    """One 8-bit RGB photo as the model sees it: 1 x 3 x H' x W' in [-1, 1], shorter side `side`."""
    return resize_shorter_side(to_unit_range(rgb)[None], side)


def image_size(path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"cannot read image header ({error})") from error
    return height, width


def protocol_size(path, side: int) -> tuple[int, int]:
    """(height, width) from the file header, for an image the protocol can take at input size
    `side`; UnreadableImageError naming the file for one it cannot (unreadable, or too elongated)."""
    height, width = image_size(path)
    try:
        input_shape(height, width, side)
    except ElongatedImageError as error:
        raise UnreadableImageError(path, str(error)) from error
    return height, width


def plan_shape_batches(shapes: Sequence[tuple[int, int]], side: int, batch_size: int) -> list[list[int]]:
    """Indices of images of (height, width) `shapes` grouped by resized input shape, at most
    batch_size each, in a fixed order (first appearance of each shape)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(input_shape(*shape, side), []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


def plan_batches(pairs: Sequence[Pair], side: int, batch_size: int) -> list[list[int]]:
    """Indices of `pairs` grouped by resized input shape, at most batch_size each, in a fixed order.
    An image the protocol cannot take raises UnreadableImageError: a benchmark is scored whole or not at all."""
    return plan_shape_batches([protocol_size(pair.image, side) for pair in pairs], side, batch_size)


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
    # not in place: the map may be an inference-mode tensor when no resize was needed
    return probabilities.clamp(0.0, 1.0).numpy().astype(np.float32, copy=False)


def input_side(predictors: Sequence[Predictor]) -> int:
    """The input size every predictor shares (they are run on the same resized batch)."""
    sides = {predictor.input_size for predictor in predictors}
    if len(sides) != 1:
        raise ValueError(f"predictors evaluated together must share an input size, got {sorted(sides)}")
    return sides.pop()


def predict_images(predictors: Sequence[Predictor], images: Sequence[np.ndarray],
                   sizes: Sequence[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    """The protocol for one batch: H x W x 3 uint8 images whose resized shapes agree (see
    `plan_shape_batches`) -> per image, each predictor's probability map resized to its `sizes` entry."""
    side = input_side(predictors)
    inputs = torch.cat([protocol_input(image, side) for image in images])
    outputs = {predictor.name: predictor(inputs) for predictor in predictors}
    return [{name: resize_to(output[index], size) for name, output in outputs.items()}
            for index, size in enumerate(sizes)]


Batch = TypeVar("Batch")
Loaded = TypeVar("Loaded")


def prefetched(batches: Sequence[Batch], load: Callable[[Batch], Loaded]) -> Iterator[tuple[Batch, Loaded]]:
    """(batch, load(batch)) in order, the next batch loading in a background thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(load, batches[0]) if batches else None
        for number, batch in enumerate(batches):
            loaded = pending.result()
            if number + 1 < len(batches):
                pending = reader.submit(load, batches[number + 1])
            yield batch, loaded


def predict_benchmark(benchmark: Benchmark, predictors: Sequence[Predictor], batch_size: int = 16,
                      limit: int | None = None, part: int = 0, parts: int = 1) -> Iterator[Prediction]:
    """Run every predictor over the benchmark's pairs by the protocol; yields one `Prediction` per image.

    With `parts` > 1, only the batches part, part + parts, ... of the plan: the parts share the
    work out whole batches at a time, so every image's maps are those of a single run."""
    side = input_side(predictors)
    pairs = benchmark.pairs[:limit] if limit else benchmark.pairs
    batches = [[pairs[i] for i in batch] for batch in plan_batches(pairs, side, batch_size)][part::parts]

    def load(batch: list[Pair]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(load_rgb(pair.image), benchmark.read_mask(pair)) for pair in batch]

    for batch, loaded in prefetched(batches, load):
        maps = predict_images(predictors, [image for image, _ in loaded], [mask.shape for _, mask in loaded])
        for pair, (image, mask), pair_maps in zip(batch, loaded, maps):
            yield Prediction(pair, image, mask, pair_maps)
