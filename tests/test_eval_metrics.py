"""Saliency metrics: equal to PySODMetrics under the toolbox convention, to the definitions under the paper's."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.conventions import PAPER, TOOLBOX, get_convention, paper_levels
from evaluation.metrics import (BinaryAgreement, EMeasure, FMeasure, MAE, MetricSuite, SMeasure,
                                default_metrics, f_measure)
from evaluation.pysod_reference import PREDICTION_KINDS, SHARED_OUTPUTS, PySODReference, synthetic_prediction

py_sod_metrics = pytest.importorskip("py_sod_metrics")

ECSSD_SUBSET = 120
TOLERANCE = 1e-6


@functools.lru_cache(maxsize=1)
def ecssd_masks(root: Path, count: int = ECSSD_SUBSET) -> tuple[np.ndarray, ...]:
    paths = sorted((root / "ECSSD" / "ground_truth_mask").glob("*.png"))[:count]
    return tuple(np.array(Image.open(path).convert("L")) for path in paths)


@pytest.fixture
def masks(shared_datasets) -> tuple[np.ndarray, ...]:
    return ecssd_masks(shared_datasets)


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
def test_toolbox_convention_equals_pysodmetrics_on_ecssd(masks, kind):
    ours, reference = MetricSuite("toolbox", localisation=False), PySODReference()
    for index, mask in enumerate(masks):
        prediction = synthetic_prediction(kind, mask, seed=index)
        ours.update(prediction, mask)
        reference.update(prediction, mask)
    got, expected = ours.compute(), reference.compute()
    for name in SHARED_OUTPUTS:
        assert abs(got[name] - expected[name]) <= TOLERANCE, (name, got[name], expected[name])
    curves, expected_curves = ours.curves()["FMeasure"], reference.curves()
    for name in ("precision", "recall", "f"):
        np.testing.assert_allclose(curves[name], expected_curves[name], rtol=0, atol=TOLERANCE)
    assert ours.count == len(masks)


def degenerate_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    soft = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    square = np.zeros((20, 30), np.uint8)
    square[5:12, 8:20] = 255
    return [
        ("empty ground truth", soft, np.zeros((20, 30), np.uint8)),
        ("full ground truth", soft, np.full((20, 30), 255, np.uint8)),
        ("constant prediction", np.full((20, 30), 77, np.uint8), square),
        ("zero prediction", np.zeros((20, 30), np.uint8), square),
        ("binary prediction", square.copy(), square),
        ("soft mask at 128", soft, np.where(square > 0, 128, 0).astype(np.uint8)),
        ("single pixel", np.array([[200]], np.uint8), np.array([[255]], np.uint8)),
        ("foreground on the last row", soft, np.pad(np.full((1, 30), 255, np.uint8), ((19, 0), (0, 0)))),
    ]


@pytest.mark.parametrize("name,prediction,mask", degenerate_cases(), ids=[c[0] for c in degenerate_cases()])
def test_toolbox_empty_and_constant_rules_follow_pysodmetrics(name, prediction, mask):
    ours, reference = MetricSuite("toolbox", localisation=False), PySODReference()
    ours.update(prediction, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the toolbox averages an empty region on the last case
        reference.update(prediction, mask)
        expected = reference.compute()
    got = ours.compute()
    for metric in SHARED_OUTPUTS:
        if np.isnan(expected[metric]):
            # PySODMetrics' S-measure is NaN when the centroid sits on the last row; ours gives that region weight 0
            assert metric == "s_measure" and name == "foreground on the last row"
            continue
        assert abs(got[metric] - expected[metric]) <= TOLERANCE, (metric, got[metric], expected[metric])


def test_toolbox_float_prediction_is_stored_as_8_bit_first():
    rng = np.random.default_rng(0)
    probabilities = rng.random((16, 16))
    mask = (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255
    from_float, from_bytes = MetricSuite("toolbox", localisation=False), MetricSuite("toolbox", localisation=False)
    from_float.update(probabilities, mask)
    from_bytes.update(np.rint(probabilities * 255).astype(np.uint8), mask)
    assert from_float.compute() == from_bytes.compute()


# -- the paper's convention, on cases worked out by hand ---------------------------------------

def test_paper_levels_count_thresholds_strictly_below():
    values = np.array([[0.0, 0.2, 0.6, 0.9, 1.0, 254 / 255, 1e-9]])
    # 0.2 == 51/255 and 0.6 == 153/255 exactly: a value on a threshold is not above it
    assert paper_levels(values).tolist() == [[0, 51, 153, 230, 255, 254, 1]]
    brute = (values[..., None] > np.arange(255) / 255).sum(axis=-1)
    assert np.array_equal(paper_levels(values), brute)


def test_paper_hand_case_two_by_two():
    prediction = np.array([[0.9, 0.2], [0.6, 0.0]])
    mask = np.array([[255, 0], [255, 0]], np.uint8)
    suite = MetricSuite("paper", localisation=False)
    suite.update(prediction, mask)
    got = suite.compute()
    # thresholds k < 51: {0.9, 0.2, 0.6} predicted, P = 2/3, R = 1; 51 <= k < 153: P = R = 1;
    # 153 <= k < 230: only 0.9, P = 1, R = 1/2; k >= 230: nothing, P = 1 (paper), R = 0
    f_low = 1.3 * (2 / 3) / (0.3 * (2 / 3) + 1)
    f_high = 1.3 * 0.5 / (0.3 + 0.5)
    assert got["max_f"] == pytest.approx(1.0)
    assert got["mean_f"] == pytest.approx((51 * f_low + 102 * 1.0 + 77 * f_high) / 255)
    assert got["mae"] == pytest.approx((0.1 + 0.2 + 0.4 + 0.0) / 4)
    assert got["iou"] == pytest.approx(1.0) and got["accuracy"] == pytest.approx(1.0)
    # adaptive threshold 2 * 0.425 = 0.85: only 0.9 is above it
    assert got["adaptive_f"] == pytest.approx(f_high)
    curves = suite.curves()["FMeasure"]
    assert curves["threshold"].shape == (255,) and curves["threshold"][-1] == pytest.approx(254 / 255)
    assert curves["f"][50] == pytest.approx(f_low) and curves["f"][51] == pytest.approx(1.0)
    assert curves["precision"][-1] == 1.0 and curves["recall"][-1] == 0.0


def test_paper_perfect_and_empty_predictions():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 3:8] = 255
    perfect = MetricSuite("paper", localisation=False)
    perfect.update((mask > 0).astype(np.float32), mask)
    got = perfect.compute()
    assert got["max_f"] == got["mean_f"] == pytest.approx(1.0)
    assert got["mae"] == 0 and got["iou"] == 1 and got["accuracy"] == 1
    # E-measure divides the enhanced-alignment sum by N - 1 (as Fan et al.'s code does): 100 / 99 here
    assert got["s_measure"] == pytest.approx(1.0) and got["max_e"] == pytest.approx(100 / 99)

    nothing = MetricSuite("paper", localisation=False)
    nothing.update(np.zeros((10, 10)), mask)
    got = nothing.compute()
    assert got["max_f"] == 0 and got["iou"] == 0 and got["accuracy"] == pytest.approx(0.8)


def test_empty_ground_truth_rules_differ_between_conventions():
    mask, prediction = np.zeros((8, 8), np.uint8), np.zeros((8, 8))
    paper, toolbox = MetricSuite("paper", localisation=False), MetricSuite("toolbox", localisation=False)
    paper.update(prediction, mask)
    toolbox.update(prediction, mask)
    # the reference code: precision 1 when nothing is predicted, recall 1 when nothing is there
    assert paper.compute()["max_f"] == 1.0 and paper.compute()["iou"] == 1.0
    # the toolboxes: both 0
    assert toolbox.compute()["max_f"] == 0.0 and toolbox.compute()["iou"] == 0.0


def test_paper_soft_mask_binarised_at_128_and_prediction_at_half():
    mask = np.array([[127, 128, 255, 0]], np.uint8)
    prediction = np.array([[0.5, 0.5000001, 1.0, 0.0]])
    agreement = BinaryAgreement("paper")
    agreement.update(prediction, mask)
    # foreground {128, 255}; predicted (> 0.5) {0.5000001, 1.0}: identical
    assert agreement.compute() == {"iou": 1.0, "accuracy": 1.0}
    toolbox = get_convention("toolbox")
    assert toolbox.binarise_mask(mask).tolist() == [[False, False, True, False]]


def brute_force_paper_f(predictions, masks):
    """The paper's definition written out: one loop per threshold k / 255."""
    curves = []
    for prediction, mask in zip(predictions, masks):
        gt = mask >= 128
        row = []
        for k in range(255):
            predicted = prediction > k / 255
            tp = np.count_nonzero(predicted & gt)
            p = tp / predicted.sum() if predicted.any() else 1.0
            r = tp / gt.sum() if gt.any() else 1.0
            row.append((1.3 * p * r) / (0.3 * p + r) if p + r > 0 else 0.0)
        curves.append(row)
    return np.mean(curves, axis=0)


