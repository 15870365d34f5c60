"""Runs predictors over a benchmark and feeds one `MetricSuite` per (convention, predictor)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from evaluation.conventions import Convention, get_convention
from evaluation.datasets import Benchmark, Pair, files_message
from evaluation.inference import Prediction, predict_benchmark
from evaluation.metrics import MetricSuite
from generator.parallel import run_parts
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
    #: masks (relative to the benchmark's folder) of another size than their image: the maps are
    #: resized to the mask and scored there, but the user should know their pairs disagree
    mask_size_mismatches: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """What the report should warn of, besides the benchmark's pairing problems."""
        if not self.mask_size_mismatches:
            return []
        return [files_message(self.name, MASK_SIZE_MISMATCH, self.mask_size_mismatches)]


MASK_SIZE_MISMATCH = "masks of another size than their image (scored at the mask's size)"


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
            shares = [work.score(0, 1, suites, lambda: bar.update(1))]
        else:
            shares = []
            for states, share in run_parts(_score_part, work, processes, bar, "evaluation"):
                for key, state in states.items():
                    suites[key].add_state(state)
                shares.append(share)
    for share in shares:
        for key, prediction in share.kept.items():
            kept.setdefault(key, prediction).maps.update(prediction.maps)
    mismatches = sorted(set().union(*(share.mask_size_mismatches for share in shares)))
    metrics: dict = {}
    curves: dict = {}
    for (convention_name, row), suite in suites.items():
        metrics.setdefault(convention_name, {})[row] = suite.compute()
        curves.setdefault(convention_name, {})[row] = suite.curves()
    examples_kept = [kept[key] for key in sorted(kept)]
    for example in examples_kept:  # grid columns in the rows' order
        example.maps = {row: example.maps[row] for row in rows}
    summary = {**benchmark.summary(), **({"mask_size_mismatches": mismatches} if mismatches else {})}
    return BenchmarkResult(benchmark.name, summary, len(pairs), metrics, curves,
                           examples_kept, time.perf_counter() - start, mismatches)


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
class _Share:
    """What scoring a part found besides its sums: the chosen examples it met, by key, and the masks
    of another size than their image."""

    kept: dict[str, Prediction] = field(default_factory=dict)
    mask_size_mismatches: set[str] = field(default_factory=set)


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
              tick: Callable[[], None]) -> _Share:
        """Score the part's batches into `suites`; returns what else it found."""
        share = _Share()
        for group in self.groups:
            for prediction in predict_benchmark(self.benchmark, group, self.batch_size, self.limit, part, parts):
                if self.refinement:
                    add_refined_maps(prediction)
                for (_, row), suite in suites.items():
                    if row in prediction.maps:
                        suite.update(prediction.maps[row], prediction.mask)
                if prediction.pair.key in self.chosen:
                    share.kept.setdefault(prediction.pair.key, prediction).maps.update(prediction.maps)
                if prediction.image.shape[:2] != prediction.mask.shape:
                    share.mask_size_mismatches.add(self._mask_name(prediction.pair))
                tick()
        return share

    def _mask_name(self, pair: Pair) -> str:
        """As the benchmark's unmatched masks are named: relative to its folder."""
        return str(pair.mask.relative_to(self.benchmark.folder))


def _score_part(work: _Work, part: int, parts: int, tick: Callable[[], None]) -> tuple[dict, _Share]:
    """A worker process's share: one part scored into suites of its own; their states and what else it found."""
    suites = _suites(work.conventions, work.rows, work.localisation)
    share = work.score(part, parts, suites, tick)
    return {key: suite.state_values() for key, suite in suites.items()}, share
