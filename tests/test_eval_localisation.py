"""Localisation metrics: largest-component boxes at every threshold, MaxBoxAcc and PxAP."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation.localisation import (MaxBoxAcc, PxAP, box_iou, ground_truth_boxes,
                                     largest_component_boxes)

STRUCTURES = {8: np.ones((3, 3), bool), 4: None}


def brute_force_boxes(levels: np.ndarray, n_thresholds: int, connectivity: int) -> np.ndarray:
    """One labelling per threshold; ties go to the lowest label, i.e. the earliest pixel in raster order."""
    boxes = np.zeros((n_thresholds, 5), dtype=np.int64)
    for i in range(n_thresholds):
        labels, count = ndimage.label(levels > i, structure=STRUCTURES[connectivity])
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        largest = int(np.argmax(areas)) + 1
        ys, xs = np.nonzero(labels == largest)
        boxes[i] = (areas[largest - 1], ys.min(), xs.min(), ys.max(), xs.max())
    return boxes


@pytest.mark.parametrize("connectivity", [8, 4])
def test_largest_boxes_equal_one_labelling_per_threshold(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(150):
        shape = tuple(rng.integers(1, 12, 2))
        levels = rng.integers(0, 7, shape).astype(np.int16)
        got = largest_component_boxes(levels, 6, connectivity)
        assert np.array_equal(got, brute_force_boxes(levels, 6, connectivity)), levels


def test_largest_boxes_on_a_smooth_map():
    ys, xs = np.mgrid[0:60, 0:80]
    bumps = 200 * np.exp(-((ys - 20) ** 2 + (xs - 20) ** 2) / 60) + 150 * np.exp(-((ys - 40) ** 2 + (xs - 60) ** 2) / 200)
    levels = np.clip(np.ceil(bumps), 0, 255).astype(np.int16)
    assert np.array_equal(largest_component_boxes(levels, 255), brute_force_boxes(levels, 255, 8))


def test_diagonal_touch_joins_only_with_eight_connectivity():
    levels = np.array([[1, 0], [0, 1]], np.int16)
    assert largest_component_boxes(levels, 1, 8)[0].tolist() == [2, 0, 0, 1, 1]
    assert largest_component_boxes(levels, 1, 4)[0].tolist() == [1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="connectivity"):
        largest_component_boxes(levels, 1, 6)


def test_ground_truth_boxes_are_components_then_the_whole_mask():
    gt = np.zeros((10, 12), bool)
    gt[1:3, 1:4] = True
    gt[6:9, 7:11] = True
    assert ground_truth_boxes(gt).tolist() == [[1, 1, 2, 3], [6, 7, 8, 10], [1, 1, 8, 10]]
    assert ground_truth_boxes(np.zeros((3, 3), bool)).shape == (0, 4)


def test_box_iou_inclusive_pixels():
    iou = box_iou(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1], [0, 0, 3, 3], [5, 5, 6, 6]]))
    assert iou.tolist() == [[1.0, 0.25, 0.0]]


def test_max_box_acc_hand_case():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    # a prediction whose core is the object and whose rim (0.3) doubles the box in each direction
    prediction = np.zeros((20, 20))
    prediction[0:20, 0:20] = 0.1
    prediction[2:18, 2:18] = 0.3
    prediction[5:15, 5:15] = 0.9
    metric = MaxBoxAcc("paper")
    metric.update(prediction, mask)
    box_acc = metric.curves()["box_acc"]
    thresholds = metric.curves()["threshold"]
    # below 0.1: the whole image (IoU 0.25); [0.1, 0.3): the rim box 16 x 16 (IoU 100/256 < 0.5);
    # [0.3, 0.9): the object exactly; from 0.9 on: nothing predicted
    assert np.all(box_acc[thresholds < 0.3] == 0)
    assert np.all(box_acc[(thresholds >= 0.3) & (thresholds < 0.9)] == 1)
    assert np.all(box_acc[thresholds >= 0.9] == 0)
    assert metric.compute()["max_box_acc"] == 1.0
    # an empty mask has no box: the image counts, and is never correct
    metric.update(prediction, np.zeros((20, 20), np.uint8))
    assert metric.compute()["max_box_acc"] == 0.5


def test_max_box_acc_toolbox_thresholds_on_normalised_map():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    prediction = (mask // 2).astype(np.uint8)   # 0 or 127: normalised to 0 or 1
    metric = MaxBoxAcc("toolbox")
    metric.update(prediction, mask)
    curve = metric.curves()["box_acc"]
    assert curve.shape == (256,)
    assert curve[0] == 0          # threshold 0: every pixel is foreground, the whole image
    assert np.all(curve[1:] == 1)


def brute_force_pxap(predictions, masks, thresholds):
    tp = np.array([sum(np.count_nonzero((p > t) & (m >= 128)) for p, m in zip(predictions, masks)) for t in thresholds])
    fp = np.array([sum(np.count_nonzero((p > t) & (m < 128)) for p, m in zip(predictions, masks)) for t in thresholds])
    positives = sum(np.count_nonzero(m >= 128) for m in masks)
    area, previous_recall = 0.0, 0.0
    for k in reversed(range(len(thresholds))):   # from the strictest threshold down
        recall = tp[k] / positives
        precision = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 1.0
        area += precision * (recall - previous_recall)
        previous_recall = recall
    return area


def test_pxap_pools_pixels_and_sums_precision_times_recall_gain():
    rng = np.random.default_rng(2)
    predictions = [rng.random((7, 9)) for _ in range(3)]
    masks = [(rng.random((7, 9)) > 0.6).astype(np.uint8) * 255 for _ in range(3)]
    metric = PxAP("paper")
    for prediction, mask in zip(predictions, masks):
        metric.update(prediction, mask)
    expected = brute_force_pxap(predictions, masks, np.arange(255) / 255)
    assert metric.compute()["pxap"] == pytest.approx(expected, abs=1e-12)


def test_pxap_perfect_ranking_is_one_and_needs_foreground():
    mask = np.zeros((6, 6), np.uint8)
    mask[:3] = 255
    metric = PxAP("paper")
    metric.update(np.where(mask > 0, 0.8, 0.1), mask)
    assert metric.compute()["pxap"] == pytest.approx(1.0)
    empty = PxAP("paper")
    empty.update(np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    assert np.isnan(empty.compute()["pxap"])


def test_recurring_prediction_reuses_its_boxes():
    mask = np.zeros((12, 12), np.uint8)
    mask[3:9, 3:9] = 255
    prediction = np.zeros((12, 12))
    prediction[2:10, 2:10] = 0.7
    cached, fresh = MaxBoxAcc("paper"), MaxBoxAcc("paper")
    for _ in range(3):
        cached.update(prediction, mask)
    fresh.update(prediction, mask)
    assert len(cached._cache) == 1
    assert np.array_equal(cached.curves()["box_acc"], fresh.curves()["box_acc"])
    other = prediction.copy()
    other[0, 0] = 0.9
    cached.update(other, mask)
    assert len(cached._cache) == 2 and cached.compute()["max_box_acc"] == 1.0
