"""The contact sheet: what the best candidates do, so a person can check the automatic choice.

One row per (candidate, sign) for the best-scored candidates, both signs each, plus the chosen
one when an override picked it from further down.  A row shows its label and score, then for the
first samples of the scoring batch: image G(z), shifted image G(z + s m v) and the filtered mask.
A mask the filters rejected is framed in red; the chosen row's label is green.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from generator.discovery.config import ScoringConfig
from generator.discovery.scoring import CandidateScore, filter_config, render, scoring_latents
from generator.discovery.selection import Choice
from generator.interface import Generator

LABEL_WIDTH = 150
GAP = 4
MIN_TILE = 48
MAX_TILE = 128
BACKGROUND = (255, 255, 255)
REJECTED = (220, 30, 30)
CHOSEN = (20, 140, 40)


def sheet_rows(scores: list[CandidateScore], choice: Choice, candidates_shown: int) -> list[CandidateScore]:
    """The rows to draw: the best `candidates_shown` indices (by their better sign), both signs each,
    and the chosen index if it is not among them."""
    indices: list[int] = []
    for score in scores:  # best first
        if score.index not in indices and len(indices) < candidates_shown:
            indices.append(score.index)
    if choice.index not in indices:
        indices.append(choice.index)
    by_key = {(score.index, score.sign): score for score in scores}
    return [by_key[(index, sign)] for index in indices for sign in (1, -1)]


def to_tile(array: np.ndarray, side: int) -> Image.Image:
    """An H x W (mask) or 3 x H x W (image in [-1, 1]) array as an RGB tile of the given side."""
    if array.ndim == 2:
        pixels = np.repeat((array.astype(np.uint8) * 255)[..., None], 3, axis=2)
    else:
        pixels = np.clip((array.transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if image.width != side:
        image = image.resize((side, side), Image.NEAREST if side > image.width else Image.BILINEAR)
    return image


def make_contact_sheet(generator: Generator, candidates: torch.Tensor, scores: list[CandidateScore],
                       choice: Choice, magnitude: float, config: ScoringConfig, seed: int = 0) -> Image.Image:
    """Render the contact sheet as a PIL image (see the module docstring)."""
    rows = sheet_rows(scores, choice, config.sheet_candidates)
    samples = min(config.sheet_samples, config.batch_size)
    z = scoring_latents(generator, config, seed)[:samples]
    filters = filter_config(config)
    side = generator.resolution
    tile = min(MAX_TILE, side * max(1, math.ceil(MIN_TILE / side)))
    group = 3 * tile + 2 * GAP
    width = LABEL_WIDTH + samples * (group + 3 * GAP)
    header = 18
    sheet = Image.new("RGB", (width, header + len(rows) * (tile + GAP) + GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for j in range(samples):
        left = LABEL_WIDTH + j * (group + 3 * GAP)
        for caption, offset in (("image", 0), ("shifted", tile + GAP), ("mask", 2 * (tile + GAP))):
            draw.text((left + offset + 2, 3), caption, fill=(0, 0, 0))
    for r, score in enumerate(rows):
        top = header + r * (tile + GAP)
        chosen = (score.index, score.sign) == (choice.index, choice.sign)
        colour = CHOSEN if chosen else (0, 0, 0)
        lines = [f"direction {score.index} sign {'+' if score.sign > 0 else '-'}",
                 f"score {score.total:.3f}", f"pass {score.pass_rate:.2f} fg {score.foreground_fraction:.2f}",
                 f"border {score.border:.2f} coh {score.coherence:.2f}"]
        if chosen:
            lines.append(f"CHOSEN ({choice.chosen_by})")
        draw.multiline_text((4, top + 2), "\n".join(lines), fill=colour, spacing=2)
        rendered = render(generator, z, score.sign * magnitude * candidates[:, score.index], filters)
        for j in range(samples):
            left = LABEL_WIDTH + j * (group + 3 * GAP)
            sheet.paste(to_tile(rendered.images[j].numpy(), tile), (left, top))
            sheet.paste(to_tile(rendered.shifted[j].numpy(), tile), (left + tile + GAP, top))
            mask_left = left + 2 * (tile + GAP)
            sheet.paste(to_tile(rendered.filtered.masks[j], tile), (mask_left, top))
            if not rendered.filtered.keep[j]:
                draw.rectangle((mask_left, top, mask_left + tile - 1, top + tile - 1), outline=REJECTED, width=2)
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes (written atomically by the caller)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
