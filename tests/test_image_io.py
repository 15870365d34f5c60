"""Reading images of every common mode as 8-bit RGB, and the square-input rule."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generator.image_io import (UnreadableImageError, centre_crop, fit_square, load_rgb, load_square,
                                resize_shorter_side, to_unit_range)


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def png_rgb16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), written from the PNG specification."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_rgb_png_is_read_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgb = load_rgb(save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    assert np.array_equal(rgb, pixels)


def test_grey_is_repeated_on_three_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = load_rgb(save(Image.fromarray(grey, "L"), tmp_path / "grey.bmp"))
    assert np.array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))


def test_bilevel_image(tmp_path):
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 1), 1)
    rgb = load_rgb(save(image, tmp_path / "bits.png"))
    assert rgb[1, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [0, 0, 0]


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]    # opaque: unchanged
    rgba[0, 1] = [200, 0, 0, 0]       # transparent: white, whatever colour is stored
    rgba[0, 2] = [0, 0, 0, 128]       # half: black over white is mid grey
    rgb = load_rgb(save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png"))
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in rgb[0, 2].tolist())


def test_grey_with_alpha(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (40, 255))
    la.putpixel((1, 0), (40, 0))
    rgb = load_rgb(save(la, tmp_path / "la.png"))
    assert rgb[0, 0].tolist() == [40, 40, 40] and rgb[0, 1].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    opaque = load_rgb(save(palette, tmp_path / "palette.png"))
    assert opaque.tolist() == [[[255, 0, 0], [0, 0, 255]]]
    transparent = load_rgb(save(palette, tmp_path / "palette_transparent.png", transparency=1))
    assert transparent.tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_cmyk_uses_the_subtractive_formula(tmp_path):
    cmyk = Image.new("CMYK", (2, 2), (10, 20, 30, 40))
    path = save(cmyk, tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    rgb = load_rgb(path)
    expected = [(255 - 40) * (255 - c) / 255 for c in (10, 20, 30)]
    assert np.abs(rgb.astype(float) - expected).max() <= 2


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    assert load_rgb(path)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_thirty_two_bit_integer_grey_is_read_as_sixteen_bit(tmp_path):
    values = np.array([[-5, 0, 32896, 65535, 70000]], dtype=np.int32)
    path = save(Image.fromarray(values), tmp_path / "grey32.tif")
    assert Image.open(path).mode == "I"
    assert load_rgb(path)[0, :, 1].tolist() == [0, 0, 128, 255, 255]


def test_sixteen_bit_rgb_png(tmp_path):
    pixels = np.array([[[0, 32896, 65535], [65535, 256, 512]]], dtype=np.uint16)
    rgb = load_rgb(png_rgb16(tmp_path / "rgb16.png", pixels))
    assert np.abs(rgb.astype(int) - np.rint(pixels / 257).astype(int)).max() <= 1


@pytest.mark.parametrize("content, reason", [
    (b"", "cannot decode"),
    (b"this is not an image", "cannot decode"),
])
def test_unreadable_files_raise_a_specific_error(tmp_path, content, reason):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=reason) as error:
        load_rgb(path)
    assert error.value.path == str(path)


def test_truncated_and_missing_files(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(Image.fromarray(pixels), tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    with pytest.raises(UnreadableImageError, match="cannot decode"):
        load_rgb(tmp_path / "cut.jpg")
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_rgb(tmp_path / "absent.png")


def test_exif_orientation_only_when_asked(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(Image.fromarray(pixels), tmp_path / "rotated.png", exif=exif)
    assert load_rgb(path).shape == (2, 3, 3)
    upright = load_rgb(path, exif_orientation=True)
    assert upright.shape == (3, 2, 3) and upright[0, 1].tolist() == [255, 255, 255]


def test_to_unit_range():
    tensor = to_unit_range(np.array([[[0, 255, 51]]], dtype=np.uint8))
    assert tensor.shape == (3, 1, 1) and tensor.dtype == torch.float32
    assert tensor.flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6])
    with pytest.raises(ValueError, match="uint8"):
        to_unit_range(np.zeros((2, 2, 3), np.float32))


@pytest.mark.parametrize("height, width, resized", [(100, 200, (32, 64)), (300, 90, (107, 32)),
                                                    (32, 32, (32, 32)), (10, 15, (32, 48))])
def test_shorter_side_is_resized(height, width, resized):
    images = torch.rand(2, 3, height, width)
    assert resize_shorter_side(images, 32).shape[-2:] == resized
    square = fit_square(images, 32)
    assert square.shape == (2, 3, 32, 32)
    assert square.min() >= images.min() - 1e-6 and square.max() <= images.max() + 1e-6


def test_square_image_of_the_right_size_is_unchanged():
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(fit_square(images, 16), images)


def test_centre_crop_takes_the_middle():
    images = torch.arange(6.0).reshape(1, 1, 1, 6).expand(1, 1, 3, 6)
    assert centre_crop(images, 3)[0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="cannot crop"):
        centre_crop(images, 4)


@pytest.mark.parametrize("height, width, side", [(48, 80, 24), (30, 20, 45)])
def test_fit_square_matches_pillow_bilinear(height, width, side):
    """Pillow's bilinear resampling (antialiased when shrinking) on float images is the reference."""
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    resized_height, resized_width = resize_shorter_side(images, side).shape[-2:]
    top, left = (resized_height - side) // 2, (resized_width - side) // 2
    expected = torch.stack([
        torch.from_numpy(np.array(Image.fromarray(channel.numpy(), "F").resize(
            (resized_width, resized_height), Image.Resampling.BILINEAR)))
        for channel in images[0]])[:, top:top + side, left:left + side]
    torch.testing.assert_close(fit_square(images, side)[0], expected, atol=1e-5, rtol=0)


def test_load_square_is_unit_range_nchw(tmp_path):
    pixels = np.full((40, 60, 3), 255, np.uint8)
    pixels[:, :2] = 0  # a black band that the centre crop removes
    square = load_square(save(Image.fromarray(pixels), tmp_path / "wide.png"), 20)
    assert square.shape == (1, 3, 20, 20) and square.dtype == torch.float32
    assert torch.allclose(square, torch.ones_like(square))
