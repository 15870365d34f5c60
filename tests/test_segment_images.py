"""segment-images: mirrored outputs at each photo's size by the evaluator's protocol, threshold and
overlay modes, resume and --overwrite, unreadable photos, path traversal, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import evaluation.segment as segment
from evaluation.inference import resize_to
from trainer.model_folders import default_model_folder
from evaluation.photos import Photo, UnsafeOutputError, find_photos, output_path
from generator.image_io import load_rgb, resize_shorter_side, to_unit_range
from trainer.export import load_trained_model, save_trained_model
from trainer.unet import UNet

INPUT_SIZE = 24
# relative path -> (height, width); odd sizes, wide and tall, and every extension in any case
PHOTOS = {"a.jpg": (30, 40), "sub/b.PNG": (45, 31), "sub/deeper/c.webp": (17, 50), "d.bmp": (24, 24),
          "e.JPEG": (61, 20)}


def save_model(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_trained_model(UNet(base_channels=4, depth=2), {"input_size": INPUT_SIZE}, folder)
    return folder


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """--threads sets torch's process-wide thread count: give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "model")


def make_photos(root: Path, photos: dict[str, tuple[int, int]] = PHOTOS) -> Path:
    rng = np.random.default_rng(0)
    for relative, (height, width) in photos.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        kind = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[path.suffix.lower()]
        Image.fromarray(pixels).save(path, format=kind, **({"lossless": True} if kind == "WEBP" else {}))
    (root / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_photos(tmp_path / "photos")


def run(*args, expect: int = 0):
    result = CliRunner().invoke(segment.main, [str(a) for a in args] + ["--quiet"])
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def mask_of(output: Path, relative: str) -> np.ndarray:
    path = output / Path(relative).with_suffix(".png")
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_one_png_per_photo_mirrors_paths_stems_and_sizes(photos, model, tmp_path):
    output = tmp_path / "masks"
    result = run(photos, output, "--model", model)
    assert "5 to segment" in result.output
    written = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    assert written == sorted([segment.SETTINGS_NAME] + [Path(r).with_suffix(".png").as_posix() for r in PHOTOS])
    for relative, (height, width) in PHOTOS.items():
        assert mask_of(output, relative).shape == (height, width)


def test_maps_are_the_evaluation_protocol_applied_by_hand(photos, model, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", model, "--batch-size", "3")
    network, _ = load_trained_model(model)
    for relative in PHOTOS:
        image = load_rgb(photos / relative)
        with torch.no_grad():
            logits = network(resize_shorter_side(to_unit_range(image)[None], INPUT_SIZE))
        expected = np.rint(resize_to(torch.sigmoid(logits[0, 0]), image.shape[:2]) * 255)
        # batched and single convolutions may differ in the last float bits: one grey level at most
        assert np.abs(mask_of(output, relative).astype(int) - expected).max() <= 1


def test_threshold_writes_binary_masks_agreeing_with_the_map(photos, model, tmp_path):
    run(photos, tmp_path / "maps", "--model", model)
    run(photos, tmp_path / "binary", "--model", model, "--threshold", "0.5")
    for relative in PHOTOS:
        probability, binary = mask_of(tmp_path / "maps", relative), mask_of(tmp_path / "binary", relative)
        assert set(np.unique(binary)) <= {0, 255}
        assert (binary[probability >= 129] == 255).all() and (binary[probability <= 126] == 0).all()


def test_refine_applies_the_edge_aware_refinement_to_each_map(photos, model, tmp_path, monkeypatch):
    from evaluation import refinement
    from evaluation.refinement import refine

    calls = []
    monkeypatch.setattr(refinement, "refine", lambda photo, p: calls.append(photo.shape) or refine(photo, p))
    run(photos, tmp_path / "maps", "--model", model)
    assert not calls
    result = run(photos, tmp_path / "refined", "--model", model, "--refine")
    assert "refined" in result.output
    assert sorted(calls) == sorted((height, width, 3) for height, width in PHOTOS.values())
    for relative, (height, width) in PHOTOS.items():
        plain, refined = mask_of(tmp_path / "maps", relative), mask_of(tmp_path / "refined", relative)
        assert refined.shape == (height, width)
        expected = np.rint(refine(load_rgb(photos / relative), plain / 255.0) * 255)
        # the refinement of the stored 8-bit map, within the rounding of that map and of the output
        assert np.abs(refined.astype(int) - expected).mean() < 2


def test_overlay_is_an_rgb_png_beside_each_mask(photos, model, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", model, "--overlay")
    for relative, (height, width) in PHOTOS.items():
        with Image.open(output / Path(relative).with_name(Path(relative).stem + ".overlay.png")) as image:
            assert image.mode == "RGB" and image.size == (width, height)


def test_a_rerun_skips_finished_outputs_and_overwrite_redoes_them(photos, model, tmp_path):
    output = tmp_path / "masks"
    run(photos, output, "--model", model)
    sentinel = output / "a.png"
    sentinel.write_bytes(b"left alone")
    (output / "sub" / "b.png").unlink()
    result = run(photos, output, "--model", model)
    assert "4 already done, 1 to segment" in result.output
    assert sentinel.read_bytes() == b"left alone" and (output / "sub" / "b.png").is_file()
    result = run(photos, output, "--model", model, "--overwrite")
    assert "5 to segment" in result.output
    assert mask_of(output, "a.jpg").shape == PHOTOS["a.jpg"]


def run_crashing_on_the_third_mask(monkeypatch, *args):
    """The command, one photo a batch, with the third mask dying between its write and its rename."""
    real_replace, renamed = os.replace, []

    def crash_on_third(source, target):
        if str(target).endswith(".png"):
            renamed.append(target)
            if len(renamed) == 3:
                raise RuntimeError("simulated crash")
        return real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash_on_third)
        result = CliRunner().invoke(segment.main, [*map(str, args), "--batch-size", "1", "--quiet"])
    assert isinstance(result.exception, RuntimeError)
    return result


def test_an_interrupted_run_leaves_whole_files_only_and_resumes(photos, model, tmp_path, monkeypatch):
    output = tmp_path / "masks"
    run_crashing_on_the_third_mask(monkeypatch, photos, output, "--model", model)
    files = [p for p in output.rglob("*") if p.is_file() and p.name != segment.SETTINGS_NAME]
    assert len(files) == 2                                      # no temporary file, no partial PNG
    for path in files:
        Image.open(path).load()
    result = run(photos, output, "--model", model)
    assert "2 already done, 3 to segment" in result.output


def test_unreadable_photos_are_skipped_named_counted_and_set_the_exit_status(photos, model, tmp_path):
    (photos / "garbage.jpg").write_bytes(b"this is not a JPEG")
    whole = (photos / "a.jpg").read_bytes()
    (photos / "sub" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])   # the header reads, the pixels do not
    (photos / "empty.png").write_bytes(b"")
    output = tmp_path / "masks"
    result = run(photos, output, "--model", model, expect=segment.EXIT_SKIPPED)
    for name in ("garbage.jpg", "truncated.jpg", "empty.png"):
        assert f"{name}:" in result.output
    assert "3 photos skipped" in result.output
    for relative in PHOTOS:
        assert mask_of(output, relative).shape == PHOTOS[relative]
    assert not (output / "garbage.png").exists() and not (output / "sub" / "truncated.png").exists()


def test_processes_write_the_files_one_process_writes_and_report_the_same_skips(photos, model, tmp_path):
    (photos / "garbage.jpg").write_bytes(b"this is not a JPEG")
    whole = (photos / "a.jpg").read_bytes()
    (photos / "sub" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])   # fails in a worker, not in planning
    outputs, reports = {}, {}
    for processes in (1, 3):
        outputs[processes] = tmp_path / f"masks-{processes}"
        result = run(photos, outputs[processes], "--model", model, "--refine", "--overlay", "--batch-size", 1,
                     "--processes", processes, expect=segment.EXIT_SKIPPED)
        reports[processes] = [line for line in result.output.splitlines() if line.startswith("skipped:")]
    files = sorted(path.relative_to(outputs[1]) for path in outputs[1].rglob("*.png"))
    assert len(files) == 2 * len(PHOTOS)
    assert files == sorted(path.relative_to(outputs[3]) for path in outputs[3].rglob("*.png"))
    for relative in files:
        assert (outputs[3] / relative).read_bytes() == (outputs[1] / relative).read_bytes(), relative
    assert reports[3] == reports[1] and len(reports[1]) == 2


