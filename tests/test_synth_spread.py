"""mask_spread tells masks that sit in one place from masks that move and change."""

import numpy as np
import pytest

from generator.synth.spread import mask_spread, read_set_masks
from tests.test_synth_gen import project, run  # noqa: F401 (fixture)


def squares(corners, side=8, size=32):
    masks = np.zeros((len(corners), size, size), bool)
    for mask, (y, x) in zip(masks, corners):
        mask[y:y + side, x:x + side] = True
    return masks


def test_one_fixed_region_has_no_spread():
    figures = mask_spread(squares([(12, 12)] * 5))
    assert figures["centroid_std"] == pytest.approx(0, abs=1e-9)
    assert figures["area_std"] == pytest.approx(0, abs=1e-9)
    assert figures["pairwise_iou"] == pytest.approx(1) and figures["majority_iou"] == pytest.approx(1)
    assert figures["area_mean"] == pytest.approx(64 / 1024)


def test_disjoint_masks_spread_by_their_centroids():
    figures = mask_spread(squares([(0, 0), (0, 24)]))
    # centroids at x = 3.5 and 27.5 of 31, y both 3.5: std of x is 12 / 31, of y 0
    assert figures["centroid_std"] == pytest.approx((12 / 31) / 2)
    assert figures["pairwise_iou"] == pytest.approx(0)
    assert figures["majority_iou"] == pytest.approx(0)      # no pixel is in most masks


def test_half_overlapping_pair():
    figures = mask_spread(squares([(0, 0), (0, 4)]))
    assert figures["pairwise_iou"] == pytest.approx(32 / 96)


def test_empty_masks_count_in_area_but_not_in_centroids():
    masks = np.concatenate([squares([(0, 0), (0, 24)]), np.zeros((1, 32, 32), bool)])
    figures = mask_spread(masks)
    assert figures["centroid_std"] == pytest.approx((12 / 31) / 2)
    assert figures["area_mean"] == pytest.approx(2 * 64 / (3 * 1024))


@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 8)])
def test_too_few_masks_or_a_bad_shape_is_refused(shape):
    with pytest.raises(ValueError, match="at least two"):
        mask_spread(np.zeros(shape, bool))


def test_a_set_masks_are_read_in_manifest_order(project):
    run()
    masks = read_set_masks(project / "shards", 30)
    assert masks.shape == (30, 32, 32) and masks.dtype == bool
    assert len(read_set_masks(project / "shards", 1000)) == 45
    figures = mask_spread(masks)
    assert 0 < figures["pairwise_iou"] < 1
