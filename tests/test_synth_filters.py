"""Mask synthesis and the three filters: hand-made cases with known answers, and agreement with
straightforward per-image implementations (np.histogram, np.convolve, skimage's labelling)."""

import numpy as np
import pytest
import torch
from skimage.measure import label as skimage_label

from generator.backends.testing import ShapesGenerator
from generator.synth import FilterConfig, apply_filters, filters, gray, synthesize_masks
from generator.synth.filters import (
    batch_histograms, count_local_maxima, filter_components, filter_components_loop,
    has_interior_maximum, histogram_fails, size_fails, smooth_histograms)

BIN_CENTRES = -1 + (np.arange(12) + 0.5) / 6  # centres of the 12 bins over [-1, 1]


def images_with_gray_histogram(counts, side=None):
    """One grey image (R = G = B) whose pixels fall in the bins as `counts` says."""
    values = np.repeat(BIN_CENTRES / sum((0.2989, 0.5870, 0.1140)), counts)
    side = side or int(np.ceil(np.sqrt(values.size)))
    assert values.size == side * side
    plane = values.reshape(side, side).astype(np.float32)
    return np.broadcast_to(plane, (3, side, side))[None].copy()


# --- masks ---------------------------------------------------------------------------------------

def test_gray_uses_the_papers_weights():
    images = torch.zeros(2, 3, 4, 5)
    images[0, 0], images[0, 1], images[0, 2] = 1.0, 0.5, -1.0
    expected = 0.2989 * 1.0 + 0.5870 * 0.5 + 0.1140 * -1.0
    out = gray(images)
    assert out.shape == (2, 4, 5)
    assert torch.allclose(out[0], torch.full((4, 5), expected))
    assert torch.equal(out[1], torch.zeros(4, 5))


def test_mask_is_where_the_shift_lightens():
    images = torch.zeros(1, 3, 2, 2)
    shifted = images.clone()
    shifted[0, :, 0, 0] = 0.5     # lighter: foreground
    shifted[0, :, 1, 1] = -0.5    # darker: background
    masks = synthesize_masks(images, shifted)
    assert masks.dtype == torch.bool
    assert masks.tolist() == [[[True, False], [False, False]]]  # equal is not lighter


def test_mask_synthesis_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        synthesize_masks(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        gray(torch.zeros(3, 4, 4))


def test_planted_lighting_direction_gives_the_object_mask_and_passes():
    generator = ShapesGenerator(resolution=32, mixing_seed=3)
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    shift = 5 * generator.planted_direction("lighting")
    images, shifted = generator.generate(z), generator.generate(z + shift)
    masks = synthesize_masks(images, shifted)
    agreement = (masks == generator.object_mask(z)).float().mean()
    assert agreement > 0.99
    result = apply_filters(masks.numpy(), shifted.numpy())
    assert result.keep.sum() >= 4 and result.rejected_by["size"] == 0   # objects are small
    # The opposite sign makes the background the mask: mostly rejected by size.
    flipped = synthesize_masks(images, generator.generate(z - shift)).numpy()
    assert apply_filters(flipped, generator.generate(z - shift).numpy()).rejected_by["size"] >= 8


# --- size ------------------------------------------------------------------------------------------

def test_size_filter_rejects_only_above_half():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0].flat[:8] = True     # exactly 0.5: kept
    masks[1].flat[:9] = True     # above 0.5: rejected
    assert size_fails(masks).tolist() == [False, True, False]
    assert size_fails(masks, 0.5, min_foreground=0.1).tolist() == [False, True, True]


# --- histogram -------------------------------------------------------------------------------------

def test_batch_histograms_match_numpy_including_edges():
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.3, 1.3, (6, 3, 9, 9)).astype(np.float32)
    values[0, 0, 0, :7] = [-1, 1, 0, 1 / 3, -2 / 3, 1 / 6, 5 / 6]   # values on bin edges
    expected = np.stack([np.histogram(v, bins=12, range=(-1, 1))[0] for v in values])
    assert np.array_equal(batch_histograms(values, 12), expected)


def test_smoothing_ends_average_existing_neighbours_or_zero_padding():
    counts = np.array([[6, 0, 3, 9]])
    assert np.allclose(smooth_histograms(counts, 3), [[3, 3, 4, 6]])
    assert np.allclose(smooth_histograms(counts, 3, zero_padded=True), [[2, 3, 4, 4]])
    assert np.allclose(smooth_histograms(counts, 3, zero_padded=True),
                       np.convolve(counts[0], np.ones(3) / 3, mode="same"))
    assert np.array_equal(smooth_histograms(counts, 1), counts)


