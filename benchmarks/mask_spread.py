"""Do a set's masks follow objects or sit in one place?  Prints `mask_spread` (generator/synth/spread.py)
for shard sets side by side, and optionally for a folder of real object masks as a yardstick.

    python benchmarks/mask_spread.py v1=data/shards --reference ../shared/datasets/ECSSD/masks

A set is NAME=FOLDER (or just FOLDER), a finished gen-synth output (a path or a URL); its first
--samples masks are read.  Reference masks are resized (nearest) to --size.  The reference is
only described, never used to choose anything.
"""
from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

from generator.synth.spread import mask_spread, read_set_masks

COLUMNS = ("masks", "centroid_std", "area_mean", "area_std", "pairwise_iou", "majority_iou")


def read_reference(folder: Path, limit: int, size: int) -> np.ndarray:
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in {".png", ".jpg", ".bmp"})[:limit]
    if len(paths) < 2:
        raise click.ClickException(f"{folder} holds {len(paths)} mask image(s); at least two are needed")
    masks = []
    for path in paths:
        with Image.open(path) as image:
            masks.append(np.asarray(image.convert("L").resize((size, size), Image.NEAREST)) > 127)
    return np.stack(masks)


def row(name: str, figures: dict) -> str:
    cells = [str(figures["masks"])] + [("n/a" if math.isnan(figures[key]) else f"{figures[key]:.3f}")
                                       for key in COLUMNS[1:]]
    return f"| {name} | " + " | ".join(cells) + " |"


@click.command()
@click.argument("sets", nargs=-1, required=True)
@click.option("--samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Masks read from each set (its first ones).")
@click.option("--reference", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of real object masks to describe beside the sets.")
@click.option("--size", type=click.IntRange(min=8), default=None,
              help="Side the reference masks are resized to; default: the first set's.")
def main(sets, samples, reference, size):
    print("| set | masks | centroid std (sides) | area mean | area std | pairwise IoU | IoU with majority mask |")
    print("|---|---|---|---|---|---|---|")
    for spec in sets:
        name, _, folder = spec.rpartition("=") if "=" in spec and "://" not in spec.split("=", 1)[0] else ("", "", spec)
        try:
            masks = read_set_masks(folder, samples)
        except (ValueError, OSError) as error:
            raise click.ClickException(f"{folder}: {error}") from error
        size = size or masks.shape[1]
        print(row(name or folder, mask_spread(masks)), flush=True)
    if reference is not None:
        print(row(f"{reference} (real masks)", mask_spread(read_reference(reference, samples, size or 128))))


if __name__ == "__main__":
    main()
