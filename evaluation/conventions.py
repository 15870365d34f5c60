"""The two conventions under which saliency numbers are published (DESIGN.md section 1).

The same metric names give different numbers depending on how a prediction is thresholded and
how a ground-truth mask is binarised, so every report names the convention it used:

- `paper`: the E-BigBiGAN reference code.  Predictions are probabilities used as they are;
  there are 255 thresholds t_k = k / 255 (k = 0..254) and a pixel is foreground when pred > t_k
  (compared in float64; the reference code compares float32 tensors, which can differ only for a
  value within float32 rounding of a threshold);
  a ground-truth pixel is foreground when it is >= 0.5 (>= 128 of 255).  Empty sets follow the
  reference code: precision is 1 when nothing is predicted, recall is 1 when the ground truth is
  empty (an F that would be 0/0 is 0), and an IoU over an empty union is 1 (the reference code
  divides 0 by 0 there; a prediction that agrees with an empty mask is taken as perfect).
- `toolbox`: the SOD evaluation toolboxes (PySODMetrics, the MATLAB toolbox).  A prediction is an
  8-bit image (a probability map p is first stored as round(255 p), as saving it as PNG does),
  min-max normalised per image; there are 256 thresholds t = 0..255 on the 8-bit scale of the
  normalised map and a pixel is foreground when floor(255 * normalised) >= t; a ground-truth
  pixel is foreground when it is > 128.  Empty sets follow each metric's own rule in
  PySODMetrics: precision 0 when nothing is predicted, recall 0 when the ground truth is empty,
  IoU 0 over an empty union.

The adaptive threshold (twice the mean prediction, capped at 1) follows each convention's
comparison: pred > t for the paper's, pred >= t for the toolboxes'.

A convention turns (prediction, mask) into a `PreparedPair`: the prediction's values as the
metrics see them (float64 in [0, 1]), its threshold levels (pixel p is foreground at threshold
index i exactly when levels[p] > i) and the boolean ground truth.  Threshold index i is the i-th
threshold in ascending order, so every metric works on both conventions through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# np.spacing(1): the epsilon the MATLAB toolbox and PySODMetrics add to denominators.
EPS = float(np.spacing(1))


@dataclass(frozen=True)
class Convention:
    """A named way of thresholding predictions and binarising ground truth."""

    name: str
    description: str
    n_thresholds: int
    #: precision of an image at a threshold where nothing is predicted
    precision_if_nothing_predicted: float
    #: recall of an image whose ground truth has no foreground
    recall_if_no_foreground: float
    #: IoU of an image where prediction and ground truth are both empty
    iou_if_union_empty: float
    #: whether the adaptive threshold (twice the mean) is inclusive (pred >= t) or strict (pred > t)
    adaptive_inclusive: bool = field(default=False)

    @property
    def thresholds(self) -> np.ndarray:
        """Threshold values in ascending order, on the [0, 1] scale of `PreparedPair.values`."""
        return np.arange(self.n_thresholds, dtype=np.float64) / 255.0

    def binarise_mask(self, mask: np.ndarray) -> np.ndarray:
        """A ground-truth mask (bool, 8-bit, or float in [0, 1]) as a boolean foreground map."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"a mask must be H x W, got shape {mask.shape}")
        if mask.dtype == bool:
            return mask
        if mask.dtype == np.uint8:
            return mask >= 128 if self.name == PAPER_NAME else mask > 128
        if np.issubdtype(mask.dtype, np.floating):
            _check_unit_range(mask, "mask")
            return mask >= 0.5 if self.name == PAPER_NAME else mask * 255.0 > 128
        raise TypeError(f"a mask must be bool, uint8 or float, got {mask.dtype}")

    def prepare(self, prediction: np.ndarray, mask: np.ndarray) -> "PreparedPair":
        """Bring one (prediction, mask) pair into the form every metric reads."""
        prediction = np.asarray(prediction)
        if prediction.ndim != 2:
            raise ValueError(f"a prediction must be H x W, got shape {prediction.shape}")
        gt = self.binarise_mask(mask)
        if prediction.shape != gt.shape:
            raise ValueError(f"prediction {prediction.shape} and mask {gt.shape} differ in size")
        if self.name == PAPER_NAME:
            return _paper_pair(prediction, gt, self)
        return _toolbox_pair(prediction, gt, self)


PAPER_NAME = "paper"
TOOLBOX_NAME = "toolbox"

PAPER = Convention(
    name=PAPER_NAME,
    description="E-BigBiGAN reference code: probabilities as they are, 255 thresholds k/255 "
                "(k=0..254), foreground when pred > t, ground truth >= 0.5; precision 1 when "
                "nothing is predicted, recall 1 when the ground truth is empty, IoU 1 over an "
                "empty union",
    n_thresholds=255, precision_if_nothing_predicted=1.0, recall_if_no_foreground=1.0,
    iou_if_union_empty=1.0, adaptive_inclusive=False)

