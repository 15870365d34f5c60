"""segment-images across runs: the output folder's record of the settings its outputs were made
with, leftovers of interrupted writes, an OUTPUT named like a file, photos too elongated for the
model's input, and the one list of photo suffixes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import evaluation.segment as segment
from evaluation.datasets import Pair
from evaluation.inference import MAX_SIDE_RATIO, ElongatedImageError, input_shape, plan_batches
from generator.image_io import PHOTO_SUFFIXES, UnreadableImageError
from generator.runs import OutputLock
from tests.test_segment_images import (PHOTOS, keep_torch_threads, make_photos, run,  # noqa: F401
                                       run_crashing_on_the_third_mask, save_model)

RECORD = segment.SETTINGS_NAME


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return save_model(root / "m1", seed=0), save_model(root / "m2", seed=1)


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_photos(tmp_path / "photos")


def masks(output: Path) -> dict[str, bytes]:
    return {path.relative_to(output).as_posix(): path.read_bytes() for path in sorted(output.rglob("*.png"))}


def test_another_model_is_refused_naming_it_and_overwrite_redoes_every_photo(photos, models, tmp_path):
    m1, m2 = models
    output = tmp_path / "masks"
    run(photos, output, "--model", m1)
    made_by_m1 = masks(output)
    result = run(photos, output, "--model", m2, expect=1)
    assert "model.weights_sha256" in result.output and "--overwrite" in result.output
    assert masks(output) == made_by_m1
    result = run(photos, output, "--model", m2, "--overwrite")
    assert "5 to segment" in result.output
    run(photos, tmp_path / "fresh", "--model", m2)
    assert masks(output) == masks(tmp_path / "fresh") != made_by_m1


@pytest.mark.parametrize("options,difference", [(["--refine"], "refine: true -> false"),
                                                (["--threshold", "0.5"], "threshold: 0.5 -> null"),
                                                (["--overlay"], "overlay: true -> false")])
def test_a_rerun_with_other_settings_is_refused_after_an_interruption(options, difference, photos, models,
                                                                      tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", models[0], *options)
    (output / "a.png").unlink()                       # as if the run had been stopped before a.jpg
    result = run(photos, output, "--model", models[0], expect=1)
    assert difference in result.output and "--overwrite" in result.output
    assert not (output / "a.png").exists()


def test_overwrite_without_overlay_removes_the_overlays_of_other_settings(photos, models, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", models[0], "--overlay")
    assert len(list(output.rglob("*.overlay.png"))) == len(PHOTOS)
    run(photos, output, "--model", models[0], "--overwrite")
    assert not list(output.rglob("*.overlay.png")) and len(list(output.rglob("*.png"))) == len(PHOTOS)


def test_how_it_runs_is_not_part_of_the_record(photos, models, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", models[0], "--batch-size", "1")
    result = run(photos, output, "--model", models[0], "--batch-size", "8", "--threads", "2", "--processes", "2",
                 "--device", "cpu")
    assert "5 already done, 0 to segment" in result.output
    record = json.loads((output / RECORD).read_text())
    assert set(record) == {"model", "threshold", "refine", "overlay"}
    assert record["model"]["input_size"] == 24 and len(record["model"]["weights_sha256"]) == 64


def test_outputs_without_a_record_are_refused(photos, models, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", models[0])
    (output / RECORD).unlink()                        # outputs of unknown settings (an older version)
    result = run(photos, output, "--model", models[0], expect=1)
    assert f"no {RECORD} records them" in result.output
    run(photos, output, "--model", models[0], "--overwrite")
    assert (output / RECORD).is_file()


def test_an_interrupted_overwrite_leaves_no_old_output_to_pass_as_done(photos, models, tmp_path, monkeypatch):
    m1, m2 = models
    output = tmp_path / "masks"
    run(photos, output, "--model", m1)
    run_crashing_on_the_third_mask(monkeypatch, photos, output, "--model", m2, "--overwrite")
    assert json.loads((output / RECORD).read_text()) == segment.settings_record(
        segment.load_predictor(m2, "cpu"), None, False, False)        # written before any output
    result = run(photos, output, "--model", m2)
    assert "2 already done, 3 to segment" in result.output
    run(photos, tmp_path / "fresh", "--model", m2)
    assert masks(output) == masks(tmp_path / "fresh")


def test_a_rerun_removes_its_own_leftover_temporary_files_only(photos, models, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", models[0])
    ours = [".a.png.k2x_9q0z.tmp", "sub/.b.png.abcdefgh.tmp", ".d.overlay.png.12345678.tmp",
            f".{RECORD}.zzzzzzzz.tmp"]
    others = [".notes.txt.abcdefgh.tmp", ".a.png.tmp", ".x.png.abcdefgh.tmp", "keep.tmp", ".a.png.ab.tmp"]
    for name in ours + others:
        (output / name).write_bytes(b"partial")
    result = run(photos, output, "--model", models[0])
    assert "5 already done" in result.output
    assert [name for name in ours if (output / name).exists()] == []
    assert [name for name in others if (output / name).exists()] == others


def test_a_folder_in_use_is_refused(photos, models, tmp_path):
    with OutputLock(tmp_path / "masks"):
        result = run(photos, tmp_path / "masks", "--model", models[0], expect=1)
    assert "in use by another run" in result.output


def test_an_output_named_like_an_image_is_refused(photos, models, tmp_path):
    result = run(photos / "a.jpg", tmp_path / "mask.png", "--model", models[0], expect=1)
    assert "OUTPUT is the folder" in result.output and not (tmp_path / "mask.png").exists()
    (tmp_path / "masks.PNG").mkdir()                                      # a folder so named is a folder
    run(photos / "a.jpg", tmp_path / "masks.PNG", "--model", models[0])
    assert (tmp_path / "masks.PNG" / "a.png").is_file()
    help_text = CliRunner().invoke(segment.main, ["--help"]).output
    assert "OUTPUT is always a folder" in help_text


def test_a_photo_too_elongated_for_the_input_is_skipped_with_its_reason(photos, models, tmp_path):
    Image.new("RGB", (200, 2)).save(photos / "thin.png")                 # would be resized to 24 x 2400
    output = tmp_path / "masks"
    result = run(photos, output, "--model", models[0], expect=segment.EXIT_SKIPPED)
    assert "thin.png: too elongated" in result.output and "1 photo skipped" in result.output
    assert not (output / "thin.png").exists() and len(masks(output)) == len(PHOTOS)


def test_the_elongation_limit_is_on_the_resized_longer_side():
    assert input_shape(24, 24 * MAX_SIDE_RATIO, 24) == (24, 24 * MAX_SIDE_RATIO)
    assert input_shape(1, MAX_SIDE_RATIO, 64) == (64, 64 * MAX_SIDE_RATIO)
    with pytest.raises(ElongatedImageError, match="too elongated"):
        input_shape(24, 24 * MAX_SIDE_RATIO + 1, 24)
    with pytest.raises(ElongatedImageError):
        input_shape(1500, 1, 64)


def test_evaluation_stops_at_a_too_elongated_benchmark_image_naming_it(tmp_path):
    images = []
    for name, size in (("fine.png", (40, 30)), ("thin.png", (1500, 1))):
        Image.new("RGB", size).save(tmp_path / name)
        images.append(tmp_path / name)
    pairs = [Pair(path.stem, path, path) for path in images]
    assert plan_batches(pairs[:1], 24, 4) == [[0]]
    with pytest.raises(UnreadableImageError, match="thin.png: too elongated"):
        plan_batches(pairs, 24, 4)


def test_tiff_photos_count_and_every_suffix_is_listed(models, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("t.tif", "u.TIFF"):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / name, format="TIFF")
    run(tmp_path, tmp_path / "masks", "--model", models[0])
    assert sorted(masks(tmp_path / "masks")) == ["t.png", "u.png"]
    help_text = " ".join(CliRunner().invoke(segment.main, ["--help"]).output.split())
    assert all(suffix in help_text for suffix in PHOTO_SUFFIXES)
