"""The layered house GAN: an object layer over a background layer, each drawn from its own part of z."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from generator.house.architectures import SHIPPED_ARCHITECTURE, build_networks, make_config
from generator.house.cli import main as train_house_gan
from generator.house.model_layered import (HouseLayeredConfig, HouseLayeredGeneratorNet, StarOutline,
                                           coverage_penalty, diversity_penalty)
from generator.house.ship import record_markdown, training_record
from generator.house.training import COVERAGE_RANGE, TrainSettings, TrainingState, gan_step, train
from generator.registry import build_generator
from tests.test_house_v2 import photo_folder, tiny_pack  # noqa: F401  (fixtures)

TINY = HouseLayeredConfig(latent_dim=12, background_dim=4, resolution=16, width=4, background_side=8, harmonics=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _generator(seed: int = 0) -> HouseLayeredGeneratorNet:
    torch.manual_seed(seed)
    return HouseLayeredGeneratorNet(TINY).eval()


def test_config_checks():
    assert make_config("layered", TINY.as_dict()) == TINY
    for bad in ({"resolution": 48}, {"background_side": 4}, {"background_side": 32}, {"harmonics": 0},
                {"background_dim": 0}, {"background_dim": 12}, {"width": 0}):
        with pytest.raises(ValueError):
            HouseLayeredConfig(**{**TINY.as_dict(), **bad})


def test_image_is_the_object_pasted_over_the_background():
    generator = _generator()
    z = torch.randn(5, TINY.latent_dim)
    with torch.no_grad():
        colour, alpha, background = generator.layers(z)
        image = generator(z)
    assert image.shape == colour.shape == background.shape == (5, 3, 16, 16) and alpha.shape == (5, 1, 16, 16)
    assert 0 <= alpha.min() and alpha.max() <= 1 and image.abs().max() <= 1
    torch.testing.assert_close(image, alpha * colour + (1 - alpha) * background)


def test_object_and_background_draw_on_disjoint_parts_of_z():
    """The property a direction relies on to lighten one layer and darken the other."""
    generator = _generator()
    z = torch.randn(3, TINY.latent_dim)
    moved_background, moved_object = z.clone(), z.clone()
    moved_background[:, :4] += 1.0
    moved_object[:, 4:] += 1.0
    with torch.no_grad():
        colour, alpha, background = generator.layers(z)
        colour_b, alpha_b, background_b = generator.layers(moved_background)
        colour_o, alpha_o, background_o = generator.layers(moved_object)
    assert torch.equal(colour, colour_b) and torch.equal(alpha, alpha_b) and not torch.equal(background, background_b)
    assert torch.equal(background, background_o) and not torch.equal(colour, colour_o)


def test_training_images_shift_the_object_layer_only():
    generator = _generator()
    z = torch.randn(16, TINY.latent_dim)
    with torch.no_grad():
        colour, alpha, background = generator.layers(z)
        shifted, layers = generator.training_images(z, torch.Generator().manual_seed(0))
        again, _ = generator.training_images(z, torch.Generator().manual_seed(0))
    for drawn, expected in zip(layers, (colour, alpha, background)):  # the penalties see the layers as drawn
        torch.testing.assert_close(drawn, expected)
    assert torch.equal(shifted, again)  # seeded
    # where the object layer moved away, only the background is left; somewhere it moved
    uncovered = torch.isclose(shifted, background).all(dim=1)
    assert uncovered.any()
    assert not torch.allclose(shifted, alpha * colour + (1 - alpha) * background)


def test_diversity_penalty_is_the_shortfall_of_change_per_unit_of_code():
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    same = torch.zeros(2, 3, 4, 4)
    assert diversity_penalty(same, codes, 0.3).item() == pytest.approx(0.3)
    varied = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.2)])
    assert diversity_penalty(varied, codes, 0.3).item() == pytest.approx(0.1)
    assert diversity_penalty(varied * 2, codes, 0.3).item() == 0
    assert diversity_penalty(same[:1], codes[:1], 0.3).item() == 0  # no pair to compare


def test_coverage_penalty_is_the_distance_outside_the_range():
    alpha = torch.stack([torch.full((1, 4, 4), v) for v in (0.05, 0.2, 0.9)])
    assert coverage_penalty(alpha, 0.1, 0.5).item() == pytest.approx((0.05 + 0 + 0.4) / 3)
    assert coverage_penalty(alpha[1:2], *COVERAGE_RANGE).item() == 0


def test_outline_without_shape_code_is_a_centred_disc():
    outline = StarOutline(code_dim=6, harmonics=3, resolution=64)
    torch.nn.init.zeros_(outline.shape_code.weight)
    alpha = outline(torch.randn(2, 6))[:, 0]
    radius = sum(StarOutline.RADIUS_RANGE) / 2
    assert alpha.mean().item() == pytest.approx(math.pi * radius ** 2, abs=0.01)
    torch.testing.assert_close(alpha, alpha.flip(-1))
    torch.testing.assert_close(alpha, alpha.transpose(-1, -2))
    assert alpha[:, 32, 32].min() > 0.99 and alpha[:, 0, 0].max() < 0.01


def test_outlines_stay_in_their_ranges_however_large_the_code():
    outline = StarOutline(code_dim=6, harmonics=3, resolution=32)
    with torch.no_grad():
        outline.shape_code.weight.normal_(0, 100)
    alpha = outline(torch.randn(64, 6))[:, 0]
    assert alpha.shape == (64, 32, 32) and 0 <= alpha.min() and alpha.max() <= 1
    soft = ((alpha > 0.05) & (alpha < 0.95)).float().mean()
    assert soft < 0.15  # a cut-out with a thin soft edge, not a veil
    coverage = alpha.mean(dim=(1, 2))
    assert coverage.std() > 0.02  # varied shapes, not one


def test_outlines_are_drawn_in_float32_under_bf16_autocast():
    """A GPU run trains under bf16 autocast; at 128 px a bf16 outline moved edge pixels by up to
    0.9 of alpha (jagged steps).  CPU autocast runs the same casting rules."""
    torch.manual_seed(0)
    outline = StarOutline(code_dim=96, harmonics=5, resolution=128)
    with torch.no_grad():
        outline.shape_code.weight.mul_(20)            # trained-like spread of shapes and places
    code = torch.randn(16, 96)                         # z, float32 in training too
    with torch.no_grad():
        exact = outline(code)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = outline(code)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, exact, rtol=0, atol=0)


def test_gan_step_logs_the_penalty_and_training_exports_a_house_generator(tmp_path, tiny_pack):  # noqa: F811
    settings = TrainSettings(data=tiny_pack, out=tmp_path / "run", export_to=tmp_path / "export", steps=3,
                             encoder_steps=2, batch_size=4, seed=1, checkpoint_every=2, export_every=0,
                             config=TINY, discriminator_width=4, calibration_images=16)
    state = TrainingState(settings)
    losses = gan_step(state, torch.zeros(6, 3, 16, 16, dtype=torch.uint8), settings)
    assert all(torch.isfinite(losses[name]) for name in ("coverage_penalty", "diversity_penalty"))
    weights = train(settings)
    house = build_generator({"name": "house", "weights": str(weights)})
    assert house.architecture == "layered" and house.resolution == 16 and house.latent_dim == 12
    images = house.generate(torch.randn(2, 12))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert "coverage_penalty" in log[0]


def test_train_command_trains_the_shipped_architecture_unless_told_and_refuses_an_encoder_width(
        tmp_path, tiny_pack):  # noqa: F811
    assert build_generator({"name": "house"}).architecture == SHIPPED_ARCHITECTURE == "layered"
    runner = CliRunner()
    result = runner.invoke(train_house_gan, [
        "--data", str(tiny_pack), "--resolution", "16", "--out", str(tmp_path / "cli"),
        "--steps", "1", "--encoder-steps", "1", "--batch-size", "4", "--width", "4", "--discriminator-width", "4",
        "--calibration-images", "8", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "cli" / "settings.json").read_text())
    assert settings["architecture"] == "layered" and settings["config"]["latent_dim"] == 128
    # a run trained by this command names it in the record shipping writes into the card
    record = training_record(tmp_path / "cli", build_generator({"name": "house",
                                                                "weights": str(tmp_path / "cli" / "house_gan.pt")}))
    assert record["command"][:4] == ["train-house-gan", "--data", str(tiny_pack), "--resolution"]
    assert "`train-house-gan --data " in record_markdown({**record, "bank": {"count": 0, "photos": "-"}})
    result = runner.invoke(train_house_gan, ["--data", str(tiny_pack), "--arch", "layered", "--encoder-width", "4"])
    assert result.exit_code != 0 and "only v2" in result.output


def test_networks_build_from_the_registry():
    generator, discriminator, encoder = build_networks(TINY, 4)
    images = generator(torch.randn(2, 12))
    assert discriminator(images).shape == (2,) and encoder(images).shape == (2, 12)
