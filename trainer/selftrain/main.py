"""`self-train`: fine-tune the synthetic-trained U-Net on unlabeled photos (the `selftrain` stage).

Reads the `selftrain` section of params.yaml; options given on the command line win over it.
"""

from __future__ import annotations

import os

# As train-unet: passive OpenMP threads leave the cores to peers on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from generator.params import load_params  # noqa: E402
from trainer.selftrain.config import LOSSES, ConfigError, SelfTrainConfig  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="Parameters file; its `selftrain` section holds the defaults of every option below.")
@click.option("--enabled/--disabled", default=None,
              help="--disabled only records that self-training is off (no model is written).")
@click.option("--photos", type=click.Path(file_okay=False),
              help="Folder of unlabeled photos (recursive: jpg, jpeg, png, bmp, tif, tiff, webp). Never a benchmark's.")
@click.option("--max-photos", type=click.IntRange(min=1), help="Use a seeded random subset of this many photos.")
@click.option("--model", type=click.Path(file_okay=False),
              help="The synthetic-trained model folder (unet.pt + unet.json): first labels and starting weights.")
@click.option("--input-size", type=click.IntRange(min=16), help="Square side photos are brought to (default: the model's).")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs per round (a resumed one-round run counts on to the new total).")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Rounds: each after the first starts with the model so far labelling every photo afresh.")
@click.option("--olr-lambda", type=click.FloatRange(0, 1),
              help="lambda of the label update G <- lambda G + (1 - lambda) Y after the warm-up; 1: no rectification.")
@click.option("--olr-warmup-epochs", type=click.IntRange(min=0), help="Warm-up: epochs during which the labels stay as they are; they move after each later epoch.")
@click.option("--loss", type=click.Choice(LOSSES), help="a2s: BCE + SSIM + IoU (A2S); bce: pixel-wise BCE.")
@click.option("--refine-labels/--no-refine-labels", default=None,
              help="Refine the first labels against each photo with the fast bilateral solver.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Photos per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam's learning rate (constant).")
@click.option("--seed", type=int, help="Seed of the photo subset, the data order and the flips.")
@click.option("--device", help="auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N [default: selftrain.device].")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--resume/--no-resume", default=None,
              help="Continue from the work folder's checkpoint when it was made with the same settings.")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Photo cache, labels and checkpoint.")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Where unet.pt and unet.json go.")
@click.option("--plots-dir", type=click.Path(file_okay=False),
              help="Where loss.csv, labels.csv, summary.json and pseudo_labels.png go.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(params_path: str, quiet: bool, **options) -> None:
    """Self-train the U-Net on unlabeled photos with online label rectification (A2S, stage 2).

    The synthetic-trained model labels every photo (G^1) and training starts from its weights;
    after each epoch j the labels move towards the model's own predictions:
    G^{j+1} = lambda G^j + (1 - lambda) Y^j, lambda = 1 for the warm-up epochs. With --rounds R,
    the last epoch of each round but the last ends with the model labelling every photo afresh
    (refined as G^1 is), and the next round's epochs fit those labels on the same schedule. Writes
    MODEL_DIR/unet.pt + unet.json (evaluate-saliency reads it like train-unet's model),
    PLOTS_DIR/loss.csv, labels.csv (how far the labels moved each epoch), summary.json and
    pseudo_labels.png; a killed run resumes from WORK_DIR exactly.
    """
    from generator.runs import FolderLocked
    from trainer.checkpoint import CheckpointError
    from trainer.export import TrainedModelError
    from trainer.selftrain.loop import self_train
    from trainer.selftrain.photos import PhotoFolderError

    try:
        if os.path.exists(params_path):
            section = load_params(params_path).get("selftrain") or {}
        elif params_path == "params.yaml":
            section = {}
        else:
            raise FileNotFoundError(f"parameters file {params_path} not found")
        config = SelfTrainConfig.from_section(section, **options)
        self_train(config, progress=not quiet)
    except (ConfigError, PhotoFolderError, TrainedModelError, CheckpointError, FileNotFoundError, ValueError,
            FolderLocked) as error:
        raise click.ClickException(str(error)) from error


if __name__ == "__main__":
    main()
