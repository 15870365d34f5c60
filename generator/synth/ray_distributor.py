"""The Ray distributor: each shard is a Ray task, so a run spreads over every machine of a cluster.

A shard is a pure function of (settings, index), so where a task runs changes nothing in its
bytes.  The output folder must be the same path on every machine (a shared file system) or a URL
every machine can reach (s3://..., generator/synth/store.py); each shard is still written under
a temporary name and put in place when whole, and the driver writes each
shard's stats file (the marker that makes it count) as its task returns.  A task whose worker
dies (a killed process, a lost node) or that meets a passing I/O error is rendered again up to
`synth.retries` times; past that, or on any other error, the run stops with the shard's error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from generator.interface import Generator
from generator.synth.store import is_url
from generator.synth.worker import CandidateBudgetExceeded, RenderJob, ShardRenderer
from generator.synth.writer import ShardStats

#: Errors worth rendering a shard again for (a worker's death is always retried by Ray itself).
PASSING_ERRORS = (OSError, MemoryError)


class RayNotInstalled(RuntimeError):
    """`--distributor ray` without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalled("the ray distributor needs Ray: pip install 'gan-saliency[ray]' "
                              "(or pip install ray)") from error
    return ray


# --- in each Ray worker process ------------------------------------------------------------------

_renderers: dict[tuple[str, str], ShardRenderer] = {}


def render_shard(job: RenderJob, index: int, count: int) -> ShardStats:
    """Render one shard; a worker process keeps its renderer (and generator) for the next task."""
    import torch
    if job.settings.device == "cpu":
        torch.set_num_threads(1)              # the same arithmetic as the multiprocessing workers
    key = (job.config_digest, job.output)
    if key not in _renderers:
        _renderers.clear()
        _renderers[key] = ShardRenderer(job)
    return _renderers[key].render(index, count)


# --- the driver ------------------------------------------------------------------------------------

def ray_distributor(job: RenderJob, shards: list[tuple[int, int]], workers: int, progress=None,
                    shard_done=None, generator: Generator | None = None) -> list[ShardStats]:
    """Render every (index, count) shard as a Ray task; return their stats as they come in.

    Joins the cluster at `synth.ray_address` ("auto": the one `ray start` made on this machine), or
    starts a local one with `workers` CPUs and shuts it down at the end.  Already connected (a
    caller ran ray.init), it uses that connection.
    """
    from generator.synth.distributor import WorkerFailed
    ray = import_ray()
    settings = job.settings
    # Every machine reads the bank and writes the shards at the same absolute paths (or URL).
    job = dataclasses.replace(job, output=job.output if is_url(job.output) else str(Path(job.output).resolve()),
                              bank_path=None if job.bank_path is None else str(Path(job.bank_path).resolve()))
    started_here = not ray.is_initialized()
    if started_here:
        address = settings.ray_address or None
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    gpu = settings.device != "cpu"
    task = ray.remote(render_shard).options(
        num_cpus=1, num_gpus=1 if gpu else 0, max_retries=settings.retries, retry_exceptions=list(PASSING_ERRORS))
    job_ref = ray.put(job)
    shard_of = {task.remote(job_ref, index, count): index for index, count in shards}
    results: list[ShardStats] = []
    try:
        pending = list(shard_of)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in finished:
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = getattr(error, "cause", None)
                    if isinstance(cause, CandidateBudgetExceeded):
                        raise CandidateBudgetExceeded(str(cause)) from None
                    raise WorkerFailed(f"shard {shard_of[ref]} failed after {settings.retries} retries: "
                                       f"{type(cause).__name__ if cause else 'error'}: {cause or error}") from None
                except ray.exceptions.RayError as error:     # the worker or its node died every time
                    raise WorkerFailed(f"shard {shard_of[ref]} failed after {settings.retries} retries: "
                                       f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
                results.append(stats)
                if progress is not None:
                    progress(stats.samples, stats.candidates)
                if shard_done is not None:
                    shard_done(stats)
        return results
    finally:
        # Shards still running when the run stops (a failed shard, Ctrl-C) end with this process's
        # connection: a local cluster stops, and a cluster joined at an address ends the job's
        # tasks once its driver has gone.  Not ray.cancel: cancelling a task whose reply is on its
        # way can fail an internal check of Ray's and abort this process (seen with Ray 2.60).
        # Under a caller's own connection they run to their end; their shards are the bytes a
        # rerun would write, and without a stats file from here they do not count as made.
        if started_here:
            ray.shutdown()
