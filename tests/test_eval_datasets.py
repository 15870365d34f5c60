"""Benchmark loaders, mask reading and checked downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from evaluation.datasets import (LAYOUTS, BenchmarkNotFound, Source, flowers_mask, generic_layout,
                                 get_layout, load_benchmark, pair_by_key)
from evaluation.download import CHECKSUMS_FILE, DownloadError, download_benchmark, fetch_source
from evaluation.masks import UnreadableMaskError, load_mask


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def rgb(height: int = 6, width: int = 8, value: int = 90) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def square_mask(height: int = 6, width: int = 8) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[1:4, 2:6] = 255
    return mask


# -- masks ---------------------------------------------------------------------------------------

def test_mask_modes(tmp_path):
    soft = np.array([[0, 127, 128, 255]], np.uint8)
    assert load_mask(save(tmp_path / "l.png", soft)).tolist() == soft.tolist()
    binary = Image.fromarray(soft > 127).convert("1")
    binary.save(tmp_path / "one.png")
    assert load_mask(tmp_path / "one.png").tolist() == [[0, 0, 255, 255]]
    # a cut-out: constant colour, the mask in the alpha channel
    cutout = np.zeros((1, 4, 4), np.uint8)
    cutout[..., 3] = soft
    assert load_mask(save(tmp_path / "cutout.png", cutout, "RGBA")).tolist() == soft.tolist()
    # an opaque RGBA grey mask: the colour counts
    opaque = np.dstack([soft, soft, soft, np.full_like(soft, 255)])
    assert load_mask(save(tmp_path / "opaque.png", opaque, "RGBA")).tolist() == soft.tolist()
    # a coloured object on black: foreground by its brightest channel
    red = np.zeros((1, 2, 3), np.uint8)
    red[0, 1] = (200, 0, 0)
    assert load_mask(save(tmp_path / "red.png", red)).tolist() == [[0, 200]]


def test_palette_masks(tmp_path):
    indices = np.array([[0, 1, 2]], np.uint8)
    grey = Image.fromarray(indices, "P")
    grey.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0] * 759)
    grey.save(tmp_path / "grey.png")
    assert load_mask(tmp_path / "grey.png").tolist() == [[0, 255, 128]]
    labels = Image.fromarray(indices, "P")
    labels.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)   # VOC-like colours: a label image
    labels.save(tmp_path / "labels.png")
    assert load_mask(tmp_path / "labels.png").tolist() == [[0, 255, 255]]


def test_sixteen_bit_and_float_masks(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert load_mask(tmp_path / "deep.png").tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "float.tif")
    assert load_mask(tmp_path / "float.tif").tolist() == [[0, 128, 255]]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UnreadableMaskError, match="broken.png"):
        load_mask(tmp_path / "broken.png")


# -- pairing -------------------------------------------------------------------------------------

def test_generic_pairs_by_stem_and_reports_the_rest(tmp_path):
    folder = tmp_path / "Mine"
    for stem in ("a", "b", "only_image"):
        save(folder / "images" / f"{stem}.jpg", rgb())
    save(folder / "images" / "dup.jpg", rgb())
    save(folder / "images" / "dup.png", rgb())
    for stem in ("a", "b", "only_mask", "dup"):
        save(folder / "masks" / f"{stem}.png", square_mask())
    (folder / "images" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning) as caught:
        benchmark = load_benchmark(generic_layout("Mine"), folder)
    assert [pair.key for pair in benchmark.pairs] == ["a", "b"]
    assert benchmark.unmatched_images == ["images/only_image.jpg"]
    assert benchmark.unmatched_masks == ["masks/only_mask.png"]
    assert benchmark.duplicates == ["dup"]
    messages = " ".join(str(w.message) for w in caught)
    assert "only_image" in messages and "only_mask" in messages and "dup" in messages
    assert benchmark.summary()["unmatched_images"] == ["images/only_image.jpg"]


def test_pair_by_key_with_a_key_function():
    pairs, lone_images, lone_masks, clashes = pair_by_key(
        [Path("image_00001.jpg"), Path("image_00002.jpg")], [Path("segmim_00002.jpg")],
        image_key=lambda s: s[-5:], mask_key=lambda s: s[-5:])
    assert [p.key for p in pairs] == ["00002"] and lone_images == [Path("image_00001.jpg")]
    assert lone_masks == [] and clashes == []


SIMPLE = ["ECSSD", "DUTS-TE", "DUT-OMRON", "PASCAL-S", "HKU-IS"]


@pytest.mark.parametrize("name", SIMPLE)
@pytest.mark.parametrize("nested", [False, True])
def test_published_layouts_are_found(tmp_path, name, nested):
    layout = get_layout(name)
    folder = tmp_path / layout.folder
    base = folder / "release" if nested else folder
    suffix = ".png" if name == "HKU-IS" else ".jpg"
    for stem in ("0001", "0002"):
        save(base / layout.images / f"{stem}{suffix}", rgb())
        save(base / layout.masks / f"{stem}.png", square_mask())
    benchmark = load_benchmark(layout, folder)
    assert len(benchmark) == 2 and not benchmark.problems()
    assert benchmark.read_mask(benchmark.pairs[0]).tolist() == square_mask().tolist()


def test_missing_benchmark_and_missing_subfolder(tmp_path):
    with pytest.raises(BenchmarkNotFound, match="not found"):
        load_benchmark(get_layout("DUTS-TE"), tmp_path / "DUTS-TE")
    save(tmp_path / "ECSSD" / "images" / "1.jpg", rgb())
    with pytest.raises(BenchmarkNotFound, match="ground_truth_mask"):
        load_benchmark(get_layout("ECSSD"), tmp_path / "ECSSD")
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_layout("SOD")


def test_cub_takes_redo_test_split(tmp_path):
    folder = tmp_path / "CUB-200-2011"
    names = ["001.Albatross/Albatross_0001.jpg", "001.Albatross/Albatross_0002.jpg",
             "002.Auklet/Auklet_0003.jpg", "002.Auklet/Auklet_0004.jpg"]
    (folder / "CUB_200_2011").mkdir(parents=True)
    (folder / "CUB_200_2011" / "images.txt").write_text(
        "".join(f"{i + 1} {name}\n" for i, name in enumerate(names)))
    (folder / "train_val_test_split.txt").write_text("1 0\n2 2\n3 2\n4 1\n")
    for name in names[:2] + names[3:]:   # image 3 (in the test split) has no files at all
        save(folder / "CUB_200_2011" / "images" / name, rgb())
        save(folder / "segmentations" / name.replace(".jpg", ".png"), square_mask())
    with pytest.warns(UserWarning, match="missing from split"):
        benchmark = load_benchmark(get_layout("CUB-200-2011"), folder)
    assert [pair.key for pair in benchmark.pairs] == ["Albatross_0002"]
    assert benchmark.missing_from_split == ["Auklet_0003"]
    assert benchmark.outside_split == 2


def test_cub_without_split_file_is_refused(tmp_path):
    folder = tmp_path / "CUB-200-2011"
    save(folder / "CUB_200_2011" / "images" / "a" / "x.jpg", rgb())
    save(folder / "segmentations" / "a" / "x.png", square_mask())
    with pytest.raises(BenchmarkNotFound, match="train_val_test_split"):
        load_benchmark(get_layout("CUB-200-2011"), folder)


def test_flowers_split_and_blue_background_masks(tmp_path):
    folder = tmp_path / "Flowers"
    segmentation = rgb(6, 8, 0)
    segmentation[...] = (0, 0, 254)                 # the release paints the background blue
    segmentation[2:5, 3:7] = (180, 90, 60)          # the flower
    for number in (1, 2, 3):
        save(folder / "jpg" / f"image_{number:05d}.jpg", rgb())
        save(folder / "segmim" / f"segmim_{number:05d}.png", segmentation)
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2]]), "tstid": np.array([[2]])})
    benchmark = load_benchmark(get_layout("Flowers"), folder)
    assert [pair.key for pair in benchmark.pairs] == ["00001", "00003"]
    mask = benchmark.read_mask(benchmark.pairs[0])
    expected = np.zeros((6, 8), np.uint8)
    expected[2:5, 3:7] = 255
    assert mask.tolist() == expected.tolist()
    assert flowers_mask(folder / "segmim" / "segmim_00002.png").tolist() == expected.tolist()


def test_real_ecssd_layout(shared_datasets):
    benchmark = load_benchmark(get_layout("ECSSD"), shared_datasets / "ECSSD")
    assert len(benchmark) == 1000 and not benchmark.problems()
    assert benchmark.pairs[0].image.name == "0001.jpg" and benchmark.pairs[0].mask.name == "0001.png"


# -- downloads -----------------------------------------------------------------------------------

def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def release(tmp_path) -> dict[str, Path]:
    """A fake ECSSD release as the two archives the official page serves."""
    served = tmp_path / "served"
    served.mkdir()
    images = zip_bytes({f"images/{i:04d}.jpg": png_bytes(rgb()) for i in (1, 2)})
    masks = zip_bytes({f"ground_truth_mask/{i:04d}.png": png_bytes(square_mask()) for i in (1, 2)})
    (served / "images.zip").write_bytes(images)
    (served / "ground_truth_mask.zip").write_bytes(masks)
    return {"images": served / "images.zip", "masks": served / "ground_truth_mask.zip"}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks(tmp_path, release):
    layout = dataclasses.replace(get_layout("ECSSD"), sources=(
        Source(release["images"].as_uri(), "images.zip", "ECSSD", md5=md5(release["images"])),
        Source(release["masks"].as_uri(), "ground_truth_mask.zip", "ECSSD")))
    root = tmp_path / "benchmarks"
    folder = download_benchmark(layout, root, log=lambda message: None)
    benchmark = load_benchmark(layout, folder)
    assert len(benchmark) == 2
    recorded = json.loads((root / CHECKSUMS_FILE).read_text())
    assert recorded[release["masks"].as_uri()] == hashlib.sha256(release["masks"].read_bytes()).hexdigest()
    assert not (root / ".downloads" / "images.zip").exists()


def test_download_refuses_a_wrong_checksum(tmp_path, release):
    source = Source(release["images"].as_uri(), "images.zip", "ECSSD", md5="0" * 32)
    with pytest.raises(DownloadError, match="md5"):
        fetch_source(source, tmp_path / "root", log=lambda message: None)
    assert not (tmp_path / "root" / ".downloads" / "images.zip").exists()
    assert not (tmp_path / "root" / "ECSSD").exists()


def test_download_trusts_the_first_checksum_only(tmp_path, release):
    source = Source(release["masks"].as_uri(), "ground_truth_mask.zip", "ECSSD")
    fetch_source(source, tmp_path / "root", log=lambda message: None)
    release["masks"].write_bytes(zip_bytes({"ground_truth_mask/0001.png": b"changed"}))
    with pytest.raises(DownloadError, match="first download"):
        fetch_source(source, tmp_path / "root", log=lambda message: None)


def test_download_refuses_archives_that_escape(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_bytes({"../outside.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        fetch_source(Source(evil.as_uri(), "evil.zip", "X"), tmp_path / "root", log=lambda message: None)
    assert not (tmp_path / "outside.txt").exists()
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as bundle:
        link = tarfile.TarInfo("images/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(link)
    with pytest.raises(DownloadError, match="link"):
        fetch_source(Source(linked.as_uri(), "linked.tar", "X"), tmp_path / "root2", log=lambda message: None)
    with pytest.raises(DownloadError, match="outside"):
        fetch_source(Source(evil.as_uri(), "evil.zip", "../elsewhere"), tmp_path / "root3", log=lambda m: None)


def test_plain_files_are_copied_and_unreachable_addresses_fail(tmp_path):
    served = tmp_path / "setid.mat"
    savemat(served, {"trnid": np.array([[1]])})
    destination = fetch_source(Source(served.as_uri(), "setid.mat", "Flowers"), tmp_path / "root", log=lambda m: None)
    assert (destination / "setid.mat").read_bytes() == served.read_bytes()
    with pytest.raises(DownloadError, match="cannot download"):
        fetch_source(Source((tmp_path / "absent.zip").as_uri(), "absent.zip", "X"), tmp_path / "root",
                     log=lambda m: None)


def test_every_layout_says_where_its_data_comes_from():
    for layout in LAYOUTS.values():
        assert layout.homepage.startswith("http"), layout.name
        assert all(source.url.startswith("http") for source in layout.sources)
    with pytest.raises(DownloadError, match="no direct download"):
        download_benchmark(get_layout("HKU-IS"), "/nonexistent", log=lambda m: None)
