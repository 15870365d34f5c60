"""Settings of the discover stage: the `discover` section of params.yaml, checked and typed.

    discover:
      method: latent-discovery        # or single-direction, or both (their candidates scored together)
      seed: 0
      magnitude: 5.0                  # ||h_bg|| used for scoring and saved with the direction
      device: cpu
      threads: null                   # torch CPU threads (null: torch's default)
      checkpoint_dir: data/discover/checkpoints
      override: null                  # or {index: 3, sign: -1} to skip the automatic choice
      min_score: 0.0                  # the best score must exceed this, or the stage stops
      latent_discovery: {...}         # LatentDiscoveryConfig
      single_direction: {...}         # SingleDirectionConfig
      scoring: {...}                  # ScoringConfig
      refine: {...}                   # RefineConfig

Every field below is a key of its subsection; unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generator.discovery.directions import DIRECTION_TYPES
from generator.synth.filters import FilterConfig
from generator.synth.settings import SettingsError, SynthSettings

SINGLE_METHODS = ("latent-discovery", "single-direction")
POOLED_METHOD = "both"  # every single method runs; all their candidates are scored as one set
METHODS = (*SINGLE_METHODS, POOLED_METHOD)
LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A `discover` section that cannot be used, with a message naming the key."""


@dataclass(frozen=True)
class LatentDiscoveryConfig:
    """Voynov & Babenko: K directions and a reconstructor that tells them apart."""

    directions: int = 16                 # K, the number of columns of A
    direction_type: str = "orthonormal"  # plain | orthonormal
    steps: int = 300
    batch_size: int = 16
    shift_max: float = 6.0               # eps ~ U[-shift_max, shift_max] with |eps| >= shift_min
    shift_min: float = 0.5
    shift_loss_weight: float = 0.25      # loss = cross-entropy(k) + weight * L1(eps)
    lr_directions: float = 1e-2          # Adam on A (the paper: 1e-4, with far more steps)
    lr_reconstructor: float = 1e-3       # Adam on R (the paper: 1e-4)
    lr_schedule: str = "constant"        # constant (the paper) | cosine: both rates decay to 0 at `steps`
    reconstructor_width: int = 16        # channels of R's first layer (doubling per level, up to x8)
    reconstructor_input_size: int = 32   # the pair is resized to this side before R
    reconstructor_depth: int = 3         # stride-2 levels in R
    checkpoint_every: int = 100          # steps between checkpoints (0: only at the end)

    def __post_init__(self) -> None:
        _positive(self, "directions", "steps", "batch_size", "shift_max", "lr_directions", "lr_reconstructor",
                  "reconstructor_width", "reconstructor_input_size", "reconstructor_depth")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"discover.latent_discovery.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        if self.direction_type not in DIRECTION_TYPES:
            raise ConfigError(f"discover.latent_discovery.direction_type must be one of {', '.join(DIRECTION_TYPES)}, "
                              f"got {self.direction_type!r}")
        if not 0 <= self.shift_min < self.shift_max:
            raise ConfigError(f"discover.latent_discovery needs 0 <= shift_min < shift_max, got "
                              f"{self.shift_min}, {self.shift_max}")
        if self.shift_loss_weight < 0 or self.checkpoint_every < 0:
            raise ConfigError("discover.latent_discovery.shift_loss_weight and checkpoint_every must not be negative")


