"""Which trained-model folder a command uses when none is named.

The pipeline may hold more than one model; the best one available comes first.  A folder counts
when it holds a model file (trainer/export.py's `unet.pt` beside `unet.json`).  Adding a stage
that writes a better model means adding its folder at the front of DEFAULT_MODEL_FOLDERS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from trainer.export import CONFIG_NAME, WEIGHTS_NAME

#: Candidates in order of preference: the model fine-tuned on real photos by self-training, then
#: the U-Net trained on synthetic pairs (the `train` stage's output).
DEFAULT_MODEL_FOLDERS: tuple[str, ...] = ("data/selftrain_model", "data/model")


def holds_model(folder: str | Path) -> bool:
    """True when `folder` has the model files a trained-model folder needs."""
    folder = Path(folder)
    return (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()


def default_model_folder(candidates: Sequence[str | Path] = DEFAULT_MODEL_FOLDERS) -> Path | None:
    """The first candidate folder (relative to the working folder) that holds a model, else None."""
    for candidate in candidates:
        if holds_model(candidate):
            return Path(candidate)
    return None
