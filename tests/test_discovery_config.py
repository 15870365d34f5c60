"""The `discover` section of params.yaml: defaults, types, every key, clear errors."""

import dataclasses

import pytest
import yaml

from generator.discovery.config import ConfigError, DiscoverConfig, Override
from generator.params import load_section


def test_the_project_params_file_is_a_valid_discover_section():
    config = DiscoverConfig.from_params(load_section("discover"))
    assert config.magnitude == 5.0 and config.override is None
    section = load_section("discover")
    # every setting of every method is a key of the section, so the paper's profile can be written down
    for name in ("latent_discovery", "single_direction", "scoring", "refine"):
        fields = {f.name for f in dataclasses.fields(getattr(config, name))}
        if name == "scoring":  # the synthesis rules come from the synth section
            fields -= {"filters", "sampler", "alpha", "bank"}
        assert fields == set(section[name]), name
    assert {f.name for f in dataclasses.fields(config)} == set(section)


def test_missing_keys_take_the_defaults_and_yaml_strings_become_numbers():
    config = DiscoverConfig.from_params({"latent_discovery": {"lr_directions": "1e-4", "steps": 20.0},
                                         "override": {"index": 3, "sign": -1}})
    assert config.latent_discovery.lr_directions == 1e-4 and config.latent_discovery.steps == 20
    assert config.override == Override(3, -1)
    assert DiscoverConfig.from_params(None) == DiscoverConfig()


def test_with_changes_reaches_nested_fields_and_validates():
    config = DiscoverConfig().with_changes(**{"latent_discovery.directions": 7, "seed": 4})
    assert config.latent_discovery.directions == 7 and config.seed == 4
    with pytest.raises(ConfigError, match="positive"):
        DiscoverConfig().with_changes(**{"single_direction.steps": 0})
    with pytest.raises(ConfigError, match="magnitude must be a positive, finite number"):
        DiscoverConfig().with_changes(magnitude=float("nan"))           # as --magnitude nan gives it


@pytest.mark.parametrize("section, message", [
    ({"extra": 1}, "unknown keys in discover: extra"),
    ({"scoring": {"filters": {}}}, "discover.scoring cannot set filters.*set synth.filters instead"),
    ({"scoring": {"alpha": 0.1}}, "discover.scoring cannot set alpha"),
    ({"latent_discovery": {"steps": 2.5}}, "must be an integer"),
    ({"latent_discovery": {"lr_directions": "fast"}}, "must be a number"),
    ({"latent_discovery": {"direction_type": "curved"}}, "direction_type must be one of"),
    ({"latent_discovery": {"lr_schedule": "step"}}, "lr_schedule must be one of"),
    ({"latent_discovery": {"shift_min": 7}}, "shift_min < shift_max"),
    ({"single_direction": {"radius_std": -1}}, "must not be negative"),
    ({"scoring": {"border_width": 0.6}}, "border_width must be below 0.5"),
    ({"threads": 0}, "threads must be a positive integer"),
    ({"override": [1, 2]}, "discover.override must be a mapping"),
    ({"override": {"index": 1}}, "discover.override"),
    ("not a mapping", "discover must be a mapping"),
    ({"magnitude": float("nan")}, "discover.magnitude must be a finite number"),
    ({"magnitude": float("inf")}, "discover.magnitude must be a finite number"),
    ({"refine": {"lr": float("nan")}}, "discover.refine.lr must be a finite number"),
    ({"single_direction": {"radius_mean": yaml.safe_load(".nan")}}, "radius_mean must be a finite number"),
    ({"refine": {"score_tolerance": float("nan")}}, "score_tolerance must be a finite number"),
    ({"latent_discovery": {"steps": float("nan")}}, "steps must be a finite number"),
    ({"override": {"index": 1, "sign": 1.0}}, "sign must be 1 or -1, got 1.0"),
    ({"override": {"index": 1, "sign": True}}, "sign must be 1 or -1"),
    ({"checkpoint_dir": 5}, "checkpoint_dir must be a folder path or null, got 5"),
])
def test_bad_sections_are_clear_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        DiscoverConfig.from_params(section)


def test_scoring_takes_the_synthesis_rules_from_the_synth_section():
    config = DiscoverConfig.from_params({"scoring": {"batch_size": 8}},
                                        synth={"sampler": "neighbourhood", "alpha": 0.3, "bank": "b.npy",
                                               "filters": {"size": {"max_foreground": 0.4}}})
    assert (config.scoring.batch_size, config.scoring.sampler, config.scoring.alpha) == (8, "neighbourhood", 0.3)
    assert config.scoring.bank == "b.npy" and config.scoring.filters["size"]["max_foreground"] == 0.4
    defaults = DiscoverConfig.from_params(None, synth={})  # gen-synth's defaults
    assert defaults.scoring.sampler == "neighbourhood" and defaults.scoring.alpha == 0.2
    with pytest.raises(ConfigError, match="synth.filters: unknown settings in filters.size"):
        DiscoverConfig.from_params({}, synth={"filters": {"size": {"bogus": 1}}})
