"""Other ecosystems read the shards as they are: Hugging Face `datasets` through its webdataset
builder and through the dataset card gen-synth writes, which the manifest covers and synth-verify checks."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from click.testing import CliRunner
from PIL import Image

from generator.backends.testing import ShapesGenerator
from generator.direction import Direction, save_direction
from generator.synth.card import CARD_NAME, size_category
from generator.synth.main import main as gen_synth
from generator.synth.verify import verify_folder

datasets = pytest.importorskip("datasets")
RESOLUTION = 24
SAMPLES = 25
LATENT_DIM = 16


def make_set(root: Path, output: str = "shards", *extra: str) -> Path:
    generator = ShapesGenerator(resolution=RESOLUTION)
    save_direction(Direction.from_vector(generator.planted_direction("lighting"), generator.identity,
                                         method="planted", index=0, sign=1, chosen_by="automatic"),
                   root / "direction.json")
    np.save(root / "bank.npy", np.random.default_rng(0).standard_normal((12, LATENT_DIM)).astype(np.float32))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "generator": {"name": "testing", "options": {"resolution": RESOLUTION}},
        "synth": {"n": SAMPLES, "shard_size": 10, "workers": 1, "sampler": "neighbourhood", "alpha": 0.2,
                  "save_latents": True, "direction": str(root / "direction.json"), "bank": str(root / "bank.npy"),
                  "output": str(root / output)}}))
    result = CliRunner().invoke(gen_synth, ["--params", str(root / "params.yaml"), *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / output


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("synth"))


@pytest.fixture
def copy(shard_set, tmp_path) -> Path:
    return Path(shutil.copytree(shard_set, tmp_path / "shards"))


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def check_hf_dataset(dataset, shard_set: Path) -> None:
    assert dataset.num_rows == SAMPLES
    features = dataset.features
    assert isinstance(features["jpg"], datasets.Image) and isinstance(features["mask.png"], datasets.Image)
    assert {name: features["json"][name].dtype for name in features["json"]} == {
        "key": "string", "index": "int64", "shard": "int64", "candidate": "int64", "seed": "int64",
        "sampler": "string", "source_index": "int64", "alpha": "float64", "foreground_fraction": "float64",
        "generator": "string"}
    plain = list(wds.WebDataset(sorted(str(p) for p in shard_set.glob("synth-*.tar")), shardshuffle=False))
    for row, sample in zip(dataset, plain):
        assert isinstance(row["jpg"], Image.Image) and row["jpg"].mode == "RGB"
        assert row["jpg"].size == (RESOLUTION, RESOLUTION)
        mask = row["mask.png"]
        assert isinstance(mask, Image.Image) and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert np.array_equal(np.asarray(mask), np.asarray(Image.open(io.BytesIO(sample["mask.png"]))))
        assert row["json"] == json.loads(sample["json"])
        assert row["__key__"] == sample["__key__"]
        assert np.asarray(row["latent.npy"], np.float32).shape == (LATENT_DIM,)


def test_hf_datasets_reads_the_shards_with_the_webdataset_builder(shard_set, tmp_path):
    dataset = datasets.load_dataset("webdataset", data_files={"train": sorted(str(p) for p in shard_set.glob("*.tar"))},
                                    split="train", cache_dir=str(tmp_path / "cache"))
    check_hf_dataset(dataset, shard_set)


def test_hf_datasets_finds_the_shards_through_the_card(shard_set, tmp_path):
    dataset = datasets.load_dataset(str(shard_set), split="train", cache_dir=str(tmp_path / "cache"))
    check_hf_dataset(dataset, shard_set)


def test_the_card_holds_the_hub_header_and_how_the_data_was_made(shard_set):
    text = (shard_set / CARD_NAME).read_text()
    manifest = json.loads((shard_set / "manifest.json").read_text())
    header = front_matter(text)
    assert header["license"] == "unknown" and "TODO(owner): choose the licence" in text
    assert header["task_categories"] == ["image-segmentation"] and header["size_categories"] == ["n<1K"]
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "synth-*.tar"}]}]
    assert header["pretty_name"]
    from huggingface_hub import DatasetCard
    assert DatasetCard(text).data.to_dict()["task_categories"] == ["image-segmentation"]
    for fact in (manifest["generator"]["identity"], manifest["direction"]["digest"], "alpha = 0.2", "seed | 0",
                 f"samples | {SAMPLES}", f"candidates rendered | {manifest['totals']['candidates']}",
                 "load_dataset(\"webdataset\"", "wds.WebDataset"):
        assert fact in text, fact
    for name, count in manifest["totals"]["rejected_by"].items():
        assert f"rejected by the {name} filter | {count} " in text


@pytest.mark.parametrize("count,label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (4000, "1K<n<10K"),
                                         (1_140_000, "1M<n<10M"), (10 ** 10, "n>1B")])
def test_size_categories_are_the_hub_buckets(count, label):
    assert size_category(count) == label


def test_the_manifest_lists_the_card_and_verify_checks_it(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    card = (copy / CARD_NAME).read_bytes()
    assert manifest["card"] == {"name": CARD_NAME, "bytes": len(card), "sha256": hashlib.sha256(card).hexdigest()}
    assert verify_folder(copy).ok
    (copy / CARD_NAME).write_text(card.decode().replace("license: unknown", "license: cc-by-4.0"))
    assert any("dataset card" in problem and "sha256" in problem for problem in verify_folder(copy).problems)
    (copy / CARD_NAME).unlink()
    assert any("dataset card" in problem and "missing" in problem for problem in verify_folder(copy).problems)


def test_a_set_without_a_card_still_verifies(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["card"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / CARD_NAME).unlink()
    assert verify_folder(copy).ok


def test_the_card_is_the_same_bytes_on_every_run_and_resume_and_overwrite_accept_it(shard_set, tmp_path):
    again = make_set(tmp_path, "again")
    assert (again / CARD_NAME).read_bytes() == (shard_set / CARD_NAME).read_bytes()
    before = (again / "manifest.json").read_bytes()
    make_set(tmp_path, "again", "--resume")            # a finished set: nothing to redo, same files
    assert (again / "manifest.json").read_bytes() == before
    make_set(tmp_path, "again", "--overwrite")         # the card is gen-synth's own file, not a foreign one
    assert (again / "manifest.json").read_bytes() == before and verify_folder(again).ok
