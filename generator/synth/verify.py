"""`synth-verify`: check a shard set against its manifest, reading it as any consumer would.

Checks: every listed shard exists with the recorded size and sha256, no unlisted shard lies
beside them, the dataset card (README.md) has the size and sha256 the manifest lists, every
sample has exactly the manifest's members under a dot-free key, every member decodes (JPEG, 8-bit 0/255 PNG mask of the right size, JSON that agrees with the manifest, float32
latents read without pickle), and the counts add up.  Problems are listed, and the exit is non-zero.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from generator.params import load_params
from generator.synth.card import check_card
from generator.synth.manifest import ManifestError, read_manifest
from generator.synth.settings import SynthSettings
from generator.synth.store import StoreError, open_output

KEY_PATTERN = re.compile(r"^(\d{6})_(\d{6})$")


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_samples(path: Path | str, fileobj=None) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """Samples of one tar (a path, or an open binary file named `path`) as {key: {extension:
    bytes}} in file order, and problems met reading it."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    problems = []
    path = Path(str(path))
    try:
        with tarfile.open(None if fileobj is not None else path, mode="r:", fileobj=fileobj) as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"{path.name}: member {member.name!r} is not a regular file")
                    continue
                key, dot, extension = member.name.partition(".")
                if not dot or "/" in member.name:
                    problems.append(f"{path.name}: member {member.name!r} is not KEY.EXTENSION")
                    continue
                if extension in samples[key]:
                    problems.append(f"{path.name}: member {member.name!r} appears twice")
                samples[key][extension] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        problems.append(f"{path.name}: cannot be read as a tar file ({error})")
    return dict(samples), problems


def check_sample(shard: str, key: str, members: dict[str, bytes], manifest: dict[str, Any],
                 index: int) -> list[str]:
    """Problems with one sample's members; an empty list when it is sound."""
    where = f"{shard}: sample {key}"
    expected = set(manifest["members"])
    if set(members) != expected:
        return [f"{where} has members {sorted(members)}, expected {sorted(expected)}"]
    match = KEY_PATTERN.match(key)
    if not match or int(match.group(1)) != index:
        return [f"{where}: key is not {index:06d}_NNNNNN"]
    problems = []
    size = manifest.get("image_size")
    try:
        with Image.open(io.BytesIO(members["jpg"])) as image:
            image.load()
            if image.format != "JPEG" or image.mode != "RGB" or image.size != (size, size):
                problems.append(f"{where}.jpg is {image.format} {image.mode} {image.size}, "
                                f"expected JPEG RGB {size} x {size}")
    except (OSError, ValueError) as error:
        problems.append(f"{where}.jpg does not decode: {error}")
    mask = None
    try:
        with Image.open(io.BytesIO(members["mask.png"])) as image:
            image.load()
            if image.format != "PNG" or image.mode != "L" or image.size != (size, size):
                problems.append(f"{where}.mask.png is {image.format} {image.mode} {image.size}, "
                                f"expected an 8-bit grey PNG {size} x {size}")
            else:
                mask = np.asarray(image)
                if not np.isin(mask, (0, 255)).all():
                    problems.append(f"{where}.mask.png holds values other than 0 and 255")
    except (OSError, ValueError) as error:
        problems.append(f"{where}.mask.png does not decode: {error}")
    try:
        record = json.loads(members["json"])
        if record.get("key") != key or record.get("shard") != index:
            problems.append(f"{where}.json names key {record.get('key')!r} shard {record.get('shard')!r}")
        if record.get("generator") != manifest["generator"]["identity"]:
            problems.append(f"{where}.json names generator {record.get('generator')!r}")
        if mask is not None and abs(record.get("foreground_fraction", -1) - (mask > 0).mean()) > 1e-5:
            problems.append(f"{where}.json foreground_fraction does not match the mask")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as error:
        problems.append(f"{where}.json is not a valid record: {error}")
    if "latent.npy" in members:
        try:
            latent = np.load(io.BytesIO(members["latent.npy"]), allow_pickle=False)
            if latent.dtype != np.float32 or latent.shape != (manifest["generator"]["latent_dim"],):
                problems.append(f"{where}.latent.npy is {latent.dtype} {latent.shape}")
        except (ValueError, OSError) as error:
            problems.append(f"{where}.latent.npy does not load: {error}")
    return problems


