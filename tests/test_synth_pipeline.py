"""The pipeline distributor (G in one process, post-processing in others, as on a GPU) gives the bytes
of the single-process path however the work is split, and stops with a shard's error."""

import pytest

from tests.test_synth_gen import project, run, shard_bytes, write_params  # noqa: F401 (fixture)

SETTINGS = {"n": 50, "shard_size": 10, "batch_size": 4}


@pytest.mark.parametrize("workers", [1, 3])
def test_the_pipeline_gives_the_bytes_of_the_single_process_path(project, workers):
    write_params(project, **SETTINGS, workers=1, output="reference")
    run()
    write_params(project, **SETTINGS, workers=workers, distributor="pipeline")
    result = run()
    assert "50 samples from" in result.output
    assert shard_bytes(project / "shards") == shard_bytes(project / "reference")
    assert not list((project / "shards").glob(".*.tmp"))


def test_a_shard_over_budget_stops_the_pipeline_keeping_the_finished_ones(project):
    write_params(project, **SETTINGS, workers=2, distributor="pipeline", filters={"size": {"max_foreground": 0.15}},
                 max_candidates_per_sample=3)
    failed = run(expect=1)
    assert "only" in failed.output and "passed the filters" in failed.output
    folder = project / "shards"
    assert not (folder / "manifest.json").exists() and not list(folder.glob(".*.tmp"))
    write_params(project, **SETTINGS, workers=2, distributor="pipeline", filters={"size": {"max_foreground": 0.15}})
    run()
    write_params(project, **SETTINGS, workers=1, filters={"size": {"max_foreground": 0.15}}, output="reference")
    run()
    assert shard_bytes(folder) == shard_bytes(project / "reference")


def test_bad_distributor_settings_are_named(project):
    write_params(project, distributor="spark", retries=-1)
    failed = run(expect=1)
    assert "distributor must be one of multiprocessing, pipeline, ray" in failed.output
    assert "retries must be a non-negative integer" in failed.output
