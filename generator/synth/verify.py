"""`synth-verify`: check a shard set against its manifest, reading it as any consumer would.

Checks: every listed shard exists with the recorded size and sha256, no unlisted shard lies
beside them, the dataset card (README.md) has the size and sha256 the manifest lists, every
sample has exactly the manifest's members under a dot-free key, every member decodes (JPEG, 8-bit 0/255 PNG mask of the right size, JSON that agrees with the manifest, float32
latents read without pickle), and the counts add up.  Problems are listed, and the exit is non-zero.

The set comes from elsewhere, so nothing in it is trusted: a malformed manifest is one problem
naming the field, a picture is decoded only once its header shows the expected size (a small file
may claim a huge picture), and no size a header declares is allocated before it is checked against
the bytes that are really there.  synth-preview reads shards and pictures with the same functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tokenize
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from generator.parallel import run_parts
from generator.params import load_params
from generator.synth.card import check_card
from generator.synth.manifest import ManifestError, read_manifest
from generator.synth.settings import SynthSettings
from generator.synth.store import Store, StoreError, open_output

KEY_PATTERN = re.compile(r"^(\d{6})_(\d{6})$")
#: What Pillow raises on a bad file: OSError (UnidentifiedImageError, truncated data), ValueError,
#: EOFError, SyntaxError (its PNG reader's broken chunk) and DecompressionBombError (a header
#: claiming a huge picture), which derives from none of the others.
PICTURE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)
#: Header readers of the .npy versions np.save writes.
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class MemberError(Exception):
    """A member that does not decode or is not what it should be; the message says how."""


def read_samples(path: Path | str, fileobj=None) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """Samples of one tar (a path, or an open binary file named `path`) as {key: {extension:
    bytes}} in file order, and problems met reading it.

    The whole tar is read into memory first (its members are kept anyway): tarfile then reads
    from bytes that are there, and a header claiming a huge member or pax record allocates nothing.
    """
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    problems = []
    path = Path(str(path))
    try:
        data = path.read_bytes() if fileobj is None else fileobj.read()
    except OSError as error:
        return {}, [f"{path.name}: cannot be read ({error})"]
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"{path.name}: member {member.name!r} is not a regular file")
                    continue
                if member.offset_data + member.size > len(data):
                    problems.append(f"{path.name}: member {member.name!r} claims {member.size} bytes, past the "
                                    f"end of the file (truncated, or a forged header)")
                    return dict(samples), problems
                key, dot, extension = member.name.partition(".")
                if not dot or "/" in member.name:
                    problems.append(f"{path.name}: member {member.name!r} is not KEY.EXTENSION")
                    continue
                if extension in samples[key]:
                    problems.append(f"{path.name}: member {member.name!r} appears twice")
                samples[key][extension] = tar.extractfile(member).read()
            # tarfile takes a missing or cut header for the end: a tar cut between members reads as whole
            if not has_end_marker(data[tar.offset:]):
                problems.append(f"{path.name}: ends without the tar end marker (truncated after "
                                f"{len(samples)} samples?)")
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        problems.append(f"{path.name}: cannot be read as a tar file ({error})")
    return dict(samples), problems


def has_end_marker(rest: bytes) -> bool:
    """Whether what follows a tar's last member is its end marker: zero blocks, and only those."""
    return bool(rest) and rest.count(0) == len(rest)


def decode_picture(data: bytes, fits: Callable[[Image.Image], bool], expected: str) -> Image.Image:
    """The picture in `data`, decoded only once its header passes `fits` (size, format, mode): a
    small file claiming a huge picture (a decompression bomb) is never expanded.  MemberError
    saying what the picture is (against `expected`), or why it does not decode, otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # `fits` judges the size
            image = Image.open(io.BytesIO(data))
        if not fits(image):
            raise MemberError(f"is {image.format} {image.mode} {image.size}, expected {expected}")
        image.load()
    except PICTURE_ERRORS as error:
        raise MemberError(f"does not decode: {error}") from error
    return image


def picture_is(format: str, mode: str, side: int) -> Callable[[Image.Image], bool]:
    """Whether a picture's header shows this format, mode and a side x side size."""
    return lambda image: (image.format, image.mode, image.size) == (format, mode, (side, side))


