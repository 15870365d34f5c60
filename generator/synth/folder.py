"""The output folder of a shard set: which files are ours, which shards are complete, clean-up.

A shard counts as complete when its tar and its stats file are both under their final names,
the stats were written for the same settings (config digest) and the tar has the size they record.
Anything else (a temporary file, a tar without stats) is remade.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from generator.synth.card import CARD_NAME
from generator.synth.manifest import MANIFEST_NAME
from generator.synth.writer import STATS_SUFFIX, TEMP_SUFFIX, ShardStats, shard_name, stats_name

_OURS = re.compile(r"^\.?(synth-\d{6}\.tar|synth-\d{6}" + re.escape(STATS_SUFFIX) + "|"
                   + re.escape(MANIFEST_NAME) + "|" + re.escape(CARD_NAME) + ")(" + re.escape(TEMP_SUFFIX) + ")?$")


class FolderError(ValueError):
    """An output folder that cannot be used as asked, with a message saying why."""


def is_ours(name: str) -> bool:
    """A file name gen-synth writes: shards, stats files, the manifest, the dataset card and their
    temporary names."""
    match = _OURS.match(name)
    return bool(match) and name.startswith(".") == bool(match.group(2))


def foreign_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if not (entry.is_file() and is_ours(entry.name)))


def remove_temporary(folder: Path) -> None:
    """Delete leftovers of interrupted writes (hidden temporary names)."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(TEMP_SUFFIX) and is_ours(entry.name):
                entry.unlink(missing_ok=True)


def remove_ours(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_file() and is_ours(entry.name):
            entry.unlink()


def prepare(folder: Path, resume: bool, overwrite: bool) -> bool:
    """Make the folder usable for a run; return True when this call created it.

    A folder with files in it needs resume (keep complete shards made with the same settings) or
    overwrite (delete gen-synth's files first); files gen-synth did not write are never touched.
    """
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"output {folder} exists and is not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".synth-write-probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FolderError(f"cannot write to output folder {folder}: {error.strerror or error}") from error
    if created or not any(folder.iterdir()):
        return created
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FolderError(f"output folder {folder} holds files gen-synth did not write ({shown}); "
                          f"choose another folder or empty it")
    if overwrite:
        remove_ours(folder)
    elif not resume:
        raise FolderError(f"output folder {folder} already holds shards; pass --resume to finish an "
                          f"interrupted run with the same parameters, or --overwrite to replace them")
    remove_temporary(folder)
    return created


def complete_shards(folder: Path, plan: list[tuple[int, int]], digest: str) -> dict[int, ShardStats]:
    """Stats of the planned shards already complete for these settings.

    Raises FolderError when the folder holds shards made with other settings.
    """
    done: dict[int, ShardStats] = {}
    for index, count in plan:
        tar, stats_file = folder / shard_name(index), folder / stats_name(index)
        if not (tar.is_file() and stats_file.is_file()):
            continue
        try:
            stats = ShardStats.from_json(json.loads(stats_file.read_text()))
        except (ValueError, KeyError, TypeError):
            continue                                         # unreadable stats: remake the shard
        if stats.config_digest != digest:
            raise FolderError(f"{folder} holds shards made with other settings (config digest "
                              f"{stats.config_digest}, now {digest}); pass --overwrite to replace them "
                              f"or choose another folder")
        if stats.samples == count and stats.bytes == tar.stat().st_size:
            done[index] = stats
    planned = {shard_name(index) for index, _ in plan}
    extra = sorted(entry.name for entry in folder.glob("synth-*.tar") if entry.name not in planned)
    if extra:
        raise FolderError(f"{folder} holds shards this run does not plan ({', '.join(extra[:3])}); "
                          f"pass --overwrite to replace them")
    return done
