"""The distributors: run a list of shards, in worker processes, as a pipeline, or as Ray tasks.

Distributors are sibling functions with one signature (job, shards, workers, progress,
shard_done, generator) -> stats: `multiprocessing_distributor` (here), `pipeline_distributor`
(generator/synth/pipeline.py: G in this process, the rest in worker processes; what a GPU
uses) and `ray_distributor` (generator/synth/ray_distributor.py: a Ray task per shard);
`run_shards` picks one from `synth.distributor` and the device.

A shard is a self-contained unit of work (a `RenderJob` and an index), so the way shards are
spread changes nothing in their bytes.  CPU workers each use one torch thread: parallelism comes
from processes, and a given shard is computed with the same arithmetic whatever the worker count.
Workers fork from a fork server (never from a process whose thread pools are already running).
The pool is a `concurrent.futures.ProcessPoolExecutor`, which notices a worker that dies (the
out-of-memory killer, a SIGKILL): the run then stops with a `WorkerFailed` naming the shard that
worker was rendering, instead of waiting for it forever.  A worker that cannot start (its
generator fails to build) stops the run with that error's message.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from generator.interface import Generator
from generator.runs import end_with_the_run
from generator.synth.worker import RenderJob, ShardRenderer
from generator.synth.writer import ShardStats

#: Called as each shard finishes.
ShardDone = Callable[[ShardStats], None]
#: Called after each batch with (samples kept, candidates used).
Progress = Callable[[int, int], None]


class WorkerFailed(RuntimeError):
    """A worker process died while rendering, or could not start."""


def run_shards(job: RenderJob, shards: Iterable[tuple[int, int]], workers: int,
               progress: Progress | None = None, shard_done: ShardDone | None = None,
               generator: Generator | None = None) -> list[ShardStats]:
    """Render every (index, count) shard; return their stats in index order.

    `generator` (optional) is the already-built generator, used when rendering in this process.
    """
    shards = list(shards)
    distributor = job.settings.distributor
    if distributor == "multiprocessing" and job.settings.device != "cpu" and workers > 1:
        distributor = "pipeline"              # a GPU renders while worker processes post-process
    if distributor == "ray":
        from generator.synth.ray_distributor import ray_distributor as chosen
    elif distributor == "pipeline":
        from generator.synth.pipeline import pipeline_distributor as chosen
    else:
        chosen = multiprocessing_distributor
    results = chosen(job, shards, workers, progress, shard_done, generator)
    return sorted(results, key=lambda stats: stats.shard)


def multiprocessing_distributor(job: RenderJob, shards: list[tuple[int, int]], workers: int,
                                progress: Progress | None = None, shard_done: ShardDone | None = None,
                                generator: Generator | None = None) -> list[ShardStats]:
    """Whole shards in worker processes (one torch thread each); in this process for one worker or a GPU."""
    if workers <= 1 or len(shards) <= 1 or job.settings.device != "cpu":
        return render_here(job, shards, progress, shard_done, generator)
    return _run_in_pool(job, shards, min(workers, len(shards)), progress, shard_done)


def render_here(job, shards, progress, shard_done, generator) -> list[ShardStats]:
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
_start_error: str | None = None
_events = None


def adopt_environment(environment: dict[str, str]) -> None:
    """Take the driver's environment in a worker: the fork server keeps the one it started with,
    and a run's may differ since (credentials and endpoints for a URL output, for instance)."""
    os.environ.clear()
    os.environ.update(environment)


def _init_worker(job: RenderJob, events, environment: dict[str, str]) -> None:
    global _renderer, _start_error, _events
    adopt_environment(environment)
    torch.set_num_threads(1)
    end_with_the_run()      # else, the run killed alone, its pool would render every queued shard, then wait
    _events = events
    try:
        _renderer = ShardRenderer(job)
    except Exception as error:   # raised from each task, so the run stops with this message
        _start_error = f"{type(error).__name__}: {error}"


def _render_in_worker(index: int, count: int) -> ShardStats:
    if _start_error is not None:
        raise WorkerFailed(f"a worker process could not start: {_start_error}")
    _events.put(("started", os.getpid(), index))

    def report(kept: int, candidates: int) -> None:
        _events.put(("batch", kept, candidates))
    return _renderer.render(index, count, report)


def _run_in_pool(job, shards, workers, progress, shard_done) -> list[ShardStats]:
    context = multiprocessing.get_context("forkserver")
    # The fork server imports torch once; workers fork from it before any thread pool runs.
    context.set_forkserver_preload(["generator.synth.worker"])
    events = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(job, events, dict(os.environ)))
    shard_of = {pool.submit(_render_in_worker, index, count): index for index, count in shards}
    rendering: dict[int, int] = {}     # worker pid -> the shard it last started
    results: list[ShardStats] = []
    try:
        pending = set(shard_of)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, progress, rendering)
            for future in sorted(finished, key=shard_of.get):
                try:
                    stats = future.result()       # re-raises a worker's error here
                except BrokenProcessPool:
                    _drain(events, progress, rendering)
                    raise WorkerFailed(_death_message(rendering, {s.shard for s in results})) from None
                results.append(stats)
                if shard_done is not None:
                    shard_done(stats)
        _drain(events, progress, rendering)
        pool.shutdown(wait=True)
        return results
    finally:
        _stop(pool)


def _drain(events, progress: Progress | None, rendering: dict[int, int]) -> None:
    """Pass queued batch reports on to `progress` and note which worker renders which shard."""
    while True:
        try:
            kind, *values = events.get_nowait()
        except queue.Empty:
            return
        if kind == "started":
            rendering[values[0]] = values[1]
        elif progress is not None:
            progress(*values)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return not Path("/proc").is_dir()      # without /proc nothing can be said: count it alive


def _death_message(rendering: dict[int, int], finished: set[int]) -> str:
    dead = sorted(shard for pid, shard in rendering.items() if shard not in finished and not _alive(pid))
    unfinished = sorted(shard for shard in rendering.values() if shard not in finished)
    named = dead or unfinished
    shards = ", ".join(str(shard) for shard in named) or "unknown"
    return (f"a worker process died while rendering shard {shards} (killed: out of memory, or a signal); "
            f"fewer --workers or a smaller --batch-size need less memory")


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for shards in flight."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