TOOLBOX = Convention(
    name=TOOLBOX_NAME,
    description="SOD toolboxes (PySODMetrics): 8-bit prediction min-max normalised per image, "
                "256 thresholds, foreground when floor(255 pred) >= t, ground truth > 128; "
                "each metric's own rule for empty sets (precision, recall, IoU 0)",
    n_thresholds=256, precision_if_nothing_predicted=0.0, recall_if_no_foreground=0.0,
    iou_if_union_empty=0.0, adaptive_inclusive=True)

CONVENTIONS = {PAPER.name: PAPER, TOOLBOX.name: TOOLBOX}
DEFAULT_CONVENTION = PAPER


def get_convention(name: str | Convention) -> Convention:
    """The convention with this name (`paper` or `toolbox`)."""
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown convention {name!r}; choose from {', '.join(CONVENTIONS)}") from None


# The paper's thresholds with sentinels on both ends, so a level can be corrected by one lookup.
_PAPER_THRESHOLDS = np.concatenate([[-np.inf], np.arange(255, dtype=np.float64) / 255.0, [np.inf]])


def _check_unit_range(values: np.ndarray, what: str) -> None:
    if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"a float {what} must hold finite values in [0, 1]")


def _paper_pair(prediction: np.ndarray, gt: np.ndarray, convention: Convention) -> "PreparedPair":
    if prediction.dtype == np.uint8:
        values = prediction / 255.0
    elif np.issubdtype(prediction.dtype, np.floating):
        values = prediction.astype(np.float64, copy=False)
        _check_unit_range(values, "prediction")
    else:
        raise TypeError(f"a prediction must be float in [0, 1] or uint8, got {prediction.dtype}")
    return PreparedPair(gt=gt, convention=convention, prediction=values)


def paper_levels(values: np.ndarray) -> np.ndarray:
    """How many of the thresholds k/255 (k = 0..254) each value exceeds (0..255), exactly."""
    # ceil(255 v) counts the thresholds below v up to rounding; one comparison each way makes it exact
    levels = np.clip(np.ceil(values * 255.0), 0, 255).astype(np.int16)
    levels -= values <= _PAPER_THRESHOLDS[levels]
    levels += values > _PAPER_THRESHOLDS[levels + 1]
    return levels


def _toolbox_pair(prediction: np.ndarray, gt: np.ndarray, convention: Convention) -> "PreparedPair":
    if np.issubdtype(prediction.dtype, np.floating):
        _check_unit_range(prediction, "prediction")
        prediction = np.rint(prediction * 255.0).astype(np.uint8)
    elif prediction.dtype != np.uint8:
        raise TypeError(f"a prediction must be uint8 or float in [0, 1], got {prediction.dtype}")
    # The normalisation is a function of the 8-bit value, so it is evaluated once per value with
    # exactly the toolbox's float operations and then looked up: the same numbers, far cheaper.
    table = np.arange(256, dtype=np.float64) / 255
    low, high = table[prediction.min()], table[prediction.max()]
    if high != low:
        table = (table - low) / (high - low)
    levels = (table * 255).astype(np.uint8).astype(np.int16) + 1
    return PreparedPair(gt=gt, convention=convention, codes=prediction, code_values=table, code_levels=levels)


