"""The distributor: runs a list of shards, in worker processes on CPU or in this process on a GPU.

A shard is a self-contained unit of work (a `RenderJob` and an index), so the way shards are
spread changes nothing in their bytes.  CPU workers each use one torch thread: parallelism comes
from processes, and a given shard is computed with the same arithmetic whatever the worker count.
Workers fork from a fork server (never from a process whose thread pools are already running).
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable, Iterable

import torch

from generator.interface import Generator
from generator.synth.worker import RenderJob, ShardRenderer
from generator.synth.writer import ShardStats

#: Called as each shard finishes.
ShardDone = Callable[[ShardStats], None]
#: Called after each batch with (samples kept, candidates used).
Progress = Callable[[int, int], None]


def run_shards(job: RenderJob, shards: Iterable[tuple[int, int]], workers: int,
               progress: Progress | None = None, shard_done: ShardDone | None = None,
               generator: Generator | None = None) -> list[ShardStats]:
    """Render every (index, count) shard; return their stats in index order.

    `generator` (optional) is the already-built generator, used when rendering in this process.
    """
    shards = list(shards)
    in_process = workers <= 1 or len(shards) <= 1 or job.settings.device != "cpu"
    if in_process:
        results = _run_here(job, shards, progress, shard_done, generator)
    else:
        results = _run_in_pool(job, shards, min(workers, len(shards)), progress, shard_done)
    return sorted(results, key=lambda stats: stats.shard)


def _run_here(job, shards, progress, shard_done, generator) -> list[ShardStats]:
    threads = torch.get_num_threads()
    if job.settings.device == "cpu":
        torch.set_num_threads(1)   # the same arithmetic as a worker process
    try:
        renderer = ShardRenderer(job, generator)
        results = []
        for index, count in shards:
            results.append(renderer.render(index, count, progress))
            if shard_done is not None:
                shard_done(results[-1])
        return results
    finally:
        torch.set_num_threads(threads)


# --- worker processes ---------------------------------------------------------------------------

_renderer: ShardRenderer | None = None
_progress_queue = None


def _init_worker(job: RenderJob, progress_queue) -> None:
    global _renderer, _progress_queue
    torch.set_num_threads(1)
    _renderer = ShardRenderer(job)
    _progress_queue = progress_queue


def _render_in_worker(index: int, count: int) -> ShardStats:
    def report(kept: int, candidates: int) -> None:
        _progress_queue.put((kept, candidates))
    return _renderer.render(index, count, report)


def _run_in_pool(job, shards, workers, progress, shard_done) -> list[ShardStats]:
    context = multiprocessing.get_context("forkserver")
    # The fork server imports torch once; workers fork from it before any thread pool runs.
    context.set_forkserver_preload(["generator.synth.worker"])
    progress_queue = context.Queue()
    pool = context.Pool(workers, initializer=_init_worker, initargs=(job, progress_queue))
    try:
        pending = [pool.apply_async(_render_in_worker, shard) for shard in shards]
        results = []
        while pending:
            _drain(progress_queue, progress, timeout=0.2)
            for task in [task for task in pending if task.ready()]:
                pending.remove(task)
                results.append(task.get())     # re-raises a worker's error here
                if shard_done is not None:
                    shard_done(results[-1])
        _drain(progress_queue, progress, timeout=0.0)
        pool.close()
        return results
    finally:
        pool.terminate()
        pool.join()


def _drain(progress_queue, progress: Progress | None, timeout: float) -> None:
    """Pass queued batch reports on to `progress`, waiting up to `timeout` for the first."""
    try:
        item = progress_queue.get(timeout=timeout) if timeout > 0 else progress_queue.get_nowait()
        while True:
            if progress is not None:
                progress(*item)
            item = progress_queue.get_nowait()
    except queue.Empty:
        pass
