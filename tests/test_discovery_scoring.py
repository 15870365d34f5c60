"""Scoring, automatic choice, override and contact sheet, on the test generator's planted directions."""

import numpy as np
import pytest
import torch
from PIL import Image

from generator.backends.testing import PLANTED_AXES, ShapesGenerator
from generator.discovery.config import ConfigError, Override, ScoringConfig
from generator.discovery.contact_sheet import make_contact_sheet, sheet_rows
from generator.discovery.scoring import border_coverage, largest_component_share, score_candidates
from generator.discovery.selection import choose_direction


pytestmark = pytest.mark.usefixtures("one_torch_thread")


NAMES = list(PLANTED_AXES)  # lighting first, then the distractors
CONFIG = ScoringConfig(batch_size=32, sheet_candidates=2, sheet_samples=2)


@pytest.fixture(scope="module")
def planted():
    generator = ShapesGenerator(latent_dim=16, resolution=32, mixing_seed=1)
    candidates = torch.stack([generator.planted_direction(name) for name in NAMES], dim=1)
    scores = score_candidates(generator, candidates, 5.0, CONFIG, seed=0, progress=False)
    return generator, candidates, scores


def test_every_candidate_and_sign_is_scored_best_first(planted):
    _, candidates, scores = planted
    assert {(s.index, s.sign) for s in scores} == {(k, s) for k in range(len(NAMES)) for s in (1, -1)}
    totals = [s.total for s in scores]
    assert totals == sorted(totals, reverse=True)
    for s in scores:
        assert 0 <= s.total <= 1 and 0 <= s.border <= 1 and 0 <= s.coherence <= 1
        assert set(s.rejected_by) == {"size", "histogram"}


def test_automatic_choice_is_the_planted_lighting_with_its_sign(planted):
    _, candidates, scores = planted
    choice = choose_direction(scores, candidates.shape[1])
    assert (choice.index, choice.sign, choice.chosen_by) == (0, 1, "automatic")
    runner_up = max(s.total for s in scores if (s.index, s.sign) != (0, 1))
    assert choice.score.total > 0.5 > runner_up + 0.3
    lighting_minus = next(s for s in scores if (s.index, s.sign) == (0, -1))
    assert lighting_minus.border > 0.9  # the background mask covers the border


def test_scores_are_deterministic(planted):
    generator, candidates, scores = planted
    again = score_candidates(generator, candidates[:, :2], 5.0, CONFIG, seed=0, progress=False)
    first = {(s.index, s.sign): s for s in scores}
    assert all(s == first[(s.index, s.sign)] for s in again)


def test_override_wins_and_is_checked(planted):
    _, candidates, scores = planted
    choice = choose_direction(scores, candidates.shape[1], Override(index=2, sign=-1))
    assert (choice.index, choice.sign, choice.chosen_by) == (2, -1, "override")
    with pytest.raises(ConfigError, match="out of range.*7 candidate"):
        choose_direction(scores, candidates.shape[1], Override(index=7, sign=1))


@pytest.mark.parametrize("index, sign", [(-1, 1), (1, 0), (1, 2), (True, 1)])
def test_bad_override_values_are_refused(index, sign):
    with pytest.raises(ConfigError, match="override"):
        Override(index=index, sign=sign)


def test_border_coverage_and_coherence_on_handmade_masks():
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 5:15, 5:15] = True                 # a centred square: off the border, one piece
    masks[1] = True
    masks[1, 5:15, 5:15] = False                # its complement: the whole border
    masks[2, 2:4, 2:4] = masks[2, 10:16, 10:16] = True  # two pieces, 4 and 36 pixels
    assert border_coverage(masks, 0.05).tolist() == [0.0, 1.0, 0.0]
    assert largest_component_share(masks, 4) == pytest.approx([1.0, 1.0, 0.9])
    assert largest_component_share(np.zeros((1, 4, 4), dtype=bool), 4).tolist() == [0.0]


def test_contact_sheet_shows_the_best_candidates_both_signs_and_an_overridden_one(planted):
    generator, candidates, scores = planted
    automatic = choose_direction(scores, candidates.shape[1])
    rows = sheet_rows(scores, automatic, 2)
    assert [(r.index, r.sign) for r in rows][:2] == [(0, 1), (0, -1)] and len(rows) == 4
    override = choose_direction(scores, candidates.shape[1], Override(index=6, sign=1))
    assert [(r.index, r.sign) for r in sheet_rows(scores, override, 2)][-2:] == [(6, 1), (6, -1)]
    sheet = make_contact_sheet(generator, candidates, scores, automatic, 5.0, CONFIG, seed=0)
    assert isinstance(sheet, Image.Image) and sheet.mode == "RGB"
    tile = 64  # 32-pixel images are drawn at twice their size
    assert sheet.height == 18 + 4 * (tile + 4) + 4
    pixels = np.asarray(sheet)
    # the chosen row's label is drawn in green
    label = pixels[18:18 + tile, :150]
    assert ((label[..., 1] > 100) & (label[..., 0] < 60)).any()


def test_candidates_of_the_wrong_size_are_refused():
    generator = ShapesGenerator(latent_dim=16, resolution=16)
    with pytest.raises(ValueError, match="latent_dim x K"):
        score_candidates(generator, torch.zeros(15, 2), 5.0, CONFIG, progress=False)
