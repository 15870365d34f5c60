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


def test_the_scale_benchmark_keeps_every_standin_candidate_which_the_papers_filters_would_not():
    # Random weights draw no object: with the paper's filters a benchmark run on the standin would
    # spend its whole candidate budget and stop, so the benchmark runs it keeping every candidate.
    from benchmarks.bench_scale import FILTERS, SPECS, chosen_shift
    from generator.synth.filters import FilterConfig, apply_filters
    from generator.synth.masks import synthesize_masks

    generator = build_generator(SPECS["standin"])
    shift = chosen_shift(generator, magnitude=5.0)
    z = torch.randn(4, generator.latent_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        base, shifted = generator.generate(z), generator.generate(z + shift)
    masks = synthesize_masks(base, shifted).numpy()
    assert apply_filters(masks, shifted.numpy(), FILTERS["standin"]).keep.all()
    assert not apply_filters(masks, shifted.numpy(), FilterConfig()).keep.any()
    assert FILTERS["house"] == FilterConfig()
