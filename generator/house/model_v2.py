"""Networks of the house GAN v2: a light BigGAN-style residual GAN with an encoder, 128 x 128.

Why this design, for about 10,000 photos and about nine minutes of one GPU:
- BigGAN's parts are the ones whose latent space is known to separate object from background
  (BigBiGAN is a BigGAN), and each is cheap: residual up-sampling blocks whose batch norm gains
  and biases are linear functions of z (the unconditional form of conditional batch norm, so every
  block is steered by the latent, as in BigGAN's hierarchical z), a spectrally normalised
  residual discriminator and the hinge loss.  None needs a second backward pass (no R1 or path
  length penalty), so a step is a few large convolutions that bf16 and channels_last run fast.
- DiffAugment (colour, translation, cutout; `generator.house.augment`) keeps the discriminator
  from memorising 10k photos; an exponential moving average of G is what ships.
- FastGAN trains fast too, but its skip-layer excitation and decoder-equipped discriminator cost
  more per image at 128 px, and a StyleGAN2 needs R1 and path-length regularisation (double
  backward) and a mapping network: both spend the short budget on machinery instead of steps.
- The forward pass must stay cheap on a laptop CPU (>= 150 images/s at batch 32 on 2 threads):
  channels halve at each doubling of the side; residual blocks run only up to `residual_up_to`
  px (16: layout and objects are decided there, where they are cheap), light transposed
  convolutions do the finer doublings, and the last one makes RGB at full size directly (thin
  full-size feature maps cost a CPU more than everything else).  Full residual blocks at every
  side with the same channel rule were 3-7 times too slow on the project machine.

The encoder mirrors the discriminator's residual down-sampling stack (group norm instead of
spectral norm, so an image's code never depends on its batch-mates) and ends in a linear map
to z; it is trained to invert the EMA generator (`generator.house.training`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generator.house.model import SEED_SIDE, check_side, doublings_to

ARCHITECTURE = "v2"


@dataclass(frozen=True)
class HouseV2Config:
    """Architecture of the v2 networks; stored beside the weights so they can be rebuilt."""

    latent_dim: int = 128
    resolution: int = 128
    width: int = 8
    max_channels: int = 256
    residual_up_to: int = 16
    encoder_width: int = 8

    def __post_init__(self) -> None:
        check_side("resolution", self.resolution)
        for name in ("latent_dim", "width", "max_channels", "residual_up_to", "encoder_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def architecture(self) -> str:
        return ARCHITECTURE

    @property
    def doublings(self) -> int:
        return doublings_to(self.resolution)

    def as_dict(self) -> dict:
        return asdict(self)


def _channels(width: int, max_channels: int, doublings: int) -> list[int]:
    """Channels at sides 4, 8, ..., R: `width` at R, doubling towards 4 x 4, capped.

    The generator has no R x R feature map (its last layer makes RGB), so its finest hidden
    layer, at R / 2, has `2 * width` channels.
    """
    return [min(width * 2 ** (doublings - i), max_channels) for i in range(doublings + 1)]


class LatentBatchNorm(nn.Module):
    """Batch norm whose per-channel gain and bias are linear functions of z (BigGAN's CBN, no class)."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(latent_dim, channels)
        self.bias = nn.Linear(latent_dim, channels)
        # start as plain batch norm (gain 1, bias 0) so early training is a standard BN network
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gain, bias = 1 + self.gain(z), self.bias(z)
        if self.training:
            return self.norm(x) * gain[:, :, None, None] + bias[:, :, None, None]
        # inference: the running statistics fold into one scale and shift, a single pass over x
        scale = gain * torch.rsqrt(self.norm.running_var + self.norm.eps)
        shift = bias - self.norm.running_mean * scale
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])


class GeneratorBlock(nn.Module):
    """BigGAN up block: CBN-ReLU-up-conv3-CBN-ReLU-conv3, plus up-conv1 on the shortcut."""

    def __init__(self, c_in: int, c_out: int, latent_dim: int) -> None:
        super().__init__()
        self.norm1 = LatentBatchNorm(c_in, latent_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = LatentBatchNorm(c_out, latent_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, z)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), z)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class LightUpLayer(nn.Module):
    """DCGAN up layer for the fine sides: transposed 4 x 4 convolution, latent batch norm, ReLU.

    At 64 and 128 px a residual block would cost most of the forward pass for texture detail;
    one transposed convolution does the doubling at a third of the cost.
    """

    def __init__(self, c_in: int, c_out: int, latent_dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
        self.norm = LatentBatchNorm(c_out, latent_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x), z))


class HouseV2GeneratorNet(nn.Module):
    """z (N x latent_dim) -> images N x 3 x R x R in [-1, 1].

    Residual BigGAN blocks up to `residual_up_to` px (where layout and objects are decided),
    light transposed-convolution layers above it, and a last transposed convolution straight to
    RGB at R x R (no R x R feature map: thin full-size maps cost a CPU more than all the rest).
    """

    def __init__(self, config: HouseV2Config) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.resolution = config.resolution
        channels = _channels(config.width, config.max_channels, config.doublings)[:-1]  # sides 4 .. R/2
        self.seed = nn.Linear(config.latent_dim, channels[0] * SEED_SIDE ** 2)
        self.blocks = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            side = SEED_SIDE * 2 ** (i + 1)
            layer = GeneratorBlock if side <= config.residual_up_to else LightUpLayer
            self.blocks.append(layer(c_in, c_out, config.latent_dim))
        # a light layer ends in norm and ReLU already; a residual block's sum does not
        ends_light = bool(self.blocks) and isinstance(self.blocks[-1], LightUpLayer)
        self.out_activation = nn.Identity() if ends_light else nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU())
        self.to_rgb = nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.seed(z).view(z.shape[0], -1, SEED_SIDE, SEED_SIDE)
        for block in self.blocks:
            x = block(x, z)
        return torch.tanh(self.to_rgb(self.out_activation(x)))


