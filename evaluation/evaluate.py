"""Runs predictors over a benchmark and feeds one `MetricSuite` per (convention, predictor)."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from evaluation.conventions import Convention, get_convention
from evaluation.datasets import Benchmark
from evaluation.inference import Prediction, predict_benchmark
from evaluation.metrics import MetricSuite
from evaluation.predictors import Predictor


@dataclass
class BenchmarkResult:
    """Metrics and curves of every predictor on one benchmark, under each convention."""

    name: str
    summary: dict
    count: int
    #: convention -> predictor -> metric -> value
    metrics: dict[str, dict[str, dict[str, float]]]
    #: convention -> predictor -> metric class -> curve name -> values
    curves: dict[str, dict[str, dict[str, dict[str, np.ndarray]]]]
    examples: list[Prediction] = field(default_factory=list)
    seconds: float = 0.0


def example_indices(count: int, wanted: int) -> set[int]:
    """`wanted` indices spread evenly over range(count) (all of them when count <= wanted)."""
    if wanted <= 0 or count == 0:
        return set()
    return {int(round(i)) for i in np.linspace(0, count - 1, min(wanted, count))}


REFINED_SUFFIX = "_refined"


def row_names(predictors: Sequence[Predictor], refinement: bool) -> list[str]:
    """The report's rows: each predictor, followed by its "+ refinement" row when asked."""
    names = []
    for predictor in predictors:
        names.append(predictor.name)
        if refinement:
            names.append(predictor.name + REFINED_SUFFIX)
    return names


def add_refined_maps(prediction: Prediction) -> None:
    """Each map refined against the photo (evaluation/refinement.py), stored as `<name>_refined`."""
    from evaluation.refinement import refine_maps
    image = prediction.image
    if image.shape[:2] != prediction.mask.shape:  # a mask of another size than its photo: refine at the mask's
        image = np.array(Image.fromarray(image).resize(prediction.mask.shape[::-1], Image.Resampling.BILINEAR))
    names = [name for name in prediction.maps if not name.endswith(REFINED_SUFFIX)]
    for name, refined in zip(names, refine_maps(image, [prediction.maps[name] for name in names])):
        prediction.maps[name + REFINED_SUFFIX] = refined


def evaluate_benchmark(benchmark: Benchmark, predictors: Sequence[Predictor], conventions: Sequence[Convention],
                       batch_size: int = 16, localisation: bool = True, examples: int = 8,
                       limit: int | None = None, progress: bool = True, refinement: bool = False,
                       processes: int = 1) -> BenchmarkResult:
    """Every predictor through the inference protocol, every image into every suite.

    Predictors of different input sizes are run in separate passes over the benchmark; with
    `refinement`, each map is also refined against its photo and scored as its own row (without
    the localisation metrics).  With `processes` > 1 the batches are dealt out to that many worker
    processes (CPU only), each scoring its share into suites of its own, and the suites' sums are
    added up in worker order: the same settings give the same numbers, which differ from one
    process's only by the rounding of the sums.
    """
    start = time.perf_counter()
    rows = row_names(predictors, refinement)
    suites = _suites(conventions, rows, localisation)
    pairs = benchmark.pairs[:limit] if limit else benchmark.pairs
    chosen = {pairs[i].key for i in example_indices(len(pairs), examples)}
    groups: dict[int, list[Predictor]] = {}
    for predictor in predictors:
        groups.setdefault(predictor.input_size, []).append(predictor)
    work = _Work(benchmark, list(groups.values()), [c.name for c in conventions], rows, localisation, batch_size,
                 limit, refinement, chosen)
    kept: dict[str, Prediction] = {}
    with tqdm(total=len(pairs) * len(groups), desc=benchmark.name, unit="image", disable=not progress) as bar:
        if processes <= 1:
            kept_by_part = [work.score(0, 1, suites, lambda: bar.update(1))]
        else:
            kept_by_part = []
            for states, part_kept in _score_in_processes(work, processes, bar):
                for key, state in states.items():
                    suites[key].add_state(state)
                kept_by_part.append(part_kept)
    for part_kept in kept_by_part:
        for key, prediction in part_kept.items():
            kept.setdefault(key, prediction).maps.update(prediction.maps)
    metrics: dict = {}
    curves: dict = {}
    for (convention_name, row), suite in suites.items():
        metrics.setdefault(convention_name, {})[row] = suite.compute()
        curves.setdefault(convention_name, {})[row] = suite.curves()
    examples_kept = [kept[key] for key in sorted(kept)]
    for example in examples_kept:  # grid columns in the rows' order
        example.maps = {row: example.maps[row] for row in rows}
    return BenchmarkResult(benchmark.name, benchmark.summary(), len(pairs), metrics, curves,
                           examples_kept, time.perf_counter() - start)


