"""The U-Net's shapes and widths, and the trained-model files: round trip, safety, clear errors."""

import json
import pickle

import pytest
import torch

from trainer.export import TrainedModelError, load_trained_model, save_trained_model
from trainer.unet import UNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("height, width", [(32, 32), (37, 37), (24, 43)])
def test_one_logit_per_pixel_at_any_size(bilinear, height, width):
    model = UNet(base_channels=4, depth=3, bilinear=bilinear).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, height, width) * 2 - 1)
    assert logits.shape == (2, 1, height, width)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def double_conv_parameters(in_channels, out_channels, mid_channels=None):
    """Two bias-free 3x3 convolutions, each with a batch norm's scale and shift."""
    mid_channels = mid_channels or out_channels
    return 9 * in_channels * mid_channels + 2 * mid_channels + 9 * mid_channels * out_channels + 2 * out_channels


def test_paper_width_follows_the_u_net_layout():
    # Counted by hand from the layout: encoder 64-128-256-512-1024 (bilinear: bottleneck 512 and
    # the decoder's convolutions halve the channels), a 1x1 convolution to one logit at the end.
    encoder = double_conv_parameters(3, 64) + sum(double_conv_parameters(c, 2 * c) for c in (64, 128, 256))
    head = 64 + 1
    bilinear = (encoder + double_conv_parameters(512, 512) + double_conv_parameters(1024, 256, 512)
                + double_conv_parameters(512, 128, 256) + double_conv_parameters(256, 64, 128)
                + double_conv_parameters(128, 64) + head)
    transposed = (encoder + double_conv_parameters(512, 1024) + head
                  + sum(4 * c * (c // 2) + c // 2 + double_conv_parameters(c, c // 2) for c in (1024, 512, 256, 128)))
    assert sum(p.numel() for p in UNet(base_channels=64, bilinear=True).parameters()) == bilinear
    assert sum(p.numel() for p in UNet(base_channels=64, bilinear=False).parameters()) == transposed


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="base_channels"):
        UNet(base_channels=0)


def test_save_load_round_trip_gives_the_same_function(tmp_path):
    torch.manual_seed(0)
    model = UNet(base_channels=8, depth=2, bilinear=True)
    model.train()
    model(torch.randn(4, 3, 16, 16))  # move the batch-norm running statistics off their defaults
    record = save_trained_model(model, {"input_size": 16, "steps": 3, "base_channels": 999}, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["unet.json", "unet.pt"]
    assert record["base_channels"] == 8  # the model's own architecture wins over the caller's dict

    loaded, config = load_trained_model(tmp_path / "model")
    assert not loaded.training
    assert config == json.loads((tmp_path / "model" / "unet.json").read_text())
    assert config["input_size"] == 16 and config["bilinear"] is True and config["depth"] == 2
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(images), model.eval()(images))


def test_weights_trained_in_channels_last_are_saved_as_the_same_bytes(tmp_path):
    model = UNet(base_channels=4, depth=2)
    save_trained_model(model, {"input_size": 8}, tmp_path / "plain")
    save_trained_model(model.to(memory_format=torch.channels_last), {"input_size": 8}, tmp_path / "nhwc")
    assert (tmp_path / "plain" / "unet.pt").read_bytes() == (tmp_path / "nhwc" / "unet.pt").read_bytes()


def test_weights_file_holding_arbitrary_objects_is_refused(tmp_path, capsys):
    model = UNet(base_channels=4, depth=1)
    save_trained_model(model, {"input_size": 8}, tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(tmp_path / "unet.pt", "wb") as f:
        pickle.dump({"weights": Payload()}, f, protocol=2)
    with pytest.raises(TrainedModelError, match="objects other than tensors and plain data, which are never unpickled"):
        load_trained_model(tmp_path)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("breakage, message", [
    (lambda folder: (folder / "unet.json").unlink(), "not found"),
    (lambda folder: (folder / "unet.json").write_text("{"), "not valid JSON"),
    (lambda folder: (folder / "unet.json").write_text('{"format_version": 7}'), "format version"),
    (lambda folder: (folder / "unet.json").write_text('{"format_version": 1, "architecture": "resnet"}'),
     "does not describe a U-Net"),
    (lambda folder: (folder / "unet.json").write_text(
        '{"format_version": 1, "base_channels": 6, "depth": 1, "input_size": 8}'),
     r"do not fit the U-Net .*\(0 missing, 0 unexpected, \d+ of another shape; e.g. \S+ is \(4, 4, 3, 3\), the U-Net's "
     r"\(6, 6, 3, 3\)\)"),
    (lambda folder: (folder / "unet.json").write_text('{"format_version": 1, "base_channels": 4, "depth": 1}'),
     "input_size must be a whole number of at least 2 \\*\\* depth = 2, got None"),
    (lambda folder: (folder / "unet.json").write_text(
        '{"format_version": 1, "base_channels": 4, "depth": 1, "input_size": 1}'), "got 1"),
    (lambda folder: (folder / "unet.pt").write_bytes(b""), "truncated, or not a torch file"),
    (lambda folder: (folder / "unet.pt").write_bytes((folder / "unet.pt").read_bytes()[:500]), "truncated"),
    (lambda folder: torch.save({"model": {}, "optimizer": {}, "step": 3}, folder / "unet.pt"),
     "a training checkpoint, not a trained model"),
    (lambda folder: torch.save({"weights": 1}, folder / "unet.pt"), "not a dict of tensors"),
])
def test_broken_folders_are_clear_errors(tmp_path, breakage, message):
    save_trained_model(UNet(base_channels=4, depth=1), {"input_size": 8}, tmp_path)
    breakage(tmp_path)
    with pytest.raises(TrainedModelError, match=message):
        load_trained_model(tmp_path)


def test_the_same_weights_give_the_same_bytes(tmp_path):
    torch.manual_seed(1)
    model = UNet(base_channels=4, depth=1)
    save_trained_model(model, {"input_size": 8}, tmp_path / "a")
    save_trained_model(model, {"input_size": 8}, tmp_path / "b")
    for name in ("unet.pt", "unet.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not [path for path in (tmp_path / "a").iterdir() if path.name.startswith(".")]  # no temporary left


def test_model_files_are_readable_by_others(tmp_path):
    import os
    import stat

    from generator.files import atomic_write_bytes
    previous = os.umask(0o022)
    os.umask(previous)
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    mode = stat.S_IMODE((tmp_path / "f.bin").stat().st_mode)
    assert mode == 0o666 & ~previous
