"""Refinement of the chosen direction: its loss terms, its guard and its record."""

import pytest
import torch

from generator.backends.testing import ShapesGenerator
from generator.discovery.config import ConfigError, DiscoverConfig, RefineConfig
from generator.discovery.refinement import balanced_mask_weights, edge_change, refine_direction
from generator.discovery.scoring import CandidateScore
from generator.discovery.selection import Choice
from generator.discovery import stage
from generator.discovery.stage import refine_chosen
from tests.planted_proof import mask_iou

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"steps": 60, "batch_size": 16}


@pytest.fixture(scope="module")
def generator():
    return ShapesGenerator(latent_dim=16, resolution=32, mixing_seed=1, fixed_shape=True)


def choice_scoring(total: float) -> Choice:
    return Choice(0, 1, "automatic", CandidateScore(0, 1, total, 1.0, 1.0, 0.0, 1.0, 0.3, mask_quality=total))


def test_mask_weights_sum_to_zero_and_vanish_for_empty_or_full_masks():
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, :2, :] = True          # 10 inside, 10 outside
    masks[2] = True                 # full; masks[1] is empty
    weights = balanced_mask_weights(masks)
    assert weights[0].sum().abs() < 1e-6
    assert weights[0, 0, 0] == pytest.approx(1 / 10) and weights[0, 3, 0] == pytest.approx(-1 / 10)
    assert torch.count_nonzero(weights[1]) == 0 and torch.count_nonzero(weights[2]) == 0


def test_edge_change_ignores_brightness_and_contrast_but_not_a_move():
    image = torch.zeros(1, 16, 16)
    image[:, 4:12, 4:12] = 0.5
    moved = torch.roll(image, shifts=3, dims=2)
    assert edge_change(image, image + 0.2).item() < 1e-4          # brighter: edges in place
    assert edge_change(image, 2 * image).item() < 1e-4            # stronger outline, same place
    assert edge_change(image, moved).item() > 0.3


def test_refinement_removes_translation_mixed_into_the_lighting(generator):
    lighting = generator.planted_direction("lighting")
    start = 0.8 * lighting + 0.6 * generator.planted_direction("translate_x")
    refined = refine_direction(generator, start, RefineConfig(**SMALL), seed=0, progress=False)
    assert refined.norm().item() == pytest.approx(1, abs=1e-5)
    assert torch.dot(refined, lighting) > 0.9 > torch.dot(start, lighting)
    assert mask_iou(generator, refined) > 0.9 > mask_iou(generator, start)
    again = refine_direction(generator, start, RefineConfig(**SMALL), seed=0, progress=False)
    assert torch.equal(refined, again)  # seeded: the same settings give the same direction


def test_a_refinement_that_moves_too_far_is_not_kept(generator):
    start = 0.8 * generator.planted_direction("lighting") + 0.6 * generator.planted_direction("translate_x")
    config = DiscoverConfig(refine=RefineConfig(**SMALL, min_cosine=0.99))
    outcome = refine_chosen(generator, start, choice_scoring(0.5), config, progress=False)
    assert not outcome.refined and "min_cosine 0.99" in outcome.reason
    assert torch.equal(outcome.vector, start) and outcome.cosine_to_chosen < 0.99


def test_a_refinement_whose_masks_score_lower_is_not_kept(generator, monkeypatch):
    """The guard, given a refinement that lands on brightness: its masks fill the frame."""
    lighting = generator.planted_direction("lighting")
    monkeypatch.setattr(stage, "refine_direction", lambda *args, **kwargs: generator.planted_direction("brightness"))
    config = DiscoverConfig(refine=RefineConfig(min_cosine=-1.0))
    outcome = refine_chosen(generator, lighting, choice_scoring(0.9), config, progress=False)
    assert not outcome.refined and "masks scored lower" in outcome.reason
    assert torch.equal(outcome.vector, lighting) and outcome.mask_quality_after < 0.1
    record = outcome.to_json()
    assert record["refined"] is False and record["mask_quality_before"] == 0.9 and record["cosine_to_chosen"] < 0.1


def test_refinement_off_keeps_the_chosen_direction(generator):
    start = generator.planted_direction("lighting")
    outcome = refine_chosen(generator, start, choice_scoring(0.4), DiscoverConfig(refine=RefineConfig(enabled=False)))
    assert not outcome.refined and outcome.steps == 0 and torch.equal(outcome.vector, start)


@pytest.mark.parametrize("values, message", [({"enabled": "yes"}, "true or false"), ({"steps": 0}, "steps"),
                                             ({"min_cosine": 1.5}, "min_cosine"),
                                             ({"edge_weight": -1.0}, "must not be negative")])
def test_bad_refine_settings_are_clear_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        DiscoverConfig.from_params({"refine": values})


def test_min_score_is_checked():
    with pytest.raises(ConfigError, match="min_score"):
        DiscoverConfig.from_params({"min_score": 1.5})
