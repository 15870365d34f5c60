"""The house GAN's architectures by name: each is a config class and its three networks.

`v1` is the 64 x 64 DCGAN (`generator.house.model`), `v2` the 128 x 128 BigGAN-style residual GAN
(`generator.house.model_v2`).  Training, export and the backend look an architecture up here, so
adding one never touches them.  A weights file or checkpoint without an architecture name is v1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from generator.house.model import HouseConfig, HouseDiscriminatorNet, HouseEncoderNet, HouseGeneratorNet
from generator.house.model_layered import HouseLayeredConfig, HouseLayeredGeneratorNet
from generator.house.model_v2 import HouseV2Config, HouseV2DiscriminatorNet, HouseV2EncoderNet, HouseV2GeneratorNet


@dataclass(frozen=True)
class Architecture:
    config: type
    generator: type[nn.Module]
    discriminator: type[nn.Module]
    encoder: type[nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "v1": Architecture(HouseConfig, HouseGeneratorNet, HouseDiscriminatorNet, HouseEncoderNet),
    "v2": Architecture(HouseV2Config, HouseV2GeneratorNet, HouseV2DiscriminatorNet, HouseV2EncoderNet),
    "layered": Architecture(HouseLayeredConfig, HouseLayeredGeneratorNet, HouseDiscriminatorNet, HouseEncoderNet),
}
DEFAULT_ARCHITECTURE = "v1"   # of a weights file or checkpoint that names none (written before v2)
SHIPPED_ARCHITECTURE = "layered"   # of the package's weights: what train-house-gan trains unless told

# per architecture: the training settings an option left out takes
ARCHITECTURE_DEFAULTS = {
    "v1": {"latent_dim": 64, "resolution": 64, "width": 32, "discriminator_width": 48, "batch_size": 64,
           "lr_generator": 2e-4, "lr_discriminator": 2e-4, "adam_betas": (0.5, 0.999)},
    # SAGAN's two time-scale rule for spectral norm + hinge with one D step per G step
    "v2": {"latent_dim": 128, "resolution": 128, "width": 8, "discriminator_width": 32, "batch_size": 64,
           "lr_generator": 1e-4, "lr_discriminator": 4e-4, "adam_betas": (0.0, 0.9)},
    "layered": {"latent_dim": 128, "resolution": 64, "width": 32, "discriminator_width": 48, "batch_size": 64,
                "lr_generator": 2e-4, "lr_discriminator": 2e-4, "adam_betas": (0.5, 0.999)},
}


#: the layered generator's background part of z (its first coordinates); z must be larger
LAYERED_BACKGROUND_DIM = HouseLayeredConfig.background_dim


def latent_dim_problem(architecture: str, latent_dim: int) -> str | None:
    """Why a size of z does not fit an architecture (for the option's error), None when it fits."""
    if architecture == "layered" and latent_dim <= LAYERED_BACKGROUND_DIM:
        return (f"{latent_dim} is too small for the layered architecture: its first {LAYERED_BACKGROUND_DIM} "
                f"coordinates draw the background and the rest the object; give more than {LAYERED_BACKGROUND_DIM}")
    if latent_dim < 1:
        return f"the size of z must be positive, got {latent_dim}"
    return None


def architecture_of(config: Any) -> str:
    """The name of the architecture a config object belongs to."""
    for name, architecture in ARCHITECTURES.items():
        if type(config) is architecture.config:
            return name
    raise ValueError(f"{type(config).__name__} is not the config of a house architecture")


def make_config(architecture: str | None, values: dict) -> Any:
    """Rebuild a config from its stored name and values; unknown names and fields raise ValueError."""
    name = architecture or DEFAULT_ARCHITECTURE
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown house architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[name].config(**values)
    except TypeError as error:
        raise ValueError(f"bad {name} architecture fields {values}: {error}") from error


def config_record(config: Any) -> dict:
    """A config as JSON-ready values with its architecture's name."""
    return {"architecture": architecture_of(config), **config.as_dict()}


def build_networks(config: Any, discriminator_width: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Generator, discriminator and encoder of the config's architecture, freshly initialised."""
    architecture = ARCHITECTURES[architecture_of(config)]
    return (architecture.generator(config), architecture.discriminator(config, discriminator_width),
            architecture.encoder(config))


def build_inference_networks(config: Any) -> tuple[nn.Module, nn.Module]:
    """Generator and encoder of the config's architecture (what a weights file holds)."""
    architecture = ARCHITECTURES[architecture_of(config)]
    return architecture.generator(config), architecture.encoder(config)