def _suites(conventions: Sequence[Convention | str], rows: Sequence[str],
            localisation: bool) -> dict[tuple[str, str], MetricSuite]:
    """One suite per (convention, row).  Refined rows carry the saliency metrics only: MaxBoxAcc's
    component search on their blocky maps made the demo's stage 2.4 times as long (253 against 106
    CPU-seconds on ECSSD), and the "+BS" rows of the literature report F, IoU and accuracy."""
    made = {}
    for convention in conventions:
        convention = get_convention(convention)
        for row in rows:
            made[(convention.name, row)] = MetricSuite(
                convention, localisation=localisation and not row.endswith(REFINED_SUFFIX))
    return made


@dataclass
class _Work:
    """What scoring a benchmark needs; a worker process receives it whole."""

    benchmark: Benchmark
    groups: list[list[Predictor]]
    conventions: list[str]
    rows: list[str]
    localisation: bool
    batch_size: int
    limit: int | None
    refinement: bool
    chosen: set[str]

    def score(self, part: int, parts: int, suites: dict[tuple[str, str], MetricSuite],
              tick: Callable[[], None]) -> dict[str, Prediction]:
        """Score the part's batches into `suites`; returns the chosen examples it met, by key."""
        kept: dict[str, Prediction] = {}
        for group in self.groups:
            for prediction in predict_benchmark(self.benchmark, group, self.batch_size, self.limit, part, parts):
                if self.refinement:
                    add_refined_maps(prediction)
                for (_, row), suite in suites.items():
                    if row in prediction.maps:
                        suite.update(prediction.maps[row], prediction.mask)
                if prediction.pair.key in self.chosen:
                    kept.setdefault(prediction.pair.key, prediction).maps.update(prediction.maps)
                tick()
        return kept


def _score_part(work: _Work, part: int, parts: int, threads: int, done: Any, connection: Any) -> None:
    """A worker process: score one part into suites of its own, send back their states and examples."""
    try:
        torch.set_num_threads(threads)
        suites = _suites(work.conventions, work.rows, work.localisation)

        def tick() -> None:
            with done.get_lock():
                done.value += 1

        kept = work.score(part, parts, suites, tick)
        connection.send(("ok", ({key: suite.state_values() for key, suite in suites.items()}, kept)))
    except BaseException as error:  # noqa: BLE001  (the parent re-raises it)
        try:
            connection.send(("error", error))
        except Exception:  # noqa: BLE001  (an exception that does not pickle)
            connection.send(("error", RuntimeError(traceback.format_exc())))
    finally:
        connection.close()


#: thread pools of the numerical libraries: one thread each in a worker, unless the user set them.
#: With its own pool in every worker the refinement's solver oversubscribes the cores: two
#: workers on 2 cores took 1.3 times as long as one process, instead of half.
LIBRARY_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_library_thread() -> Iterator[None]:
    """The environment a fork server starts with (and its workers inherit): one library thread."""
    unset = [name for name in LIBRARY_THREADS if name not in os.environ]
    os.environ.update(dict.fromkeys(unset, "1"))
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


def _score_in_processes(work: _Work, processes: int, bar: tqdm) -> list[tuple[dict, dict[str, Prediction]]]:
    """Each part in its own process (forked from a fork server that has imported this module), the
    bar fed as images finish."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    done = context.Value("q", 0)
    waiting, workers = {}, []
    with _one_library_thread():
        for part in range(processes):
            receiver, sender = context.Pipe(duplex=False)
            worker = context.Process(target=_score_part, args=(work, part, processes, torch.get_num_threads(),
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
                    results[part] = ("error", RuntimeError(f"evaluation worker {part} died without a result"))
                except Exception as error:  # noqa: BLE001  (sent, but it does not unpickle here)
                    results[part] = ("error", RuntimeError(f"evaluation worker {part}: its result could not be "
                                                           f"read back: {type(error).__name__}: {error}"))
            bar.update(done.value - bar.n)
            failed = [value for status, value in results.values() if status == "error"]
            if failed:
                raise failed[0]
    finally:
        for worker in workers:
            if worker.is_alive() and waiting:
                worker.terminate()
            worker.join()
    return [results[part][1] for part in range(processes)]