@pytest.mark.parametrize("smoothed, interior", [
    ([5, 1, 1, 1, 5], False),     # a flat valley is not a maximum
    ([1, 2, 2, 1], True),         # a plateau with lower bins on both sides is
    ([1, 2, 2, 3], False),        # a plateau that rises again is not
    ([3, 3, 1, 1, 2, 2], False),  # runs reaching the ends are the ends' maxima
    ([0, 0, 0, 0], False),
    ([1, 3, 2, 4], True),
])
def test_interior_maximum_on_hand_made_histograms(smoothed, interior):
    assert has_interior_maximum(np.array([smoothed], dtype=float)).tolist() == [interior]


def test_reference_count_of_local_maxima():
    smoothed = np.array([[1, 2, 1], [2, 1, 2], [0, 0, 0], [3, 2, 1]], dtype=float)
    assert count_local_maxima(smoothed).tolist() == [1, 2, 3, 1]


def test_histogram_filter_paper_rule_on_images_with_known_histograms():
    ends = images_with_gray_histogram([50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50])          # dark bg, light object
    middle = images_with_gray_histogram([0, 0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0])      # grey: a middle peak
    # Only the ends peak; zero padding would halve bin 0 and show a peak at bin 1 instead.
    skewed = images_with_gray_histogram([50, 15, 3, 0, 0, 0, 0, 0, 0, 0, 0, 32])
    two_inner = images_with_gray_histogram([4, 26, 20, 0, 0, 0, 0, 0, 0, 20, 26, 4])  # peaks beside the ends
    shifted = np.concatenate([ends, middle, skewed, two_inner])
    assert histogram_fails(shifted).tolist() == [False, True, False, True]
    intensity = gray(torch.from_numpy(skewed)).numpy()
    zero_padded = smooth_histograms(batch_histograms(intensity, 12), 3, zero_padded=True)
    assert has_interior_maximum(zero_padded).tolist() == [True]


def test_histogram_filter_reference_rule_matches_a_straightforward_version():
    def straightforward(image):
        hist, _ = np.histogram(image, bins=12, range=(-1, 1))
        smooth = np.convolve(hist, np.ones(3) / 3, mode="same")
        maxima = sum(1 for i in range(12)
                     if (i == 0 or smooth[i] >= smooth[i - 1]) and (i == 11 or smooth[i] >= smooth[i + 1]))
        return maxima < 2

    rng = np.random.default_rng(1)
    shifted = np.tanh(rng.normal(0, 1, (40, 3, 8, 8)) * rng.uniform(0.2, 3, (40, 1, 1, 1))).astype(np.float32)
    shifted[:10] = np.round(shifted[:10])   # few distinct values: plateaus and ties
    expected = [straightforward(image) for image in shifted]
    assert histogram_fails(shifted, rule="reference").tolist() == expected
    assert any(expected) and not all(expected)


# --- connected components --------------------------------------------------------------------------

def test_components_smaller_than_a_fifth_of_the_largest_are_dropped():
    mask = np.zeros((1, 20, 20), dtype=bool)
    mask[0, 0:10, 0:10] = True       # 100 px, the largest
    mask[0, 15:19, 15:19] = True     # 16 px < 20: dropped
    mask[0, 15:20, 0:4] = True       # exactly 20 px: kept by >= (paper), dropped by > (code)
    paper = filter_components(mask)
    reference = filter_components(mask, inclusive=False)
    assert paper.sum() == 120 and not paper[0, 16, 16] and paper[0, 16, 1]
    assert reference.sum() == 100


def test_connectivity_four_versus_eight():
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, 0:5, 0:5] = True          # 25 px
    mask[0, 5:7, 5:7] = True          # 4 px touching only at a corner
    assert filter_components(mask, connectivity=4).sum() == 25   # separate: 4 < 5 dropped
    assert filter_components(mask, connectivity=8).sum() == 29   # one component


def test_components_in_a_batch_stay_in_their_own_image_and_empty_masks_pass():
    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[0, :, :] = True             # a full mask above an empty one must not join it
    masks[2, 0, 0] = True
    masks[2, 3:6, 3:6] = True         # 9 px; the single pixel (1 < 1.8) goes
    out = filter_components(masks)
    assert out[0].all() and not out[1].any()
    assert out[2].sum() == 9 and not out[2, 0, 0]


@pytest.mark.parametrize("connectivity, inclusive, shape", [
    (4, True, (30, 24, 24)), (8, False, (30, 24, 24)), (4, False, (12, 1, 17)), (8, True, (12, 13, 1)),
    (8, True, (20, 9, 31))])
