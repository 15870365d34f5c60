"""`embed-images` and the latent bank: photos of every mode encoded, bundled banks copied, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from generator import build_generator
from generator.backends.testing import ShapesGenerator
from generator.embed import find_images, read_bank, write_bank
from generator.embed.bank import BankError
from generator.embed.main import main as embed_images
from generator.image_io import load_square
from tests.tolerances import between_two_runs

THIS_MODULE = "python:tests.test_embed_command"
EXPECTED_FILES = ["a.png", "a/deep/x.bmp", "b/cat.JPG", "c.jpeg", "d.png", "e.PNG"]


def generator_with_bank(bank: str, latent_dim: int = 16) -> ShapesGenerator:
    """A factory for specs: the test generator, shipping the given bank."""
    generator = ShapesGenerator(latent_dim=latent_dim, resolution=32)
    generator.bundled_latent_bank = Path(bank)
    return generator


@pytest.fixture
def photos(tmp_path) -> Path:
    """Nested photos in several modes and letter cases, one broken file, and files to ignore."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for folder in ["a/deep", "b", ".hidden"]:
        (root / folder).mkdir(parents=True)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (25, 25), dtype=np.uint8), "L").save(root / "a/deep/x.bmp")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "b/cat.JPG")
    Image.new("CMYK", (33, 20), (10, 200, 30, 0)).save(root / "c.jpeg")
    Image.fromarray(rng.integers(0, 65536, (30, 18), dtype=np.uint16)).save(root / "d.png")
    Image.fromarray(rng.integers(0, 4, (16, 16), dtype=np.uint8), "L").convert("P").save(root / "e.PNG")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "z.png")
    (root / "._a.png").write_bytes(b"resource fork")
    return root


def write_params(path: Path, generator: dict, **embed) -> Path:
    path.write_text(yaml.safe_dump({"generator": generator, "embed": embed}))
    return path


TESTING = {"name": "testing", "options": {"resolution": 32}}
# The testing encoder: a 4 x 4 average pool (32 px to 8 x 8), then a 192 x 16 projection, on
# images in [-1, 1]; batches of other sizes may round differently.
ENCODER_TOLERANCE = between_two_runs(4 * 4, 3 * 8 * 8)


def run(*args: str):
    return CliRunner().invoke(embed_images, [*args, "--quiet"])


def test_find_images_is_recursive_sorted_and_case_insensitive(photos):
    found = [p.relative_to(photos).as_posix() for p in find_images(photos)]
    assert found == sorted(EXPECTED_FILES + ["broken.jpg"])


def test_find_images_follows_links_to_folders_once_and_leaves_hidden_files_out(photos, tmp_path):
    linked = tmp_path / "linked"
    (linked / ".hidden").mkdir(parents=True)
    (linked / ".hidden" / "x.jpg").write_bytes(b"")
    (linked / ".x.jpg").write_bytes(b"")
    (linked / "more").symlink_to(photos)
    (linked / "again").symlink_to(photos)              # the same folder through a second link
    (tmp_path / "loop_target").mkdir()
    (tmp_path / "loop_target" / "up").symlink_to(tmp_path / "loop_target")   # a link back to its own folder
    (linked / "cycle").symlink_to(tmp_path / "loop_target")
    found = [p.relative_to(linked).as_posix() for p in find_images(linked)]
    in_photos = sorted(EXPECTED_FILES + ["broken.jpg"])
    assert found == [f"again/{name}" for name in in_photos]   # folders are searched in name order: "again" first


def test_embed_folder_writes_the_bank(photos, tmp_path):
    out = tmp_path / "bank"
    params = write_params(tmp_path / "params.yaml", TESTING, images=str(photos), output=str(out), batch_size=4,
                          device="cpu")
    result = run("--params", str(params))
    assert result.exit_code == 0, result.output
    assert "encoded 6 of 7 images" in result.output
    assert "skipped 1 unreadable files" in result.output and "broken.jpg: cannot decode" in result.output

    bank = read_bank(out)
    generator = build_generator(TESTING)
    assert bank.latents.dtype == np.float32 and bank.latents.shape == (6, 16)
    assert bank.index["format_version"] == 1 and bank.count == bank.index["count"] == 6
    assert bank.generator == generator.identity
    assert bank.files == sorted(EXPECTED_FILES)
    assert [s["path"] for s in bank.skipped] == ["broken.jpg"]
    assert bank.index["source"] == {"kind": "images", "folder": str(photos)}
    # each row is the encoder applied to that file alone, by the documented square rule
    with torch.no_grad():
        expected = torch.cat([generator.encode(load_square(photos / name, 32, exif_orientation=True))
                              for name in bank.files]).numpy()
    np.testing.assert_allclose(bank.latents, expected, atol=ENCODER_TOLERANCE)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "latents.npy"]


