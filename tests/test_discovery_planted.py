"""Proof that discovery finds what is there: the test generator's planted lighting direction.

`ShapesGenerator(mixing_seed=1, fixed_shape=True)` hides its planted directions (lighting,
brightness, translation, colours, texture) behind a seeded rotation of the latent space; with the
object's size and aspect fixed, the distractors are the ones the contract names.  The contract:
discovery followed by the automatic choice returns the planted lighting direction (cosine > 0.9)
with the right sign, and its masks match the planted foreground `object_mask(z)` (IoU > 0.9).

Single-direction discovery meets it: over discovery seeds 0-7 the chosen direction has cosine
0.92-0.94 (the rest is colour that also lightens the object's gray) and IoU 0.94-0.99.

Latent discovery does not, and the strict xfail records by how much.  Its objective prefers
directions that share the lighting's strong signal with translation and colour: started at the
planted axes, A leaves them within a few hundred steps while its loss falls below that of the
planted axes with R trained as long.  A shift of norm 5 with a translation component of 0.3 moves
the mask's outline, so IoU stays far below 0.9.  What holds over seeds 0-9 is that lighting is the
largest planted component of the chosen direction, with the right sign (cosine 0.60-0.92).
"""

import pytest
import torch

from generator.backends.testing import ShapesGenerator
from generator.discovery.config import LatentDiscoveryConfig, ScoringConfig, SingleDirectionConfig
from generator.discovery.latent_discovery import discover_latent_directions
from generator.discovery.scoring import score_candidates
from generator.discovery.selection import choose_direction
from generator.discovery.single_direction import discover_single_direction
from generator.synth.masks import synthesize_masks

MAGNITUDE = 5.0
SCORING = ScoringConfig(batch_size=64)
LATENT = LatentDiscoveryConfig(directions=8, steps=300, batch_size=16, lr_directions=3e-2, lr_reconstructor=1e-3,
                               reconstructor_width=64, reconstructor_input_size=32, reconstructor_depth=3,
                               checkpoint_every=0)
SINGLE = SingleDirectionConfig(steps=300, batch_size=32, edge_weight=10.0, circle_radius=0.3, checkpoint_every=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these runs are small, and the measured numbers above were taken so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator():
    return ShapesGenerator(latent_dim=16, resolution=32, mixing_seed=1, fixed_shape=True)


def choose(generator, candidates):
    scores = score_candidates(generator, candidates, MAGNITUDE, SCORING, seed=0, progress=False)
    choice = choose_direction(scores, candidates.shape[1])
    return choice.sign * candidates[:, choice.index], choice


def mask_iou(generator, unit_direction):
    """IoU of the masks M = [gray(G(z + 5 v)) > gray(G(z))] with the planted foreground, on a fresh batch."""
    z = torch.randn(256, generator.latent_dim, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        masks = synthesize_masks(generator.generate(z), generator.generate(z + MAGNITUDE * unit_direction))
    truth = generator.object_mask(z)
    return ((masks & truth).sum() / (masks | truth).sum()).item()


@pytest.fixture(scope="module")
def single_direction(generator):
    return choose(generator, discover_single_direction(generator, SINGLE, seed=0, progress=False).candidates)


@pytest.fixture(scope="module")
def latent_discovery(generator):
    return choose(generator, discover_latent_directions(generator, LATENT, seed=0, progress=False).candidates)


def test_the_choice_finds_planted_lighting_among_the_planted_distractors(generator):
    names = generator.planted_names
    candidates = torch.stack([generator.planted_direction(name) for name in names], dim=1)
    chosen, choice = choose(generator, candidates)
    assert names[choice.index] == "lighting" and choice.sign == 1
    assert mask_iou(generator, chosen) > 0.9
    assert mask_iou(generator, -chosen) < 0.1  # the other sign masks the background


def test_single_direction_finds_planted_lighting_with_its_sign(generator, single_direction):
    chosen, _ = single_direction
    assert torch.dot(chosen, generator.planted_direction("lighting")) > 0.9


def test_single_direction_masks_match_the_planted_foreground(generator, single_direction):
    chosen, _ = single_direction
    assert mask_iou(generator, chosen) > 0.9


def test_latent_discovery_chooses_a_lighting_dominated_direction_with_its_sign(generator, latent_discovery):
    chosen, _ = latent_discovery
    cosines = {name: torch.dot(chosen, generator.planted_direction(name)).item() for name in generator.planted_names}
    assert cosines["lighting"] > 0.5
    assert all(cosines["lighting"] > abs(cosine) for name, cosine in cosines.items() if name != "lighting")


@pytest.mark.xfail(strict=True, reason="measured cosine 0.92 and IoU 0.42 (seeds 0-9: cosine 0.60-0.92, IoU "
                                       "0.28-0.42): the objective mixes translation (norm 0.29 here) into the "
                                       "lighting, which moves the mask's outline")
def test_latent_discovery_finds_planted_lighting_and_its_foreground(generator, latent_discovery):
    chosen, _ = latent_discovery
    assert torch.dot(chosen, generator.planted_direction("lighting")) > 0.9
    assert mask_iou(generator, chosen) > 0.9
