"""`train-unet`: train the saliency U-Net on synthetic shards (the pipeline's `train` stage).

Reads the `train` section of params.yaml; options given on the command line win over it.
Several processes or GPUs: `torchrun --nproc_per_node N $(which train-unet) ...`.
"""

from __future__ import annotations

import os

# Set before torch loads OpenMP.  On a CPU shared with loader workers or other jobs, spinning
# OpenMP threads burn the core a descheduled peer needs: at the demo's settings on a busy 2-core
# machine, 2 threads took 2.6 s per step spinning and 0.47 s waiting passively.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from generator.params import load_params  # noqa: E402
from trainer.checkpoint import CheckpointError  # noqa: E402
from trainer.config import PAPER_SCHEDULE, ConfigError, TrainConfig  # noqa: E402
from trainer.decode import ShardFormatError  # noqa: E402

_PAPER = ", ".join(f"{key} {value}" for key, value in PAPER_SCHEDULE.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file; its `train` section holds the defaults of every option below.")
@click.option("--shards", help="Shard folder, brace pattern (synth-{000000..000009}.tar), http(s):// or pipe: "
                               "URL (a bucket: 'pipe:aws s3 cp s3://bucket/set/synth-{000000..000099}.tar -'). "
                               "Default: train.shards.")
@click.option("--holdout-shards", type=click.IntRange(min=0),
              help="How many shards (the last by name) to hold out for validation; never trained on.")
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps in total (a resumed run counts on).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step, summed over all processes.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam's learning rate.")
@click.option("--lr-decay-step", type=click.IntRange(min=1), help="Step at which lr is multiplied by the factor.")
@click.option("--lr-decay-factor", type=click.FloatRange(min=0, min_open=True), help="The lr decay factor.")
@click.option("--base-channels", type=click.IntRange(min=2), help="U-Net width at full resolution (paper: 64).")
@click.option("--input-size", type=click.IntRange(min=2),
              help="Side the images are resized to; default: the shards' own image size.")
@click.option("--augment/--no-augment", default=None,
              help="Mirror pairs and vary colour, blur and grain of the images (trainer/augment.py), so the "
                   "U-Net cannot lean on the generator's colours and textures.")
@click.option("--num-workers", type=click.IntRange(min=0), help="Loader processes per training process.")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="Train through torch.compile (default: train.compile). It needs a C++ compiler and spends "
                   "a minute or more compiling first; it can pay on a GPU, rarely on a CPU "
                   "(benchmarks/bench_scale.py times both).")
@click.option("--seed", type=int, help="Seed of the weights' initialisation and of the data order.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads per process (default: torch's).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Steps between checkpoints.")
@click.option("--resume/--no-resume", default=None,
              help="Continue from the checkpoint in train.checkpoint_dir (default: train.resume). A checkpoint "
                   "made with settings that shape the weights differently stops the run, naming them, and is "
                   "kept (one of a finished run is replaced); --no-resume trains from the start and replaces it.")
@click.option("--paper-schedule", is_flag=True,
              help=f"Use the published schedule and width ({_PAPER}); other options still win.")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Where unet.pt and unet.json go.")
@click.option("--plots-dir", type=click.Path(file_okay=False), help="Where the curves and summary.json go.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Where checkpoints go.")
@click.option("--device", help="auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N; under torchrun "
                                "auto and cuda mean cuda:LOCAL_RANK. Default: train.device.")
@click.option("--manifest/--no-manifest", default=None,
              help="Read a shard folder through its manifest.json: train on exactly the shards it lists and "
                   "refuse a folder without one or with tars it does not list (default: train.manifest). "
                   "--no-manifest takes the folder's *.tar as they are, for shards made elsewhere.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--preview", "preview_path", type=click.Path(dir_okay=False),
              help="Train nothing: write a PNG contact sheet of the pairs the first step trains on (image, mask, "
                   "overlay), augmented as the run would augment them, and exit. It shows a single-process run's "
                   "step 0 on a CPU (under torchrun each rank takes its share; a GPU draws other grain).")
def main(params_path: str, paper_schedule: bool, quiet: bool, preview_path: str | None, compile_model: bool | None,
         **options) -> None:
    """Train the U-Net on (image, mask) shards with pixel-wise BCE and Adam, streaming them with WebDataset.

    Writes MODEL_DIR/unet.pt and unet.json (rebuild with trainer.export.load_trained_model),
    PLOTS_DIR/train_loss.csv, val.csv and summary.json, and a checkpoint every
    --checkpoint-every steps from which an interrupted run resumes exactly.
    """
    from generator.runs import FolderLocked
    from trainer.loop import train  # torch and the data stack load after --help

    try:
        section = load_params(params_path).get("train") or {}
        config = TrainConfig.from_section(section)
        if paper_schedule:
            config = config.with_paper_schedule()
        config = TrainConfig.from_section(config.as_dict(), compile=compile_model, **options)
        if preview_path:
            from trainer.preview import write_training_preview
            shown = write_training_preview(config, preview_path)
            click.echo(f"wrote {preview_path}: the first {shown} pairs of step 0 "
                       f"({'augmented' if config.augment else 'not augmented'}) from {config.shards}")
            return
        train(config, progress=not quiet)
    except (ConfigError, ShardFormatError, CheckpointError, FileNotFoundError, ValueError, FolderLocked) as error:
        raise click.ClickException(str(error)) from error
    except RuntimeError as error:
        if not _compilation_failed(error):
            raise
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise click.ClickException(f"torch.compile failed: {reason}\n"
                                   f"Train without it: --no-compile (train.compile: false).") from error


def _compilation_failed(error: BaseException) -> bool:
    """Whether `error` is torch.compile's own (no C++ compiler, an unsupported operation)."""
    from torch._dynamo.exc import TorchDynamoException
    return isinstance(error, TorchDynamoException)


if __name__ == "__main__":
    main()
