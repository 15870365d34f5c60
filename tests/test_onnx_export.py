"""export-onnx: the U-Net as ONNX with dynamic batch, height and width, matching PyTorch under
onnxruntime at sizes the network's stride does and does not divide, and the README's snippet
segmenting a photo with numpy, PIL and onnxruntime alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tests.test_pipeline_integration import readme_snippet
from trainer.export import save_trained_model
from trainer.onnx_export import INPUT_NAME, OUTPUT_NAME, main as export_onnx, smallest_side
from trainer.unet import UNet

ort = pytest.importorskip("onnxruntime")
INPUT_SIZE = 24


def random_unet(base_channels: int, depth: int, bilinear: bool) -> UNet:
    """Random weights and random batch-norm statistics, so every layer does something."""
    torch.manual_seed(0)
    unet = UNet(base_channels=base_channels, depth=depth, bilinear=bilinear)
    for module in unet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return unet.eval()


def export(unet: UNet, folder: Path, *extra: str) -> Path:
    save_trained_model(unet, {"input_size": INPUT_SIZE}, folder)
    result = CliRunner().invoke(export_onnx, ["--model", str(folder), *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return folder / "unet.onnx"


def float32_tolerance(unet: UNet, logits: torch.Tensor) -> float:
    """How far two float32 evaluations of the same network may drift apart, from rounding alone.

    A convolution output is a sum of fan_in products; summed in any order in float32 it is off by
    at most about fan_in * u times the magnitude of the terms (u = 2 ** -24, Higham's gamma_n).
    The errors of the layers on the path add up, the magnitude is bounded by the largest logit
    (at least 1), and the sigmoid's slope (<= 1/4) shrinks the result for probabilities.
    """
    unit_roundoff = float(np.finfo(np.float32).eps) / 2
    fan_ins = sum(module.weight[0].numel() for module in unet.modules()
                  if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)))
    return unit_roundoff * fan_ins * max(1.0, float(logits.abs().max())) / 4


@pytest.mark.parametrize("base_channels,depth,bilinear", [(4, 2, True), (2, 3, False)])
def test_onnxruntime_matches_pytorch_at_three_sizes(tmp_path, base_channels, depth, bilinear):
    unet = random_unet(base_channels, depth, bilinear)
    session = ort.InferenceSession(str(export(unet, tmp_path / "model")), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    stride = 2 ** depth
    # a multiple of the stride, two that are not (odd, and a batch of 2), and the smallest accepted side
    for shape in [(1, 3, 3 * stride, 4 * stride), (2, 3, 37, 50), (1, 3, stride, 2 * stride + 3)]:
        images = torch.rand(shape, generator=generator) * 2 - 1
        with torch.no_grad():
            logits = unet(images)
        expected = torch.sigmoid(logits).numpy()
        (got,) = session.run(None, {INPUT_NAME: images.numpy()})
        assert got.shape == expected.shape == (shape[0], 1, shape[2], shape[3])
        assert np.abs(got - expected).max() <= float32_tolerance(unet, logits)
    assert smallest_side(unet) == stride


def test_the_file_declares_dynamic_axes_and_the_protocol(tmp_path):
    session = ort.InferenceSession(str(export(random_unet(4, 2, True), tmp_path / "model")),
                                   providers=["CPUExecutionProvider"])
    (inputs,), (outputs,) = session.get_inputs(), session.get_outputs()
    assert (inputs.name, inputs.shape, inputs.type) == (INPUT_NAME, ["batch", 3, "height", "width"], "tensor(float)")
    assert (outputs.name, outputs.shape) == (OUTPUT_NAME, ["batch", 1, "height", "width"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["input_size"] == str(INPUT_SIZE) and metadata["input_range"] == "[-1, 1]"
    assert "probability" in metadata["output"] and metadata["smallest_side"] == "4"


def test_export_is_deterministic_and_output_can_be_chosen(tmp_path):
    unet = random_unet(4, 2, True)
    first = export(unet, tmp_path / "model").read_bytes()
    second = export(unet, tmp_path / "model", "--output", str(tmp_path / "copy.onnx"))
    assert (tmp_path / "copy.onnx").read_bytes() == first and second.read_bytes() == first


def test_export_without_a_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_onnx, [])
    assert result.exit_code == 1 and "no trained model" in result.output
    (tmp_path / "broken").mkdir()
    result = CliRunner().invoke(export_onnx, ["--model", "broken"])
    assert result.exit_code == 1 and "not a usable trained-model folder" in result.output


def test_the_readme_snippet_segments_a_photo_without_this_project(tmp_path):
    export(random_unet(4, 2, True), tmp_path / "data" / "selftrain_model")   # where the demo leaves it
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 71, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    # Any import of this project (or of torch) fails inside the snippet.
    blocked = "import sys\nsys.modules.update(dict.fromkeys(['generator', 'trainer', 'evaluation', 'torch']))\n"
    (tmp_path / "segment.py").write_text(blocked + readme_snippet("onnx-segment"))
    subprocess.run([sys.executable, "-I", "segment.py"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    with Image.open(tmp_path / "mask.png") as mask:
        assert mask.mode == "L" and mask.size == (71, 45)
