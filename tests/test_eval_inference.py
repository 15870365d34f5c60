"""The inference protocol: shorter side to the input size, [-1, 1], batches by shape, maps back at mask size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.datasets import generic_layout, load_benchmark
from evaluation.inference import input_shape, plan_batches, predict_benchmark, resize_to
from evaluation.predictors import CentrePrior, UNetPredictor, centre_prior_map
from generator.image_io import load_rgb, resize_shorter_side, to_unit_range
from trainer.export import save_trained_model
from trainer.unet import UNet
from tests.tolerances import between_two_runs, reduction_lengths


def make_benchmark(root: Path, sizes: list[tuple[int, int]], mask_scale: float = 1.0):
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{index:03d}.png")
        mask = np.zeros((round(height * mask_scale), round(width * mask_scale)), np.uint8)
        mask[mask.shape[0] // 4: 3 * mask.shape[0] // 4, mask.shape[1] // 4: 3 * mask.shape[1] // 4] = 255
        Image.fromarray(mask).save(root / "masks" / f"{index:03d}.png")
    return load_benchmark(generic_layout("Tiny"), root)


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2)
    folder = tmp_path / "model"
    save_trained_model(model, {"input_size": 24}, folder)
    return folder


@pytest.mark.parametrize("height,width", [(300, 400), (400, 300), (128, 128), (50, 513), (17, 16)])
def test_input_shape_is_what_the_resize_gives(height, width):
    side = 24
    resized = resize_shorter_side(torch.zeros(1, 3, height, width), side)
    assert input_shape(height, width, side) == tuple(resized.shape[-2:])
    assert min(input_shape(height, width, side)) == side


def test_batches_group_equal_shapes_and_cover_every_image(tmp_path):
    benchmark = make_benchmark(tmp_path, [(30, 40), (40, 30), (30, 40), (30, 40), (60, 80), (20, 20)])
    batches = plan_batches(benchmark.pairs, 24, batch_size=2)
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    for batch in batches:
        assert len(batch) <= 2
        shapes = {input_shape(*Image.open(benchmark.pairs[i].image).size[::-1], 24) for i in batch}
        assert len(shapes) == 1
    # 30 x 40 and 60 x 80 resize to the same 24 x 32 and share batches
    assert [0, 2] in batches and [3, 4] in batches
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(benchmark.pairs, 24, batch_size=0)


def test_predictions_come_back_at_mask_size(tmp_path, tiny_model):
    benchmark = make_benchmark(tmp_path, [(30, 40), (45, 30), (30, 40)], mask_scale=0.5)
    predictors = [UNetPredictor.from_folder(tiny_model), CentrePrior(24)]
    results = list(predict_benchmark(benchmark, predictors, batch_size=4))
    assert sorted(r.pair.key for r in results) == ["000", "001", "002"]
    for result in results:
        assert set(result.maps) == {"model", "centre_prior"}
        for probabilities in result.maps.values():
            assert probabilities.shape == result.mask.shape and probabilities.dtype == np.float32
            assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_model_map_is_the_protocol_applied_by_hand(tmp_path, tiny_model):
    benchmark = make_benchmark(tmp_path, [(30, 40)])
    predictor = UNetPredictor.from_folder(tiny_model)
    (result,) = predict_benchmark(benchmark, [predictor], batch_size=1)
    image = load_rgb(benchmark.pairs[0].image)
    inputs = resize_shorter_side(to_unit_range(image)[None], 24)
    assert inputs.min() >= -1 and inputs.max() <= 1
    with torch.no_grad():
        probabilities = torch.sigmoid(predictor.model(inputs))[0, 0]
    expected = torch.nn.functional.interpolate(probabilities[None, None], size=(30, 40), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.maps["model"], expected, atol=1e-6)


def test_batching_does_not_change_the_maps(tmp_path, tiny_model):
    benchmark = make_benchmark(tmp_path, [(30, 40)] * 4 + [(40, 30)])
    predictor = UNetPredictor.from_folder(tiny_model)
    one = {r.pair.key: r.maps["model"] for r in predict_benchmark(benchmark, [predictor], batch_size=1)}
    many = {r.pair.key: r.maps["model"] for r in predict_benchmark(benchmark, [predictor], batch_size=8)}
    tolerance = between_two_runs(*reduction_lengths(predictor.model))  # kernels chosen by batch size
    for key in one:
        np.testing.assert_allclose(one[key], many[key], atol=tolerance)


def test_centre_prior_is_a_centred_gaussian_of_quarter_sides():
    prior = centre_prior_map(101, 201)
    assert prior.shape == (101, 201) and prior[50, 100] == pytest.approx(1.0)
    # one sigma (a quarter of the side) from the centre: exp(-1/2)
    assert prior[50, 100 + 50] == pytest.approx(np.exp(-0.5), abs=0.01)
    assert prior[50 + 25, 100] == pytest.approx(np.exp(-0.5), abs=0.02)
    maps = CentrePrior(24)(torch.zeros(2, 3, 24, 32))
    assert maps.shape == (2, 24, 32) and torch.equal(maps[0], maps[1])


def test_predictors_must_share_an_input_size(tmp_path):
    benchmark = make_benchmark(tmp_path, [(30, 40)])
    with pytest.raises(ValueError, match="input size"):
        list(predict_benchmark(benchmark, [CentrePrior(24), CentrePrior(32)]))


def test_model_without_input_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        UNetPredictor(UNet(base_channels=4, depth=1), {})


def test_resize_to_keeps_probabilities_in_range():
    small = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    big = resize_to(small, (5, 7))
    assert big.shape == (5, 7) and big.min() >= 0 and big.max() <= 1
