"""`embed-images`: the embed stage, a folder of photos (or the generator's bundled bank) into a latent bank."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import click
import torch

from generator.embed.bank import BANK_FILE, INDEX_FILE, BankError, LatentBank, copy_bundled_bank, write_bank
from generator.embed.images import IMAGE_SUFFIXES, encode_images
from generator.files import blocking_file
from generator.interface import Generator, GeneratorSpecError
from generator.params import load_params
from generator.registry import build_generator
from generator import runs

SHOWN_SKIPPED = 50  # the index lists every skipped file; the terminal shows this many


@dataclass(frozen=True)
class EmbedSettings:
    """The `embed` section of params.yaml."""

    images: str | None = None   # folder of photos; None: copy the generator's bundled bank
    output: str = "data/bank"
    batch_size: int = 32
    workers: int = 2            # decoding threads
    device: str = "auto"        # auto: cuda when available, else cpu

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> "EmbedSettings":
        if section is not None and not isinstance(section, dict):
            raise click.ClickException(f"the `embed` section must map settings to values, got "
                                       f"{type(section).__name__}")
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise click.ClickException(f"unknown keys in the `embed` section: {', '.join(unknown)} "
                                       f"(known: {', '.join(sorted(known))})")
        settings = cls(**section)
        for name in ("batch_size", "workers"):
            value = getattr(settings, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise click.ClickException(f"embed.{name} must be a positive integer, got {value!r}")
        for name in ("images", "output", "device"):
            value = getattr(settings, name)
            if not (isinstance(value, str) and value.strip() or (name == "images" and value is None)):
                raise click.ClickException(f"embed.{name} must be a non-empty string, got {value!r}")
        return settings


def resolve_device(name: str) -> torch.device:
    try:
        return runs.resolve_device(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="device") from error


def embed_folder(generator: Generator, settings: EmbedSettings, progress: bool) -> tuple[LatentBank, int]:
    """Encode the photos under `settings.images` and write the bank; returns it and the number of files found."""
    folder = Path(settings.images)
    if not folder.is_dir():
        raise click.BadParameter(f"{folder} is not a folder", param_hint="images")
    if not generator.has_encoder:
        raise click.ClickException(
            f"generator {generator.identity} has no encoder, so it cannot embed photos; use a generator "
            f"with one, or set embed.images to null to use the generator's bundled bank")
    encoded = encode_images(generator, folder, settings.batch_size, settings.workers, progress=progress)
    found = len(encoded.files) + len(encoded.skipped)
    if found == 0:
        raise click.ClickException(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    if not encoded.files:
        raise click.ClickException(
            f"none of the {found} image files under {folder} could be read, for example "
            f"{encoded.skipped[0]['path']}: {encoded.skipped[0]['reason']}")
    bank = write_bank(settings.output, encoded.latents, generator.identity, encoded.files, encoded.skipped,
                      source={"kind": "images", "folder": str(settings.images)})
    return bank, found


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file: its `embed` section and the `generator` spec.")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Folder of photos to encode, searched recursively (through links to folders; hidden files "
                   "and folders left out) for jpg, jpeg, png, bmp, tif, tiff and webp files "
                   "[default: embed.images; when that is null, the generator's bundled bank is copied].")
@click.option("--bundled", is_flag=True,
              help="Copy the generator's bundled bank even when embed.images names a folder.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help=f"Folder for {BANK_FILE} and {INDEX_FILE} [default: embed.output].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per encoder call [default: embed.batch_size].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads decoding images ahead of the encoder [default: embed.workers].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: embed.device].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(params_path: str, images: str | None, bundled: bool, out: str | None, batch_size: int | None,
         workers: int | None, device: str | None, quiet: bool) -> None:
    """Encode a folder of photos into the latent bank that encoder-neighbourhood sampling draws from.

    Every image is read as RGB (grey, alpha, palette, CMYK and 16-bit files converted), its
    shorter side resized to the encoder's input size and the centre square cropped, then encoded in
    batches.  Files that cannot be read are skipped, listed here and in the index.  The bank is
    latents.npy (float32, one row per image, in sorted path order) and index.json (generator
    identity, files in row order, skipped files).  With no folder configured, the generator's own
    bundled bank is copied instead (the house generator ships one).
    """
    try:
        params = load_params(params_path)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    if "generator" not in params:
        raise click.ClickException(f"{params_path} has no `generator` section")
    settings = EmbedSettings.from_section(params.get("embed"))
    overrides = {"images": images, "output": out, "batch_size": batch_size, "workers": workers, "device": device}
    settings = replace(settings, **{key: value for key, value in overrides.items() if value is not None})
    if bundled:
        settings = replace(settings, images=None)
    # refused before the encoding, not after it; nothing is made until the bank is written
    blocking = blocking_file(settings.output)
    if blocking is not None:
        raise click.ClickException(f"cannot make the output folder {settings.output}: {blocking} is a file")
    try:
        generator = build_generator(params["generator"])
    except GeneratorSpecError as error:
        raise click.ClickException(str(error)) from error
    generator.to(resolve_device(settings.device))

    if settings.images is not None:
        bank, found = embed_folder(generator, settings, progress=not quiet)
        click.echo(f"embed: encoded {bank.count} of {found} images under {settings.images} with "
                   f"{generator.identity} into {Path(settings.output) / BANK_FILE} "
                   f"({bank.count} x {bank.latents.shape[1]})")
    else:
        if generator.bundled_latent_bank is None:
            raise click.ClickException(
                f"generator {generator.identity} ships no latent bank; set embed.images (or --images) to a "
                f"folder of photos to encode")
        try:
            bank = copy_bundled_bank(generator, settings.output)
        except BankError as error:
            raise click.ClickException(f"the bundled bank of {generator.identity}: {error}") from error
        click.echo(f"embed: copied the bundled bank of {generator.identity} into "
                   f"{Path(settings.output) / BANK_FILE} ({bank.count} x {bank.latents.shape[1]})")
    if bank.skipped:
        click.echo(f"skipped {len(bank.skipped)} unreadable files (all listed in "
                   f"{Path(settings.output) / INDEX_FILE}):")
        for entry in bank.skipped[:SHOWN_SKIPPED]:
            click.echo(f"  {entry['path']}: {entry['reason']}")
        if len(bank.skipped) > SHOWN_SKIPPED:
            click.echo(f"  ... and {len(bank.skipped) - SHOWN_SKIPPED} more")