@pytest.mark.parametrize("make", ["empty", "no-photos", "missing"])
def test_no_photos_is_a_clear_error(make, model, tmp_path):
    source = tmp_path / "photos"
    if make != "missing":
        source.mkdir()
    if make == "no-photos":
        (source / "notes.txt").write_text("x")
        (source / "photo.gif").write_bytes(b"GIF89a")
    result = run(source, tmp_path / "masks", "--model", model, expect=1)
    assert ("no photos found" if make != "missing" else "does not exist") in result.output
    assert "Traceback" not in result.output and not (tmp_path / "masks").exists()


def test_model_folder_errors_are_clear(photos, tmp_path, monkeypatch):
    result = run(photos, tmp_path / "masks", "--model", tmp_path / "nowhere", expect=1)
    assert "model folder" in result.output and "not found" in result.output
    (tmp_path / "empty_model").mkdir()
    result = run(photos, tmp_path / "masks", "--model", tmp_path / "empty_model", expect=1)
    assert "not a usable trained-model folder" in result.output and "unet.pt" in result.output
    monkeypatch.chdir(tmp_path)
    result = run(photos, tmp_path / "masks", expect=1)
    assert "no trained model" in result.output and "data/model" in result.output


def test_the_self_trained_model_is_preferred_and_named(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "data" / "model", seed=0)
    assert default_model_folder() == Path("data/model")
    result = run(photos, tmp_path / "first", "--model", "data/model")
    save_model(tmp_path / "data" / "selftrain_model", seed=1)
    assert default_model_folder() == Path("data/selftrain_model")
    result = run(photos, tmp_path / "masks")
    assert "data/selftrain_model" in result.output
    assert not np.array_equal(mask_of(tmp_path / "first", "a.jpg"), mask_of(tmp_path / "masks", "a.jpg"))


