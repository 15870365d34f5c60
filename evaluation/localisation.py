"""Localisation metrics of weakly supervised object localisation (Choe et al., CVPR 2020).

- `MaxBoxAcc`: at every threshold of the convention, the box around the largest connected
  component of the binarised prediction counts as correct when its IoU with the best-matching
  ground-truth box is >= 0.5; BoxAcc(threshold) is the fraction of correct images and MaxBoxAcc its
  maximum over thresholds.  Ground-truth boxes are the boxes of the mask's connected components
  plus the box around the whole mask (the box a box-annotated benchmark would give).  An image
  whose mask is empty has no box and is never correct.  Boxes are in inclusive pixel coordinates.
  Components are 8-connected by default (the contour tracing of the reference evaluation); ties
  between equally large components go to the one holding the first pixel in raster order.
- `PxAP`: area under the pixel precision-recall curve, with every pixel of the data set pooled
  (TP, FP counted over all images at each threshold); the step-wise sum of precision times the
  recall gained from one threshold to the next lower one.

Largest components at all thresholds come from one pass over the image's row runs: a run of
{levels > i} in a row starts where the level rises above i and ends where it falls back, so the
runs of every threshold are listed at once; runs of adjacent rows at the same threshold that
touch are joined by one sparse connected-components call.  Its cost grows with the number of runs
(the summed upward steps of the levels along the rows), small for smooth saliency maps.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from evaluation.conventions import DEFAULT_CONVENTION, Convention, PreparedPair
from evaluation.metrics import Metric, mean_or_nan

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _ragged_arange(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenation of arange(start[k], start[k] + count[k]) over k, and each element's k."""
    owner = np.repeat(np.arange(count.size), count)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    return start[owner] + offset, owner


def _runs(levels: np.ndarray, n_thresholds: int) -> tuple[np.ndarray, ...]:
    """Every row run of every binarisation {levels > i}: (group, row, threshold, first col, last col).

    `group` = row * n_thresholds + threshold; runs come sorted by group, then column.
    """
    height, width = levels.shape
    padded = np.zeros((height, width + 2), dtype=np.int64)
    padded[:, 1:-1] = levels
    centre = padded[:, 1:-1]
    edges = []
    for neighbour in (padded[:, :-2], padded[:, 2:]):
        # a run of {levels > i} starts (ends) at a pixel whose left (right) neighbour has
        # level <= i < its own level: one run edge for each such threshold i
        step = (centre - neighbour).ravel()
        where = np.flatnonzero(step > 0)
        thresholds, owner = _ragged_arange(neighbour.ravel()[where], step[where])
        rows, cols = np.divmod(where[owner], width)
        # one edge per (row, threshold, column): sorting the packed key orders them by group, then column
        edges.append(np.sort((rows * n_thresholds + thresholds) * width + cols))
    starts, ends = edges
    # the k-th start and the k-th end of a (row, threshold) group delimit the same run
    group, first = np.divmod(starts, width)
    row, threshold = np.divmod(group, n_thresholds)
    return group, row, threshold, first, ends % width


