"""Streams training pairs from WebDataset shards, in an order that is a pure function of the seed.

Shards are named by local paths, brace patterns (`synth-{000000..000099}.tar`), http(s) URLs or
`pipe:` commands; WebDataset's own openers read them (a `pipe:` command runs in a shell, so it
belongs in a parameters file the user trusts).  A folder is read through its `manifest.json`
(gen-synth writes it when a set is complete): exactly the shards it lists, with their checksums
as the data's identity; a folder without one (an unfinished set) or with tars it does not list (a
mixed one) is refused unless the manifest is waived (`--no-manifest`, for shards made elsewhere).
The last shards by name (or a named list) are held out for validation and never enter the
training list.

The training stream is endless and reproducible.  Each epoch the training shards are permuted
by (seed, epoch) and dealt out, first by rank, then by loader worker; each worker reads its
shards in turn through a shuffle buffer seeded by (seed, epoch, rank, worker), and yields fixed
batches.  PyTorch's loader takes batches from its workers in turn, so batch b of a rank comes
from worker b mod W.  Hence the number of batches a rank has consumed is the whole position of
its data stream: a resumed loader skips each worker's share of the consumed batches (reading the
samples, not decoding them) and starts at the worker that was due next.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from trainer.decode import ShardFormatError, checked_members, decode_sample, training_pair

_URL_PREFIXES = ("http://", "https://", "pipe:", "file:", "gs://", "s3://", "ais://", "hf://")
#: URL schemes webdataset has no opener for, and the pipe: command that reads them instead.
_PIPED_SCHEMES = {"s3://": "pipe:aws s3 cp {url} -"}
MANIFEST_NAME = "manifest.json"


def loader_workers(num_workers: int, training_shards: int, world_size: int) -> int:
    """Workers per rank: every worker needs at least one shard each epoch (0 processes count as 1)."""
    return max(1, min(num_workers, training_shards // world_size))


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on `parts` (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _is_url(name: str) -> bool:
    return name.startswith(_URL_PREFIXES)


def resolve_shards(source: str | list[str], manifest: bool = True) -> list[str]:
    """The shard names of a source: a folder (the shards its manifest lists, by name), a pattern,
    URLs, or a list of them.  With `manifest` False a folder gives its `*.tar` instead."""
    names: list[str] = []
    sized = set()                                  # local shards whose size a manifest vouched for
    for entry in [source] if isinstance(source, str) else list(source):
        for scheme, command in _PIPED_SCHEMES.items():
            if entry.startswith(scheme):
                raise ShardFormatError(f"{entry}: {scheme} URLs are read through a pipe: command, e.g. "
                                       f"'{command.format(url=entry)}' (a brace pattern works inside it)")
        if not _is_url(entry) and os.path.isdir(entry):
            listed = _folder_shards(entry) if manifest else _folder_tars(entry)
            sized.update(listed if manifest else ())
            names.extend(listed)
        else:
            names.extend(expand_urls(entry))
    missing = [name for name in names if not _is_url(name) and not os.path.isfile(name)]
    if missing == [source] and not any(character in source for character in "{*?["):
        raise ShardFormatError(f"{source} not found: neither a folder of shards nor a shard")
    if missing:
        raise ShardFormatError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
    if not names:
        raise ShardFormatError(f"no shards in {source!r}")
    if len(set(names)) != len(names):
        raise ShardFormatError(f"a shard is named twice in {source!r}")
    for name in names:
        if not _is_url(name) and name not in sized:
            check_tar_end(name)
    return names


#: A tar ends with two zero blocks of 512 bytes (its writer may pad further with zeros).
TAR_END = 1024


def check_tar_end(path: str) -> None:
    """Refuse a local shard that does not end with a tar's end marker.  Cut exactly between two
    members, a shard still reads (tarfile and webdataset take the cut for the end), just short of
    samples; no manifest vouches for its size here, so its last bytes are what tell."""
    size = os.path.getsize(path)
    tail = b""
    if size >= TAR_END and size % 512 == 0:
        with open(path, "rb") as file:
            file.seek(size - TAR_END)
            tail = file.read(TAR_END)
    if tail.count(0) != TAR_END:
        raise ShardFormatError(f"{path} does not end with a tar's end marker: cut short (perhaps between two "
                               f"samples, which would read as fewer samples), or not a tar file")


def _folder_tars(folder: str) -> list[str]:
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "*.tar")))
    if not found:
        raise ShardFormatError(f"no .tar shards in folder {folder}")
    return found


def read_manifest_rows(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    """Shard name -> its manifest row (name, samples, bytes, sha256), or None without a manifest."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text())["shards"]
        return {row["name"]: row for row in rows if isinstance(row["name"], str) and "/" not in row["name"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ShardFormatError(f"{path} is not a shard manifest ({type(error).__name__}: {error})") from error


def _folder_shards(folder: str) -> list[str]:
    rows = read_manifest_rows(folder)
    waive = "pass --no-manifest (train.manifest: false) to train on the folder's .tar files as they are"
    if rows is None:
        raise ShardFormatError(f"no {MANIFEST_NAME} in {folder}: not a finished gen-synth set (an interrupted "
                               f"run has none until a rerun finishes it); for shards made elsewhere, {waive}")
    if not rows:
        raise ShardFormatError(f"{Path(folder) / MANIFEST_NAME} lists no shards")
    unlisted = sorted(Path(path).name for path in glob.glob(os.path.join(glob.escape(folder), "*.tar"))
                      if Path(path).name not in rows)
    if unlisted:
        raise ShardFormatError(f"{folder} holds .tar files its {MANIFEST_NAME} does not list "
                               f"({', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''}); remove them, "
                               f"or {waive}")
    names = []
    for name, row in sorted(rows.items()):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and isinstance(row.get("bytes"), int) and os.path.getsize(path) != row["bytes"]:
            raise ShardFormatError(f"{path} has {os.path.getsize(path)} bytes, its manifest says {row['bytes']}; "
                                   f"check the set with synth-verify")
        names.append(path)
    return names


def _shard_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def split_holdout(shards: list[str], holdout: int | list[str]) -> tuple[list[str], list[str]]:
    """(training shards, hold-out shards), both sorted by name; the two never share a shard.

    `holdout` is a count (the last shards by name: a later shard never moves an earlier one
    into or out of the hold-out) or a list of shard names or URLs.
    """
    ordered = sorted(shards, key=lambda url: (_shard_name(url), url))
    if isinstance(holdout, int):
        held = ordered[len(ordered) - holdout:] if holdout else []
    else:
        wanted = set(holdout)
        held = [url for url in ordered if url in wanted or _shard_name(url) in wanted]
        unknown = sorted(wanted - set(held) - {_shard_name(url) for url in held})
        if unknown:
            raise ShardFormatError(f"hold-out shard(s) not among the shards: {', '.join(unknown)}")
    held_set = set(held)
    training = [url for url in ordered if url not in held_set]
    if not training:
        raise ShardFormatError(f"all {len(ordered)} shard(s) are held out; nothing is left to train on")
    return training, held


def safe_samples(urls: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """WebDataset's tar reading with every member name checked before samples are grouped; a
    shard that is not a whole tar stops the run naming it (a sample never spans two shards)."""
    for source in urls:
        opened = url_opener(iter([source]), handler=wds.reraise_exception)
        members = tar_file_expander(opened, handler=wds.reraise_exception)
        try:
            yield from group_by_keys(checked_members(members), handler=wds.reraise_exception)
        except (tarfile.ReadError, EOFError) as error:
            raise ShardFormatError(f"shard {source.get('url')} is not a readable tar ({error.args[0]}); "
                                   f"check the set with synth-verify") from error


@dataclass(frozen=True)
class StreamPlan:
    """Which shards each (rank, worker) reads in each epoch, and how it shuffles them."""

    shards: tuple[str, ...]
    seed: int
    rank: int = 0
    world_size: int = 1
    workers: int = 1
    batch_size: int = 1           # this rank's batch
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if len(self.shards) < self.world_size * self.workers:
            raise ShardFormatError(f"{len(self.shards)} training shard(s) cannot feed {self.world_size} rank(s) "
                                   f"x {self.workers} loader worker(s); use fewer workers or more shards")

    def epoch_shards(self, epoch: int, worker: int) -> list[str]:
        order = list(self.shards)
        random.Random(derived_seed(self.seed, "shards", epoch)).shuffle(order)
        return order[self.rank::self.world_size][worker::self.workers]

    def raw_samples(self, worker: int) -> Iterator[dict[str, Any]]:
        """This worker's endless stream of undecoded samples."""
        for epoch in itertools.count():
            rng = random.Random(derived_seed(self.seed, "shuffle", epoch, self.rank, self.world_size,
                                             worker, self.workers))
            pipeline = wds.DataPipeline(
                wds.SimpleShardList(self.epoch_shards(epoch, worker)),
                safe_samples,
                wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
            )
            count = 0
            for count, sample in enumerate(pipeline, start=1):
                yield sample
            if count == 0:
                raise ShardFormatError(f"shards {self.epoch_shards(epoch, worker)} hold no samples")

    def samples_before(self, consumed_batches: int, worker: int) -> int:
        """How many samples `worker` produced for the first `consumed_batches` batches of this rank."""
        worker_batches = (consumed_batches - worker + self.workers - 1) // self.workers
        return max(worker_batches, 0) * self.batch_size


class TrainingStream(IterableDataset):
    """(image, mask, key) triples of one rank, starting after `consumed_batches` batches."""

    def __init__(self, plan: StreamPlan, input_size: int | None, consumed_batches: int = 0) -> None:
        super().__init__()
        self.plan, self.input_size, self.consumed_batches = plan, input_size, consumed_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, str]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.plan.workers:
            raise RuntimeError(f"the loader runs {info.num_workers} workers, the plan expects {self.plan.workers}")
        # The loader's first batch comes from its worker 0, which must take up the stream of the
        # worker that was due next when the consumed batches were taken.
        worker = (worker + self.consumed_batches) % self.plan.workers
        skip = self.plan.samples_before(self.consumed_batches, worker)
        for sample in itertools.islice(self.plan.raw_samples(worker), skip, None):
            yield training_pair(decode_sample(sample), self.input_size)


def _quiet_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; leave the cores to training


def training_loader(plan: StreamPlan, input_size: int | None, consumed_batches: int = 0,
                    processes: int | None = None, pin_memory: bool = False) -> DataLoader:
    """A loader of this rank's batches; `processes` 0 loads in the calling process.  `pin_memory`
    hands batches over in page-locked memory (for a GPU: its copies can then run asynchronously)."""
    processes = plan.workers if processes is None else processes
    if processes not in (0, plan.workers) or (processes == 0 and plan.workers != 1):
        raise ValueError(f"a plan for {plan.workers} worker(s) needs 0 (with one worker) or {plan.workers} processes")
    return DataLoader(TrainingStream(plan, input_size, consumed_batches), batch_size=plan.batch_size,
                      num_workers=processes, worker_init_fn=_quiet_worker if processes else None,
                      persistent_workers=False, prefetch_factor=4 if processes else None, pin_memory=pin_memory)


def read_pairs(urls: list[str], input_size: int | None, limit: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first `limit` pairs of `urls` in stored order (no shuffling), stacked."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), safe_samples)
    pairs = [training_pair(decode_sample(sample), input_size) for sample in itertools.islice(pipeline, limit)]
    if not pairs:
        raise ShardFormatError(f"shards {urls} hold no samples")
    images, masks, keys = zip(*pairs)
    return torch.stack(images), torch.stack(masks), list(keys)


def probe_image_size(url: str) -> int:
    """Side of the first image of a shard (the shards' image size)."""
    images, _, _ = read_pairs([url], None, 1)
    if images.shape[-1] != images.shape[-2]:
        raise ShardFormatError(f"shard {url}: images are {images.shape[-1]} x {images.shape[-2]}, not square; "
                               f"set train.input_size")
    return int(images.shape[-1])


def shards_identity(urls: list[str]) -> list[Any]:
    """What must be unchanged for a checkpoint to resume, and never a path: for local shards a
    manifest lists, their name and sha256; for other local shards, name, size and modification
    time; remote shards count by URL."""
    identity: list[Any] = []
    rows_of: dict[str, dict[str, dict[str, Any]] | None] = {}
    for url in urls:
        if _is_url(url):
            identity.append(url)
            continue
        folder, name = os.path.split(url)
        if folder not in rows_of:
            try:
                rows_of[folder] = read_manifest_rows(folder or ".")
            except ShardFormatError:
                rows_of[folder] = None
        row = (rows_of[folder] or {}).get(name)
        if row is not None and isinstance(row.get("sha256"), str):
            identity.append([name, row["sha256"]])
        else:
            status = os.stat(url)
            identity.append([name, status.st_size, status.st_mtime_ns])
    return identity


def manifest_summary(source: str | list[str]) -> dict[str, Any]:
    """Provenance from `manifest.json` beside local shards (generator identity, digest), if any."""
    first = source if isinstance(source, str) else source[0]
    folder = Path(first) if os.path.isdir(first) else Path(first).parent
    path = folder / "manifest.json"
    if _is_url(first) or not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    summary: dict[str, Any] = {"manifest_sha256": digest}
    if not isinstance(manifest, dict):
        return summary
    generator = manifest.get("generator")
    if isinstance(generator, dict):
        generator = generator.get("identity")
    if isinstance(generator, str):
        summary["generator"] = generator
    if isinstance(manifest.get("config_digest"), str):
        summary["shards_config_digest"] = manifest["config_digest"]
    direction = manifest.get("direction")
    if isinstance(direction, dict) and isinstance(direction.get("digest"), str):
        summary["direction"] = {key: direction[key] for key in ("digest", "method", "index", "sign", "chosen_by")
                                if key in direction}
    return summary

