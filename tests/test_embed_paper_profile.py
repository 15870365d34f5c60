"""params-paper.yaml: the paper's setup, with exactly the sections and keys of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text())


@pytest.fixture(scope="module")
def paper() -> dict:
    return load("params-paper.yaml")


def key_paths(section, prefix: str = "") -> set[str]:
    """Dotted key paths of a section, two levels deep (e.g. 'latent_discovery.steps')."""
    if not isinstance(section, dict):
        return set()
    paths = set()
    for key, value in section.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and not prefix:
            paths |= key_paths(value, f"{key}.")
    return paths


def test_profile_mirrors_the_sections_and_keys_of_params_yaml(paper):
    demo = load("params.yaml")
    assert set(paper) == set(demo)
    for section in demo:
        if section == "generator":  # backend options differ by backend
            assert set(paper[section]) == set(demo[section])
            continue
        missing = key_paths(demo[section]) - key_paths(paper[section])
        extra = key_paths(paper[section]) - key_paths(demo[section])
        # a profile may spell out a nested section params.yaml leaves at its defaults, never the reverse
        assert not missing, f"params-paper.yaml lacks {section}: {sorted(missing)}"
        assert all(path.split(".")[0] in demo[section] for path in extra), f"{section}: {sorted(extra)}"


def test_profile_holds_the_papers_setup(paper):
    assert paper["generator"]["name"] == "tfhub-bigbigan"
    assert paper["generator"]["weights"] == "https://tfhub.dev/deepmind/bigbigan-resnet50/1"
    assert paper["discover"]["latent_discovery"]["directions"] == 120
    assert paper["discover"]["magnitude"] == 5
    assert paper["synth"]["alpha"] == 0.2 and paper["synth"]["sampler"] == "neighbourhood"
    train = paper["train"]
    assert (train["steps"], train["batch_size"], train["lr"], train["lr_decay_step"], train["lr_decay_factor"]) == \
        (12000, 95, 1e-3, 8000, 0.2)
    assert paper["synth"]["n"] >= train["steps"] * train["batch_size"]


def test_every_section_is_accepted_by_its_stage(paper):
    from evaluation.main import DEFAULTS as EVALUATE_DEFAULTS
    from generator.discovery.config import DiscoverConfig
    from generator.embed.main import EmbedSettings
    from generator.registry import _normalise
    from generator.synth.settings import SynthSettings
    from trainer.config import PAPER_SCHEDULE, TrainConfig

    name, weights, options = _normalise(paper["generator"])
    assert name == "tfhub-bigbigan" and set(options) <= {"output", "encoder_output", "batch_size"}
    EmbedSettings.from_section(paper["embed"])
    assert DiscoverConfig.from_params(paper["discover"]).latent_discovery.directions == 120
    assert SynthSettings.from_params(paper["synth"]).alpha == 0.2
    train = TrainConfig.from_section(paper["train"])
    assert {key: getattr(train, key) for key in PAPER_SCHEDULE} == PAPER_SCHEDULE
    assert set(paper["evaluate"]) <= set(EVALUATE_DEFAULTS)
