"""The self-training stage's settings: the `selftrain` section of params.yaml, checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainer.config import section_values

LOSSES = ("bce", "a2s")


class ConfigError(ValueError):
    """A `selftrain` section that cannot run, with a message naming the setting."""


@dataclass(frozen=True)
class SelfTrainConfig:
    """Every setting of a self-training run; the field names are the `selftrain` section's keys."""

    enabled: bool = True                 # false: the stage only records that it is off
    photos: str = "../shared/datasets/DUTS-TR/images"   # unlabeled photos (never a benchmark's)
    max_photos: int | None = None        # a seeded random subset of this many photos; None: all
    model: str = "data/model"            # the synthetic-trained U-Net: first labels and starting weights
    input_size: int | None = None        # square side photos are brought to; None: the model's own
    epochs: int = 6                      # per round
    rounds: int = 1                      # each round after the first relabels the photos with the model so far
    olr_lambda: float = 0.4              # G^{j+1} = lambda G^j + (1 - lambda) Y^j once warm-up is over
    olr_warmup_epochs: int = 2           # epochs after which labels are kept as they are (lambda = 1)
    loss: str = "a2s"                    # a2s: BCE + SSIM + IoU (A2S); bce: the paper's U-Net loss
    refine_labels: bool = False          # edge-aware refinement of the first labels G^1
    batch_size: int = 32
    lr: float = 3e-4                     # Adam, constant
    seed: int = 0                        # photo subset, data order and flips
    device: str = "cpu"
    threads: int | None = 1              # torch CPU threads; None: torch's default
    log_every: int = 10                  # steps per row of the loss curve
    checkpoint_every: int = 50           # steps between checkpoints (and one at every epoch's end)
    resume: bool = True                  # continue from work_dir's checkpoint when the settings match
    work_dir: str = "data/selftrain/work"  # photo cache, labels, predictions, checkpoint
    model_dir: str = "data/selftrain_model"
    plots_dir: str = "data/selftrain"

    def __post_init__(self) -> None:
        for name in ("epochs", "rounds", "batch_size", "log_every", "checkpoint_every"):
            _require_positive_int(name, getattr(self, name))
        for name in ("max_photos", "input_size", "threads"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        if not isinstance(self.olr_warmup_epochs, int) or isinstance(self.olr_warmup_epochs, bool) \
                or self.olr_warmup_epochs < 0:
            raise ConfigError(f"selftrain.olr_warmup_epochs must be an integer >= 0, got {self.olr_warmup_epochs!r}")
        if not isinstance(self.olr_lambda, (int, float)) or isinstance(self.olr_lambda, bool) \
                or not 0.0 <= self.olr_lambda <= 1.0:
            raise ConfigError(f"selftrain.olr_lambda must be a number in [0, 1], got {self.olr_lambda!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"selftrain.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"selftrain.lr must be a positive number, got {self.lr!r}")
        if self.input_size is not None and self.input_size < 16:
            raise ConfigError(f"selftrain.input_size must be null or at least 16, got {self.input_size}")
        for name in ("photos", "model", "work_dir", "model_dir", "plots_dir", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"selftrain.{name} must be a non-empty string, got {getattr(self, name)!r}")

    @classmethod
    def from_section(cls, section: dict[str, Any] | None, **overrides: Any) -> "SelfTrainConfig":
        """Build from a params section; `overrides` (None values ignored) win over it."""
        return cls(**section_values(cls, section, "selftrain", overrides, ConfigError))

    @property
    def total_epochs(self) -> int:
        return self.rounds * self.epochs

    def round_of(self, epoch: int) -> tuple[int, int]:
        """(round, epoch within it), both counted from 1, of the run's epoch `epoch`."""
        return (epoch - 1) // self.epochs + 1, (epoch - 1) % self.epochs + 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"selftrain.{name} must be a positive integer, got {value!r}")