def check_latent(data: bytes, latent_dim: int) -> None:
    """MemberError unless `data` is a float32 .npy vector of `latent_dim`, read without pickle.
    Its header is checked first, since np.load allocates whatever shape a header claims."""
    try:
        stream = io.BytesIO(data)
        read_header = NPY_HEADER_READERS.get(np.lib.format.read_magic(stream))
        if read_header is None:
            raise MemberError("is not a .npy file of version 1.0 or 2.0")
        shape, _, dtype = read_header(stream)
        if dtype != np.float32 or shape != (latent_dim,):
            raise MemberError(f"is {dtype} {shape}")
        np.load(io.BytesIO(data), allow_pickle=False)
    # EOFError: an empty member; TokenError: a header numpy's fallback parser cannot tokenize
    except (ValueError, OSError, EOFError, tokenize.TokenError) as error:
        raise MemberError(f"does not load: {error}") from error


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
    size = manifest["image_size"]
    try:
        decode_picture(members["jpg"], picture_is("JPEG", "RGB", size), f"JPEG RGB {size} x {size}")
    except MemberError as error:
        problems.append(f"{where}.jpg {error}")
    mask = None
    try:
        image = decode_picture(members["mask.png"], picture_is("PNG", "L", size), f"an 8-bit grey PNG {size} x {size}")
        mask = np.asarray(image)
        if not np.isin(mask, (0, 255)).all():
            problems.append(f"{where}.mask.png holds values other than 0 and 255")
    except MemberError as error:
        problems.append(f"{where}.mask.png {error}")
    problems.extend(check_record(where, key, index, members["json"], manifest, mask))
    if "latent.npy" in members:
        try:
            check_latent(members["latent.npy"], manifest["generator"]["latent_dim"])
        except MemberError as error:
            problems.append(f"{where}.latent.npy {error}")
    return problems


def check_record(where: str, key: str, index: int, data: bytes, manifest: dict[str, Any],
                 mask: np.ndarray | None) -> list[str]:
    """Problems with a sample's JSON record against its key, shard, the manifest and its mask."""
    problems = []
    try:
        record = json.loads(data)
        if record.get("key") != key or record.get("shard") != index:
            problems.append(f"{where}.json names key {record.get('key')!r} shard {record.get('shard')!r}")
        if record.get("generator") != manifest["generator"]["identity"]:
            problems.append(f"{where}.json names generator {record.get('generator')!r}")
        if mask is not None and abs(record.get("foreground_fraction", -1) - (mask > 0).mean()) > 1e-5:
            problems.append(f"{where}.json foreground_fraction does not match the mask")
    except (ValueError, AttributeError, TypeError, RecursionError, OverflowError) as error:
        problems.append(f"{where}.json is not a valid record: {error}")
    return problems


def check_shard(folder: Store, row: dict[str, Any], size: int | None, manifest: dict[str, Any],
                decode: bool) -> tuple[int, list[str]]:
    """(samples read, problems) for one shard the manifest lists as `row`; `size` is the listing's
    size for it, None when it is missing."""
    if size is None:
        return 0, [f"{row['name']} is missing"]
    # One read of the shard serves the checksum and the samples (it may come over a network).
    try:
        data = folder.read_bytes(row["name"])
    except (OSError, StoreError) as error:
        return 0, [f"{row['name']} cannot be read: {error}"]
    problems = []
    if size != row["bytes"]:
        problems.append(f"{row['name']} has {size} bytes, the manifest says {row['bytes']} (truncated or changed)")
    elif hashlib.sha256(data).hexdigest() != row["sha256"]:
        problems.append(f"{row['name']} does not match its sha256 in the manifest (changed or corrupt)")
    samples, member_problems = read_samples(row["name"], io.BytesIO(data))
    problems.extend(member_problems)
    if len(samples) != row["samples"]:
        problems.append(f"{row['name']} holds {len(samples)} samples, the manifest says {row['samples']}")
    if row["candidates"] < row["samples"]:
        problems.append(f"{row['name']}: fewer candidates ({row['candidates']}) than samples")
    if decode:
        for key, members in samples.items():
            problems.extend(check_sample(row["name"], key, members, manifest, row["shard"]))
    return len(samples), problems