@dataclass
class PreparedPair:
    """One image's prediction and ground truth as the metrics read them.

    The prediction is held either as float values (`prediction`) or, when every value is one of
    256 (the toolbox's 8-bit maps), as 8-bit `codes` with a table of their values and levels; the
    latter lets every sum be taken over a 256-bin histogram instead of the image.  `values` and
    `levels` give the per-pixel view whichever it is.
    """

    gt: np.ndarray
    convention: Convention
    prediction: np.ndarray | None = None
    codes: np.ndarray | None = None
    code_values: np.ndarray | None = None
    code_levels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.gt.size

    @cached_property
    def values(self) -> np.ndarray:
        """The prediction as the metrics see it: float64 in [0, 1]."""
        return self.prediction if self.codes is None else self.code_values[self.codes]

    @cached_property
    def levels(self) -> np.ndarray:
        """Per pixel, how many thresholds it passes: foreground at threshold index i iff levels > i."""
        return paper_levels(self.values) if self.codes is None else self.code_levels[self.codes]

    @cached_property
    def n_foreground(self) -> int:
        return int(np.count_nonzero(self.gt))

    @cached_property
    def split(self) -> tuple[int, int]:
        """Where the S-measure cuts the image in four: one past the rounded foreground centroid."""
        height, width = self.gt.shape
        if self.n_foreground == 0:
            return int(np.round(height / 2)) + 1, int(np.round(width / 2)) + 1
        cy = np.arange(height) @ np.count_nonzero(self.gt, axis=1) / self.n_foreground
        cx = np.arange(width) @ np.count_nonzero(self.gt, axis=0) / self.n_foreground
        return int(np.round(cy)) + 1, int(np.round(cx)) + 1

    def _quadrants(self, image: np.ndarray) -> list[np.ndarray]:
        cy, cx = self.split
        return [image[:cy, :cx], image[:cy, cx:], image[cy:, :cx], image[cy:, cx:]]

    @cached_property
    def code_histograms(self) -> np.ndarray:
        """4 x 2 x 256 pixel counts: per S-measure quadrant, outside / inside the ground truth, per code."""
        combined = self.codes.astype(np.uint16) | (self.gt.astype(np.uint16) << 8)
        return np.stack([np.bincount(part.ravel(), minlength=512) for part in self._quadrants(combined)]
                        ).reshape(4, 2, 256)

    @cached_property
    def level_histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel counts per level (0..n_thresholds) inside and outside the ground truth."""
        span = self.convention.n_thresholds + 1
        if self.codes is not None:
            outside, inside = self.code_histograms.sum(axis=0)
            return (np.bincount(self.code_levels, weights=inside, minlength=span).astype(np.int64),
                    np.bincount(self.code_levels, weights=outside, minlength=span).astype(np.int64))
        codes = self.levels.ravel().astype(np.intp) + span * self.gt.ravel()
        counts = np.bincount(codes, minlength=2 * span)
        return counts[span:], counts[:span]

    @cached_property
    def threshold_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) per threshold index: predicted-foreground pixels inside / outside the ground truth."""
        inside, outside = self.level_histograms
        # pixels with level > i, for i = 0..n-1: a reversed cumulative sum without its first term
        tp = np.cumsum(inside[::-1])[::-1][1:]
        fp = np.cumsum(outside[::-1])[::-1][1:]
        return tp, fp

    def count_predicted(self, threshold: float, inclusive: bool) -> tuple[int, int]:
        """(tp, fp) of the prediction binarised at `threshold` (>= when inclusive, else >)."""
        if self.codes is not None:
            chosen = self.code_values >= threshold if inclusive else self.code_values > threshold
            outside, inside = self.code_histograms.sum(axis=0)
            return int(inside[chosen].sum()), int(outside[chosen].sum())
        predicted = self.values >= threshold if inclusive else self.values > threshold
        tp = int(np.count_nonzero(predicted & self.gt))
        return tp, int(np.count_nonzero(predicted)) - tp

    @cached_property
    def adaptive_threshold(self) -> float:
        """Twice the mean prediction, capped at 1."""
        if self.codes is not None:
            counts = self.code_histograms.sum(axis=(0, 1))
            mean = counts @ self.code_values / self.size
            # a sum in another order may differ in the last bits; where that could move a pixel
            # across the threshold, take the mean exactly as the toolbox does
            if np.any(np.isclose(self.code_values[counts > 0], 2 * mean, rtol=1e-12, atol=0)):
                mean = self.values.mean()
        else:
            mean = self.values.mean()
        return min(2 * mean, 1)

    def mean_absolute_error(self) -> float:
        if self.codes is not None:
            outside, inside = self.code_histograms.sum(axis=0)
            return float((inside @ (1 - self.code_values) + outside @ self.code_values) / self.size)
        return float(np.mean(np.abs(self.values - self.gt)))

    @cached_property
    def region_sums(self) -> dict[str, np.ndarray]:
        """Per S-measure quadrant: pixel count `n`, sums of x, x^2, of the ground truth g, of x g and x^2 g."""
        if self.codes is not None:
            histograms = self.code_histograms          # quadrant, gt, code
            x, xx = self.code_values, self.code_values ** 2
            both = histograms.sum(axis=1)
            return {"n": both.sum(axis=1), "x": both @ x, "xx": both @ xx, "g": histograms[:, 1].sum(axis=1),
                    "xg": histograms[:, 1] @ x, "xxg": histograms[:, 1] @ xx}
        values, on_gt = self.values, self.values * self.gt
        sums: dict[str, list] = {key: [] for key in ("n", "x", "xx", "g", "xg", "xxg")}
        for part_x, part_g, part_xg in zip(self._quadrants(values), self._quadrants(self.gt), self._quadrants(on_gt)):
            sums["n"].append(part_x.size)
            sums["x"].append(part_x.sum())
            sums["xx"].append(np.einsum("ij,ij->", part_x, part_x))
            sums["g"].append(np.count_nonzero(part_g))
            sums["xg"].append(part_xg.sum())
            sums["xxg"].append(np.einsum("ij,ij->", part_xg, part_x))
        return {key: np.array(value, dtype=np.float64 if key not in ("n", "g") else np.int64)
                for key, value in sums.items()}
