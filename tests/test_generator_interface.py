"""The generator interface contract, checked on every backend that needs no external files."""

import pytest
import torch

from generator import build_generator
from generator.backends.testing import ShapesGenerator
from generator.backends.torch_module import TorchModuleGenerator
from generator.interface import Generator, GeneratorSpecError
from tests.fixtures.user_generators import TinyLinearGenerator


@pytest.fixture(params=["testing", "torch-module"])
def any_generator(request) -> Generator:
    if request.param == "testing":
        return ShapesGenerator(resolution=32)
    return TorchModuleGenerator(TinyLinearGenerator(seed=1))


def test_generate_shape_range_and_dtype(any_generator):
    z = torch.randn(5, any_generator.latent_dim, generator=torch.Generator().manual_seed(0))
    images = any_generator.generate(z)
    assert images.shape == (5, 3, any_generator.resolution, any_generator.resolution)
    assert images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1


def test_generate_is_deterministic(any_generator):
    z = torch.randn(3, any_generator.latent_dim, generator=torch.Generator().manual_seed(1))
    assert torch.equal(any_generator.generate(z), any_generator.generate(z.clone()))


def test_identity_is_name_and_digest(any_generator):
    name, _, digest = any_generator.identity.partition("@")
    assert name == any_generator.name and len(digest) == 16
    int(digest, 16)


@pytest.mark.parametrize("bad_shape", [(4,), (2, 3), (2, 16, 1)])
def test_wrong_latent_shape_is_a_clear_error(bad_shape):
    generator = ShapesGenerator(resolution=16)
    with pytest.raises(ValueError, match="expects latents of shape N x 16"):
        generator.generate(torch.zeros(bad_shape))


def test_integer_latents_are_refused():
    with pytest.raises(ValueError, match="floating point"):
        ShapesGenerator(resolution=16).generate(torch.zeros(2, 16, dtype=torch.int64))


def test_differentiable_generators_pass_gradients_to_z(any_generator):
    assert any_generator.differentiable
    z = torch.randn(2, any_generator.latent_dim, requires_grad=True)
    any_generator.generate(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_identity_changes_with_weights():
    a = TorchModuleGenerator(TinyLinearGenerator(seed=1))
    b = TorchModuleGenerator(TinyLinearGenerator(seed=2))
    again = TorchModuleGenerator(TinyLinearGenerator(seed=1))
    assert a.identity != b.identity
    assert a.identity == again.identity


def test_identity_changes_with_testing_options():
    assert ShapesGenerator(resolution=32).identity != ShapesGenerator(resolution=64).identity
    assert ShapesGenerator(mixing_seed=1).identity != ShapesGenerator(mixing_seed=2).identity


def test_encode_maps_images_to_latents():
    generator = ShapesGenerator(resolution=32)
    images = generator.generate(torch.randn(4, 16))
    z = generator.encode(images)
    assert z.shape == (4, 16) and torch.isfinite(z).all()
    assert torch.equal(z, generator.encode(images))


def test_encode_without_encoder_is_a_clear_error():
    generator = TorchModuleGenerator(TinyLinearGenerator())
    assert not generator.has_encoder
    with pytest.raises(NotImplementedError, match="has no encoder"):
        generator.encode(torch.zeros(1, 3, 8, 8))


def test_module_without_latent_dim_is_refused():
    with pytest.raises(GeneratorSpecError, match="latent_dim"):
        TorchModuleGenerator(torch.nn.Identity())


def test_planted_lighting_direction_lightens_object_and_darkens_background():
    generator = ShapesGenerator(resolution=32, mixing_seed=3)
    direction = generator.planted_direction("lighting")
    assert torch.isclose(direction.norm(), torch.tensor(1.0))
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    before, after = generator.generate(z), generator.generate(z + 5 * direction)
    inside = generator.object_mask(z)[:, None].expand_as(before)
    assert (after - before)[inside].mean() > 0.3
    assert (after - before)[~inside].mean() < -0.3


def test_fixed_shape_keeps_every_object_the_same_size():
    free = ShapesGenerator(resolution=32, mixing_seed=3)
    fixed = ShapesGenerator(resolution=32, mixing_seed=3, fixed_shape=True)
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    free_areas, fixed_areas = free.object_mask(z).sum(dim=(1, 2)), fixed.object_mask(z).sum(dim=(1, 2))
    assert free_areas.max() > 1.5 * free_areas.min()
    assert fixed_areas.max() < 1.1 * fixed_areas.min()  # only the pixel grid moves with the object
    size = free.planted_direction("size")  # the same rotation: the same mixing seed
    assert (fixed.generate(z + 3 * size) - fixed.generate(z)).abs().max() < 1e-5  # rounding of the rotation
    assert (free.generate(z + 3 * size) - free.generate(z)).abs().max() > 0.5


def test_fixed_shape_has_no_size_direction_and_its_own_identity():
    fixed = ShapesGenerator(resolution=32, fixed_shape=True)
    assert "size" not in fixed.planted_names and "lighting" in fixed.planted_names
    assert "size" in ShapesGenerator(resolution=32).planted_names
    with pytest.raises(ValueError, match="'size' is not a planted direction"):
        fixed.planted_direction("size")
    assert fixed.identity != ShapesGenerator(resolution=32).identity
    spec = {"name": "testing", "options": {"resolution": 32, "fixed_shape": True}}
    assert build_generator(spec).identity == fixed.identity


def test_default_testing_identity_is_unchanged_by_the_fixed_shape_option():
    # Manifests and direction files made before the option name the generator by this identity.
    assert ShapesGenerator().identity == "testing@0a95c90cddc19d6d"
    assert ShapesGenerator(fixed_shape=False).identity == ShapesGenerator().identity
