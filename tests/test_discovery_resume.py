"""Discovery follows the shared resume policy: an interrupted run's checkpoint of other settings is
refused, naming them, and kept; a finished run's gives way."""

import pytest

from generator.backends.testing import ShapesGenerator
from generator.runs import RecordMismatch
from tests.test_discovery_training import SMALL_LATENT, CrashingGenerator, _run

KWARGS = dict(latent_dim=16, resolution=16, mixing_seed=3)


def test_an_interrupted_checkpoint_of_other_settings_is_refused_and_kept(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        _run("latent", CrashingGenerator(crash_at=2 * 5 + 1, **KWARGS), SMALL_LATENT, path)   # stops at step 4
    saved = path.read_bytes()
    other = SMALL_LATENT.__class__(**{**SMALL_LATENT.__dict__, "lr_directions": 0.5})
    with pytest.raises(RecordMismatch, match=r"settings.lr_directions: 0.01 -> 0.5.*every file is kept"):
        _run("latent", ShapesGenerator(**KWARGS), other, path)
    assert path.read_bytes() == saved
    finished = _run("latent", ShapesGenerator(**KWARGS), SMALL_LATENT, path)
    assert finished.outcome.resumed_from == 4
    replaced = _run("latent", ShapesGenerator(**KWARGS), other, path)   # a finished run's checkpoint gives way
    assert replaced.outcome.resumed_from == 0 and replaced.outcome.steps_run == other.steps
