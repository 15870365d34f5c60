"""Runs predictors over a benchmark and feeds one `MetricSuite` per (convention, predictor)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm import tqdm

from evaluation.conventions import Convention
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


def evaluate_benchmark(benchmark: Benchmark, predictors: Sequence[Predictor], conventions: Sequence[Convention],
                       batch_size: int = 16, localisation: bool = True, examples: int = 8,
                       limit: int | None = None, progress: bool = True) -> BenchmarkResult:
    """Every predictor through the inference protocol, every image into every suite."""
    start = time.perf_counter()
    suites = {(convention.name, predictor.name): MetricSuite(convention, localisation=localisation)
              for convention in conventions for predictor in predictors}
    pairs = benchmark.pairs[:limit] if limit else benchmark.pairs
    chosen = {pairs[i].key for i in example_indices(len(pairs), examples)}
    kept: dict[str, Prediction] = {}
    stream = predict_benchmark(benchmark, predictors, batch_size, limit)
    for prediction in tqdm(stream, total=len(pairs), desc=benchmark.name, unit="image", disable=not progress):
        for (_, predictor_name), suite in suites.items():
            suite.update(prediction.maps[predictor_name], prediction.mask)
        if prediction.pair.key in chosen:
            kept[prediction.pair.key] = prediction
    metrics: dict = {}
    curves: dict = {}
    for (convention_name, predictor_name), suite in suites.items():
        metrics.setdefault(convention_name, {})[predictor_name] = suite.compute()
        curves.setdefault(convention_name, {})[predictor_name] = suite.curves()
    return BenchmarkResult(benchmark.name, benchmark.summary(), len(pairs), metrics, curves,
                           [kept[key] for key in sorted(kept)], time.perf_counter() - start)