@dataclass(frozen=True)
class SingleDirectionConfig:
    """Melas-Kyriazi et al.: one unit direction that darkens the outside of a centred circle."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-3                     # Adam on d
    radius_mean: float = 2.0             # r ~ N(radius_mean, radius_std), clipped at radius_min
    radius_std: float = 0.5
    radius_min: float = 0.1
    darken_weight: float = 1.0           # w1: mean(gray(G(z + r d)) * C)
    edge_weight: float = 10.0            # w2: mean((sobel(gray(G(z))) - sobel(gray(G(z + r d))))^2)
    circle_radius: float = 0.5           # C's zero circle, in units of half the image side
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "lr", "radius_min", "circle_radius")
        if self.radius_std < 0 or self.darken_weight < 0 or self.edge_weight < 0 or self.checkpoint_every < 0:
            raise ConfigError("discover.single_direction.radius_std, the loss weights and checkpoint_every "
                              "must not be negative")


@dataclass(frozen=True)
class ScoringConfig:
    """How candidate directions are scored (see scoring.py for the formula)."""

    batch_size: int = 64                 # the fixed, seeded batch every candidate is scored on
    foreground_min: float = 0.05         # plausible foreground fraction of a mask
    foreground_max: float = 0.5
    border_width: float = 0.05           # border band, as a fraction of the side
    sheet_candidates: int = 4            # contact sheet: best candidates shown (both signs each)
    sheet_samples: int = 4               # contact sheet: samples per row
    # The rules synthesis uses, taken from the `synth` section (never set in discover.scoring), so
    # the direction is chosen under the rules it is used with: the filters, and the latents the
    # masks are made from (the synthesis sampler).  Without a synth section: the paper's filters
    # and z ~ N(0, I).
    filters: dict = field(default_factory=dict)  # synth.filters' layout
    sampler: str = "gaussian"            # synth.sampler: gaussian | neighbourhood
    alpha: float = 0.0                   # synth.alpha
    bank: str | None = None              # synth.bank (the bundled bank when it does not exist)

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "border_width", "sheet_candidates", "sheet_samples")
        if not 0 <= self.foreground_min < self.foreground_max <= 1:
            raise ConfigError(f"discover.scoring needs 0 <= foreground_min < foreground_max <= 1, got "
                              f"{self.foreground_min}, {self.foreground_max}")
        if self.border_width >= 0.5:
            raise ConfigError(f"discover.scoring.border_width must be below 0.5 of the side, got {self.border_width}")
        if not isinstance(self.filters, Mapping):
            raise ConfigError("discover.scoring.filters must be a mapping in synth.filters' layout")
        try:  # checked now, not after a long discovery run
            FilterConfig.from_params(self.filters)
        except ValueError as error:
            raise ConfigError(f"discover.scoring.filters: {error}") from error


@dataclass(frozen=True)
class RefineConfig:
    """Polishing the chosen direction after the choice (see refinement.py)."""

    enabled: bool = True
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-2                     # Adam on the direction
    radius_mean: float = 2.0             # r ~ N(radius_mean, radius_std), clipped at radius_min
    radius_std: float = 0.5
    radius_min: float = 0.1
    edge_weight: float = 3.0             # weight of 1 - cos(edge maps) against the contrast term
    min_cosine: float = 0.5              # keep the refined direction only this close to the chosen one
    score_tolerance: float = 0.1         # ... and its masks' quality no more than this below (refinement.py)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"discover.refine.enabled must be true or false, got {self.enabled!r}")
        _positive(self, "steps", "batch_size", "lr", "radius_min")
        if self.radius_std < 0 or self.edge_weight < 0 or self.score_tolerance < 0:
            raise ConfigError("discover.refine.radius_std, edge_weight and score_tolerance must not be negative")
        if not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"discover.refine.min_cosine must lie in [-1, 1], got {self.min_cosine}")


@dataclass(frozen=True)
class Override:
    """A person's choice of direction, replacing the automatic one."""

    index: int
    sign: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ConfigError(f"discover.override.index must be a non-negative integer, got {self.index!r}")
        if self.sign not in (1, -1) or type(self.sign) is not int:     # not True, not 1.0
            raise ConfigError(f"discover.override.sign must be 1 or -1, got {self.sign!r}")


