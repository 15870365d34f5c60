"""Training of the house GAN and its encoder, checkpoints, and export of the shipped files.

Two phases run in one process:
1. GAN: non-saturating logistic loss, DCGAN discriminator, differentiable augmentation on both real and
   generated batches, horizontal flips of the photos, an exponential moving average (EMA) of the
   generator's weights (the EMA generator is the one shipped).  Alongside, the encoder learns to
   invert the EMA generator on (G(z), z) pairs, so any checkpoint can be exported.
2. Encoder: the generator frozen, the encoder refined with a latent loss on generated images plus
   image reconstruction losses on generated images and on the real photos.

Checkpoints hold everything needed to resume (networks, optimisers, random states, step counts,
elapsed seconds) and are written atomically.  `export_house_model` writes the shipped files:
weights (EMA generator + encoder state dicts and the architecture), the latent bank of the
training photos and a sample grid.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from generator.house.augment import diff_augment
from generator.house.model import HouseConfig, HouseDiscriminatorNet, HouseEncoderNet, HouseGeneratorNet
from generator.house.photos import load_photos

WEIGHTS_FORMAT_VERSION = 1
BANK_FORMAT_VERSION = 1
WEIGHTS_NAME = "house_gan.pt"
BANK_NAME = "latent_bank.npy"
SAMPLES_NAME = "samples.png"
RECONSTRUCTIONS_NAME = "reconstructions.png"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


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
    ema_decay: float = 0.999
    discriminator_width: int = 48
    checkpoint_every: int = 250
    export_every: int = 1000
    log_every: int = 25
    config: HouseConfig = field(default_factory=HouseConfig)


class TrainingState:
    """Networks, optimisers, random streams and counters of one run."""

    def __init__(self, settings: TrainSettings) -> None:
        config = settings.config
        torch.manual_seed(settings.seed)
        self.generator = HouseGeneratorNet(config)
        self.discriminator = HouseDiscriminatorNet(config, settings.discriminator_width)
        self.encoder = HouseEncoderNet(config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False)
        betas = (0.5, 0.999)
        self.opt_generator = torch.optim.Adam(self.generator.parameters(), settings.lr_generator, betas=betas)
        self.opt_discriminator = torch.optim.Adam(self.discriminator.parameters(), settings.lr_discriminator, betas=betas)
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), settings.lr_encoder, betas=(0.9, 0.999))
        # separate streams so that adding a loss term never changes which photos are drawn
        self.data_rng = torch.Generator().manual_seed(settings.seed * 3 + 1)
        self.latent_rng = torch.Generator().manual_seed(settings.seed * 3 + 2)
        self.augment_rng = torch.Generator().manual_seed(settings.seed * 3 + 3)
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
            getattr(self, name).set_state(state[name])
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


def save_checkpoint(state: TrainingState, settings: TrainSettings, path: Path) -> None:
    atomic_save({"config": settings.config.as_dict(), "discriminator_width": settings.discriminator_width,
                 "seed": settings.seed, "state": state.state_dict()}, path)


def load_checkpoint(path: Path, settings: TrainSettings) -> TrainingState:
    """Resume a run; refuses a checkpoint whose architecture differs from the settings'."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    found = {**payload.get("config", {}), "discriminator_width": payload.get("discriminator_width")}
    wanted = {**settings.config.as_dict(), "discriminator_width": settings.discriminator_width}
    if found != wanted:
        raise ValueError(f"checkpoint {path} has architecture {found}, not {wanted}")
    state = TrainingState(settings)
    state.load_state_dict(payload["state"])
    return state


def _real_batch(photos: torch.Tensor, size: int, rng: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, photos.shape[0], (size,), generator=rng)
    batch = photos[index]
    flip = torch.rand(size, generator=rng) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(3), batch)


def _latents(state: TrainingState, size: int, latent_dim: int) -> torch.Tensor:
    return torch.randn(size, latent_dim, generator=state.latent_rng)


