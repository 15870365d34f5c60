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

from generator.runs import LOCK_NAME, may_resume
from generator.synth.card import CARD_NAME
from generator.synth.manifest import MANIFEST_NAME
from generator.synth.store import Store, StoreError
from generator.synth.writer import STATS_SUFFIX, TEMP_SUFFIX, ShardStats, shard_name, stats_name

# Final names, and the unique hidden temporary names of generator/files.py (`.NAME.XXXX.tmp`).
_OURS = re.compile(r"^\.?(synth-\d{6}\.tar|synth-\d{6}" + re.escape(STATS_SUFFIX) + "|"
                   + re.escape(MANIFEST_NAME) + "|" + re.escape(CARD_NAME) + r")((\.\w+)?" + re.escape(TEMP_SUFFIX) + ")?$")

# A URL folder's lease is written like any file there: under a hidden temporary name first.
_LEASE_TEMPORARY = re.compile(r"^\." + re.escape(LOCK_NAME) + r"\.\w+" + re.escape(TEMP_SUFFIX) + "$")


class FolderError(ValueError):
    """An output folder that cannot be used as asked, with a message saying why."""


def is_ours(name: str) -> bool:
    """A file name gen-synth writes: shards, stats files, the manifest, the dataset card, their
    temporary names, the lock."""
    if name == LOCK_NAME or _LEASE_TEMPORARY.match(name):
        return True
    match = _OURS.match(name)
    return bool(match) and name.startswith(".") == bool(match.group(2))


def foreign_files(listing: dict[str, int | None]) -> list[str]:
    """Names in a folder's listing that gen-synth did not write (sub-folders included)."""
    return sorted(name for name, size in listing.items() if size is None or not is_ours(name))


def remove_temporary(store: Store) -> None:
    """Delete leftovers of interrupted writes (hidden temporary names); call with the lock held."""
    for name, size in store.listing().items():
        if size is not None and name.endswith(TEMP_SUFFIX) and is_ours(name):
            store.remove(name)


def remove_ours(store: Store) -> None:
    """Delete every file gen-synth wrote (but the lock)."""
    for name, size in store.listing().items():
        if size is not None and is_ours(name) and name != LOCK_NAME:
            store.remove(name)


def prepare(store: Store, resume: bool, overwrite: bool) -> None:
    """Make a locked folder (`lock_folder`) usable for a run.

    A folder with files in it needs resume (keep complete shards made with the same settings) or
    overwrite (delete gen-synth's files first); files gen-synth did not write are never touched.
    Leftover temporary files are removed: under the lock they are certainly a dead run's.
    """
    listing = store.listing()
    if not any(name != LOCK_NAME for name in listing):
        return
    foreign = foreign_files(listing)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FolderError(f"output folder {store.location} holds files gen-synth did not write ({shown}); "
                          f"choose another folder or empty it")
    if overwrite:
        remove_ours(store)
    elif not resume:
        raise FolderError(f"output folder {store.location} already holds shards; pass --resume to finish an "
                          f"interrupted run with the same parameters, or --overwrite to replace them")
    remove_temporary(store)


def lock_folder(store: Store):
    """Create the folder if need be and take its lock (which shows it takes files); return the
    lock and whether this call created the folder.  FolderLocked when another run holds it."""
    try:
        created = store.create()
        return store.lock(), created
    except StoreError as error:
        raise FolderError(str(error)) from error
    except OSError as error:
        raise FolderError(f"cannot write to output folder {store.location}: {error.strerror or error}") from error


def complete_shards(store: Store, plan: list[tuple[int, int]], record: dict, digest: str, *,
                    replace_finished: bool = False, log=None) -> dict[int, ShardStats]:
    """Stats of the planned shards already complete for this run record.

    Shards made under another record are refused (RecordMismatch naming the keys that differ) and
    kept, unless the folder holds a finished set (its manifest is there) and `replace_finished`
    says such a set is kept elsewhere (DVC's cache): then it is removed and the run starts afresh.
    Shards beyond the plan (a smaller n) are refused likewise.
    """
    listing = store.listing()
    finished = listing.get(MANIFEST_NAME) is not None
    hint = ("pass --overwrite to replace them, choose another folder, or go back to the settings they "
            "were made with")
    stats_files = sorted(name for name in listing if _STATS.fullmatch(name))
    found: dict[int, ShardStats] = {}
    for data in store.read_many(stats_files).values():
        try:
            stats = ShardStats.from_json(json.loads(data))
        except (ValueError, KeyError, TypeError):
            continue                                         # unreadable stats: remake the shard
        found[stats.shard] = stats
    for stats in found.values():
        if stats.config_digest != digest:
            saved = stats.record if stats.record is not None else {"config_digest": stats.config_digest}
            current = record if stats.record is not None else {"config_digest": digest}
            if not may_resume(saved, current, what=f"the shard set in {store.location}", hint=hint, finished=finished,
                              replace_finished=replace_finished, log=log):
                remove_ours(store)
                return {}
    planned = dict(plan)
    extra = sorted(name for name in listing if (match := _TAR.fullmatch(name)) and int(match.group(1)) not in planned)
    if extra:
        if not (finished and replace_finished):
            raise FolderError(f"{store.location} holds shards this run does not plan ({', '.join(extra[:3])}: a "
                              f"smaller n?); {hint}")
        for name in extra:
            store.remove(name)
            store.remove(name.replace(".tar", STATS_SUFFIX))
    done: dict[int, ShardStats] = {}
    for index, count in plan:
        stats = found.get(index)
        if stats is not None and stats.samples == count and stats.bytes == listing.get(shard_name(index)):
            done[index] = stats
    return done


def finished_among(store: Store, shards: list[int]) -> int:
    """How many of these shards have their stats file (are finished)."""
    listing = store.listing()
    return sum(stats_name(index) in listing for index in shards)


_TAR = re.compile(r"synth-(\d{6})\.tar")
_STATS = re.compile(r"synth-\d{6}" + re.escape(STATS_SUFFIX))
