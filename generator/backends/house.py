"""The house generator as a `Generator`: the project's own GAN, shipped inside the package.

`build_house_generator()` loads `generator/house/house_gan.pt` (or another weights file written
by `train-house-gan`) with `torch.load(..., weights_only=True)`.  The file names its architecture
(`generator.house.architectures`: v1, the 64 x 64 DCGAN, when it names none; v2, the 128 x 128
residual GAN, stored as float16 and loaded as float32), so exported weights of either kind drop
in with no code change.  The identity is `house@` plus
the weights file's digest, so retrained weights are never mistaken for the shipped ones.  The
bundled latent bank (the training photos encoded) is offered only with the weights it was
encoded by.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from generator.house import BANK_PATH, WEIGHTS_PATH
from generator.house.architectures import build_inference_networks, make_config
from generator.interface import Generator, GeneratorSpecError, digest_file
from generator.runs import load_torch_file

SUPPORTED_FORMAT_VERSIONS = {1, 2}


def _as_float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


class HouseGenerator(Generator):
    """The project's own GAN with an encoder, differentiable in PyTorch (v1 64 x 64, v2 128 x 128)."""

    name = "house"
    differentiable = True

    def __init__(self, weights: str | Path = WEIGHTS_PATH) -> None:
        super().__init__()
        self.weights_path = Path(weights)
        if not self.weights_path.is_file():
            raise GeneratorSpecError(f"house generator weights {self.weights_path} not found")
        try:
            payload = load_torch_file(self.weights_path)
            if not isinstance(payload, dict) or payload.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
                raise ValueError("no format_version this backend reads")
            self.architecture = payload.get("architecture") or "v1"
            self.config = make_config(self.architecture, payload["config"])
            self.generator_net, self.encoder_net = build_inference_networks(self.config)
            self.generator_net.load_state_dict(_as_float32(payload["generator"]))
            self.encoder_net.load_state_dict(_as_float32(payload["encoder"]))
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:   # and UnreadableTorchFile
            raise GeneratorSpecError(f"{self.weights_path} is not a house generator weights file: {error}") from error
        # frozen: gradients reach the latents (direction discovery), never the weights
        self.generator_net.eval().requires_grad_(False)
        self.encoder_net.eval().requires_grad_(False)
        # v2's thin 64-128 px layers run about 1.4x faster on a CPU in channels_last
        self.memory_format = torch.channels_last if self.architecture == "v2" else torch.contiguous_format
        self.generator_net.to(memory_format=self.memory_format)
        self.encoder_net.to(memory_format=self.memory_format)
        self.training_summary = dict(payload.get("training") or {})
        self._digest = digest_file(self.weights_path)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def has_encoder(self) -> bool:
        return True

    @property
    def bundled_latent_bank(self) -> Path | None:
        """The shipped bank, when it was encoded by exactly these weights (its index says so)."""
        bank = self.weights_path.parent / BANK_PATH.name
        index = bank.with_suffix(".json")
        if not (bank.is_file() and index.is_file()):
            return None
        try:
            recorded = json.loads(index.read_text()).get("generator")
        except (OSError, ValueError, AttributeError):
            return None
        return bank if recorded == self.identity else None

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        # callers get plain contiguous images whatever the layout inside
        return self.generator_net(z).contiguous()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        side = self.encoder_resolution
        if images.shape[-2:] != (side, side):
            # other sizes are resized (antialiased) to what the encoder was trained on
            images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return self.encoder_net(images.contiguous(memory_format=self.memory_format))

    def to(self, device: str | torch.device) -> "HouseGenerator":
        super().to(device)
        self.generator_net.to(self.device, memory_format=self.memory_format)
        self.encoder_net.to(self.device, memory_format=self.memory_format)
        return self


def build_house_generator(weights: str | Path | None = None) -> HouseGenerator:
    """Registry factory: the shipped weights by default, or a weights file from `train-house-gan`."""
    return HouseGenerator(WEIGHTS_PATH if weights is None else weights)
