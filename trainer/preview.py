"""`train-unet --preview PNG`: the pairs of a run's first step, as the U-Net is given them.

With `train.augment` on, the shards show what the generator drew, not what the U-Net trains on.
This writes a contact sheet (image, mask and overlay per pair, `synth-preview`'s layout) of the
first batch a single-process run would take: the same shards, order and input size, augmented
exactly as its step 0 on a CPU.  Nothing is trained and nothing but the PNG is written.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from generator.files import atomic_write_bytes
from generator.synth.preview import contact_sheet
from trainer import distributed
from trainer.config import TrainConfig
from trainer.loop import augmented_for_step, run_loader, training_plan

#: pairs shown: the first this many of the batch
PREVIEW_PAIRS = 24
PREVIEW_COLUMNS = 4
#: tiles are enlarged (nearest neighbour) to about this many pixels
PREVIEW_TILE = 128


def first_step_pairs(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The batch step 0 of a single-process CPU run trains on: images in [-1, 1], masks, keys."""
    context = distributed.Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, _, input_size, plan = training_plan(config, context)
    images, masks, keys = next(iter(run_loader(config, plan, input_size)))
    images, masks = augmented_for_step(config, images, masks, step=0, rank=0)
    return images, masks, list(keys)


def write_training_preview(config: TrainConfig, out: str | Path, count: int = PREVIEW_PAIRS) -> int:
    """Write the contact sheet of the first `count` pairs of step 0 to `out`; returns the pairs shown."""
    images, masks, keys = first_step_pairs(config)
    images, masks, keys = images[:count], masks[:count], keys[:count]
    pixels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    foreground = masks[:, 0].numpy() > 0.5
    samples = [(key, np.ascontiguousarray(image), mask) for key, image, mask in zip(keys, pixels, foreground)]
    scale = max(1, PREVIEW_TILE // pixels.shape[1])
    png = io.BytesIO()
    contact_sheet(samples, min(PREVIEW_COLUMNS, len(samples)), scale).save(png, format="PNG")
    atomic_write_bytes(Path(out), png.getvalue())
    return len(samples)