def test_paper_f_curve_equals_the_loop_over_thresholds():
    rng = np.random.default_rng(7)
    predictions = [rng.random((12, 9)).astype(np.float32) for _ in range(4)] + [np.full((5, 5), 0.5, np.float32)]
    masks = [(rng.random(p.shape) > 0.6).astype(np.uint8) * 255 for p in predictions[:4]] + [np.zeros((5, 5), np.uint8)]
    metric = FMeasure("paper")
    for prediction, mask in zip(predictions, masks):
        metric.update(prediction, mask)
    expected = brute_force_paper_f(predictions, masks)
    np.testing.assert_allclose(metric.curves()["f"], expected, atol=1e-12)
    assert metric.compute()["max_f"] == pytest.approx(expected.max())


def test_paper_s_and_e_measures_follow_their_definitions():
    rng = np.random.default_rng(11)
    prediction = rng.random((24, 31))
    mask = np.zeros((24, 31), np.uint8)
    mask[6:18, 9:25] = 200
    gt = mask >= 128
    reference_s = py_sod_metrics.Smeasure()
    reference_s.step(prediction, gt, normalize=False)
    s_measure = SMeasure("paper")
    s_measure.update(prediction, mask)
    assert s_measure.compute()["s_measure"] == pytest.approx(reference_s.get_results()["sm"], abs=1e-12)

    e_measure = EMeasure("paper")
    e_measure.update(prediction, mask)
    single = py_sod_metrics.Emeasure()
    single.gt_fg_numel, single.gt_size = int(gt.sum()), gt.size
    expected = [single.cal_em_with_threshold((prediction > k / 255).astype(np.float64), gt, 0.5) for k in range(255)]
    np.testing.assert_allclose(e_measure.curves()["e"], expected, atol=1e-12)
    assert e_measure.compute()["max_e"] == pytest.approx(max(expected))


