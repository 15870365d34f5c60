"""The direction file: round trip, magnitude, and refusal of a generator it was not found for."""

import json

import numpy as np
import pytest
import torch

from generator.backends.testing import ShapesGenerator
from generator.direction import Direction, DirectionError, load_direction, save_direction


def test_round_trip_keeps_vector_magnitude_and_provenance(tmp_path):
    generator = ShapesGenerator(resolution=16)
    direction = Direction.from_vector(torch.arange(16.0) + 1, generator.identity, magnitude=5.0,
                                      method="latent-discovery", index=3, sign=-1)
    save_direction(direction, tmp_path / "d.json")
    loaded = load_direction(tmp_path / "d.json", generator)
    assert loaded == direction
    assert torch.isclose(loaded.shift().norm(), torch.tensor(5.0))
    assert json.loads((tmp_path / "d.json").read_text())["digest"] == direction.digest


def test_another_generator_is_refused(tmp_path):
    save_direction(Direction.from_vector(np.ones(16), ShapesGenerator(resolution=16).identity), tmp_path / "d.json")
    with pytest.raises(DirectionError, match="was found for testing@.*not for testing@"):
        load_direction(tmp_path / "d.json", ShapesGenerator(resolution=32))


def test_wrong_size_is_refused(tmp_path):
    save_direction(Direction.from_vector(np.ones(20), "testing@x"), tmp_path / "d.json")
    with pytest.raises(DirectionError, match="20 dimensions .* latent size of 16"):
        load_direction(tmp_path / "d.json", ShapesGenerator(resolution=16))


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("not json", "not a direction file"),
    ('{"format_version": 1, "generator": "g"}', "missing or has a malformed field"),
    ('{"format_version": 1, "generator": "g", "vector": [0, 0], "magnitude": 5}', "non-zero"),
    ('[1, 2]', "format version"),
    ('{"format_version": 1, "generator": "g", "vector": [1, 0], "magnitude": NaN}', "magnitude must be"),
    ('{"format_version": 1, "generator": "g", "vector": [1, 0], "magnitude": 1e400}', "magnitude must be"),
    ('{"format_version": 1, "generator": "g", "vector": [1, 0], "magnitude": 0}', "magnitude must be"),
    ('{"format_version": 1, "generator": "g", "vector": [1, 0], "magnitude": -5}', "magnitude must be"),
])
def test_malformed_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DirectionError, match=message):
        load_direction(path)
