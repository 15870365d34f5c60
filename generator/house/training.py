"""Training of the house GAN and its encoder, checkpoints, and export of the shipped files.

Two phases run in one process, for either architecture (`generator.house.architectures`):
1. GAN: the architecture's loss (v1: non-saturating logistic; v2: hinge), differentiable
   augmentation on both real and generated batches, horizontal flips of the photos, an
   exponential moving average (EMA) of the generator's weights (the EMA generator is the one
   shipped).  Alongside, the encoder learns to invert the EMA generator on (G(z), z) pairs, so any
   checkpoint can be exported.
2. Encoder: the generator frozen, the encoder refined with a latent loss on generated images plus
   image reconstruction losses on generated images and on the real photos.

The same code runs on a CPU and on a CUDA device.  On CUDA the photos stay in device memory as
uint8, every random stream lives on the device (no host round trip per step), forward passes may
run under bf16 autocast, networks use channels_last, and G and D may be compiled.  A wall-clock
budget (`time_budget_seconds`) ends each phase in time to export: the GAN phase gets all but
`encoder_share` of it, the export keeps `export_reserve_seconds`.

Checkpoints hold everything needed to resume (networks, optimisers, random states, step counts,
elapsed seconds) and the settings that shape training (`TrainSettings.resume_record`: seed, batch
size, learning rates, architecture); they are written atomically, read without unpickling, and a
run resumes only from a checkpoint of the same settings.  A first Ctrl-C stops the run after its
current step with a checkpoint saved (`TrainingInterrupted`).  `export_house_model` writes the
shipped files: weights (EMA generator + encoder state dicts and the architecture; v2 stores
float16), the latent bank of the training photos (when they came from a folder), a sample grid and
reconstructions.  The weights hold no wall-clock figure, so the same seed and settings give the
same bytes (on the same machine); the time a run took is in its log (`seconds`).
The module needs only torch at import; Pillow is needed for the PNGs, numpy for the bank.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from generator.house.architectures import architecture_of, build_networks, config_record
from generator.house.augment import diff_augment
from generator.house.model_layered import coverage_penalty, diversity_penalty
from generator.house.model_v2 import update_spectral_norms
from generator.house.model import HouseConfig
from generator.files import blocking_file
from generator.house.photos import as_unit_range, load_training_photos, photo_name
from generator.runs import UnreadableTorchFile, load_on_cpu, may_resume

WEIGHTS_FORMAT_VERSION = 1
HALF_WEIGHTS_FORMAT_VERSION = 2
BANK_FORMAT_VERSION = 1
WEIGHTS_NAME = "house_gan.pt"
BANK_NAME = "latent_bank.npy"
SAMPLES_NAME = "samples.png"
RECONSTRUCTIONS_NAME = "reconstructions.png"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
SETTINGS_NAME = "settings.json"
# layered generator: the share of the image its object may cover without penalty, the least
# variety of its colour layer (mean absolute change per unit of code change; two photos of DUTS-TR
# differ by about 0.5 a pixel, two codes by about 1.1 a coordinate) and the penalties' weights
# beside the generator's loss
COVERAGE_RANGE = (0.1, 0.4)
DIVERSITY_TARGET = 0.3
LAYER_PENALTY_WEIGHTS = {"coverage_penalty": 10.0, "diversity_penalty": 2.0}


@dataclass
class TrainSettings:
    """Everything that shapes a training run (the command line fills it)."""

    data: Path
    out: Path
    export_to: Path
    steps: int = 6000
    encoder_steps: int = 1500
    batch_size: int = 64
    seed: int = 0
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    lr_encoder: float = 1e-3
    adam_betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999
    discriminator_width: int = 48
    checkpoint_every: int = 250
    export_every: int = 1000
    log_every: int = 25
    config: HouseConfig = field(default_factory=HouseConfig)
    device: str = "cpu"
    bf16: bool = False                 # bf16 autocast of the forward passes (CUDA only)
    compile: bool = False              # torch.compile the generator and discriminator
    time_budget_seconds: float | None = None  # wall clock from the start of `train`, export included
    encoder_share: float = 0.15        # of the budget, for the encoder phase
    export_reserve_seconds: float = 20.0
    calibration_images: int = 4096     # generated images that measure the exported batch-norm statistics
    bank: bool = True                  # export the latent bank of the photos (needs numpy and a folder)

    @property
    def architecture(self) -> str:
        return architecture_of(self.config)

    def record(self) -> dict:
        """Every setting as plain JSON values (written beside the log)."""
        values = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "config"}
        return {**values, "architecture": self.architecture, "config": config_record(self.config)}

    def resume_record(self) -> dict:
        """The settings that shape training, stored in every checkpoint: a run continues only from a
        checkpoint of the same ones (step targets, time budget, device and logging may change)."""
        return {"architecture": {"name": self.architecture, **self.config.as_dict(),
                                 "discriminator_width": self.discriminator_width},
                "training": {"seed": self.seed, "batch_size": self.batch_size, "lr_generator": self.lr_generator,
                             "lr_discriminator": self.lr_discriminator, "lr_encoder": self.lr_encoder,
                             "adam_betas": [float(b) for b in self.adam_betas], "ema_decay": self.ema_decay}}


class TrainingState:
    """Networks, optimisers, random streams and counters of one run."""

    def __init__(self, settings: TrainSettings) -> None:
        config = settings.config
        self.device = torch.device(settings.device)
        torch.manual_seed(settings.seed)
        self.generator, self.discriminator, self.encoder = build_networks(config, settings.discriminator_width)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        for net in (self.generator, self.discriminator, self.encoder, self.ema_generator):
            net.to(self.device, memory_format=memory_format)
        betas = tuple(settings.adam_betas)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_generator = torch.optim.Adam(self.generator.parameters(), settings.lr_generator, betas=betas, **fused)
        self.opt_discriminator = torch.optim.Adam(self.discriminator.parameters(), settings.lr_discriminator,
                                                  betas=betas, **fused)
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), settings.lr_encoder, betas=(0.9, 0.999), **fused)
        # separate streams so that adding a loss term never changes which photos are drawn; on the
        # training device, so drawing never waits for a host-to-device copy
        self.data_rng = torch.Generator(self.device).manual_seed(settings.seed * 3 + 1)
        self.latent_rng = torch.Generator(self.device).manual_seed(settings.seed * 3 + 2)
        self.augment_rng = torch.Generator(self.device).manual_seed(settings.seed * 3 + 3)
        # compiled callables share the modules' parameters; state dicts stay those of the modules
        compiled = torch.compile if settings.compile else (lambda module: module)
        self.generator_forward = compiled(self.generator)
        self.discriminator_forward = compiled(self.discriminator)
        self.step = 0
        self.encoder_step = 0
        self.elapsed_seconds = 0.0

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "encoder": self.encoder.state_dict(), "ema_generator": self.ema_generator.state_dict(),
            "opt_generator": self.opt_generator.state_dict(),
            "opt_discriminator": self.opt_discriminator.state_dict(),
            "opt_encoder": self.opt_encoder.state_dict(),
            "data_rng": self.data_rng.get_state(), "latent_rng": self.latent_rng.get_state(),
            "augment_rng": self.augment_rng.get_state(),
            "step": self.step, "encoder_step": self.encoder_step, "elapsed_seconds": self.elapsed_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("generator", "discriminator", "encoder", "ema_generator", "opt_generator",
                     "opt_discriminator", "opt_encoder"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("data_rng", "latent_rng", "augment_rng"):
            getattr(self, name).set_state(state[name].cpu())
        self.step = int(state["step"])
        self.encoder_step = int(state["encoder_step"])
        self.elapsed_seconds = float(state["elapsed_seconds"])


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename, so a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A --resume file that is not a readable checkpoint of train-house-gan."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: `checkpoint` is the file to resume from (None when there is none),
    `saved` whether it holds the step the run stopped at."""

    def __init__(self, checkpoint: Path | None, saved: bool, step: int, encoder_step: int) -> None:
        self.checkpoint, self.saved, self.step, self.encoder_step = checkpoint, saved, step, encoder_step
        if saved:
            where = f"checkpoint saved at GAN step {step}, encoder step {encoder_step}: {checkpoint}"
        elif checkpoint is not None:
            where = f"stopped inside a step; the last checkpoint is kept: {checkpoint}"
        else:
            where = "stopped inside a step before any checkpoint; nothing to resume"
        super().__init__(f"training interrupted; {where}")


