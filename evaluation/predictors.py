"""Predictors: callables mapping images N x 3 x H x W in [-1, 1] to probabilities N x H x W in [0, 1].

Every row of a report comes from a predictor run through the same inference protocol
(evaluation/inference.py): the trained U-Net, and the centre prior as the trivial baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

CENTRE_PRIOR_SIGMA = 0.25


class Predictor(Protocol):
    """What the inference protocol runs: a name for the report, an input size, and a forward map."""

    name: str
    #: the shorter side images are resized to before prediction
    input_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [-1, 1] -> N x H x W probabilities."""


def centre_prior_map(height: int, width: int, sigma: float = CENTRE_PRIOR_SIGMA) -> np.ndarray:
    """A Gaussian centred on the image, sigma = `sigma` of each side, 1 at the centre (float32 H x W)."""
    ys = ((np.arange(height) + 0.5) / height - 0.5) / sigma
    xs = ((np.arange(width) + 0.5) / width - 0.5) / sigma
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


class CentrePrior:
    """The baseline every report carries: a centred Gaussian, whatever the image shows."""

    name = "centre_prior"

    def __init__(self, input_size: int, sigma: float = CENTRE_PRIOR_SIGMA) -> None:
        self.input_size, self.sigma = int(input_size), float(sigma)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        prior = torch.from_numpy(centre_prior_map(height, width, self.sigma))
        return prior.expand(n, height, width).clone()

    def describe(self) -> dict:
        return {"name": self.name, "kind": "centre prior", "sigma": self.sigma, "input_size": self.input_size}


class UNetPredictor:
    """A trained U-Net (trainer/export.py's folder): sigmoid of its logits."""

    name = "model"

    def __init__(self, model: torch.nn.Module, config: dict, folder: str | Path | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.config = dict(config)
        self.folder = str(folder) if folder is not None else None
        self.device = torch.device(device)
        try:
            self.input_size = int(config["input_size"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the model's configuration has no usable input_size: {error}") from error

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> "UNetPredictor":
        """Load `unet.pt` + `unet.json` with the trainer's loader (weights only, never unpickled)."""
        from trainer.export import load_trained_model
        model, config = load_trained_model(folder, map_location=device)
        return cls(model, config, folder, device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images.to(self.device))
        return torch.sigmoid(logits[:, 0].float()).cpu()

    def describe(self) -> dict:
        """The model and what made it: the generator, the shard set and the direction behind its data
        (the `provenance` train-unet copies from the shards' manifest.json)."""
        keys = ("architecture", "base_channels", "depth", "bilinear", "input_size", "steps")
        provenance = self.config.get("provenance")
        provenance = provenance if isinstance(provenance, dict) else {}
        return {"name": self.name, "kind": "U-Net", "folder": self.folder,
                **{key: self.config[key] for key in keys if key in self.config},
                "generator": provenance.get("generator"),
                "shards": {"manifest_sha256": provenance.get("manifest_sha256"),
                           "config_digest": provenance.get("shards_config_digest")},
                "direction": provenance.get("direction")}