def test_a_glob_cannot_write_outside_the_output_folder(photos, model, tmp_path):
    outside = tmp_path / "elsewhere"
    make_photos(outside, {"x.jpg": (20, 30)})
    output = tmp_path / "out" / "masks"
    pattern = str(photos / "*" / ".." / ".." / "elsewhere" / "*.jpg")    # matches ../elsewhere/x.jpg
    result = run(pattern, output, "--model", model, expect=segment.EXIT_SKIPPED)
    assert "outside the output folder" in result.output
    assert not (tmp_path / "out" / "elsewhere").exists() and not list(tmp_path.rglob("x.png"))


def test_a_symlink_inside_the_output_folder_is_not_followed_out(photos, model, tmp_path):
    output, target = tmp_path / "masks", tmp_path / "target"
    output.mkdir()
    target.mkdir()
    (output / "sub").symlink_to(target, target_is_directory=True)
    result = run(photos, output, "--model", model, expect=segment.EXIT_SKIPPED)
    assert "b.PNG" in result.output and "c.webp" in result.output and "outside the output folder" in result.output
    assert list(target.iterdir()) == []
    assert (output / "a.png").is_file()


def test_an_absolute_glob_mirrors_paths_below_its_fixed_part(photos, model, tmp_path):
    output = tmp_path / "masks"
    run(str(photos / "**" / "*.[jJ][pP]*[gG]"), output, "--model", model)
    written = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png"))
    assert written == ["a.png", "e.png"]


def test_outputs_that_would_clash_are_refused(photos, model, tmp_path):
    Image.new("RGB", (20, 20)).save(photos / "a.png")        # a.jpg and a.png both want a.png
    result = run(photos, tmp_path / "masks", "--model", model, expect=segment.EXIT_SKIPPED)
    assert "would overwrite the one of" in result.output and "1 photo skipped" in result.output


def test_outputs_inside_the_source_are_not_segmented_again(photos, model):
    run(photos, photos / "masks", "--model", model)
    result = run(photos, photos / "masks", "--model", model)
    assert "ignoring 5 files inside the output folder" in result.output and "5 already done" in result.output


def test_output_path_refuses_escapes(tmp_path):
    assert output_path(tmp_path, Path("a/b.c.jpg"), ".png") == tmp_path / "a" / "b.c.png"
    for bad in ("../x.jpg", "/etc/x.jpg", "a/../../x.jpg"):
        with pytest.raises(UnsafeOutputError):
            output_path(tmp_path, Path(bad), ".png")


def test_a_symlinked_photo_folder_is_not_walked(photos, tmp_path):
    other = make_photos(tmp_path / "other", {"z.jpg": (20, 20)})
    os.symlink(other, photos / "link", target_is_directory=True)
    assert "link/z.jpg" not in [photo.relative.as_posix() for photo in find_photos(photos)]
    assert [photo.relative for photo in find_photos(photos / "a.jpg")] == [Path("a.jpg")]
    assert isinstance(find_photos(photos)[0], Photo)


def test_bad_device_and_help(photos, model, tmp_path):
    result = run(photos, tmp_path / "masks", "--model", model, "--device", "nonsense", expect=1)
    assert "is not a device" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(segment.main, ["--help"])
    assert result.exit_code == 0 and "Exit status" in result.output and "--threshold" in result.output


def test_threads_and_batch_size_do_not_change_the_maps(photos, model, tmp_path):
    run(photos, tmp_path / "one", "--model", model, "--batch-size", "1", "--threads", "1")
    run(photos, tmp_path / "many", "--model", model, "--batch-size", "8", "--threads", "2")
    for relative in PHOTOS:
        difference = mask_of(tmp_path / "one", relative).astype(int) - mask_of(tmp_path / "many", relative)
        assert np.abs(difference).max() <= 1          # float summation order only: one grey level at most


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_photo_too_large_to_open_is_skipped_not_fatal(photos, model, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)   # Pillow refuses > 2 x 600 pixels: b (45 x 31), e (61 x 20)
    result = run(photos, tmp_path / "masks", "--model", model, expect=segment.EXIT_SKIPPED)
    assert "b.PNG:" in result.output and "e.JPEG:" in result.output and "2 photos skipped" in result.output
    assert sorted(p.name for p in (tmp_path / "masks").rglob("*.png")) == ["a.png", "c.png", "d.png"]
