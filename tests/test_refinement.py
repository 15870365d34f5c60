"""Edge-aware refinement (fast bilateral solver): snaps a blurry mask to a colour edge, keeps the contract."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation.refinement import refine, refine_maps


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture
def two_colour_photo():
    """A yellow object on a blue ground, with mild noise, and the object's true region."""
    rng = np.random.default_rng(0)
    photo = np.zeros((90, 120, 3), np.int16)
    photo[:] = (30, 60, 190)
    truth = np.zeros((90, 120), bool)
    yy, xx = np.mgrid[:90, :120]
    truth[((yy - 45) / 28) ** 2 + ((xx - 55) / 36) ** 2 <= 1] = True
    truth[20:40, 70:100] = True  # a corner a blur rounds off
    photo[truth] = (225, 200, 40)
    photo += rng.integers(-12, 13, photo.shape).astype(np.int16)
    return np.clip(photo, 0, 255).astype(np.uint8), truth


def test_a_blurry_shifted_mask_snaps_to_the_colour_edge(two_colour_photo):
    photo, truth = two_colour_photo
    blurry = ndimage.gaussian_filter(np.roll(truth, 5, axis=1).astype(np.float64), 5)
    before = iou(blurry > 0.5, truth)
    refined = refine(photo, blurry)
    after = iou(refined > 0.5, truth)
    assert before < 0.85 and after > 0.95 and after - before > 0.1
    assert refined.shape == truth.shape and refined.dtype == np.float32
    assert refined.min() >= 0.0 and refined.max() <= 1.0


def test_a_map_of_another_size_comes_back_at_the_photo_size(two_colour_photo):
    photo, truth = two_colour_photo
    small = ndimage.zoom(truth.astype(np.float32), 0.25, order=1)  # 23 x 30, as a model's output
    refined = refine(photo, small)
    assert refined.shape == photo.shape[:2] and 0.0 <= refined.min() <= refined.max() <= 1.0
    assert iou(refined > 0.5, truth) > 0.9


def test_several_maps_share_one_grid_and_equal_single_calls(two_colour_photo):
    photo, truth = two_colour_photo
    maps = [truth.astype(np.float32) * 0.8, np.full(truth.shape, 0.3, np.float32)]
    together = refine_maps(photo, maps)
    for single, joint in zip([refine(photo, m) for m in maps], together):
        np.testing.assert_array_equal(single, joint)
    np.testing.assert_allclose(together[1], 0.3, atol=1e-3)  # a constant map stays constant
    np.testing.assert_array_equal(refine(photo, maps[0]), together[0])  # deterministic


def test_tiny_and_bad_inputs():
    dot = np.array([[[10, 200, 30]]], np.uint8)
    assert refine(dot, np.array([[0.7]])).tolist() == [[pytest.approx(0.7, abs=1e-6)]]
    assert refine(dot, np.array([[2.0]])).item() == 1.0  # values outside [0, 1] are clipped
    line = np.zeros((1, 5, 3), np.uint8)
    assert refine(line, np.linspace(0, 1, 5)[None]).shape == (1, 5)
    with pytest.raises(ValueError, match="uint8"):
        refine(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="H x W"):
        refine(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="no pixels"):
        refine(np.zeros((0, 4, 3), np.uint8), np.zeros((1, 1)))
