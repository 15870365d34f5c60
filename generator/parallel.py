"""Work dealt out to worker processes on the CPU: `evaluate-saliency --processes`,
`segment-images --processes` and `synth-verify --processes`.

A command splits its work into parts that need nothing from each other (whole batches or shards,
dealt out `[part::parts]`), and `run_parts` runs `task(work, part, parts, tick)` for each part in
its own process, forked from a fork server that has already imported the task's module (no re-import per
worker, and nothing of the parent's threads or locks inherited).  Each worker calls `tick()` per
item done, which feeds the parent's progress bar; it sends back what `task` returns.  The first
worker error stops the run: the other workers are terminated and the error is raised in the
parent, as the command would raise it in one process.  A worker exits at once when the parent is
gone (killed on its own, it can no longer terminate them): its share would otherwise run to the
end, writing outputs nobody waits for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import traceback
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from generator.runs import end_with_the_run

#: Part of a command's work: task(work, part, parts, tick) -> a picklable result.
Task = Callable[[Any, int, int, Callable[[], None]], Any]

#: thread pools of the numerical libraries: one thread each in a worker, unless the user set them.
#: With its own pool in every worker the refinement's solver oversubscribes the cores: two
#: workers on 2 cores took 1.3 times as long as one process, instead of half.
LIBRARY_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def one_library_thread() -> Iterator[None]:
    """The environment a fork server starts with (and its workers inherit): one library thread."""
    unset = [name for name in LIBRARY_THREADS if name not in os.environ]
    os.environ.update(dict.fromkeys(unset, "1"))
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


def _run_part(task: Task, work: Any, part: int, parts: int, threads: int, done: Any, connection: Any) -> None:
    """A worker process: run one part, send back ("ok", its result) or ("error", the exception)."""
    end_with_the_run()
    try:
        torch.set_num_threads(threads)

        def tick() -> None:
            with done.get_lock():
                done.value += 1

        connection.send(("ok", task(work, part, parts, tick)))
    except BaseException as error:  # noqa: BLE001  (the parent re-raises it)
        try:
            connection.send(("error", error))
        except Exception:  # noqa: BLE001  (an exception that does not pickle)
            connection.send(("error", RuntimeError(traceback.format_exc())))
    finally:
        connection.close()


def run_parts(task: Task, work: Any, processes: int, bar: tqdm, what: str) -> list[Any]:
    """`task`'s results for parts 0 .. processes - 1, each run in its own worker process with this
    process's torch thread count; `bar` advances as workers tick.  `task` must be a module-level
    function (its module is preloaded by the fork server); `what` names the workers in errors."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([task.__module__])
    done, start = context.Value("q", 0), bar.n
    waiting, workers = {}, []
    with one_library_thread():
        for part in range(processes):
            receiver, sender = context.Pipe(duplex=False)
            worker = context.Process(target=_run_part, args=(task, work, part, processes, torch.get_num_threads(),
                                                             done, sender), daemon=True)
            worker.start()
            sender.close()
            waiting[receiver] = part
            workers.append(worker)
    results: dict[int, Any] = {}
    try:
        while waiting:
            for receiver in multiprocessing.connection.wait(list(waiting), timeout=0.2):
                part = waiting.pop(receiver)
                try:
                    results[part] = receiver.recv()
                except EOFError:
                    results[part] = ("error", RuntimeError(f"{what} worker {part} died without a result"))
                except Exception as error:  # noqa: BLE001  (sent, but it does not unpickle here)
                    results[part] = ("error", RuntimeError(f"{what} worker {part}: its result could not be "
                                                           f"read back: {type(error).__name__}: {error}"))
            bar.update(start + done.value - bar.n)
            failed = [value for status, value in results.values() if status == "error"]
            if failed:
                raise failed[0]
    finally:
        for worker in workers:
            if worker.is_alive() and waiting:
                worker.terminate()
            worker.join()
    return [results[part][1] for part in range(processes)]