def save_checkpoint(state: TrainingState, settings: TrainSettings, path: Path) -> None:
    atomic_save({"architecture": settings.architecture, "config": settings.config.as_dict(),
                 "discriminator_width": settings.discriminator_width, "seed": settings.seed,
                 "record": settings.resume_record(), "state": state.state_dict()}, path)


def read_checkpoint(path: Path, settings: TrainSettings) -> dict:
    """A checkpoint's contents (on the CPU, never unpickled), checked against the settings.

    CheckpointError when the file cannot be read as a checkpoint; `RecordMismatch` (a ValueError)
    naming every setting that differs from the checkpoint's.  Nothing is written either way.
    """
    path = Path(path)
    try:
        payload = load_on_cpu(path)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {path} not found") from error
    except UnreadableTorchFile as error:
        raise CheckpointError(f"{path} is not a readable train-house-gan checkpoint: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise CheckpointError(f"{path} is not a train-house-gan checkpoint (no training state in it)")
    current = settings.resume_record()
    saved = payload.get("record")
    if saved is None:  # written before the record: its architecture and seed are what it has
        saved = {"architecture": {"name": payload.get("architecture") or "v1", **(payload.get("config") or {}),
                                  "discriminator_width": payload.get("discriminator_width")},
                 "training": {"seed": payload.get("seed")}}
        current = {"architecture": current["architecture"], "training": {"seed": current["training"]["seed"]}}
    may_resume(saved, current, what=f"checkpoint {path}",
               hint="Resume with the settings it was made with (the settings.json beside it lists them), "
                    "or start a new run in another --out.")
    return payload


def _resumed_state(payload: dict, settings: TrainSettings, path: Path) -> TrainingState:
    state = TrainingState(settings)
    try:
        state.load_state_dict(payload["state"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: its training state does not load ({type(error).__name__}: "
                              f"{(str(error).strip().splitlines() or [''])[0]})") from error
    return state


def load_checkpoint(path: Path, settings: TrainSettings) -> TrainingState:
    """Resume a run; refuses a checkpoint made with other settings (architecture, seed, batch size,
    learning rates), naming them, and a file that is not a checkpoint."""
    return _resumed_state(read_checkpoint(path, settings), settings, Path(path))


def read_training_log(path: Path) -> list[dict]:
    """The entries of a run's training log (LOG_NAME, one JSON object a line); ValueError naming
    the file and the line of a bad one."""
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not text: {error}") from error
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error}): {line[:80]!r}") from error
        if not isinstance(entry, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: {line[:80]!r}")
        entries.append(entry)
    return entries


def check_output_folder(path: Path, what: str, itself: bool = True) -> None:
    """Refuse, before any work, an output that cannot be written: a file at the folder's place or
    above it.  `itself` False checks only the folders above `path` (the output is a file)."""
    blocking = blocking_file(path, itself)
    if blocking is not None:
        raise ValueError(f"{what} {path} cannot be written: {blocking} is a file, not a folder")


def _real_batch(photos: torch.Tensor, size: int, rng: torch.Generator) -> torch.Tensor:
    """Random photos (drawn with replacement), half of them mirrored, as float in [-1, 1]."""
    index = torch.randint(0, photos.shape[0], (size,), generator=rng, device=rng.device).to(photos.device)
    batch = as_unit_range(photos[index])
    flip = (torch.rand(size, generator=rng, device=rng.device) < 0.5).to(batch.device)
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    return batch.contiguous(memory_format=torch.channels_last) if batch.is_cuda else batch


def _latents(state: TrainingState, size: int, latent_dim: int) -> torch.Tensor:
    return torch.randn(size, latent_dim, generator=state.latent_rng, device=state.latent_rng.device)


def _training_fakes(state: TrainingState, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generated images for the discriminator, and the layered generator's penalties (none for
    the other architectures): its objects are shifted at random, as its training wants."""
    layered = getattr(state.generator, "training_images", None)
    if layered is None:
        return state.generator_forward(z), {}
    images, (colour, alpha, _) = layered(z, state.augment_rng)
    object_codes = z[:, state.generator.config.background_dim:]
    return images, {"coverage_penalty": coverage_penalty(alpha.float(), *COVERAGE_RANGE),
                    "diversity_penalty": diversity_penalty(colour.float(), object_codes, DIVERSITY_TARGET)}


def _autocast(settings: TrainSettings):
    if settings.bf16 and torch.device(settings.device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _discriminator_losses(loss: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    if loss == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def _generator_loss(loss: str, fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean() if loss == "hinge" else F.softplus(-fake_scores).mean()


@torch.no_grad()
def _update_ema(state: TrainingState, decay: float) -> None:
    # short warm-up: early on the average would be dominated by the random initial weights
    decay = min(decay, (1 + state.step) / (10 + state.step))
    torch._foreach_lerp_(list(state.ema_generator.parameters()), list(state.generator.parameters()), 1 - decay)
    for ema, live in zip(state.ema_generator.buffers(), state.generator.buffers()):
        ema.copy_(live)


def gan_step(state: TrainingState, photos: torch.Tensor, settings: TrainSettings) -> dict[str, torch.Tensor]:
    """One discriminator and one generator update, EMA, one encoder update; losses as 0-d tensors
    (reading them forces a device sync, so the caller does it only when it logs)."""
    n, latent_dim = settings.batch_size, settings.config.latent_dim
    loss_kind = "hinge" if settings.architecture == "v2" else "logistic"
    update_spectral_norms(state.discriminator)  # outside the (possibly compiled) forward passes
    reals = _real_batch(photos, n, state.data_rng)
    with _autocast(settings):
        fakes, penalties = _training_fakes(state, _latents(state, n, latent_dim))
        real_scores = state.discriminator_forward(diff_augment(reals, state.augment_rng)).float()
        fake_scores = state.discriminator_forward(diff_augment(fakes.detach(), state.augment_rng)).float()
    loss_d = _discriminator_losses(loss_kind, real_scores, fake_scores)
    state.opt_discriminator.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_discriminator.step()

    with _autocast(settings):
        generated_scores = state.discriminator_forward(diff_augment(fakes, state.augment_rng)).float()
    loss_g = _generator_loss(loss_kind, generated_scores)
    state.opt_generator.zero_grad(set_to_none=True)
    (loss_g + sum(LAYER_PENALTY_WEIGHTS[name] * value for name, value in penalties.items())).backward()
    state.opt_generator.step()

    state.step += 1
    _update_ema(state, settings.ema_decay)

    z = _latents(state, n, latent_dim)
    with torch.no_grad(), _autocast(settings):
        targets = state.ema_generator.eval()(z)
    with _autocast(settings):
        codes = state.encoder(targets).float()
    loss_e = F.mse_loss(codes, z)
    state.opt_encoder.zero_grad(set_to_none=True)
    loss_e.backward()
    state.opt_encoder.step()
    losses = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "loss_e": loss_e.detach(),
              "real_score": real_scores.detach().mean(), "fake_score": fake_scores.detach().mean()}
    losses.update({name: value.detach() for name, value in penalties.items()})
    return losses


def encoder_step(state: TrainingState, photos: torch.Tensor, settings: TrainSettings) -> dict[str, torch.Tensor]:
    """Encoder refinement: latent loss on G(z), image loss on G(E(G(z))) and on G(E(photo))."""
    n, latent_dim = settings.batch_size, settings.config.latent_dim
    generator = state.ema_generator.eval()
    z = _latents(state, n, latent_dim)
    with torch.no_grad(), _autocast(settings):
        fakes = generator(z).float()
    reals = _real_batch(photos, n, state.data_rng)
    with _autocast(settings):
        codes = state.encoder(torch.cat([fakes, reals])).float()
        rendered = generator(codes).float()
    loss_latent = F.mse_loss(codes[:n], z)
    loss_fake_image = F.l1_loss(rendered[:n], fakes)
    loss_real_image = F.l1_loss(rendered[n:], reals)
    loss = loss_latent + loss_fake_image + loss_real_image
    state.opt_encoder.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_encoder.step()
    state.encoder_step += 1
    return {"loss_latent": loss_latent.detach(), "loss_fake_image": loss_fake_image.detach(),
            "loss_real_image": loss_real_image.detach()}


@torch.no_grad()
def recalibrated_generator(state: TrainingState, seed: int, images: int = 4096,
                           batch_size: int = 256) -> torch.nn.Module:
    """A CPU copy of the EMA generator whose batch-norm statistics are measured on its own outputs.

    The EMA weights are an average, so the live generator's running statistics do not fit them
    exactly; a cumulative average over fixed latents does, and makes the export deterministic.
    """
    generator = copy.deepcopy(state.ema_generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    generator.train()
    rng = torch.Generator().manual_seed(seed)
    batch_size = max(1, min(batch_size, images))
    for _ in range(max(1, -(-images // batch_size))):
        generator(torch.randn(batch_size, generator.latent_dim, generator=rng).to(state.device))
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return generator.to("cpu", memory_format=torch.contiguous_format).eval()


def _state_for_export(module: torch.nn.Module, half: bool) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu", memory_format=torch.contiguous_format).clone()
        state[key] = value.half() if half and value.is_floating_point() else value
    return state


def save_weights(generator: torch.nn.Module, encoder: torch.nn.Module, training: dict, path: Path) -> None:
    """The shipped weights: state dicts, the architecture and a training summary.

    v1 keeps its float32 format (version 1); v2 stores float16 tensors (version 2, half the
    bytes), which the backend loads back to float32.
    """
    architecture = architecture_of(generator.config)
    if architecture == "v1":
        payload = {"format_version": WEIGHTS_FORMAT_VERSION, "config": generator.config.as_dict(),
                   "generator": _state_for_export(generator, half=False),
                   "encoder": _state_for_export(encoder, half=False)}
    else:
        payload = {"format_version": HALF_WEIGHTS_FORMAT_VERSION, "architecture": architecture,
                   "config": generator.config.as_dict(), "dtype": "float16",
                   "generator": _state_for_export(generator, half=True),
                   "encoder": _state_for_export(encoder, half=True)}
    atomic_save({**payload, "training": training}, path)


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """N x 3 x H x W in [-1, 1] -> one H' x W' x 3 uint8 picture on white, 2-pixel gaps."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    gap = 2
    canvas = torch.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, dtype=torch.uint8)
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    for i, tile in enumerate(pixels):
        r, c = divmod(i, columns)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return canvas


def save_png(picture: torch.Tensor, path: Path) -> None:
    """An H x W x 3 uint8 tensor as a PNG file, written atomically (Pillow, no numpy)."""
    from PIL import Image

    from generator.house.pack import tensor_bytes

    height, width, _ = picture.shape
    image = Image.frombytes("RGB", (width, height), tensor_bytes(picture.to(torch.uint8)))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _write_bank(house, photos: torch.Tensor, settings: TrainSettings, files: list[Path], skipped: list[dict],
                folder: Path) -> None:
    """The latent bank (npy) of folder photos and its JSON index; photos from a pack have no files."""
    import numpy as np

    with torch.no_grad():
        codes = torch.cat([house.encode(as_unit_range(chunk).cpu()) for chunk in photos.split(256)])
    codes = codes.numpy().astype(np.float32)
    bank_path = folder / BANK_NAME
    tmp = bank_path.with_name(bank_path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, codes, allow_pickle=False)
    os.replace(tmp, bank_path)
    # paths from the data folder's grandparent keep the data set's name: MSRA1000/images/x.jpg
    _write_json({"format_version": BANK_FORMAT_VERSION, "generator": house.identity, "count": int(codes.shape[0]),
                 "files": [photo_name(p, settings.data) for p in files],
                 "skipped": [{"path": photo_name(s["path"], settings.data), "reason": s["reason"]} for s in skipped]},
                bank_path.with_suffix(".json"))


def export_house_model(state: TrainingState, settings: TrainSettings, photos: torch.Tensor,
                       files: list[Path], skipped: list[dict], finished: bool = True) -> Path:
    """Write weights, latent bank (+ JSON index), sample grid and reconstructions to `export_to`.

    The bank is written when `settings.bank` holds and the photos came from a folder (`files`);
    a pack's photos are encoded later with `embed-images` from the original files.  The weights'
    training summary says whether this is the run's final export (`finished`) or a periodic one,
    and holds no wall-clock time, so that the same run gives the same bytes.
    """
    from generator.backends.house import HouseGenerator  # the backend reads what we write

    folder = Path(settings.export_to)
    folder.mkdir(parents=True, exist_ok=True)
    generator = recalibrated_generator(state, seed=settings.seed, images=settings.calibration_images)
    encoder = copy.deepcopy(state.encoder).to("cpu", memory_format=torch.contiguous_format).eval()
    training = {"steps": state.step, "encoder_steps": state.encoder_step, "batch_size": settings.batch_size,
                "seed": settings.seed, "photos": int(photos.shape[0]), "data": Path(settings.data).name,
                "device": str(state.device), "finished": finished}
    weights_path = folder / WEIGHTS_NAME
    save_weights(generator, encoder, training, weights_path)

    house = HouseGenerator(weights_path)
    if settings.bank and files:
        _write_bank(house, photos, settings, files, skipped, folder)
    with torch.no_grad():
        samples = house.generate(torch.randn(64, house.latent_dim, generator=torch.Generator().manual_seed(0)))
        shown = as_unit_range(photos[:16]).cpu()
        if shown.shape[-1] != house.resolution:
            shown = F.interpolate(shown, size=(house.resolution, house.resolution), mode="bilinear",
                                  align_corners=False, antialias=True)
        recon = house.generate(house.encode(shown))
    save_png(image_grid(samples, columns=8), folder / SAMPLES_NAME)
    # rows alternate: 8 photos, their reconstructions G(E(photo)), 8 more photos, theirs
    pairs = torch.cat([shown[:8], recon[:8], shown[8:], recon[8:]])
    save_png(image_grid(pairs, columns=8), folder / RECONSTRUCTIONS_NAME)
    return weights_path


class _Clock:
    """Phase deadlines of a run with a wall-clock budget (None: no deadline)."""

    def __init__(self, settings: TrainSettings) -> None:
        self.start = time.monotonic()
        budget = settings.time_budget_seconds
        if budget is None:
            self.deadlines = {"gan": None, "encoder": None}
        else:
            usable = budget - settings.export_reserve_seconds
            self.deadlines = {"gan": self.start + usable * (1 - settings.encoder_share),
                              "encoder": self.start + usable}

    def out_of_time(self, phase: str) -> bool:
        deadline = self.deadlines[phase]
        return deadline is not None and time.monotonic() >= deadline


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _stop_after_the_step():
    """While training runs: the first Ctrl-C (SIGINT) asks the loop to stop after its current step,
    so the checkpoint it saves is exact; a second one stops at once.  Only in the main thread, and
    only when SIGINT has Python's default handler (nobody else has claimed it)."""
    asked = {"stop": False}
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield asked
        return

    def ask(signum, frame) -> None:
        if asked["stop"]:
            raise KeyboardInterrupt
        asked["stop"] = True
        sys.stderr.write("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again: stop at once)\n")

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def train(settings: TrainSettings, resume: Path | None = None,
          progress: Callable[[int, int, str, dict], None] | None = None,
          photos: tuple[torch.Tensor, list[Path], list[dict]] | None = None,
          command: list[str] | None = None) -> Path:
    """Run (or resume) both phases, checkpointing and exporting on the way; returns the weights path.

    `photos` (tensor, files, skipped) skips reading `settings.data` (a caller that already decoded it).
    `command`, the command line that started this run, goes into the settings file.

    Before anything is written: the output folders must be creatable, an `out` that holds a
    checkpoint needs `resume`, and a `resume` checkpoint must be readable and of the same settings
    (`read_checkpoint`).  Ctrl-C raises `TrainingInterrupted` after saving a checkpoint.
    """
    clock = _Clock(settings)
    out = Path(settings.out)
    check_output_folder(out, "--out")
    check_output_folder(settings.export_to, "--export-to")
    checkpoint_path = out / CHECKPOINT_NAME
    if resume is None and checkpoint_path.exists():
        raise ValueError(f"{out} already holds a checkpoint of an earlier run ({checkpoint_path}): continue it "
                         f"with --resume {checkpoint_path}, or give another --out (nothing was overwritten)")
    payload = read_checkpoint(resume, settings) if resume else None
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    if photos is None:
        photos = load_training_photos(settings.data, settings.config.resolution)
    images, files, skipped = photos
    images = images.to(device)
    state = _resumed_state(payload, settings, Path(resume)) if payload is not None else TrainingState(settings)
    del payload
    out.mkdir(parents=True, exist_ok=True)
    _write_json({**settings.record(), "photos": int(images.shape[0]), "torch": torch.__version__,
                 "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "resume": str(resume) if resume else None, "command": command}, out / SETTINGS_NAME)
    log = open(out / LOG_NAME, "a")
    inside_step = False
    try:
        with _stop_after_the_step() as asked:
            for phase, total, step_fn, counter in (("gan", settings.steps, gan_step, "step"),
                                                   ("encoder", settings.encoder_steps, encoder_step,
                                                    "encoder_step")):
                if phase == "gan":
                    state.generator.train()
                _synchronise(device)
                window_start, window_steps = time.perf_counter(), 0
                # the clock is read once per step, so the step that runs out of time is the one logged last
                out_of_time = clock.out_of_time(phase)
                while getattr(state, counter) < total and not out_of_time:
                    started = time.perf_counter()
                    inside_step = True
                    losses = step_fn(state, images, settings)
                    inside_step = False
                    done = getattr(state, counter)
                    window_steps += 1
                    out_of_time = clock.out_of_time(phase)
                    last = done == total or out_of_time
                    logging = done % settings.log_every == 0 or last
                    if logging or progress is not None:
                        losses = {k: float(v) for k, v in losses.items()}  # waits for the device
                    state.elapsed_seconds += time.perf_counter() - started
                    if progress is not None:
                        progress(done, total, phase, losses)
                    if logging:
                        _synchronise(device)
                        now = time.perf_counter()
                        rate = window_steps / max(now - window_start, 1e-9)
                        log.write(json.dumps({"phase": phase, "step": done,
                                              "seconds": round(state.elapsed_seconds, 1),
                                              "wall_seconds": round(time.monotonic() - clock.start, 1),
                                              "steps_per_second": round(rate, 3),
                                              "images_per_second": round(rate * settings.batch_size, 1),
                                              **{k: round(v, 4) for k, v in losses.items()}}) + "\n")
                        log.flush()
                        window_start, window_steps = now, 0
                    if done % settings.checkpoint_every == 0 or last:
                        save_checkpoint(state, settings, checkpoint_path)
                    if phase == "gan" and settings.export_every and done % settings.export_every == 0 and not last:
                        export_house_model(state, settings, images, files, skipped, finished=False)
                    if asked["stop"]:
                        raise KeyboardInterrupt
            save_checkpoint(state, settings, checkpoint_path)
            return export_house_model(state, settings, images, files, skipped, finished=True)
    except KeyboardInterrupt as error:
        # between steps the state is whole: save it; inside a step (a second Ctrl-C) it may not be
        if not inside_step:
            save_checkpoint(state, settings, checkpoint_path)
        kept = checkpoint_path if checkpoint_path.exists() else None
        raise TrainingInterrupted(kept, not inside_step, state.step, state.encoder_step) from error
    finally:
        log.close()
