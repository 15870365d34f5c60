"""The output folder of a shard set: which files are ours, which shards are complete, clean-up.

A shard counts as complete when its tar and its stats file are both under their final names,
the stats were written for the same run record (config digest) and the tar has the size they
record.  Anything else (a temporary file, a tar without stats) is remade.  A run holds the
folder's lock (generator/runs.py) before it looks: leftover temporary files are then certainly
those of a dead run, and are removed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from generator.runs import LOCK_NAME, OutputLock, may_resume
from generator.synth.card import CARD_NAME
from generator.synth.manifest import MANIFEST_NAME
from generator.synth.writer import STATS_SUFFIX, TEMP_SUFFIX, ShardStats, shard_name

# Final names, and the unique hidden temporary names of generator/files.py (`.NAME.XXXX.tmp`).
_OURS = re.compile(r"^\.?(synth-\d{6}\.tar|synth-\d{6}" + re.escape(STATS_SUFFIX) + "|"
                   + re.escape(MANIFEST_NAME) + "|" + re.escape(CARD_NAME) + r")((\.\w+)?" + re.escape(TEMP_SUFFIX) + ")?$")


class FolderError(ValueError):
    """An output folder that cannot be used as asked, with a message saying why."""


def is_ours(name: str) -> bool:
    """A file name gen-synth writes: shards, stats files, the manifest, the dataset card, their
    temporary names, the lock."""
    if name == LOCK_NAME:
        return True
    match = _OURS.match(name)
    return bool(match) and name.startswith(".") == bool(match.group(2))


def foreign_files(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if not (entry.is_file() and is_ours(entry.name)))


def remove_temporary(folder: Path) -> None:
    """Delete leftovers of interrupted writes (hidden temporary names); call with the lock held."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(TEMP_SUFFIX) and is_ours(entry.name):
                entry.unlink(missing_ok=True)


def remove_ours(folder: Path) -> None:
    """Delete every file gen-synth wrote (but the lock)."""
    for entry in folder.iterdir():
        if entry.is_file() and is_ours(entry.name) and entry.name != LOCK_NAME:
            entry.unlink()


def holds_nothing(folder: Path) -> bool:
    return not any(entry.name != LOCK_NAME for entry in folder.iterdir())


def prepare(folder: Path, resume: bool, overwrite: bool) -> None:
    """Make a locked folder (`lock_folder`) usable for a run.

    A folder with files in it needs resume (keep complete shards made with the same settings) or
    overwrite (delete gen-synth's files first); files gen-synth did not write are never touched.
    Leftover temporary files are removed: under the lock they are certainly a dead run's.
    """
    if holds_nothing(folder):
        return
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


def lock_folder(folder: Path) -> tuple[OutputLock, bool]:
    """Create the folder if need be and take its lock (which shows it takes files); return the
    lock and whether this call created the folder.  FolderLocked when another run holds it."""
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"output {folder} exists and is not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return OutputLock(folder).acquire(), created
    except OSError as error:
        raise FolderError(f"cannot write to output folder {folder}: {error.strerror or error}") from error


def complete_shards(folder: Path, plan: list[tuple[int, int]], record: dict, digest: str, *,
                    replace_finished: bool = False, log=None) -> dict[int, ShardStats]:
    """Stats of the planned shards already complete for this run record.

    Shards made under another record are refused (RecordMismatch naming the keys that differ) and
    kept, unless the folder holds a finished set (its manifest is there) and `replace_finished`
    says such a set is kept elsewhere (DVC's cache): then it is removed and the run starts afresh.
    Shards beyond the plan (a smaller n) are refused likewise.
    """
    finished = (folder / MANIFEST_NAME).is_file()
    hint = (f"pass --overwrite to replace them, choose another folder, or go back to the settings they "
            f"were made with")
    found: dict[int, tuple[ShardStats, Path]] = {}
    for stats_file in sorted(folder.glob("synth-*" + STATS_SUFFIX)):
        try:
            stats = ShardStats.from_json(json.loads(stats_file.read_text()))
        except (ValueError, KeyError, TypeError):
            continue                                         # unreadable stats: remake the shard
        found[stats.shard] = (stats, folder / shard_name(stats.shard))
    for stats, _ in found.values():
        if stats.config_digest != digest:
            saved = stats.record if stats.record is not None else {"config_digest": stats.config_digest}
            current = record if stats.record is not None else {"config_digest": digest}
            if not may_resume(saved, current, what=f"the shard set in {folder}", hint=hint, finished=finished,
                              replace_finished=replace_finished, log=log):
                remove_ours(folder)
                return {}
    planned = dict(plan)
    extra = sorted(entry.name for entry in folder.glob("synth-*.tar")
                   if not _planned_tar(entry.name, planned))
    if extra:
        if not (finished and replace_finished):
            raise FolderError(f"{folder} holds shards this run does not plan ({', '.join(extra[:3])}: a smaller "
                              f"n?); {hint}")
        for name in extra:
            (folder / name).unlink()
            (folder / name.replace(".tar", STATS_SUFFIX)).unlink(missing_ok=True)
    done: dict[int, ShardStats] = {}
    for index, count in plan:
        if index in found:
            stats, tar = found[index]
            if tar.is_file() and stats.samples == count and stats.bytes == tar.stat().st_size:
                done[index] = stats
    return done


def _planned_tar(name: str, planned: dict[int, int]) -> bool:
    match = re.fullmatch(r"synth-(\d{6})\.tar", name)
    return bool(match) and int(match.group(1)) in planned