@dataclass
class ShardChecks:
    """What every part of a verification needs: the folder, the manifest and each listed shard's
    row with its size in the listing (None: missing)."""
    folder: Store
    manifest: dict[str, Any]
    shards: list[tuple[dict[str, Any], int | None]]
    decode: bool


def _check_part(checks: ShardChecks, part: int, parts: int, tick: Callable[[], None]
                ) -> list[tuple[int, tuple[int, list[str]]]]:
    """[(shard index, (samples read, problems))] for shards part, part + parts, ... (a worker's share)."""
    found = []
    for index in range(part, len(checks.shards), parts):
        row, size = checks.shards[index]
        found.append((index, check_shard(checks.folder, row, size, checks.manifest, checks.decode)))
        tick()
    return found


def verify_folder(folder: str | Path, decode: bool = True, progress: bool = False,
                  processes: int = 1) -> VerifyReport:
    """Check a shard folder (a path or an fsspec URL) against its manifest; the report lists every
    problem found, in the manifest's order of shards however many processes share the work."""
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
    try:
        listing = folder.listing()
    except (OSError, StoreError) as error:   # StoreError: an object store's own refusal
        report.problems.append(f"{folder.location} cannot be listed: {error}")
        return report
    for extra in sorted(name for name, size in listing.items()
                        if name.endswith(".tar") and size is not None and name not in listed):
        report.problems.append(f"{extra} is not listed in the manifest")
    checks = ShardChecks(folder, manifest, [(row, listing.get(row["name"])) for row in rows], decode)
    processes = max(1, min(processes, len(rows)))
    with tqdm(total=len(rows), desc="synth-verify", unit="shard", disable=not progress) as bar:
        if processes == 1:
            parts = [_check_part(checks, 0, 1, lambda: bar.update(1))]
        else:
            parts = run_parts(_check_part, checks, processes, bar, "synth-verify")
    found = dict(item for part in parts for item in part)
    for index in range(len(rows)):            # the shards' problems in the manifest's order
        samples, problems = found[index]
        report.shards += 1
        report.samples += samples
        report.problems.extend(problems)
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
    empty_masks = totals.get("empty_masks") or 0       # absent in sets made before it was counted
    if empty_masks > 0:
        report.warnings.append(f"{empty_masks} of the {expected['samples']} masks are empty")
    return report


def default_folder(params_path: str) -> str:
    """synth.output of the parameters file, or data/shards without one."""
    try:
        section = load_params(params_path).get("synth") or {}
    except FileNotFoundError:
        return SynthSettings.output
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if not isinstance(section, dict):
        raise click.ClickException(f"{params_path}: the synth section must map settings to values, "
                                   f"got {type(section).__name__}")
    return str(section.get("output", SynthSettings.output))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", required=False)
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml",
              show_default=True, help="Parameters file whose synth.output is the default FOLDER.")
@click.option("--no-decode", is_flag=True,
              help="Only check files, sizes, checksums and counts; do not decode every member.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, each reading and decoding its share of the shards (up to the "
                   "machine's cores: decoding is what takes the time). The report is the same.")
def main(folder: str | None, params_path: str, no_decode: bool, processes: int) -> None:
    """Check the shard set in FOLDER (a path or an fsspec URL such as s3://bucket/set; default:
    synth.output of params.yaml) against its manifest.json.

    Exits with status 1 and lists every problem (missing, truncated or changed shards, members
    that do not decode, counts that do not add up); prints one OK line otherwise.
    """
    folder = folder or default_folder(params_path)
    report = verify_folder(folder, decode=not no_decode, progress=True, processes=processes)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
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
