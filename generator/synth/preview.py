"""`synth-preview`: a PNG contact sheet of a shard set: image, mask and overlay per sample.

Reads the shards with `tarfile` only (never extracting), so it previews any set in the public
format, with or without a manifest.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

from generator.files import atomic_write_bytes
from generator.synth.verify import default_folder, read_samples

GAP = 2
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def first_samples(folder: Path, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, RGB uint8 image, bool mask) of the first `count` samples, shards in name order."""
    found = []
    for path in sorted(folder.glob("*.tar")):
        samples, _ = read_samples(path)
        for key, members in samples.items():
            if "jpg" not in members or "mask.png" not in members:
                continue
            image = np.asarray(Image.open(io.BytesIO(members["jpg"])).convert("RGB"))
            mask = np.asarray(Image.open(io.BytesIO(members["mask.png"])).convert("L")) > 127
            found.append((key, image, mask))
            if len(found) == count:
                return found
    return found


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Foreground tinted red, background dimmed."""
    out = image.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * OVERLAY_COLOUR
    out[~mask] *= 0.45
    return out.round().astype(np.uint8)


def contact_sheet(samples: list[tuple[str, np.ndarray, np.ndarray]], columns: int, scale: int) -> Image.Image:
    """Grid of [image | mask | overlay] triples, `columns` triples per row, on a white ground."""
    side = samples[0][1].shape[0]
    tile = side * scale
    triple = 3 * tile + 2 * GAP
    rows = math.ceil(len(samples) / columns)
    sheet = Image.new("RGB", (columns * triple + (columns - 1) * 3 * GAP, rows * tile + (rows - 1) * GAP), "white")
    for n, (_, image, mask) in enumerate(samples):
        row, column = divmod(n, columns)
        x, y = column * (triple + 3 * GAP), row * (tile + GAP)
        mask_rgb = np.repeat((mask * np.uint8(255))[..., None], 3, axis=2)
        for k, part in enumerate((image, mask_rgb, overlay(image, mask))):
            picture = Image.fromarray(np.ascontiguousarray(part)).resize((tile, tile), Image.NEAREST)
            sheet.paste(picture, (x + k * (tile + GAP), y))
    return sheet


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(file_okay=False), required=False)
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml",
              show_default=True, help="Parameters file whose synth.output is the default FOLDER.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="synth-preview.png", show_default=True,
              help="PNG file to write.")
@click.option("--count", type=click.IntRange(min=1), default=24, show_default=True,
              help="Number of samples shown (the first ones, shards in order).")
@click.option("--columns", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per row; each sample is an image, its mask and an overlay.")
@click.option("--scale", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Enlarge every tile this many times (nearest neighbour).")
def main(folder: str | None, params_path: str, out_path: str, count: int, columns: int, scale: int) -> None:
    """Write a contact sheet of the samples in FOLDER (default: synth.output of params.yaml).

    Each sample shows as three tiles: the image, its mask (white foreground) and an overlay
    (foreground tinted red, background dimmed).  These are the pairs as generated; `train-unet
    --preview` shows them as the U-Net is given them, augmented when train.augment is on.
    """
    folder_path = Path(folder or default_folder(params_path))
    if not folder_path.is_dir():
        raise click.ClickException(f"shard folder {folder_path} not found")
    samples = first_samples(folder_path, count)
    if not samples:
        raise click.ClickException(f"no readable samples (KEY.jpg + KEY.mask.png) in {folder_path}/*.tar")
    out = Path(out_path)
    png = io.BytesIO()
    contact_sheet(samples, min(columns, len(samples)), scale).save(png, format="PNG")
    atomic_write_bytes(out, png.getvalue())
    click.echo(f"wrote {out}: {len(samples)} samples from {folder_path}")


if __name__ == "__main__":
    main()
