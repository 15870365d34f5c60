"""The trained-model files: `unet.pt` (a plain state dict) beside `unet.json` (how to rebuild it).

The JSON holds the architecture (`architecture`, `in_channels`, `base_channels`, `depth`,
`bilinear`), the input convention (`input_size`, `input_range`, `output`) and whatever training
facts the caller adds (steps, data manifest, ...).  Loading never unpickles: the weights are read
with `torch.load(..., weights_only=True)` and the JSON is plain data.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generator.files import atomic_write_bytes
from generator.runs import UnreadableTorchFile, load_torch_file
from trainer.unet import UNet

FORMAT_VERSION = 1
WEIGHTS_NAME = "unet.pt"
CONFIG_NAME = "unet.json"


class TrainedModelError(ValueError):
    """A model folder that cannot be loaded, with a message saying why."""


def serialized(state: dict[str, Any]) -> bytes:
    """`torch.save` bytes, made in memory: saved to a file, the archive's inner folder would take the
    (random) temporary file name, and the same weights would not give the same bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if hasattr(model, "module") else model


def save_trained_model(model: nn.Module, config: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """Write `folder/unet.pt` and `folder/unet.json`; return the JSON's content.

    The model's own architecture overrides same-named keys of `config`, so the file always
    describes the weights beside it.
    """
    model = unwrap(model)
    if not isinstance(model, UNet):
        raise TypeError(f"save_trained_model expects a trainer.unet.UNet, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format_version": FORMAT_VERSION, "input_range": [-1.0, 1.0], "output": "logits",
              **dict(config), **model.architecture}
    # Contiguous whatever the layout it trained in (channels_last on a GPU): the file is the same either way.
    state = {name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
             for name, tensor in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, serialized(state))
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return record


def load_trained_model(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Rebuild the U-Net saved in `folder`; returns (model in eval mode, its configuration)."""
    folder = Path(folder)
    weights_path, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for path in (weights_path, config_path):
        if not path.is_file():
            raise TrainedModelError(f"{path} not found: {folder} is not a trained-model folder")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainedModelError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        raise TrainedModelError(f"{config_path}: unknown format version "
                                f"{config.get('format_version') if isinstance(config, dict) else None!r}")
    try:
        model = UNet.from_architecture(config)
    except (KeyError, TypeError, ValueError) as error:
        raise TrainedModelError(f"{config_path} does not describe a U-Net: {error}") from error
    side = config.get("input_size")
    if not isinstance(side, int) or isinstance(side, bool) or side < 2 ** model.architecture["depth"]:
        raise TrainedModelError(f"{config_path}: input_size must be a whole number of at least "
                                f"2 ** depth = {2 ** model.architecture['depth']}, got {side!r}")
    model.load_state_dict(_read_weights(weights_path, model, map_location))
    return model.to(map_location).eval(), config


def _read_weights(path: Path, model: UNet, map_location) -> dict[str, torch.Tensor]:
    """The state dict in `path`, checked against `model`; a one-line reason when it cannot be used."""
    try:
        state = load_torch_file(path, map_location)
    except UnreadableTorchFile as error:
        raise TrainedModelError(f"cannot load weights {path}: {error}") from error
    if isinstance(state, dict) and {"model", "optimizer"} <= set(state):
        raise TrainedModelError(f"cannot load weights {path}: it is a training checkpoint, not a trained "
                                f"model; the model is the unet.pt train-unet writes to its model folder")
    expected = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise TrainedModelError(f"cannot load weights {path}: not a dict of tensors")
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    misshapen = [name for name in sorted(expected.keys() & state.keys()) if state[name].shape != expected[name].shape]
    if missing or unexpected or misshapen:
        example = (f"{misshapen[0]} is {tuple(state[misshapen[0]].shape)}, the U-Net's "
                   f"{tuple(expected[misshapen[0]].shape)}" if misshapen else (missing or unexpected)[0])
        raise TrainedModelError(f"cannot load weights {path}: they do not fit the U-Net its unet.json describes "
                                f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} of "
                                f"another shape; e.g. {example})")
    return state