def largest_component_boxes(levels: np.ndarray, n_thresholds: int, connectivity: int = 8) -> np.ndarray:
    """Per threshold index i: (area, y0, x0, y1, x1) of the largest component of {levels > i}.

    Rows of thresholds with no foreground pixel are all zero.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    height, width = levels.shape
    boxes = np.zeros((n_thresholds, 5), dtype=np.int64)
    group, row, threshold, first, last = _runs(levels, n_thresholds)
    n_runs = group.size
    if n_runs == 0:
        return boxes
    # runs of the next row at the same threshold that touch run (first, last): a contiguous range
    stride = width + 3
    reach = 1 if connectivity == 8 else 0
    first_keys, last_keys = group * stride + (first + 1), group * stride + (last + 1)
    below = group + n_thresholds
    lo = np.searchsorted(last_keys, below * stride + (first - reach + 1), side="left")
    hi = np.searchsorted(first_keys, below * stride + (last + reach + 1), side="right")
    neighbour, run = _ragged_arange(lo, np.maximum(hi - lo, 0))
    graph = sparse.csr_matrix((np.ones(run.size, dtype=np.int8), (run, neighbour)), shape=(n_runs, n_runs))
    n_components, component = csgraph.connected_components(graph, directed=False)
    area = np.bincount(component, weights=last - first + 1, minlength=n_components).astype(np.int64)
    y0 = np.full(n_components, height); np.minimum.at(y0, component, row)
    y1 = np.zeros(n_components, dtype=np.int64); np.maximum.at(y1, component, row)
    x0 = np.full(n_components, width); np.minimum.at(x0, component, first)
    x1 = np.zeros(n_components, dtype=np.int64); np.maximum.at(x1, component, last)
    first_pixel = np.full(n_components, height * width); np.minimum.at(first_pixel, component, row * width + first)
    component_threshold = np.empty(n_components, dtype=np.int64)
    component_threshold[component] = threshold
    # largest area first, then the earliest first pixel: one integer key, maximised per threshold
    scale = np.int64(height * width + 1)
    key = area * scale + (scale - 1 - first_pixel)
    best = np.full(n_thresholds, -1, dtype=np.int64)
    np.maximum.at(best, component_threshold, key)
    winners = np.flatnonzero(key == best[component_threshold])
    boxes[component_threshold[winners]] = np.stack(
        [area[winners], y0[winners], x0[winners], y1[winners], x1[winners]], axis=1)
    return boxes


def ground_truth_boxes(gt: np.ndarray) -> np.ndarray:
    """(y0, x0, y1, x1) of each 8-connected component of the mask, then of the whole mask; K x 4."""
    labels, count = ndimage.label(gt, structure=EIGHT_CONNECTED)
    if count == 0:
        return np.zeros((0, 4), dtype=np.int64)
    slices = ndimage.find_objects(labels)
    boxes = [(s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1) for s in slices]
    rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
    boxes.append((rows[0], cols[0], rows[-1], cols[-1]))
    return np.array(boxes, dtype=np.int64)


def box_iou(boxes: np.ndarray, references: np.ndarray) -> np.ndarray:
    """IoU of every box (N x 4, inclusive y0, x0, y1, x1) with every reference (K x 4): N x K."""
    b, r = boxes[:, None, :], references[None, :, :]
    inter_h = np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]) + 1
    inter_w = np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]) + 1
    intersection = np.clip(inter_h, 0, None) * np.clip(inter_w, 0, None)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_r = (r[..., 2] - r[..., 0] + 1) * (r[..., 3] - r[..., 1] + 1)
    return intersection / (area_b + area_r - intersection)


class MaxBoxAcc(Metric):
    """Best box accuracy over thresholds (IoU >= 0.5 with the best ground-truth box)."""

    outputs = ("max_box_acc",)
    state = ("_correct", "_count")
    #: predictions remembered with their boxes: a prediction that recurs (the centre prior at one
    #: image size) costs a hash instead of a new search
    cache_size = 8

    def __init__(self, convention: Convention | str = DEFAULT_CONVENTION, iou_threshold: float = 0.5,
                 connectivity: int = 8) -> None:
        self.iou_threshold = iou_threshold
        self.connectivity = connectivity
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        super().__init__(convention)

    def _boxes(self, levels: np.ndarray) -> np.ndarray:
        key = (levels.shape, levels.dtype.str, hashlib.blake2b(np.ascontiguousarray(levels), digest_size=16).digest())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        boxes = largest_component_boxes(levels, self.convention.n_thresholds, self.connectivity)
        self._cache[key] = boxes
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return boxes

    def reset(self) -> None:
        self._correct = np.zeros(self.convention.n_thresholds, dtype=np.int64)
        self._count = 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        self._count += 1
        references = ground_truth_boxes(pair.gt)
        if references.shape[0] == 0:
            return
        boxes = self._boxes(pair.levels)
        present = boxes[:, 0] > 0
        if not present.any():
            return
        best_iou = box_iou(boxes[present, 1:], references).max(axis=1)
        self._correct[present] += best_iou >= self.iou_threshold

    def compute(self) -> dict[str, float]:
        if not self._count:
            return {"max_box_acc": np.nan}
        return {"max_box_acc": float(self._correct.max() / self._count)}

    def curves(self) -> dict[str, np.ndarray]:
        return {"threshold": self.convention.thresholds, "box_acc": mean_or_nan(self._correct, self._count)}


class PxAP(Metric):
    """Area under the pixel precision-recall curve, every pixel of the data set pooled."""

    outputs = ("pxap",)
    state = ("_tp", "_fp", "_foreground")

    def reset(self) -> None:
        self._tp = np.zeros(self.convention.n_thresholds, dtype=np.int64)
        self._fp = np.zeros(self.convention.n_thresholds, dtype=np.int64)
        self._foreground = 0

    def update_prepared(self, pair: PreparedPair) -> None:
        self._check_pair(pair)
        tp, fp = pair.threshold_counts
        self._tp += tp
        self._fp += fp
        self._foreground += pair.n_foreground

    def compute(self) -> dict[str, float]:
        if self._foreground == 0:
            return {"pxap": np.nan}
        predicted = self._tp + self._fp
        precision = np.where(predicted > 0, self._tp / np.maximum(predicted, 1), 1.0)
        recall = self._tp / self._foreground
        # thresholds ascend, so recall falls; the last threshold gains its recall from zero
        gained = recall - np.append(recall[1:], 0.0)
        return {"pxap": float(np.sum(precision * gained))}