@torch.no_grad()
def _update_ema(state: TrainingState, decay: float) -> None:
    # short warm-up: early on the average would be dominated by the random initial weights
    decay = min(decay, (1 + state.step) / (10 + state.step))
    for ema, live in zip(state.ema_generator.parameters(), state.generator.parameters()):
        ema.lerp_(live, 1 - decay)
    for ema, live in zip(state.ema_generator.buffers(), state.generator.buffers()):
        ema.copy_(live)


def gan_step(state: TrainingState, photos: torch.Tensor, settings: TrainSettings) -> dict[str, float]:
    """One discriminator and one generator update (non-saturating loss), EMA, one encoder update."""
    n, latent_dim = settings.batch_size, settings.config.latent_dim
    reals = _real_batch(photos, n, state.data_rng)
    fakes = state.generator(_latents(state, n, latent_dim))

    real_scores = state.discriminator(diff_augment(reals, state.augment_rng))
    fake_scores = state.discriminator(diff_augment(fakes.detach(), state.augment_rng))
    loss_d = F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    state.opt_discriminator.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_discriminator.step()

    loss_g = F.softplus(-state.discriminator(diff_augment(fakes, state.augment_rng))).mean()
    state.opt_generator.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_generator.step()

    state.step += 1
    _update_ema(state, settings.ema_decay)

    z = _latents(state, n, latent_dim)
    with torch.no_grad():
        targets = state.ema_generator.eval()(z)
    loss_e = F.mse_loss(state.encoder(targets), z)
    state.opt_encoder.zero_grad(set_to_none=True)
    loss_e.backward()
    state.opt_encoder.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "loss_e": loss_e.item(),
            "real_score": real_scores.mean().item(), "fake_score": fake_scores.mean().item()}


def encoder_step(state: TrainingState, photos: torch.Tensor, settings: TrainSettings) -> dict[str, float]:
    """Encoder refinement: latent loss on G(z), image loss on G(E(G(z))) and on G(E(photo))."""
    n, latent_dim = settings.batch_size, settings.config.latent_dim
    generator = state.ema_generator.eval()
    z = _latents(state, n, latent_dim)
    with torch.no_grad():
        fakes = generator(z)
    reals = _real_batch(photos, n, state.data_rng)
    codes = state.encoder(torch.cat([fakes, reals]))
    rendered = generator(codes)
    loss_latent = F.mse_loss(codes[:n], z)
    loss_fake_image = F.l1_loss(rendered[:n], fakes)
    loss_real_image = F.l1_loss(rendered[n:], reals)
    loss = loss_latent + loss_fake_image + loss_real_image
    state.opt_encoder.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_encoder.step()
    state.encoder_step += 1
    return {"loss_latent": loss_latent.item(), "loss_fake_image": loss_fake_image.item(),
            "loss_real_image": loss_real_image.item()}


