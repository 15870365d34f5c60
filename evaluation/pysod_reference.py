"""The metric set that PySODMetrics also has, computed by PySODMetrics, for cross-checks.

The tests and `benchmarks/bench_evaluation.py` compare `MetricSuite` under the `toolbox`
convention with these numbers.  Needs the `test` extra (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from evaluation.predictors import centre_prior_map

#: our output name -> how it is read from PySODMetrics' results
SHARED_OUTPUTS = ("max_f", "mean_f", "adaptive_f", "mae", "iou", "accuracy", "s_measure",
                  "max_e", "mean_e", "adaptive_e")


class PySODReference:
    """Fmeasure, MAE, Smeasure, Emeasure and FmeasureV2 (IoU and accuracy at 0.5), fed together."""

    def __init__(self) -> None:
        import py_sod_metrics as sod
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Fmeasure announces its successor; its numbers are the reference
            self.fmeasure = sod.Fmeasure()
        self.mae, self.smeasure, self.emeasure = sod.MAE(), sod.Smeasure(), sod.Emeasure()
        self.binary = sod.FmeasureV2(metric_handlers={
            "iou": sod.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "accuracy": sod.OverallAccuracyHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        })

    def update(self, prediction: np.ndarray, mask: np.ndarray) -> None:
        """One image: 8-bit prediction and 8-bit mask, as the toolbox reads them from PNG files."""
        for metric in (self.fmeasure, self.mae, self.smeasure, self.emeasure, self.binary):
            metric.step(prediction, mask)

    def compute(self) -> dict[str, float]:
        f = self.fmeasure.get_results()
        e = self.emeasure.get_results()["em"]
        binary = self.binary.get_results()
        return {"max_f": float(f["fm"]["curve"].max()), "mean_f": float(f["fm"]["curve"].mean()),
                "adaptive_f": float(f["fm"]["adp"]), "mae": float(self.mae.get_results()["mae"]),
                "iou": float(binary["iou"]["binary"]), "accuracy": float(binary["accuracy"]["binary"]),
                "s_measure": float(self.smeasure.get_results()["sm"]),
                "max_e": float(e["curve"].max()), "mean_e": float(e["curve"].mean()), "adaptive_e": float(e["adp"])}

    def curves(self) -> dict[str, np.ndarray]:
        """Precision, recall and F per threshold, in ascending threshold order (the toolbox's is descending)."""
        f = self.fmeasure.get_results()
        return {"precision": f["pr"]["p"][::-1], "recall": f["pr"]["r"][::-1], "f": f["fm"]["curve"][::-1]}


def synthetic_prediction(kind: str, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """An 8-bit prediction for a mask: `random` (seeded noise), `centre_prior`, or `blurred_gt`."""
    if kind == "random":
        return np.random.default_rng(seed).integers(0, 256, mask.shape, dtype=np.uint8)
    if kind == "centre_prior":
        return np.rint(centre_prior_map(*mask.shape) * 255).astype(np.uint8)
    if kind == "blurred_gt":
        return np.rint(ndimage.gaussian_filter(mask.astype(np.float64), sigma=8)).clip(0, 255).astype(np.uint8)
    raise ValueError(f"unknown prediction kind {kind!r}")


PREDICTION_KINDS = ("random", "centre_prior", "blurred_gt")
