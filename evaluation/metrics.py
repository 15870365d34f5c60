"""Saliency metrics as streaming objects: `update(prediction, mask)` per image, `compute()` at the end.

Each metric is defined once here and read by the reports and the benchmark alike.  A metric works
under a `Convention` (evaluation/conventions.py) and reads a `PreparedPair`, so `MetricSuite`
prepares an image once and hands it to every metric; a metric used alone prepares it itself.

Definitions (per-image values are averaged over images unless said otherwise):

- F-measure, beta^2 = 0.3: at every threshold the per-image precision, recall and F are averaged
  over images; `max_f` is the largest averaged F, `mean_f` the average over thresholds, and
  `adaptive_f` uses each image's own threshold, twice its mean prediction (capped at 1).
- `mae`: mean absolute difference between the prediction and the binary ground truth.
- `iou` and `accuracy`: the prediction binarised at 0.5 (pred > 0.5) against the ground truth.
- `s_measure` (Fan et al., ICCV 2017, alpha = 0.5): object- and region-aware structural similarity.
- E-measure (Fan et al., IJCAI 2018): `max_e` and `mean_e` over the thresholds of the averaged
  curve, `adaptive_e` at twice the mean.
- localisation: `MaxBoxAcc` and `PxAP` live in evaluation/localisation.py.

Everything is vectorised: thresholds are handled through per-image histograms of threshold levels
and cumulative sums, never a loop over thresholds.
"""

from __future__ import annotations

import abc
from typing import Any, Iterable

import numpy as np

from evaluation.conventions import DEFAULT_CONVENTION, EPS, Convention, PreparedPair, get_convention

BETA_SQUARED = 0.3


