"""Reading a shard set back: plain webdataset and tarfile, synth-verify catching damage, and the
synth-preview contact sheet."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from generator.backends.testing import ShapesGenerator
from generator.direction import Direction, save_direction
from generator.synth.main import main as gen_synth
from generator.synth.preview import main as preview
from generator.synth.verify import main as verify
from generator.synth.verify import verify_folder
from generator.synth.writer import ShardWriter, file_sha256

RESOLUTION = 24


def make_shard_set(root: Path) -> Path:
    """A finished set of 3 shards (10, 10, 5 samples) at 24 x 24, with latents, in root/shards."""
    generator = ShapesGenerator(resolution=RESOLUTION)
    save_direction(Direction.from_vector(generator.planted_direction("lighting"), generator.identity),
                   root / "direction.json")
    (root / "params.yaml").write_text(json.dumps({
        "generator": {"name": "testing", "options": {"resolution": RESOLUTION}},
        "synth": {"n": 25, "shard_size": 10, "workers": 1, "sampler": "gaussian", "save_latents": True,
                  "direction": str(root / "direction.json"), "output": str(root / "shards")}}))
    result = CliRunner().invoke(gen_synth, ["--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    return root / "shards"


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return make_shard_set(tmp_path_factory.mktemp("synth"))


@pytest.fixture
def copy(shard_set, tmp_path) -> Path:
    """A copy of the set to damage."""
    return Path(shutil.copytree(shard_set, tmp_path / "shards"))


def test_shards_read_back_with_plain_webdataset(shard_set):
    urls = [str(p) for p in sorted(shard_set.glob("synth-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 25
    keys = [s["__key__"] for s in samples]
    assert keys[:2] == ["000000_000000", "000000_000001"] and keys[-1] == "000002_000004"
    assert all("." not in key for key in keys)
    for sample in samples:
        assert {"jpg", "mask.png", "json", "latent.npy"} <= set(sample)
        mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        record = json.loads(sample["json"])
        assert record["foreground_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert Image.open(io.BytesIO(sample["jpg"])).size == (RESOLUTION, RESOLUTION)
    decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False, empty_check=False).decode("rgb")))
    assert decoded["jpg"].shape == (RESOLUTION, RESOLUTION, 3)
    assert decoded["latent.npy"].dtype == np.float32


def test_shards_read_back_with_tarfile(shard_set):
    with tarfile.open(shard_set / "synth-000002.tar") as tar:
        names = tar.getnames()
    assert len(names) == 5 * 4
    assert names[:4] == ["000002_000000.jpg", "000002_000000.mask.png", "000002_000000.json",
                         "000002_000000.latent.npy"]


def test_verify_passes_a_sound_set(shard_set):
    result = CliRunner().invoke(verify, [str(shard_set)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "3 shards, 25 samples" in result.output


def damage_and_verify(folder: Path):
    return CliRunner().invoke(verify, [str(folder)])


def test_verify_catches_a_flipped_byte(copy):
    path = copy / "synth-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01                                   # inside the first JPEG
    path.write_bytes(bytes(data))
    result = damage_and_verify(copy)
    assert result.exit_code == 1
    assert "synth-000001.tar does not match its sha256" in result.output


def test_verify_catches_a_truncated_shard(copy):
    path = copy / "synth-000000.tar"
    path.write_bytes(path.read_bytes()[:5000])
    result = damage_and_verify(copy)
    assert result.exit_code == 1
    assert "synth-000000.tar has 5000 bytes" in result.output and "truncated" in result.output
    assert "holds" in result.output                     # and the sample count no longer adds up


def test_verify_catches_a_missing_shard_and_an_unlisted_one(copy):
    (copy / "synth-000002.tar").rename(copy / "synth-000009.tar")
    result = damage_and_verify(copy)
    assert result.exit_code == 1
    assert "synth-000002.tar is missing" in result.output
    assert "synth-000009.tar is not listed in the manifest" in result.output


def test_verify_catches_a_member_that_does_not_decode_even_with_matching_checksums(copy):
    path = copy / "synth-000002.tar"
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with ShardWriter(path) as writer:
        for name, data in members:
            writer.add(name, b"not a jpeg" if name == "000002_000003.jpg" else data)
        size, digest = writer.close()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][2].update(bytes=size, sha256=digest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert file_sha256(path) == digest
    result = damage_and_verify(copy)
    assert result.exit_code == 1
    assert "sample 000002_000003.jpg does not decode" in result.output


def test_verify_catches_counts_that_do_not_add_up_and_a_missing_manifest(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["totals"]["samples"] = 26
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = damage_and_verify(copy)
    assert result.exit_code == 1 and "totals.samples is 26, its shards add up to 25" in result.output
    (copy / "manifest.json").unlink()
    result = damage_and_verify(copy)
    assert result.exit_code == 1 and "manifest.json not found" in result.output


def test_processes_give_the_one_process_report_in_the_same_order(copy):
    assert "--processes" in CliRunner().invoke(verify, ["--help"]).output
    result = CliRunner().invoke(verify, [str(copy), "--processes", "2"])
    assert result.exit_code == 0 and "3 shards, 25 samples" in result.output, result.output
    data = bytearray((copy / "synth-000001.tar").read_bytes())
    data[700] ^= 0x01
    (copy / "synth-000001.tar").write_bytes(bytes(data))
    (copy / "synth-000000.tar").write_bytes((copy / "synth-000000.tar").read_bytes()[:5000])
    (copy / "synth-000002.tar").rename(copy / "synth-000009.tar")
    alone = verify_folder(copy)
    named = [problem.split(" ")[0].rstrip(":") for problem in alone.problems]
    assert list(dict.fromkeys(named))[:4] == ["synth-000009.tar", "synth-000000.tar", "synth-000001.tar",
                                             "synth-000002.tar"]
    for processes in (2, 3, 8):                         # 8: more processes than shards
        shared = verify_folder(copy, processes=processes)
        assert (shared.problems, shared.shards, shared.samples) == (alone.problems, alone.shards, alone.samples)
    over_url = verify_folder(copy.as_uri(), processes=2)
    assert over_url.problems == alone.problems
    result = CliRunner().invoke(verify, [str(copy), "--processes", "2"])
    assert result.exit_code == 1 and "synth-000002.tar is missing" in result.output


def test_verify_refuses_zero_processes(shard_set):
    result = CliRunner().invoke(verify, [str(shard_set), "--processes", "0"])
    assert result.exit_code == 2 and "--processes" in result.output


def test_preview_writes_a_contact_sheet(shard_set, tmp_path):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(preview, [str(shard_set), "--out", str(out), "--count", "5", "--columns", "2"])
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(out))
    tile = RESOLUTION
    assert sheet.shape == (3 * tile + 2 * 2, 2 * (3 * tile + 2 * 2) + 6, 3)
    # The second tile of the first sample is its mask: black and white only.
    mask_tile = sheet[:tile, tile + 2:2 * tile + 2]
    assert set(np.unique(mask_tile)) <= {0, 255} and mask_tile.max() == 255
    # The last row holds one sample; the rest of it stays white.
    assert (sheet[-tile:, -(3 * tile + 4):] == 255).all()


def test_preview_of_an_empty_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(preview, [str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "no readable samples" in result.output
    assert not (tmp_path / "x.png").exists()