def test_metrics_stream_and_reset():
    rng = np.random.default_rng(5)
    pairs = [(rng.random((9, 9)), (rng.random((9, 9)) > 0.5).astype(np.uint8) * 255) for _ in range(6)]
    streamed, alone = MAE("paper"), MAE("paper")
    for prediction, mask in pairs:
        streamed.update(prediction, mask)
    expected = np.mean([np.abs(p - (m >= 128)).mean() for p, m in pairs])
    assert streamed.compute()["mae"] == pytest.approx(expected)
    streamed.reset()
    assert np.isnan(streamed.compute()["mae"])
    alone.update(*pairs[0])
    assert alone.compute()["mae"] == pytest.approx(np.abs(pairs[0][0] - (pairs[0][1] >= 128)).mean())


def test_suite_names_its_metrics_and_refuses_mixed_conventions():
    names = [name for metric in default_metrics("paper") for name in metric.outputs]
    assert names == ["max_f", "mean_f", "adaptive_f", "mae", "iou", "accuracy", "s_measure",
                     "max_e", "mean_e", "adaptive_e", "max_box_acc", "pxap"]
    with pytest.raises(ValueError, match="uses toolbox"):
        MetricSuite("paper", metrics=[MAE("toolbox")])
    with pytest.raises(ValueError, match="unknown convention"):
        get_convention("matlab")
    metric = MAE("paper")
    with pytest.raises(ValueError, match="prepared under toolbox"):
        metric.update_prepared(TOOLBOX.prepare(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)))


@pytest.mark.parametrize("prediction,mask,message", [
    (np.zeros((3, 3)), np.zeros((3, 4), np.uint8), "differ in size"),
    (np.full((3, 3), 1.5), np.zeros((3, 3), np.uint8), r"\[0, 1\]"),
    (np.full((3, 3), np.nan), np.zeros((3, 3), np.uint8), r"\[0, 1\]"),
    (np.zeros((3, 3, 3)), np.zeros((3, 3), np.uint8), "H x W"),
    (np.zeros((3, 3), np.int32), np.zeros((3, 3), np.uint8), "float"),
])
def test_bad_inputs_are_refused(prediction, mask, message):
    for convention in (PAPER, TOOLBOX):
        with pytest.raises((ValueError, TypeError), match=message):
            convention.prepare(prediction, mask)


def test_f_measure_is_zero_where_precision_and_recall_vanish():
    assert f_measure(np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0, 0.5])).tolist() == [0.0, 0.0, 0.5]
