"""The benchmarks' stand-in for BigBiGAN's generator: BigGAN-128's shape and size, never registered."""

import torch

from generator.registry import available_generators, build_generator


def test_the_standin_has_bigbigans_shape_and_is_not_a_registered_generator():
    generator = build_generator({"name": "python:benchmarks.bigbigan_standin:build_standin"})
    assert generator.latent_dim == 120 and generator.resolution == 128
    assert 65e6 < generator.parameter_count() < 75e6           # BigGAN-128's G: about 70 M
    with torch.inference_mode():
        images = generator.generate(torch.zeros(1, 120))
    assert images.shape == (1, 3, 128, 128) and images.abs().max() <= 1
    assert not any("standin" in name for name in available_generators())
    again = build_generator({"name": "python:benchmarks.bigbigan_standin:build_standin"})
    assert again.identity == generator.identity        # seeded random weights
    with torch.inference_mode():
        assert torch.equal(again.generate(torch.zeros(1, 120)), images)