def verify_folder(folder: str | Path, decode: bool = True, progress: bool = False) -> VerifyReport:
    """Check a shard folder (a path or an fsspec URL) against its manifest; the report lists every
    problem found."""
    report = VerifyReport()
    try:
        folder = open_output(folder)
    except StoreError as error:
        report.problems.append(str(error))
        return report
    try:
        manifest = read_manifest(folder)
    except ManifestError as error:
        report.problems.append(str(error))
        return report
    rows = manifest["shards"]
    listed = {row["name"] for row in rows}
    listing = folder.listing()
    for extra in sorted(name for name, size in listing.items()
                        if name.endswith(".tar") and size is not None and name not in listed):
        report.problems.append(f"{extra} is not listed in the manifest")
    for row in tqdm(rows, desc="synth-verify", unit="shard", disable=not progress):
        report.shards += 1
        size = listing.get(row["name"])
        if size is None:
            report.problems.append(f"{row['name']} is missing")
            continue
        # One read of the shard serves the checksum and the samples (it may come over a network).
        data = folder.read_bytes(row["name"])
        if size != row["bytes"]:
            report.problems.append(f"{row['name']} has {size} bytes, the manifest says {row['bytes']} "
                                   f"(truncated or changed)")
        elif hashlib.sha256(data).hexdigest() != row["sha256"]:
            report.problems.append(f"{row['name']} does not match its sha256 in the manifest (changed or corrupt)")
        samples, problems = read_samples(row["name"], io.BytesIO(data))
        report.problems.extend(problems)
        if len(samples) != row["samples"]:
            report.problems.append(f"{row['name']} holds {len(samples)} samples, the manifest says {row['samples']}")
        if row["candidates"] < row["samples"]:
            report.problems.append(f"{row['name']}: fewer candidates ({row['candidates']}) than samples")
        report.samples += len(samples)
        if decode:
            for key, members in samples.items():
                report.problems.extend(check_sample(row["name"], key, members, manifest, row["shard"]))
    totals = manifest["totals"]
    expected = {"samples": sum(row["samples"] for row in rows),
                "candidates": sum(row["candidates"] for row in rows)}
    for name, value in expected.items():
        if totals.get(name) != value:
            report.problems.append(f"manifest totals.{name} is {totals.get(name)}, its shards add up to {value}")
    if manifest["parameters"].get("n") != expected["samples"]:
        report.problems.append(f"manifest asks for n = {manifest['parameters'].get('n')} samples, "
                               f"its shards hold {expected['samples']}")
    if [row["shard"] for row in rows] != list(range(len(rows))):
        report.problems.append("manifest shards are not numbered 0, 1, 2, ... in order")
    report.problems.extend(check_card(folder, manifest))
    return report


def default_folder(params_path: str) -> str:
    """synth.output of the parameters file, or data/shards without one."""
    try:
        return str((load_params(params_path).get("synth") or {}).get("output", SynthSettings.output))
    except (FileNotFoundError, ValueError):
        return SynthSettings.output


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", required=False)
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml",
              show_default=True, help="Parameters file whose synth.output is the default FOLDER.")
@click.option("--no-decode", is_flag=True,
              help="Only check files, sizes, checksums and counts; do not decode every member.")
def main(folder: str | None, params_path: str, no_decode: bool) -> None:
    """Check the shard set in FOLDER (a path or an fsspec URL such as s3://bucket/set; default:
    synth.output of params.yaml) against its manifest.json.

    Exits with status 1 and lists every problem (missing, truncated or changed shards, members
    that do not decode, counts that do not add up); prints one OK line otherwise.
    """
    folder = folder or default_folder(params_path)
    report = verify_folder(folder, decode=not no_decode, progress=True)
    if report.ok:
        click.echo(f"OK: {folder}: {report.shards} shards, {report.samples} samples match the manifest")
        return
    for problem in report.problems[:100]:
        click.echo(f"problem: {problem}", err=True)
    if len(report.problems) > 100:
        click.echo(f"... and {len(report.problems) - 100} more", err=True)
    raise click.ClickException(f"{folder}: {len(report.problems)} problems found")


if __name__ == "__main__":
    main()