def test_same_settings_give_the_same_bytes_and_batch_size_does_not_matter(photos, tmp_path):
    outs = [tmp_path / name for name in ("one", "two", "single")]
    params = write_params(tmp_path / "params.yaml", TESTING, images=str(photos), batch_size=4)
    for out, extra in zip(outs, [[], [], ["--batch-size", "1", "--workers", "1"]]):
        result = run("--params", str(params), "--out", str(out), *extra)
        assert result.exit_code == 0, result.output
    for name in ("latents.npy", "index.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    np.testing.assert_allclose(read_bank(outs[2]).latents, read_bank(outs[0]).latents, atol=ENCODER_TOLERANCE)


def test_bundled_bank_is_copied_when_no_folder_is_set(tmp_path):
    rows = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    bundled = tmp_path / "shipped" / "latent_bank.npy"
    bundled.parent.mkdir()
    np.save(bundled, rows)
    spec = {"name": f"{THIS_MODULE}:generator_with_bank", "options": {"bank": str(bundled)}}
    identity = build_generator(spec).identity
    bundled.with_suffix(".json").write_text(json.dumps(
        {"format_version": 1, "generator": identity, "count": 5, "files": [f"p{i}.jpg" for i in range(5)],
         "skipped": [{"path": "bad.jpg", "reason": "truncated"}]}))
    params = write_params(tmp_path / "params.yaml", spec, images=None, output=str(tmp_path / "bank"))
    result = run("--params", str(params))
    assert result.exit_code == 0, result.output
    assert "copied the bundled bank" in result.output
    bank = read_bank(tmp_path / "bank")
    assert np.array_equal(bank.latents, rows)
    assert bank.files == [f"p{i}.jpg" for i in range(5)] and bank.generator == identity
    assert bank.index["source"] == {"kind": "bundled", "file": "latent_bank.npy"}


def test_bundled_flag_overrides_a_configured_folder(photos, tmp_path):
    bundled = tmp_path / "latent_bank.npy"
    np.save(bundled, np.ones((2, 16), np.float32))  # shipped without an index
    spec = {"name": f"{THIS_MODULE}:generator_with_bank", "options": {"bank": str(bundled)}}
    params = write_params(tmp_path / "params.yaml", spec, images=str(photos), output=str(tmp_path / "bank"))
    result = run("--params", str(params), "--bundled")
    assert result.exit_code == 0, result.output
    bank = read_bank(tmp_path / "bank")
    assert bank.count == 2 and bank.files == []


@pytest.mark.parametrize("bank_rows, index_generator, message", [
    (np.ones((2, 8), np.float32), None, "latents of size 8, the generator's are 16"),
    (np.ones((2, 16), np.float32), "house@0000000000000000", "was encoded by house@0000000000000000"),
    (np.ones((2, 16), np.float64), None, "expected float32"),
])
def test_bundled_bank_for_another_generator_is_refused(tmp_path, bank_rows, index_generator, message):
    bundled = tmp_path / "latent_bank.npy"
    np.save(bundled, bank_rows)
    if index_generator:
        bundled.with_suffix(".json").write_text(json.dumps(
            {"format_version": 1, "generator": index_generator, "count": 2, "files": [], "skipped": []}))
    spec = {"name": f"{THIS_MODULE}:generator_with_bank", "options": {"bank": str(bundled)}}
    result = run("--params", str(write_params(tmp_path / "params.yaml", spec, output=str(tmp_path / "bank"))))
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bank").exists()


def test_no_folder_and_no_bundled_bank(tmp_path):
    result = run("--params", str(write_params(tmp_path / "params.yaml", TESTING)))
    assert result.exit_code == 1
    assert "ships no latent bank; set embed.images (or --images)" in result.output


def test_generator_without_an_encoder(photos, tmp_path):
    spec = {"name": "testing", "options": {"with_encoder": False}}
    result = run("--params", str(write_params(tmp_path / "params.yaml", spec, images=str(photos))))
    assert result.exit_code == 1 and "has no encoder" in result.output


@pytest.mark.parametrize("setup, message", [
    ("missing", "is not a folder"),
    ("empty", "no image files (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp) under"),
    ("all_broken", "none of the 1 image files under"),
    ("empty_string", "embed.images must be a non-empty string, got ''"),
    ("output_under_a_file", "cannot make the output folder"),
])
def test_bad_image_folders(tmp_path, setup, message):
    folder = tmp_path / "images"
    if setup != "missing":
        folder.mkdir()
        (folder / "readme.txt").write_text("x")
    if setup == "all_broken":
        (folder / "bad.png").write_bytes(b"\x89PNG broken")
    images = "" if setup == "empty_string" else str(folder)
    output = tmp_path / "bank"
    if setup == "output_under_a_file":
        output = tmp_path / "images" / "readme.txt" / "bank"
    params = write_params(tmp_path / "params.yaml", TESTING, images=images, output=str(output))
    result = run("--params", str(params))
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bank").exists()


@pytest.mark.parametrize("embed, message", [
    ({"images": None, "colour": 1}, "unknown keys in the `embed` section: colour"),
    ({"batch_size": 0}, "embed.batch_size must be a positive integer"),
    ({"workers": "two"}, "embed.workers must be a positive integer"),
    ({"device": "tpu"}, "'tpu' is not a device"),
])
def test_bad_settings(tmp_path, embed, message):
    result = run("--params", str(write_params(tmp_path / "params.yaml", TESTING, **embed)))
    assert result.exit_code != 0 and message in result.output


def test_missing_params_file_and_bad_generator(tmp_path):
    result = run("--params", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1 and "not found" in result.output
    result = run("--params", str(write_params(tmp_path / "params.yaml", {"name": "nope"})))
    assert result.exit_code == 1 and "unknown generator 'nope'" in result.output


def test_help_explains_every_option():
    result = CliRunner().invoke(embed_images, ["--help"])
    assert result.exit_code == 0
    for option in ["--params", "--images", "--bundled", "--out", "--batch-size", "--workers", "--device", "--quiet"]:
        assert option in result.output


# --- the bank format ----------------------------------------------------------------------------

def test_a_failed_write_leaves_no_index_and_no_temporary_file(tmp_path, monkeypatch):
    folder = tmp_path / "bank"
    write_bank(folder, np.zeros((2, 4), np.float32), "g@1", ["a", "b"], [], {"kind": "images"})

    def failing_save(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_bank(folder, np.ones((3, 4), np.float32), "g@2", ["a", "b", "c"], [], {"kind": "images"})
    assert sorted(p.name for p in folder.iterdir()) == ["latents.npy"]
    with pytest.raises(BankError, match="has no index"):
        read_bank(folder)


@pytest.mark.parametrize("latents, files, message", [
    (np.zeros((0, 4), np.float32), [], "non-empty"),
    (np.full((1, 4), np.nan, np.float32), ["a"], "NaN"),
    (np.zeros((2, 4), np.float32), ["a"], "1 file names for 2 latents"),
])
def test_write_bank_refuses_bad_latents(tmp_path, latents, files, message):
    with pytest.raises(BankError, match=message):
        write_bank(tmp_path, latents, "g@1", files, [], {})


def test_read_bank_refuses_pickles_and_mismatched_indexes(tmp_path):
    folder = tmp_path / "bank"
    write_bank(folder, np.zeros((2, 4), np.float32), "g@1", ["a", "b"], [], {})
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, "count": 3}))
    with pytest.raises(BankError, match="counts 3 rows"):
        read_bank(folder)
    np.save(folder / "latents.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BankError, match="is not a latent bank"):
        read_bank(folder)
    with pytest.raises(BankError, match="no latent bank at"):
        read_bank(tmp_path / "elsewhere")
