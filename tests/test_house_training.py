"""The house GAN's training code: augmentation, a few steps on tiny photos, checkpoints, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from generator.house.augment import diff_augment, random_cutout, random_translation
from generator.house.cli import main
from generator.house.model import HouseConfig, HouseDiscriminatorNet, HouseEncoderNet, HouseGeneratorNet
from generator.house.training import TrainSettings, load_checkpoint, train
from generator.interface import digest_file
from generator.registry import build_generator

TINY = HouseConfig(latent_dim=8, resolution=16, width=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / "grey.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def _settings(tmp_path, photos, **overrides) -> TrainSettings:
    values = dict(data=photos, out=tmp_path / "run", export_to=tmp_path / "export", steps=3, encoder_steps=2,
                  batch_size=4, seed=7, checkpoint_every=2, export_every=0, config=TINY)
    values.update(overrides)
    return TrainSettings(**values)


def test_networks_shapes():
    z = torch.randn(3, TINY.latent_dim)
    images = HouseGeneratorNet(TINY)(z)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1
    assert HouseDiscriminatorNet(TINY)(images).shape == (3,)
    assert HouseEncoderNet(TINY)(images).shape == (3, TINY.latent_dim)
    with pytest.raises(ValueError):
        HouseConfig(resolution=48)


def test_translation_moves_pixels_and_fills_zeros():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16) + 1
    out = random_translation(x, torch.Generator().manual_seed(3), ratio=0.25)
    for image, shifted in zip(x, out):
        # every kept pixel is an original pixel shifted by one common offset; the rest is zero
        kept = shifted[shifted != 0]
        assert set(kept.tolist()) <= set(image.flatten().tolist())
        nz = torch.nonzero(shifted[0])
        dy, dx = (image[0] == shifted[0, nz[0, 0], nz[0, 1]]).nonzero()[0] - nz[0]
        rows = (torch.arange(16)[:, None] + dy).clamp(0, 15)
        cols = (torch.arange(16)[None, :] + dx).clamp(0, 15)
        inside = ((torch.arange(16)[:, None] + dy >= 0) & (torch.arange(16)[:, None] + dy < 16)
                  & (torch.arange(16)[None, :] + dx >= 0) & (torch.arange(16)[None, :] + dx < 16))
        expected = torch.where(inside, image[0][rows, cols], torch.zeros(()))
        assert torch.equal(shifted[0], expected)


def test_cutout_zeroes_one_square_of_half_the_side():
    x = torch.ones(4, 3, 16, 16)
    out = random_cutout(x, torch.Generator().manual_seed(0))
    assert ((out == 0).float().sum(dim=(1, 2, 3)) == 3 * 8 * 8).all()


def test_augmentation_is_seeded_and_differentiable():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    a = diff_augment(x, torch.Generator().manual_seed(5))
    b = diff_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_training_writes_loadable_checkpoint_and_export(tmp_path, tiny_photos):
    settings = _settings(tmp_path, tiny_photos)
    weights = train(settings)
    assert weights == tmp_path / "export" / "house_gan.pt"
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", settings)
    assert (state.step, state.encoder_step) == (3, 2)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["phase"] for entry in log] == ["gan", "encoder"]
    assert all(np.isfinite(v) for entry in log for k, v in entry.items() if k.startswith("loss"))

    house = build_generator({"name": "house", "weights": str(weights)})
    assert house.identity == f"house@{digest_file(weights)}"
    assert house.latent_dim == 8 and house.resolution == 16
    assert house.generate(torch.zeros(2, 8)).shape == (2, 3, 16, 16)
    bank = np.load(tmp_path / "export" / "latent_bank.npy", allow_pickle=False)
    index = json.loads((tmp_path / "export" / "latent_bank.json").read_text())
    assert bank.shape == (6, 8) and bank.dtype == np.float32
    assert index["count"] == 6 and index["generator"] == house.identity
    assert index["files"][0] == f"{tiny_photos.parent.name}/photos/grey.jpg" and len(index["skipped"]) == 1
    assert index["skipped"][0]["path"] == f"{tiny_photos.parent.name}/photos/broken.jpg"
    assert house.bundled_latent_bank == tmp_path / "export" / "latent_bank.npy"
    assert Image.open(tmp_path / "export" / "samples.png").size == (8 * 18 + 2, 8 * 18 + 2)


def test_resume_continues_and_same_seed_gives_same_weights(tmp_path, tiny_photos):
    straight = _settings(tmp_path / "a", tiny_photos, steps=4, encoder_steps=0)
    train(straight)
    first = _settings(tmp_path / "b", tiny_photos, steps=2, encoder_steps=0)
    train(first)
    resumed = _settings(tmp_path / "b", tiny_photos, steps=4, encoder_steps=0)
    train(resumed, resume=tmp_path / "b" / "run" / "checkpoint.pt")
    a = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt", straight)
    b = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt", resumed)
    assert b.step == 4
    for key, value in a.ema_generator.state_dict().items():
        assert torch.equal(value, b.ema_generator.state_dict()[key]), key


def test_resume_refuses_another_architecture(tmp_path, tiny_photos):
    train(_settings(tmp_path, tiny_photos, steps=1, encoder_steps=0))
    other = _settings(tmp_path, tiny_photos, config=HouseConfig(latent_dim=9, resolution=16, width=4))
    with pytest.raises(ValueError, match="architecture"):
        train(other, resume=tmp_path / "run" / "checkpoint.pt")


def test_cli_trains_and_reports_bad_input(tmp_path, tiny_photos):
    runner = CliRunner()
    help_text = runner.invoke(main, ["--help"]).output
    for option in ("--data", "--steps", "--batch-size", "--seed", "--out", "--resume", "--export-to"):
        assert option in help_text
    arguments = ["--data", str(tiny_photos), "--out", str(tmp_path / "cli"), "--arch", "v1", "--steps", "2",
                 "--encoder-steps", "1", "--batch-size", "4", "--latent-dim", "8", "--resolution", "16",
                 "--width", "4", "--threads", "1"]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "house_gan.pt").is_file()
    recorded = json.loads((tmp_path / "cli" / "settings.json").read_text())["command"]
    assert recorded == ["train-house-gan", *arguments]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["--data", str(empty), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no readable photos" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(main, ["--data", str(tmp_path / "missing")])
    assert result.exit_code == 2