class Metric(abc.ABC):
    """Base of every metric: accumulate with `update`, read with `compute`, start over with `reset`."""

    #: names of the scalars `compute` returns
    outputs: tuple[str, ...] = ()
    #: the attributes `reset` sets and each image adds to: sums and counts, so the state of a
    #: benchmark scored in parts is the sum of the parts' states
    state: tuple[str, ...] = ()

    def __init__(self, convention: Convention | str = DEFAULT_CONVENTION) -> None:
        self.convention = get_convention(convention)
        self.reset()

    def update(self, prediction: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: its prediction (H x W) and its ground-truth mask (H x W)."""
        self.update_prepared(self.convention.prepare(prediction, mask))

    @abc.abstractmethod
    def update_prepared(self, pair: PreparedPair) -> None:
        """Add one image already brought into the convention's form."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric's scalars over every image added so far."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every image added so far."""

    def curves(self) -> dict[str, np.ndarray]:
        """Per-threshold curves, for metrics that have them."""
        return {}

    def state_values(self) -> dict[str, Any]:
        """What the images added so far amount to (see `state`)."""
        return {name: getattr(self, name) for name in self.state}

    def add_state(self, values: dict[str, Any]) -> None:
        """Add the images another instance of this metric has seen (its `state_values`)."""
        for name in self.state:
            setattr(self, name, getattr(self, name) + values[name])

    def _check_pair(self, pair: PreparedPair) -> None:
        if pair.convention is not self.convention:
            raise ValueError(f"{type(self).__name__} uses the {self.convention.name} convention, "
                             f"got an image prepared under {pair.convention.name}")


def mean_or_nan(total: float | np.ndarray, count: int) -> Any:
    return total / count if count else np.nan


def f_measure(precision: np.ndarray, recall: np.ndarray, beta_squared: float = BETA_SQUARED) -> np.ndarray:
    """(1 + b^2) P R / (b^2 P + R), and 0 where P R = 0 (the toolboxes' order of operations)."""
    numerator = (1 + beta_squared) * precision * recall
    denominator = np.where(numerator == 0, 1, beta_squared * precision + recall)
    return numerator / denominator


def precision_recall(tp: np.ndarray, fp: np.ndarray, n_foreground: int,
                     convention: Convention) -> tuple[np.ndarray, np.ndarray]:
    """Per-threshold precision and recall with the convention's rules for empty sets."""
    tp = np.asarray(tp)
    predicted = tp + np.asarray(fp)
    nothing = predicted == 0
    precision = np.where(nothing, convention.precision_if_nothing_predicted, tp / np.where(nothing, 1, predicted))
    if n_foreground:
        recall = tp / n_foreground
    else:
        recall = np.full(tp.shape, convention.recall_if_no_foreground)
    return precision, recall


class FMeasure(Metric):
    """Max, mean and adaptive F_beta (beta^2 = 0.3) and the precision-recall curve."""

    outputs = ("max_f", "mean_f", "adaptive_f")
    state = ("_precision", "_recall", "_f", "_adaptive", "_count")

    def __init__(self, convention: Convention | str = DEFAULT_CONVENTION, beta_squared: float = BETA_SQUARED) -> None:
        self.beta_squared = beta_squared
        super().__init__(convention)

    def reset(self) -> None:
        n = self.convention.n_thresholds
        self._precision, self._recall, self._f = np.zeros(n), np.zeros(n), np.zeros(n)
        self._adaptive, self._count = 0.0, 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        tp, fp = pair.threshold_counts
        precision, recall = precision_recall(tp, fp, pair.n_foreground, self.convention)
        self._precision += precision
        self._recall += recall
        self._f += f_measure(precision, recall, self.beta_squared)
        tp, fp = pair.count_predicted(pair.adaptive_threshold, self.convention.adaptive_inclusive)
        precision, recall = precision_recall(np.array([tp]), np.array([fp]), pair.n_foreground, self.convention)
        self._adaptive += float(f_measure(precision, recall, self.beta_squared)[0])
        self._count += 1

    def compute(self) -> dict[str, float]:
        curve = mean_or_nan(self._f, self._count)
        if not self._count:
            return dict.fromkeys(self.outputs, np.nan)
        return {"max_f": float(curve.max()), "mean_f": float(curve.mean()),
                "adaptive_f": float(self._adaptive / self._count)}

    def curves(self) -> dict[str, np.ndarray]:
        return {"threshold": self.convention.thresholds, "precision": mean_or_nan(self._precision, self._count),
                "recall": mean_or_nan(self._recall, self._count), "f": mean_or_nan(self._f, self._count)}


class MAE(Metric):
    """Mean absolute error between the prediction and the binary ground truth."""

    outputs = ("mae",)
    state = ("_total", "_count")

    def reset(self) -> None:
        self._total, self._count = 0.0, 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        self._total += pair.mean_absolute_error()
        self._count += 1

    def compute(self) -> dict[str, float]:
        return {"mae": mean_or_nan(self._total, self._count)}


class BinaryAgreement(Metric):
    """IoU and pixel accuracy of the prediction binarised at 0.5 (pred > 0.5)."""

    outputs = ("iou", "accuracy")
    state = ("_iou", "_accuracy", "_count")
    threshold = 0.5

    def reset(self) -> None:
        self._iou, self._accuracy, self._count = 0.0, 0.0, 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        tp, fp = pair.count_predicted(self.threshold, inclusive=False)
        fn = pair.n_foreground - tp
        tn = pair.size - tp - fp - fn
        union = tp + fp + fn
        self._iou += tp / union if union else self.convention.iou_if_union_empty
        self._accuracy += (tp + tn) / pair.size
        self._count += 1

    def compute(self) -> dict[str, float]:
        return {"iou": mean_or_nan(self._iou, self._count), "accuracy": mean_or_nan(self._accuracy, self._count)}


class SMeasure(Metric):
    """Structure measure: alpha * object score + (1 - alpha) * region score (Fan et al. 2017)."""

    outputs = ("s_measure",)
    state = ("_total", "_count")

    def __init__(self, convention: Convention | str = DEFAULT_CONVENTION, alpha: float = 0.5) -> None:
        self.alpha = alpha
        super().__init__(convention)

    def reset(self) -> None:
        self._total, self._count = 0.0, 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        self._total += float(structure_measure(pair, self.alpha))
        self._count += 1

    def compute(self) -> dict[str, float]:
        return {"s_measure": mean_or_nan(self._total, self._count)}


def _object_similarity(mean: float, variance: float, count: int) -> float:
    std = np.sqrt(max(variance, 0.0)) if count > 1 else 0.0
    return 2 * mean / (mean ** 2 + 1 + std + EPS)


def _region_similarity(n: int, sum_x: float, sum_xx: float, n_fg: int, sum_xg: float) -> float:
    """SSIM of a region from its sums: pixel count, sum and square sum of x, foreground count, sum of x on it."""
    if n == 0:
        return 0.0
    x, y = sum_x / n, n_fg / n
    sigma_x = max(sum_xx - sum_x * x, 0.0) / (n - 1 + EPS)
    sigma_y = (n_fg - n_fg * y) / (n - 1 + EPS)
    sigma_xy = (sum_xg - sum_x * y) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x ** 2 + y ** 2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def structure_measure(pair: PreparedPair, alpha: float = 0.5) -> float:
    """S-measure of one image, from per-quadrant sums rather than copies of the regions."""
    n_fg, size = pair.n_foreground, pair.size
    if n_fg == 0:
        return 1 - np.mean(pair.values)
    if n_fg == size:
        return np.mean(pair.values)
    sums = pair.region_sums
    # object score: foreground predictions, and background complements 1 - pred
    n_bg = size - n_fg
    fg_sum, fg_square = sums["xg"].sum(), sums["xxg"].sum()
    bg_sum, bg_square = sums["x"].sum() - fg_sum, sums["xx"].sum() - fg_square
    fg_mean, bg_mean = fg_sum / n_fg, bg_sum / n_bg
    fg_var = (fg_square - fg_sum * fg_mean) / (n_fg - 1) if n_fg > 1 else 0.0
    bg_var = (bg_square - bg_sum * bg_mean) / (n_bg - 1) if n_bg > 1 else 0.0
    gt_mean = n_fg / size
    object_score = (_object_similarity(fg_mean, fg_var, n_fg) * gt_mean
                    + _object_similarity(1 - bg_mean, bg_var, n_bg) * (1 - gt_mean))
    # region score: SSIM of the four regions around the centroid, weighted by their areas
    height, width = pair.gt.shape
    cy, cx = pair.split
    area = height * width
    weights = [cx * cy / area, cy * (width - cx) / area, (height - cy) * cx / area]
    weights.append(1 - weights[0] - weights[1] - weights[2])
    region_score = sum(_region_similarity(int(sums["n"][q]), sums["x"][q], sums["xx"][q], int(sums["g"][q]),
                                          sums["xg"][q]) * weights[q] for q in range(4))
    return max(0.0, object_score * alpha + region_score * (1 - alpha))


def enhanced_alignment(tp: np.ndarray, fp: np.ndarray, n_foreground: int, size: int) -> np.ndarray:
    """E-measure of binary predictions given per-threshold (tp, fp) counts, vectorised over thresholds."""
    tp, fp = np.asarray(tp), np.asarray(fp)
    predicted = tp + fp
    if n_foreground == 0:
        enhanced_sum = size - predicted
    elif n_foreground == size:
        enhanced_sum = predicted
    else:
        fn = n_foreground - tp
        tn = (size - predicted) - fn
        mean_pred, mean_gt = predicted / size, n_foreground / size
        pred_fg, pred_bg, gt_fg, gt_bg = 1 - mean_pred, 0 - mean_pred, 1 - mean_gt, 0 - mean_gt
        parts = []
        for count, a, b in ((tp, pred_fg, gt_fg), (fp, pred_fg, gt_bg), (fn, pred_bg, gt_fg), (tn, pred_bg, gt_bg)):
            align = 2 * (a * b) / (a ** 2 + b ** 2 + EPS)
            parts.append((align + 1) ** 2 / 4 * count)
        enhanced_sum = np.stack(parts).sum(axis=0)
    return enhanced_sum / (size - 1 + EPS)


class EMeasure(Metric):
    """Max, mean and adaptive enhanced-alignment measure (Fan et al. 2018)."""

    outputs = ("max_e", "mean_e", "adaptive_e")
    state = ("_curve", "_adaptive", "_count")

    def reset(self) -> None:
        self._curve, self._adaptive, self._count = np.zeros(self.convention.n_thresholds), 0.0, 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        tp, fp = pair.threshold_counts
        self._curve += enhanced_alignment(tp, fp, pair.n_foreground, pair.size)
        tp, fp = pair.count_predicted(pair.adaptive_threshold, self.convention.adaptive_inclusive)
        self._adaptive += float(enhanced_alignment(np.array([tp]), np.array([fp]), pair.n_foreground, pair.size)[0])
        self._count += 1

    def compute(self) -> dict[str, float]:
        if not self._count:
            return dict.fromkeys(self.outputs, np.nan)
        curve = self._curve / self._count
        return {"max_e": float(curve.max()), "mean_e": float(curve.mean()), "adaptive_e": self._adaptive / self._count}

    def curves(self) -> dict[str, np.ndarray]:
        return {"threshold": self.convention.thresholds, "e": mean_or_nan(self._curve, self._count)}


def default_metrics(convention: Convention | str, localisation: bool = True) -> list[Metric]:
    """The full metric set of the reports, in report order."""
    from evaluation.localisation import MaxBoxAcc, PxAP
    metrics: list[Metric] = [FMeasure(convention), MAE(convention), BinaryAgreement(convention),
                             SMeasure(convention), EMeasure(convention)]
    if localisation:
        metrics += [MaxBoxAcc(convention), PxAP(convention)]
    return metrics


class MetricSuite:
    """Several metrics under one convention, fed together: each image is prepared once."""

    def __init__(self, convention: Convention | str = DEFAULT_CONVENTION,
                 metrics: Iterable[Metric] | None = None, localisation: bool = True) -> None:
        self.convention = get_convention(convention)
        self.metrics = list(metrics) if metrics is not None else default_metrics(self.convention, localisation)
        for metric in self.metrics:
            if metric.convention is not self.convention:
                raise ValueError(f"{type(metric).__name__} uses {metric.convention.name}, "
                                 f"the suite {self.convention.name}")
        self.count = 0

    def update(self, prediction: np.ndarray, mask: np.ndarray) -> None:
        pair = self.convention.prepare(prediction, mask)
        for metric in self.metrics:
            metric.update_prepared(pair)
        self.count += 1

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for metric in self.metrics:
            results.update(metric.compute())
        return results

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        return {type(metric).__name__: metric.curves() for metric in self.metrics if metric.curves()}

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()
        self.count = 0

    def state_values(self) -> dict[str, Any]:
        """Every metric's state and the image count: what `add_state` of a like suite takes."""
        return {"count": self.count, "metrics": [metric.state_values() for metric in self.metrics]}

    def add_state(self, values: dict[str, Any]) -> None:
        """Add the images a suite of the same convention and metrics has seen."""
        if len(values["metrics"]) != len(self.metrics):
            raise ValueError(f"a state of {len(values['metrics'])} metrics cannot join a suite of {len(self.metrics)}")
        for metric, metric_values in zip(self.metrics, values["metrics"]):
            metric.add_state(metric_values)
        self.count += values["count"]
