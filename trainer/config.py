"""The trainer's settings: the `train` section of params.yaml, checked, with the paper's schedule.

`params.yaml` holds the demo's settings (a narrow U-Net and a few hundred steps, to fit the
pipeline's CPU budget).  `PAPER_SCHEDULE` is the published one (Voynov et al.: Adam, lr 1e-3
times 0.2 at step 8,000, 12,000 steps, batch 95, a U-Net of 64 base channels with bilinear
up-sampling, 128 x 128 inputs); `train-unet --paper-schedule` applies it over the section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

PAPER_SCHEDULE: dict[str, Any] = {
    "steps": 12_000,
    "batch_size": 95,
    "lr": 1e-3,
    "lr_decay_step": 8_000,
    "lr_decay_factor": 0.2,
    "base_channels": 64,
    "depth": 4,
    "bilinear": True,
}


class ConfigError(ValueError):
    """A `train` section that cannot run, with a message naming the setting."""


def section_values(kind: type, section: dict[str, Any] | None, name: str, overrides: dict[str, Any],
                   error: type[ValueError]) -> dict[str, Any]:
    """The fields of dataclass `kind` from a params section, with `overrides` (None values ignored)
    winning over it; unknown keys raise `error`."""
    values = dict(section or {})
    unknown = sorted(set(values) - {f.name for f in fields(kind)})
    if unknown:
        raise error(f"unknown key(s) in the {name} section: {', '.join(unknown)}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    if isinstance(values.get("lr"), str):  # YAML reads 1e-3 (no dot) as a string
        try:
            values["lr"] = float(values["lr"])
        except ValueError:
            pass
    return values


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the field names are the `train` section's keys."""

    # Data: a shard folder, a brace pattern, a URL (http(s)://, pipe:, file:) or a list of them.
    shards: Any = "data/shards"
    holdout_shards: Any = 1          # count (the last shards by name) or a list of shard names
    val_samples: int = 256           # hold-out samples scored at each validation
    input_size: int | None = None    # None: the shards' own image size
    shuffle_buffer: int = 1000       # samples in each loader worker's shuffle buffer
    num_workers: int = 2             # loader processes per rank (0: load in the training process)
    manifest: bool = True            # a folder is read through gen-synth's manifest.json (False: its *.tar)
    # Model.
    base_channels: int = 16
    depth: int = 4
    bilinear: bool = True
    # Schedule.
    steps: int = 800
    batch_size: int = 32             # per optimiser step, summed over all ranks
    lr: float = 1e-3
    lr_decay_step: int | None = 533  # lr is multiplied by lr_decay_factor after this many steps
    lr_decay_factor: float = 0.2
    seed: int = 0
    augment: bool = False            # mirror pairs; vary colour, blur and grain (trainer/augment.py)
    bf16: bool = True                # bf16 autocast, used on CUDA only
    compile: bool = False            # train through torch.compile (needs a C++ compiler; pays on a GPU if at all)
    threads: int | None = None       # torch CPU threads per process (None: torch's default)
    device: str = "auto"             # auto, cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N
    # Bookkeeping.
    log_every: int = 10
    val_every: int = 100
    checkpoint_every: int = 200
    resume: bool = True
    checkpoint_dir: str = "data/train/checkpoints"
    model_dir: str = "data/model"
    plots_dir: str = "data/train"

    def __post_init__(self) -> None:
        positive = ["val_samples", "shuffle_buffer", "base_channels", "depth", "steps", "batch_size",
                    "log_every", "val_every", "checkpoint_every"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.input_size is not None and (not isinstance(self.input_size, int) or self.input_size < 2 ** self.depth):
            raise ConfigError(f"train.input_size must be null or an integer >= 2**depth = {2 ** self.depth}, "
                              f"got {self.input_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"train.threads must be null or a positive integer, got {self.threads!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"train.lr must be a positive number, got {self.lr!r}")
        if self.lr_decay_step is not None and (not isinstance(self.lr_decay_step, int) or self.lr_decay_step < 1):
            raise ConfigError(f"train.lr_decay_step must be null or a positive integer, got {self.lr_decay_step!r}")
        if not isinstance(self.lr_decay_factor, (int, float)) or not self.lr_decay_factor > 0:
            raise ConfigError(f"train.lr_decay_factor must be a positive number, got {self.lr_decay_factor!r}")
        for name in ("manifest", "bf16", "compile", "bilinear", "resume", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        holdout = self.holdout_shards
        if not (isinstance(holdout, list) and all(isinstance(name, str) for name in holdout)) and \
                not (isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 0):
            raise ConfigError(f"train.holdout_shards must be a count >= 0 or a list of shard names, got {holdout!r}")
        if not (isinstance(self.shards, str) or (isinstance(self.shards, list) and self.shards
                                                 and all(isinstance(s, str) for s in self.shards))):
            raise ConfigError(f"train.shards must be a folder, pattern or URL, or a list of them, got {self.shards!r}")

    @classmethod
    def from_section(cls, section: dict[str, Any] | None, **overrides: Any) -> "TrainConfig":
        """Build from a params section; `overrides` (None values ignored) win over it."""
        return cls(**section_values(cls, section, "train", overrides, ConfigError))

    def with_paper_schedule(self) -> "TrainConfig":
        """This configuration with the published schedule and network width."""
        return dataclasses.replace(self, **PAPER_SCHEDULE)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