def test_vectorised_components_match_skimage_labelling(connectivity, inclusive, shape):
    rng = np.random.default_rng(connectivity + shape[1])
    masks = rng.random(shape) < rng.uniform(0.1, 0.9, (shape[0], 1, 1))
    masks[3] = False
    masks[4] = True
    expected = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        labels = skimage_label(mask, connectivity=1 if connectivity == 4 else 2)
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.size:
            threshold = 0.2 * sizes.max()
            kept = np.flatnonzero(sizes >= threshold if inclusive else sizes > threshold) + 1
            expected[i] = np.isin(labels, kept)
    assert np.array_equal(filter_components(masks, connectivity, 0.2, inclusive), expected)
    assert np.array_equal(filter_components_loop(masks, connectivity, 0.2, inclusive), expected)


def test_runs_found_on_packed_rows_match_a_row_by_row_scan():
    rng = np.random.default_rng(5)
    for shape in [(3, 5, 37), (2, 4, 64), (2, 3, 130), (1, 1, 1), (2, 6, 1)]:
        masks = rng.random(shape) < 0.5
        masks[0, 0] = True                       # a row-wide run, from the first column to the last
        expected = []
        for row, line in enumerate(masks.reshape(-1, shape[2])):
            padded = np.concatenate([[False], line, [False]])
            edges = np.flatnonzero(padded[1:] != padded[:-1])
            expected += [(row, start, end) for start, end in zip(edges[0::2], edges[1::2])]
        bits = filters.packed_rows(masks)
        left, right = filters.neighbour_bits(bits)
        rows, starts, ends = filters.runs_from_edges(bits & ~left, bits & ~right)
        assert list(zip(rows.tolist(), starts.tolist(), ends.tolist())) == expected


def test_bit_counts_without_numpy_2_agree_with_a_count_of_the_binary_digits():
    rng = np.random.default_rng(4)
    words = np.concatenate([rng.integers(0, 2**64, 200, dtype=np.uint64, endpoint=False),
                            np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)])
    expected = [bin(int(word)).count("1") for word in words]
    assert filters.summed_bit_counts(words).tolist() == expected
    assert filters.bit_counts(words).tolist() == expected


def random_mask_batches():
    """Seeded batches that cover the cases the vectorised filter treats apart."""
    rng = np.random.default_rng(11)
    for shape in [(24, 16, 37), (16, 9, 64), (12, 7, 65), (8, 5, 130), (1, 12, 12), (6, 1, 70), (6, 20, 1)]:
        density = rng.choice([0.05, 0.3, 0.6, 0.9], size=(shape[0], 1, 1))
        masks = rng.random(shape) < density
        masks[0] = False                         # empty
        masks[-1] = True                         # full, touching every border
        yield masks
    # Shapes with one run per row, where the components come from counting rows: diagonal
    # steps (one component with corners, one per row without), a gap of a row, a left/right
    # zigzag, a blob touching the image borders; and two bars side by side that must be labelled.
    steps = np.zeros((1, 8, 8), dtype=bool)
    steps[0, np.arange(8), np.arange(8)] = True
    gap = np.zeros((1, 9, 10), dtype=bool)
    gap[0, 0:4, 2:7] = True
    gap[0, 5:6, 3:4] = True
    zigzag = np.zeros((1, 6, 130), dtype=bool)    # rows meet at corners, across a word boundary
    zigzag[0, 0::2, 60:70] = True
    zigzag[0, 1::2, 70:129] = True
    blob = np.zeros((1, 10, 66), dtype=bool)
    for row in range(10):
        blob[0, row, max(0, 30 - 4 * row):min(66, 40 + 4 * row)] = True
    bars = np.zeros((1, 10, 6), dtype=bool)     # two runs in a row: counting rows would see one
    bars[0, :, 0:2] = True
    bars[0, 0, 4] = True
    yield np.concatenate([np.pad(m, ((0, 0), (0, 10 - m.shape[1]), (0, 130 - m.shape[2])))
                          for m in (steps, gap, zigzag, blob, bars)])


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("ratio", [0.2, 0.0, 1.0])
def test_vectorised_components_match_the_loop(connectivity, inclusive, ratio):
    for masks in random_mask_batches():
        expected = filter_components_loop(masks, connectivity, ratio, inclusive)
        assert np.array_equal(filter_components(masks, connectivity, ratio, inclusive), expected)


def test_components_of_generator_masks_match_the_loop_in_small_groups(monkeypatch):
    generator = ShapesGenerator(resolution=64)
    z = torch.randn(12, generator.latent_dim, generator=torch.Generator().manual_seed(1))
    shift = 5 * generator.planted_direction("lighting")
    masks = synthesize_masks(generator.generate(z), generator.generate(z + shift)).numpy()
    specks = np.random.default_rng(2).random(masks.shape) < 0.01
    specks[:4] = False                           # a few plain single blobs in the batch
    masks = masks ^ specks
    monkeypatch.setattr(filters, "LABELLING_RUNS", 40)   # many groups, some of one image
    for connectivity in (4, 8):
        expected = filter_components_loop(masks, connectivity)
        assert not np.array_equal(expected, masks)   # specks are dropped
        assert np.array_equal(filter_components(masks, connectivity), expected)


