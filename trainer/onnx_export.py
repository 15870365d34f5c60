"""`export-onnx`: a trained U-Net as an ONNX model that runs without this project.

The graph maps `image`, N x 3 x H x W float32 in [-1, 1], to `probability`, N x 1 x H x W in
[0, 1] (the sigmoid is part of the graph); N, H and W are dynamic.  Any H, W >= 2 ** depth work
(each of the `depth` poolings must leave at least one pixel), including sizes that are not
multiples of 2 ** depth: the decoder pads each up-sampled map to its skip connection's size.
The model's own facts travel in the file's metadata (`input_size`, the shorter side photos are
resized to; `input_range`; `output`), so a reader needs nothing else.

The graph is traced (torch's TorchScript-based exporter) on an input whose side is odd at every
level, so the decoder's padding is recorded, with amounts computed from the input's shape; a
trace on an even size would drop it and fail on odd sizes.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import click
import torch
from torch import nn

from generator.files import atomic_write_bytes
from trainer.export import TrainedModelError, load_trained_model
from trainer.model_folders import DEFAULT_MODEL_FOLDERS, default_model_folder
from trainer.unet import UNet

ONNX_NAME = "unet.onnx"
INPUT_NAME, OUTPUT_NAME = "image", "probability"
OPSET = 17


class ProbabilityUNet(nn.Module):
    """The U-Net followed by its sigmoid: what a user of the exported file wants out."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unet(images))


def smallest_side(unet: UNet) -> int:
    """The smallest height or width the network accepts: 2 ** depth."""
    return 2 ** unet.depth


def tracing_shape(unet: UNet) -> tuple[int, int, int, int]:
    """1 x 3 x H x W with H and W odd at every level (2 ** k - 1), H != W, so the trace records the
    decoder's padding and treats the two sides separately."""
    return 1, unet.in_channels, 2 ** (unet.depth + 1) - 1, 2 ** (unet.depth + 2) - 1


def export_onnx_bytes(unet: UNet, config: dict) -> bytes:
    """The ONNX file of a U-Net (in eval mode, on the CPU) with its configuration as metadata."""
    import onnx   # an optional dependency: the [onnx] extra

    model = ProbabilityUNet(unet.cpu().eval()).eval()
    example = torch.zeros(tracing_shape(unet))
    dynamic = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The trace sees Python-level shape checks (the decoder's `if dy or dx`): expected, see above.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    metadata = {"input_size": str(config.get("input_size", "")), "input_range": "[-1, 1]",
                "output": "probability (sigmoid of the U-Net's logit)",
                "smallest_side": str(smallest_side(unet)),
                "protocol": "resize the photo so its shorter side is input_size (bilinear), scale RGB to "
                            "[-1, 1] (x / 127.5 - 1), predict, resize the probability map back",
                "architecture": json.dumps(unet.architecture, sort_keys=True)}
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name = "gan-saliency export-onnx"
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


def export_model_folder(folder: str | Path, output: str | Path | None = None) -> Path:
    """Export the trained model in `folder` to `output` (default folder/unet.onnx), atomically."""
    unet, config = load_trained_model(folder)
    path = Path(output) if output is not None else Path(folder) / ONNX_NAME
    atomic_write_bytes(path, export_onnx_bytes(unet, config))
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None,
              help=f"Trained-model folder (unet.pt + unet.json). Default: the first of "
                   f"{', '.join(DEFAULT_MODEL_FOLDERS)} that holds a model.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help=f"ONNX file to write (default: MODEL/{ONNX_NAME}).")
def main(model: str | None, output: str | None) -> None:
    """Export the trained U-Net as ONNX: `image` (N x 3 x H x W float32 in [-1, 1]) -> `probability`
    (N x 1 x H x W in [0, 1], sigmoid included), with dynamic batch, height and width.

    Feed photos as evaluate-saliency does: shorter side resized to the model's input size (the
    file's `input_size` metadata), RGB scaled to [-1, 1]; resize the map back to the photo.
    Heights and widths from 2 ** depth up are accepted, multiples of 2 ** depth or not.
    """
    folder = Path(model) if model is not None else default_model_folder()
    if folder is None:
        raise click.ClickException(f"no trained model: none of {', '.join(DEFAULT_MODEL_FOLDERS)} holds "
                                   f"unet.pt + unet.json; run `dvc repro train` or pass --model")
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise click.ClickException("export-onnx needs the onnx package: pip install 'gan-saliency[onnx]'") from error
    try:
        path = export_model_folder(folder, output)
    except TrainedModelError as error:
        raise click.ClickException(f"{folder} is not a usable trained-model folder: {error}") from error
    click.echo(f"export-onnx: {folder} -> {path} ({path.stat().st_size} bytes; input `{INPUT_NAME}` "
               f"N x 3 x H x W in [-1, 1], output `{OUTPUT_NAME}` N x 1 x H x W in [0, 1])")


if __name__ == "__main__":
    main()
