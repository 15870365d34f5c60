"""The shipped house generator: loads from the package through the registry, keeps the contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from generator.backends.house import HouseGenerator, build_house_generator
from generator.house import BANK_PATH, PACKAGE_DIR, SAMPLES_PATH, WEIGHTS_PATH
from generator.interface import GeneratorSpecError, digest_file
from generator.registry import build_generator
from tests.tolerances import between_two_runs, reduction_lengths

MAX_SHIPPED_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def house() -> HouseGenerator:
    return build_generator("house")


def test_registry_builds_the_packaged_weights(house):
    assert isinstance(house, HouseGenerator)
    assert house.weights_path == WEIGHTS_PATH
    assert house.identity == f"house@{digest_file(WEIGHTS_PATH)}"
    assert house.differentiable and house.has_encoder
    assert house.resolution == 64 and house.encoder_resolution == 64
    assert build_generator({"name": "house", "weights": str(WEIGHTS_PATH)}).identity == house.identity


def test_shipped_files_fit_the_size_budget():
    shipped = [WEIGHTS_PATH, BANK_PATH, BANK_PATH.with_suffix(".json"), SAMPLES_PATH, PACKAGE_DIR / "MODEL_CARD.md"]
    for path in shipped:
        assert path.is_file(), path
    assert sum(p.stat().st_size for p in shipped) <= MAX_SHIPPED_BYTES


def test_generate_shape_range_and_determinism(house):
    z = torch.randn(5, house.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = house.generate(z)
        again = house.generate(z)
        alone = house.generate(z[2:3])
    assert images.shape == (5, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, again)
    # eval-mode batch norm: an image does not depend on the rest of its batch, up to the rounding
    # of kernels chosen by batch size
    torch.testing.assert_close(alone[0], images[2], atol=between_two_runs(*reduction_lengths(house.generator_net)),
                               rtol=0)
    assert images.std(dim=0).mean() > 0.05, "different latents must give different images"


def test_gradients_reach_the_latents_not_the_weights(house):
    z = torch.randn(2, house.latent_dim, requires_grad=True)
    house.generate(z).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in house.generator_net.parameters())


def test_encoder_inverts_the_generator(house):
    z = torch.randn(64, house.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        codes = house.encode(house.generate(z))
    assert codes.shape == z.shape
    cosine = torch.nn.functional.cosine_similarity(codes, z, dim=1)
    assert cosine.mean() > 0.4, f"encoder should recover z, mean cosine {cosine.mean():.3f}"
    # what neighbourhood sampling needs: G(E(x)) redraws x, far closer than another sample is
    with torch.no_grad():
        images = house.generate(z)
        redrawn = house.generate(codes)
    error = (redrawn - images).abs().mean()
    assert error < 0.5 * (images - images.roll(1, dims=0)).abs().mean(), f"reconstruction L1 {error:.3f}"


def test_encoder_resizes_other_sides(house):
    images = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        codes = house.encode(images)
        direct = house.encode(torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear",
                                                              align_corners=False, antialias=True))
    torch.testing.assert_close(codes, direct)
    with pytest.raises(ValueError):
        house.encode(torch.zeros(2, 1, 64, 64))


def test_bad_latents_are_refused(house):
    with pytest.raises(ValueError):
        house.generate(torch.zeros(2, house.latent_dim + 1))
    with pytest.raises(ValueError):
        house.generate(torch.zeros(2, house.latent_dim, dtype=torch.long))


def test_bundled_bank_matches_the_weights(house):
    assert house.bundled_latent_bank == BANK_PATH
    bank = np.load(BANK_PATH, allow_pickle=False)
    index = json.loads(BANK_PATH.with_suffix(".json").read_text())
    assert bank.dtype == np.float32 and bank.ndim == 2 and bank.shape[1] == house.latent_dim
    assert index["format_version"] == 1 and index["generator"] == house.identity
    assert index["count"] == bank.shape[0] == len(index["files"]) == 10553  # DUTS-TR's training photos
    assert all(f.endswith(".jpg") and "/" not in f for f in index["files"]), index["files"][:3]
    assert np.isfinite(bank).all()
    # codes of real photos stay in the region the generator was trained on
    assert 0.5 < np.linalg.norm(bank, axis=1).mean() / np.sqrt(house.latent_dim) < 2.0


def test_bank_of_other_weights_is_not_offered(tmp_path):
    shutil.copy(WEIGHTS_PATH, tmp_path / WEIGHTS_PATH.name)
    assert build_house_generator(tmp_path / WEIGHTS_PATH.name).bundled_latent_bank is None
    shutil.copy(BANK_PATH, tmp_path / BANK_PATH.name)
    index = json.loads(BANK_PATH.with_suffix(".json").read_text())
    (tmp_path / "latent_bank.json").write_text(json.dumps({**index, "generator": "house@0000000000000000"}))
    assert build_house_generator(tmp_path / WEIGHTS_PATH.name).bundled_latent_bank is None
    (tmp_path / "latent_bank.json").write_text(json.dumps(index))
    assert build_house_generator(tmp_path / WEIGHTS_PATH.name).bundled_latent_bank == tmp_path / BANK_PATH.name


def test_missing_or_foreign_weights_give_clear_errors(tmp_path):
    with pytest.raises(GeneratorSpecError, match="not found"):
        build_generator({"name": "house", "weights": str(tmp_path / "none.pt")})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(GeneratorSpecError, match="not a house generator weights file"):
        build_generator({"name": "house", "weights": str(garbage)})
    foreign = tmp_path / "foreign.pt"
    torch.save({"format_version": 1, "config": {"latent_dim": 8}, "generator": {}, "encoder": {}}, foreign)
    with pytest.raises(GeneratorSpecError, match="not a house generator weights file"):
        build_generator({"name": "house", "weights": str(foreign)})