def test_components_of_empty_batches_and_images():
    for shape in [(0, 4, 4), (2, 0, 5), (2, 5, 0)]:
        assert filter_components(np.zeros(shape, dtype=bool)).shape == shape


# --- the filters together --------------------------------------------------------------------------

def speckled_mask():
    """A 40 % object plus a checkerboard of single-pixel specks: 60 % foreground in all."""
    mask = np.zeros((20, 20), dtype=bool)
    mask[:10, :16] = True                                   # 160 px = 40 %
    rows, cols = np.mgrid[12:20, 0:20]
    mask[12:20] = (rows + cols) % 2 == 0                    # 80 specks, no two 4-connected
    return mask


def test_order_decides_whether_specks_count_towards_size():
    mask = speckled_mask()[None]
    assert mask.mean() == pytest.approx(0.6)
    shifted = images_with_gray_histogram([200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200], side=20)
    paper = apply_filters(mask, shifted, FilterConfig())
    assert paper.keep.tolist() == [False] and paper.rejected_by == {"size": 1, "histogram": 0}
    code_order = apply_filters(mask, shifted, FilterConfig(order=("components", "size", "histogram")))
    assert code_order.keep.tolist() == [True]
    assert code_order.masks.sum() == 160 and code_order.foreground_fraction[0] == pytest.approx(0.4)


def test_rejections_are_counted_once_under_the_first_filter_in_order():
    full = np.ones((2, 20, 20), dtype=bool)                                   # fails size
    grey = images_with_gray_histogram([0] * 5 + [400] + [0] * 6, side=20)    # fails histogram
    shifted = np.concatenate([grey, grey])
    full[1, :, 10:] = False                                                   # 50 %: passes size
    result = apply_filters(full, shifted, FilterConfig())
    assert result.keep.tolist() == [False, False]
    assert result.rejected_by == {"size": 1, "histogram": 1}
    assert result.failed["histogram"].tolist() == [True, True]
    assert result.rejected["size"].tolist() == [True, False]
    assert result.rejected["histogram"].tolist() == [False, True]
    swapped = apply_filters(full, shifted, FilterConfig(order=("histogram", "size", "components")))
    assert swapped.rejected_by == {"histogram": 2, "size": 0}


def test_switched_off_filters_reject_and_edit_nothing():
    rng = np.random.default_rng(2)
    masks = rng.random((8, 16, 16)) < 0.7
    shifted = rng.uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    off = FilterConfig(size=False, histogram=False, components=False)
    result = apply_filters(masks, shifted, off)
    assert result.keep.all() and np.array_equal(result.masks, masks)
    assert result.rejected_by == {"size": 0, "histogram": 0}
    on = apply_filters(masks, shifted, FilterConfig())
    assert on.rejected_by["size"] == 8


def test_reference_variant_and_params_round_trip():
    reference = FilterConfig.reference()
    assert (reference.connectivity, reference.histogram_rule, reference.component_rule) == (8, "reference", "reference")
    assert reference.order == ("components", "size", "histogram")
    for config in (FilterConfig(), reference, FilterConfig(size=False, max_foreground=0.6)):
        assert FilterConfig.from_params(config.to_params()) == config
    assert FilterConfig.from_params({}) == FilterConfig()
    assert FilterConfig.from_params({"size": {"enabled": False}}).size is False


@pytest.mark.parametrize("settings, message", [
    ({"max_foreground": 1.5}, "max_foreground"),
    ({"histogram_window": 2}, "odd"),
    ({"connectivity": 6}, "connectivity"),
    ({"histogram_rule": "mine"}, "histogram_rule"),
    ({"order": ("size", "histogram")}, "order"),
    ({"size": "yes"}, "true or false"),
])
def test_bad_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        FilterConfig(**settings)


def test_bad_params_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown filter settings: colour"):
        FilterConfig.from_params({"colour": {}})
    with pytest.raises(ValueError, match="unknown settings in filters.size: max"):
        FilterConfig.from_params({"size": {"max": 0.4}})
    with pytest.raises(ValueError, match="bool array"):
        apply_filters(np.zeros((1, 4, 4), dtype=np.uint8), np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        apply_filters(np.zeros((1, 4, 4), dtype=bool), np.zeros((1, 3, 4, 5), np.float32))


def test_empty_batch():
    result = apply_filters(np.zeros((0, 8, 8), dtype=bool), np.zeros((0, 3, 8, 8), np.float32))
    assert result.keep.shape == (0,) and result.rejected_by == {"size": 0, "histogram": 0}
