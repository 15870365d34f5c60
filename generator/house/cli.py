"""`train-house-gan`: train the house generator and its encoder on a folder of photos."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

from generator.house import PACKAGE_DIR
from generator.house.model import HouseConfig
from generator.house.training import CHECKPOINT_NAME, LOG_NAME, TrainSettings, train


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of unlabeled photos to train on (e.g. ../shared/datasets/MSRA1000/images). "
                   "Never a benchmark used for evaluation.")
@click.option("--out", type=click.Path(file_okay=False), default="data/house_gan", show_default=True,
              help=f"Folder for the resumable checkpoint ({CHECKPOINT_NAME}) and the loss log ({LOG_NAME}).")
@click.option("--export-to", type=click.Path(file_okay=False), default=None,
              help="Folder for the shipped files (house_gan.pt, latent_bank.npy/.json, samples.png, "
                   f"reconstructions.png); default: --out. The package's own copy is {PACKAGE_DIR}.")
@click.option("--steps", type=click.IntRange(min=0), default=6000, show_default=True,
              help="GAN steps (one discriminator and one generator update each) in total, resumed runs included.")
@click.option("--encoder-steps", type=click.IntRange(min=0), default=1500, show_default=True,
              help="Encoder refinement steps after the GAN phase (generator frozen).")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True,
              help="Photos and generated images per step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, the photo draws, the augmentation and the latents.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=64, show_default=True, help="Size of z.")
@click.option("--resolution", type=click.Choice(["16", "32", "64", "128"]), default="64", show_default=True,
              help="Side of the generated images; the photos are resized (shorter side) and centre-cropped to it.")
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True,
              help="Channels of the last hidden generator layer (doubled at each coarser layer).")
@click.option("--discriminator-width", type=click.IntRange(min=1), default=48, show_default=True,
              help="Channels of the discriminator's first layer (doubled at each coarser layer).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True,
              help="Write the resumable checkpoint every this many steps (atomically).")
@click.option("--export-every", type=click.IntRange(min=0), default=1000, show_default=True,
              help="During the GAN phase, also export usable weights, bank and samples every this many "
                   "steps (0: only at the end).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Continue from this checkpoint (same architecture options) up to --steps / --encoder-steps.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: torch's choice).")
def main(data, out, export_to, steps, encoder_steps, batch_size, seed, latent_dim, resolution, width,
         discriminator_width, checkpoint_every, export_every, resume, threads) -> None:
    """Train the house GAN (DCGAN, differentiable augmentation, EMA of the generator's weights)
    and an encoder that inverts it, then export the weights, the latent bank of the photos and
    a sample grid.

    Interrupt at any time and continue with --resume OUT/checkpoint.pt.
    """
    if threads:
        torch.set_num_threads(threads)
    try:
        config = HouseConfig(latent_dim=latent_dim, resolution=int(resolution), width=width)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    settings = TrainSettings(data=Path(data), out=Path(out), export_to=Path(export_to or out), steps=steps,
                             encoder_steps=encoder_steps, batch_size=batch_size, seed=seed,
                             checkpoint_every=checkpoint_every, export_every=export_every,
                             discriminator_width=discriminator_width, config=config)
    bars: dict[str, tqdm] = {}

    def progress(done: int, total: int, phase: str, losses: dict) -> None:
        if phase not in bars:
            bars[phase] = tqdm(total=total, initial=done - 1, desc=phase, unit="step", dynamic_ncols=True)
        bar = bars[phase]
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

    try:
        weights = train(settings, resume=Path(resume) if resume else None, progress=progress)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"weights: {weights}")
