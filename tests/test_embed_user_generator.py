"""The worked example of a user's own PyTorch generator: built from a spec, differentiable, embeds photos."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from examples.my_generator import MyEncoder, MyGenerator, save_weights
from generator import build_generator
from generator.embed import read_bank
from generator.embed.main import main as embed_images

NAME = "python:examples.my_generator:factory"
SMALL = {"latent_dim": 8, "width": 4}


def test_example_generator_builds_from_a_spec_and_renders():
    generator = build_generator({"name": NAME, "options": {"latent_dim": 8, "width": 4}})
    assert generator.identity.startswith("my_generator@")
    assert (generator.latent_dim, generator.resolution, generator.has_encoder) == (8, 32, True)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    images = generator.generate(z)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    images.mean().backward()
    assert generator.differentiable and z.grad.abs().sum() > 0
    assert generator.encode(images.detach()).shape == (3, 8)


def test_weights_file_defines_the_function_and_the_identity(tmp_path):
    torch.manual_seed(5)
    trained, encoder = MyGenerator(8, 4).eval(), MyEncoder(8, 4)
    save_weights(trained, encoder, tmp_path / "mine.pt")
    loaded = build_generator({"name": NAME, "weights": str(tmp_path / "mine.pt"), "options": SMALL})
    seeded = build_generator({"name": NAME, "options": {"latent_dim": 8, "width": 4}})
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.generate(z), trained(z))
    assert loaded.identity != seeded.identity
    again = build_generator({"name": NAME, "options": {"latent_dim": 8, "width": 4}})
    assert again.identity == seeded.identity


def test_generator_without_encoder_weights_has_no_encoder(tmp_path):
    save_weights(MyGenerator(8, 4), None, tmp_path / "g.pt")
    generator = build_generator({"name": NAME, "weights": str(tmp_path / "g.pt"), "options": SMALL})
    assert not generator.has_encoder


def test_example_generator_embeds_a_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "generator": {"name": NAME, "weights": None, "options": {"latent_dim": 8, "width": 4}},
        "embed": {"images": str(photos), "output": str(tmp_path / "bank")}}))
    result = CliRunner().invoke(embed_images, ["--params", str(params), "--quiet"])
    assert result.exit_code == 0, result.output
    bank = read_bank(tmp_path / "bank")
    assert bank.latents.shape == (3, 8) and bank.files == ["0.jpg", "1.jpg", "2.jpg"]
