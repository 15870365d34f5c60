"""`synth-preview`: a PNG contact sheet of a shard set: image, mask and overlay per sample.

Reads the shards with `tarfile` only (never extracting), so it previews any set in the public
format, with or without a manifest, in a folder or at a URL.  The set may come from elsewhere:
shards and pictures are read with synth-verify's functions (whole shards into memory, headers
checked before anything is decoded), and a sample that does not decode is skipped with a warning
naming its shard, its key and why.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

from generator.files import atomic_write_bytes, blocking_file
from generator.synth.store import StoreError, open_output
from generator.synth.verify import PICTURE_ERRORS, MemberError, decode_picture, default_folder, read_samples

GAP = 2
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)
#: Largest picture side shown: a larger header is refused before decoding (gen-synth's sets are far
#: smaller), which also bounds the sheet's size.
MAX_SIDE = 1024


def decode_pair(members: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, bool mask) of one sample; MemberError saying which member is wrong and how."""
    missing = [extension for extension in ("jpg", "mask.png") if extension not in members]
    if missing:
        raise MemberError(f"has no {' and no '.join(missing)} member")
    try:
        image = decode_picture(members["jpg"], lambda picture: max(picture.size) <= MAX_SIDE,
                               f"at most {MAX_SIDE} x {MAX_SIDE}")
    except MemberError as error:
        raise MemberError(f"jpg {error}") from error
    try:
        mask = decode_picture(members["mask.png"], lambda picture: picture.size == image.size,
                              f"the image's size {image.size}")
    except MemberError as error:
        raise MemberError(f"mask.png {error}") from error
    try:
        return np.asarray(image.convert("RGB")), np.asarray(mask.convert("L")) > 127
    except PICTURE_ERRORS as error:                   # a mode Pillow cannot convert
        raise MemberError(f"cannot be shown: {error}") from error


def first_samples(folder, count: int) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """(key, RGB uint8 image, bool mask) of the first `count` samples of a folder (a path, a URL or
    an open store), shards in name order, and warnings about the shards and samples skipped."""
    store = open_output(folder)
    found, warnings = [], []
    try:
        listing = store.listing()
    except (OSError, StoreError) as error:   # StoreError: an object store's own refusal
        return [], [f"{store.location} cannot be listed ({error})"]
    for name, size in sorted(listing.items()):
        if not name.endswith(".tar"):
            continue
        if size is None:
            warnings.append(f"{name}: skipped, not a file (a folder or a broken link)")
            continue
        try:
            data = store.read_bytes(name)
        except (OSError, StoreError) as error:
            warnings.append(f"{name}: skipped, cannot be read ({error})")
            continue
        samples, problems = read_samples(name, io.BytesIO(data))
        warnings.extend(problems)
        for key, members in samples.items():
            try:
                found.append((key, *decode_pair(members)))
            except MemberError as error:
                warnings.append(f"{name}: sample {key} skipped: {error}")
                continue
            if len(found) == count:
                return found, warnings
    return found, warnings


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


def check_out_path(out: Path) -> None:
    """ClickException unless a PNG can be written at `out`: its name ends in .png and no file
    stands where one of its folders should be."""
    if out.suffix.lower() != ".png":
        raise click.ClickException(f"--out {out}: the contact sheet is a PNG, name it NAME.png")
    blocking = blocking_file(out, itself=False)
    if blocking is not None:
        raise click.ClickException(f"--out {out}: cannot write there, {blocking} is a file, not a folder")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", required=False)
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml",
              show_default=True, help="Parameters file whose synth.output is the default FOLDER.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="synth-preview.png", show_default=True,
              help="PNG file to write; its name must end in .png (another suffix is refused).")
@click.option("--count", type=click.IntRange(min=1), default=24, show_default=True,
              help="Number of samples shown (the first ones, shards in order).")
@click.option("--columns", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per row; each sample is an image, its mask and an overlay.")
@click.option("--scale", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Enlarge every tile this many times (nearest neighbour).")
def main(folder: str | None, params_path: str, out_path: str, count: int, columns: int, scale: int) -> None:
    """Write a contact sheet of the samples in FOLDER (a path or an fsspec URL such as
    s3://bucket/set; default: synth.output of params.yaml).

    Each sample shows as three tiles: the image, its mask (white foreground) and an overlay
    (foreground tinted red, background dimmed).  These are the pairs as generated; `train-unet
    --preview` shows them as the U-Net is given them, augmented when train.augment is on.
    Shards and samples that cannot be read are skipped with a warning.
    """
    out = Path(out_path)
    check_out_path(out)
    location = folder or default_folder(params_path)
    try:
        store = open_output(location)
    except StoreError as error:
        raise click.ClickException(str(error)) from error
    if not store.is_url and not store.path.is_dir():
        raise click.ClickException(f"shard folder {location} not found")
    samples, warnings = first_samples(store, count)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not samples:
        raise click.ClickException(f"no readable samples (KEY.jpg + KEY.mask.png) in {location}/*.tar")
    png = io.BytesIO()
    contact_sheet(samples, min(columns, len(samples)), scale).save(png, format="PNG")
    try:
        atomic_write_bytes(out, png.getvalue())
    except OSError as error:
        raise click.ClickException(f"cannot write {out}: {error}") from error
    click.echo(f"wrote {out}: {len(samples)} samples from {location}")


if __name__ == "__main__":
    main()