@torch.no_grad()
def recalibrated_generator(state: TrainingState, seed: int, batches: int = 16, batch_size: int = 256) -> HouseGeneratorNet:
    """A copy of the EMA generator whose batch-norm statistics are measured on its own outputs.

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
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.latent_dim, generator=rng))
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return generator.eval()


def save_weights(generator: HouseGeneratorNet, encoder: HouseEncoderNet, training: dict, path: Path) -> None:
    """The shipped weights: float32 state dicts, the architecture and a training summary."""
    atomic_save({
        "format_version": WEIGHTS_FORMAT_VERSION,
        "config": generator.config.as_dict(),
        "generator": {k: v.detach().clone() for k, v in generator.state_dict().items()},
        "encoder": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
        "training": training,
    }, path)


def image_grid(images: torch.Tensor, columns: int) -> Image.Image:
    """N x 3 x H x W in [-1, 1] -> one PNG-ready image, 2-pixel gaps."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    gap = 2
    canvas = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, np.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, tile in enumerate(pixels):
        r, c = divmod(i, columns)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return Image.fromarray(canvas)


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def export_house_model(state: TrainingState, settings: TrainSettings, photos: torch.Tensor,
                       files: list[Path], skipped: list[dict]) -> Path:
    """Write weights, latent bank (+ JSON index), sample grid and reconstructions to `export_to`."""
    from generator.backends.house import HouseGenerator  # the backend reads what we write

    folder = Path(settings.export_to)
    folder.mkdir(parents=True, exist_ok=True)
    generator = recalibrated_generator(state, seed=settings.seed)
    encoder = copy.deepcopy(state.encoder).eval()
    training = {"steps": state.step, "encoder_steps": state.encoder_step, "batch_size": settings.batch_size,
                "seed": settings.seed, "train_seconds": round(state.elapsed_seconds, 1),
                "photos": len(files), "data": Path(settings.data).name}
    weights_path = folder / WEIGHTS_NAME
    save_weights(generator, encoder, training, weights_path)

    house = HouseGenerator(weights_path)
    with torch.no_grad():
        codes = torch.cat([house.encode(chunk) for chunk in photos.split(256)]).numpy().astype(np.float32)
        samples = house.generate(torch.randn(64, house.latent_dim, generator=torch.Generator().manual_seed(0)))
        shown = photos[:16]
        recon = house.generate(house.encode(shown))
    bank_path = folder / BANK_NAME
    tmp = bank_path.with_name(bank_path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, codes, allow_pickle=False)
    os.replace(tmp, bank_path)
    # paths from the data folder's grandparent keep the data set's name: MSRA1000/images/x.jpg
    data_root = Path(settings.data).resolve().parent.parent
    _write_json({"format_version": BANK_FORMAT_VERSION, "generator": house.identity, "count": int(codes.shape[0]),
                 "files": [str(p.resolve().relative_to(data_root)) for p in files],
                 "skipped": [{"path": str(Path(s["path"]).resolve().relative_to(data_root)), "reason": s["reason"]}
                             for s in skipped]},
                bank_path.with_suffix(".json"))
    _save_png(image_grid(samples, columns=8), folder / SAMPLES_NAME)
    # rows alternate: 8 photos, their reconstructions G(E(photo)), 8 more photos, theirs
    pairs = torch.cat([shown[:8], recon[:8], shown[8:], recon[8:]])
    _save_png(image_grid(pairs, columns=8), folder / RECONSTRUCTIONS_NAME)
    return weights_path


def train(settings: TrainSettings, resume: Path | None = None,
          progress: Callable[[int, int, str, dict], None] | None = None) -> Path:
    """Run (or resume) both phases, checkpointing and exporting on the way; returns the weights path."""
    torch.manual_seed(settings.seed)
    photos, files, skipped = load_photos(settings.data, settings.config.resolution)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(resume, settings) if resume else TrainingState(settings)
    checkpoint_path = out / CHECKPOINT_NAME
    log = open(out / LOG_NAME, "a")
    try:
        for phase, total, step_fn, counter in (("gan", settings.steps, gan_step, "step"),
                                               ("encoder", settings.encoder_steps, encoder_step, "encoder_step")):
            if phase == "gan":
                state.generator.train()
            while getattr(state, counter) < total:
                started = time.perf_counter()
                losses = step_fn(state, photos, settings)
                state.elapsed_seconds += time.perf_counter() - started
                done = getattr(state, counter)
                if progress is not None:
                    progress(done, total, phase, losses)
                if done % settings.log_every == 0 or done == total:
                    log.write(json.dumps({"phase": phase, "step": done, "seconds": round(state.elapsed_seconds, 1),
                                          **{k: round(v, 4) for k, v in losses.items()}}) + "\n")
                    log.flush()
                if done % settings.checkpoint_every == 0 or done == total:
                    save_checkpoint(state, settings, checkpoint_path)
                if phase == "gan" and settings.export_every and done % settings.export_every == 0 and done < total:
                    export_house_model(state, settings, photos, files, skipped)
        save_checkpoint(state, settings, checkpoint_path)
        return export_house_model(state, settings, photos, files, skipped)
    finally:
        log.close()