class SpectralNorm(nn.Module):
    """A convolution or linear layer whose weight is divided by its largest singular value.

    The estimate comes from power iteration (Miyato et al.), as in torch's own spectral norm,
    with two differences: the singular value is computed in float32 with autocast off (under bf16
    autocast torch's version mixes a bf16 matrix-vector product with float32 vectors), and the
    forward pass only reads the singular vectors; `power_iteration` (once per training step, see
    `update_spectral_norms`) refines them.  A forward that updated them in place would break the
    backward of the previous forward in the same step when compiled (torch.compile saves the
    vectors themselves for the backward).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.layer = layer
        rows, columns = layer.weight.shape[0], layer.weight[0].numel()
        self.register_buffer("u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(columns), dim=0))

    @torch.no_grad()
    def power_iteration(self) -> None:
        matrix = self.layer.weight.float().flatten(1)
        self.v.copy_(F.normalize(matrix.t().mv(self.u), dim=0, eps=1e-12))
        self.u.copy_(F.normalize(matrix.mv(self.v), dim=0, eps=1e-12))

    def normalised_weight(self) -> torch.Tensor:
        weight = self.layer.weight
        with torch.autocast(weight.device.type, enabled=False):
            sigma = torch.dot(self.u, weight.float().flatten(1).mv(self.v))
        return weight / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.normalised_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


def update_spectral_norms(network: nn.Module) -> None:
    """One power iteration for every spectrally normalised layer of a network (once per step)."""
    for module in network.modules():
        if isinstance(module, SpectralNorm):
            module.power_iteration()


def spectral_norm(layer: nn.Conv2d | nn.Linear) -> SpectralNorm:
    return SpectralNorm(layer)


class DownBlock(nn.Module):
    """Residual down block: (ReLU)-conv3-ReLU-conv3-avgpool, plus conv1-avgpool on the shortcut.

    `first` skips the leading ReLU (its input is the image); `norm` is "spectral" (discriminator)
    or "group" (encoder).
    """

    def __init__(self, c_in: int, c_out: int, norm: str, first: bool = False) -> None:
        super().__init__()
        self.first = first
        wrap = spectral_norm if norm == "spectral" else (lambda layer: layer)
        self.conv1 = wrap(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = wrap(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = wrap(nn.Conv2d(c_in, c_out, 1))
        self.norm = nn.GroupNorm(_groups(c_out), c_out) if norm == "group" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.norm(self.conv1(h))))
        return F.avg_pool2d(h, 2) + self.shortcut(F.avg_pool2d(x, 2))


class LightDownLayer(nn.Module):
    """Strided 4 x 4 convolution and leaky ReLU (normalised as the stack asks): the fine sides' layer."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d(c_in, c_out, 4, 2, 1)
        self.conv = spectral_norm(conv) if norm == "spectral" else conv
        self.norm = nn.GroupNorm(_groups(c_out), c_out) if norm == "group" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


def _down_stack(config: HouseV2Config, width: int, norm: str) -> tuple[nn.Sequential, int]:
    """From R x R to 4 x 4: light strided layers above `residual_up_to` px, residual blocks below.

    Channels: `2 * width` after the first halving, doubling at each halving, capped.
    """
    channels = list(reversed(_channels(width, config.max_channels, config.doublings)))  # e.g. 8 .. 256
    channels[0] = 3
    blocks: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        side = config.resolution // 2 ** i  # the side this layer halves
        if side > config.residual_up_to:
            blocks.append(LightDownLayer(c_in, c_out, norm))
        else:
            blocks.append(DownBlock(c_in, c_out, norm, first=not blocks))
    return nn.Sequential(*blocks), channels[-1]


class HouseV2DiscriminatorNet(nn.Module):
    """Images -> one logit per image; spectral norm everywhere, sum-pooled features, linear head."""

    def __init__(self, config: HouseV2Config, width: int = 32) -> None:
        super().__init__()
        self.features, channels = _down_stack(config, width, norm="spectral")
        self.head = spectral_norm(nn.Linear(channels, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.features(images)).sum(dim=(2, 3))
        return self.head(features).squeeze(1)


class HouseV2EncoderNet(nn.Module):
    """Images N x 3 x R x R in [-1, 1] -> latents N x latent_dim (inverts the generator)."""

    def __init__(self, config: HouseV2Config) -> None:
        super().__init__()
        self.config = config
        self.features, channels = _down_stack(config, config.encoder_width, norm="group")
        # The residual stack's output has no norm of its own: early in training, while G's images
        # still say little about z, the best guess is the mean code, and Adam drove every feature
        # below zero within a hundred steps, where a ReLU passes no gradient ever again (the
        # encoder's codes were then one constant).  A group norm keeps the features centred and a
        # leaky ReLU keeps a gradient.
        self.out_norm = nn.GroupNorm(_groups(channels), channels)
        self.head = nn.Linear(channels * SEED_SIDE ** 2, config.latent_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.leaky_relu(self.out_norm(self.features(images)), 0.2).flatten(1))