@dataclass(frozen=True)
class DiscoverConfig:
    method: str = "latent-discovery"
    seed: int = 0
    magnitude: float = 5.0
    device: str = "cpu"
    threads: int | None = None           # torch CPU threads; None: torch's default
    checkpoint_dir: str | None = "data/discover/checkpoints"
    override: Override | None = None
    min_score: float = 0.0               # an automatic choice must score above this
    latent_discovery: LatentDiscoveryConfig = field(default_factory=LatentDiscoveryConfig)
    single_direction: SingleDirectionConfig = field(default_factory=SingleDirectionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"discover.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _positive(self, "magnitude")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"discover.threads must be a positive integer or null, got {self.threads!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            raise ConfigError(f"discover.checkpoint_dir must be a folder path or null, got {self.checkpoint_dir!r}")
        if not 0 <= self.min_score < 1:
            raise ConfigError(f"discover.min_score must lie in [0, 1) (scores do), got {self.min_score}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None,
                    synth: Mapping[str, Any] | None = None) -> "DiscoverConfig":
        """Build from the `discover` section of params.yaml; missing keys take the defaults.  With
        the `synth` section (`{}` for an absent one), candidates are scored under its filters and
        sampler, the rules gen-synth uses."""
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"discover must be a mapping, got {type(section).__name__}")
        section = dict(section or {})
        scoring = section.get("scoring")
        if isinstance(scoring, Mapping):
            borrowed = sorted(set(scoring) & set(SYNTHESIS_RULES))
            if borrowed:
                raise ConfigError(f"discover.scoring cannot set {', '.join(borrowed)}: candidates are scored "
                                  f"under synthesis's own rules; set synth.{borrowed[0]} instead")
            if synth is not None:
                section["scoring"] = {**scoring, **synthesis_rules(synth)}
        elif scoring is None and synth is not None:
            section["scoring"] = synthesis_rules(synth)
        nested = {"latent_discovery": LatentDiscoveryConfig, "single_direction": SingleDirectionConfig,
                  "scoring": ScoringConfig, "refine": RefineConfig}
        for key, kind in nested.items():
            if key in section:
                section[key] = _build(kind, section[key], f"discover.{key}")
        if section.get("override") is not None:
            section["override"] = _build(Override, section["override"], "discover.override")
        return _build(cls, section, "discover")

    def with_changes(self, **changes: Any) -> "DiscoverConfig":
        """A copy with top-level fields or dotted nested fields ('latent_discovery.steps') replaced."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            head, _, rest = key.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                top[key] = value
        for head, fields in nested.items():
            try:
                top[head] = dataclasses.replace(getattr(self, head), **fields)
            except TypeError as error:
                raise ConfigError(f"discover.{head}: {error}") from error
        return dataclasses.replace(self, **top)


SYNTHESIS_RULES = ("filters", "sampler", "alpha", "bank")


def synthesis_rules(synth: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring fields taken from the `synth` section, checked as gen-synth checks them."""
    try:
        settings = SynthSettings.from_params(synth)
    except SettingsError as error:
        raise ConfigError(str(error)) from error
    return {"filters": settings.filters.to_params(), "sampler": settings.sampler, "alpha": float(settings.alpha),
            "bank": settings.bank}


def _build(kind: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(names)
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(names)})")
    typed = {}
    for key, value in values.items():
        default = names[key].default
        if isinstance(default, bool) or value is None:
            typed[key] = value
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
        elif isinstance(default, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if float(value) != int(value):
                raise ConfigError(f"{where}.{key} must be an integer, got {value!r}")
            typed[key] = int(value)
        elif isinstance(default, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:  # YAML reads 1e-4 (no dot) as a string
                typed[key] = float(value)
            except ValueError as error:
                raise ConfigError(f"{where}.{key} must be a number, got {value!r}") from error
            if not math.isfinite(typed[key]):
                raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
        else:
            typed[key] = value
    try:
        return kind(**typed)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


_SECTION_NAMES = {"LatentDiscoveryConfig": "discover.latent_discovery",
                  "SingleDirectionConfig": "discover.single_direction",
                  "ScoringConfig": "discover.scoring", "RefineConfig": "discover.refine",
                  "DiscoverConfig": "discover"}


def _positive(config: Any, *names: str) -> None:
    where = _SECTION_NAMES.get(type(config).__name__, type(config).__name__)
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigError(f"{where}.{name} must be a positive, finite number, got {value!r}")
