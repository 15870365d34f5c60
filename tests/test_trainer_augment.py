"""Training-batch augmentation: seeded, label-preserving, colours varied, luma kept by the colour step."""

import pytest
import torch

from trainer.augment import _RGB_TO_YIQ, augment_pairs, colour_matrices


def ramp_batch(count=16, side=8):
    """Grey images whose brightness rises left to right, and masks of their left half."""
    ramp = torch.linspace(-0.8, 0.8, side)
    images = ramp.expand(count, 3, side, side).clone()
    masks = torch.zeros(count, 1, side, side)
    masks[..., : side // 2] = 1.0
    return images, masks


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images, masks = ramp_batch()
    colourful = images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    first = augment_pairs(colourful, masks, torch.Generator().manual_seed(5))
    again = augment_pairs(colourful, masks, torch.Generator().manual_seed(5))
    other = augment_pairs(colourful, masks, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_masks_follow_the_mirror_of_their_image_and_nothing_else():
    images, masks = ramp_batch(count=64)
    augmented, new_masks = augment_pairs(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(torch.unique(new_masks), torch.tensor([0.0, 1.0]))
    mirrored = new_masks[:, 0, 0, -1] == 1.0                  # the mask moved to the right half
    assert 16 < int(mirrored.sum()) < 48                       # about half are mirrored
    for image, mask, flipped in zip(augmented, new_masks, mirrored):
        assert torch.equal(mask, masks[0].flip(-1) if flipped else masks[0])
        luma = image.mean(dim=(0, 1))
        # contrast stays positive, so the ramp keeps its direction unless clamping flattened it
        assert (luma[0] >= luma[-1]) if flipped else (luma[0] <= luma[-1])
        assert luma[0] != luma[-1]


def test_the_colour_step_keeps_grey_grey():
    matrices = colour_matrices(50, torch.Generator().manual_seed(3))
    grey = torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.allclose(matrices @ grey, grey.expand(50, 3), atol=1e-9)


def test_about_half_the_images_get_grain_and_about_half_are_blurred():
    count = 200
    flat = torch.zeros(count, 3, 16, 16)
    augmented, _ = augment_pairs(flat, torch.zeros(count, 1, 16, 16), torch.Generator().manual_seed(4))
    grainy = augmented.std(dim=(1, 2, 3)) > 0.01
    assert 0.3 < grainy.float().mean() < 0.7
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 1.0 - 0.5
    images = checker.expand(count, 3, 16, 16).clone()
    augmented, _ = augment_pairs(images, torch.zeros(count, 1, 16, 16), torch.Generator().manual_seed(4))
    contrast = (augmented[..., 1:] - augmented[..., :-1]).abs().mean(dim=(1, 2, 3))
    original = (images[..., 1:] - images[..., :-1]).abs().mean()
    assert 0.3 < (contrast < 0.5 * original).float().mean() < 0.7  # a blur flattens a checker board


def test_the_colour_step_keeps_luma_and_varies_colour():
    matrices = colour_matrices(200, torch.Generator().manual_seed(0))
    luma_row = _RGB_TO_YIQ[0]
    assert torch.allclose(luma_row @ matrices, luma_row.expand(200, 3), atol=1e-9)
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    recoloured = matrices @ red
    # hues spread all round: the recoloured red is sometimes greener than it is red, sometimes bluer
    assert (recoloured[:, 1] > recoloured[:, 0]).any() and (recoloured[:, 2] > recoloured[:, 0]).any()


def test_a_colourful_batch_changes_and_stays_in_range():
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(8, 3, 6, 6, generator=generator) * 2 - 1
    masks = (torch.rand(8, 1, 6, 6, generator=generator) > 0.5).float()
    augmented, _ = augment_pairs(images, masks, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert (augmented - images).abs().mean() > 0.05
    assert augmented.min() >= -1.0 and augmented.max() <= 1.0


@pytest.mark.parametrize("images, masks", [
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4)),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 5, 4)),
    (torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)),
])
def test_bad_shapes_are_refused(images, masks):
    with pytest.raises(ValueError, match="expected N x 3 x H x W"):
        augment_pairs(images, masks, torch.Generator().manual_seed(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_same_seed_draws_the_same_parameters_and_only_the_grain_differs():
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(32, 3, 16, 16, generator=generator) * 2 - 1
    masks = (torch.rand(32, 1, 16, 16, generator=generator) > 0.5).float()
    on_cpu = augment_pairs(images, masks, torch.Generator().manual_seed(7))
    on_gpu = augment_pairs(images.cuda(), masks.cuda(), torch.Generator().manual_seed(7))
    assert on_gpu[0].device.type == "cuda" and torch.equal(on_gpu[1].cpu(), on_cpu[1])
    same = (on_gpu[0].cpu() - on_cpu[0]).abs().amax(dim=(1, 2, 3)) < 1e-2  # the images without grain (TF32 aside)
    assert 0 < int(same.sum()) < 32
