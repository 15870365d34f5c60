"""The `synth` section of params.yaml as one validated value, and the shard plan it implies."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generator.synth.filters import FilterConfig

SAMPLERS = ("neighbourhood", "gaussian")
#: How shards are spread: worker processes on this machine, the pipeline (G in this process,
#: post-processing in worker processes: what a GPU uses), or Ray tasks over a cluster.
DISTRIBUTORS = ("multiprocessing", "pipeline", "ray")


class SettingsError(ValueError):
    """Settings that cannot be used, with a message naming the setting."""


@dataclass(frozen=True)
class SynthSettings:
    """Everything `gen-synth` needs besides the generator spec (params.yaml `synth` section)."""

    n: int = 4000                          # kept samples in the whole set
    shard_size: int = 500                  # kept samples per shard (the last may hold fewer)
    seed: int = 0
    sampler: str = "neighbourhood"         # or "gaussian": z ~ N(0, I), no bank
    alpha: float = 0.2                     # noise scale around the bank's latents
    batch_size: int = 50                   # candidates rendered per generator call
    jpeg_quality: int = 95
    save_latents: bool = False             # also store each sample's z as KEY.latent.npy
    max_candidates_per_sample: int = 50    # a shard stops with an error after this many per sample
    filters: FilterConfig = field(default_factory=FilterConfig)
    output: str = "data/shards"
    direction: str = "data/directions/direction.json"
    bank: str = "data/bank/latents.npy"
    workers: int = 2                       # CPU worker processes (one torch thread each)
    device: str = "cpu"
    resume: bool = True                    # finish an interrupted run with the same parameters
    distributor: str = "multiprocessing"   # or "pipeline", or "ray" (DISTRIBUTORS)
    ray_address: str = ""                  # "" starts a local Ray cluster; "auto" joins the one running here
    retries: int = 2                       # Ray: a failed shard is rendered again up to this many times

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "SynthSettings":
        if section is not None and not isinstance(section, Mapping):
            raise SettingsError(f"the synth section must map settings to values, got {type(section).__name__}")
        section = dict(section or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise SettingsError(f"unknown settings in the synth section: {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(sorted(known))})")
        try:
            section["filters"] = FilterConfig.from_params(section.get("filters"))
        except (TypeError, ValueError) as error:
            raise SettingsError(f"synth.filters: {error}") from error
        return cls(**section).validated()

    def override(self, **changes: Any) -> "SynthSettings":
        """A copy with the given (non-None) settings replaced, validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validated()

    def validated(self) -> "SynthSettings":
        """Self, or a SettingsError listing every bad setting."""
        problems = []

        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")

        for name in ("n", "shard_size", "batch_size", "max_candidates_per_sample", "workers"):
            positive_int(name, getattr(self, name))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            problems.append(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.distributor not in DISTRIBUTORS:
            problems.append(f"distributor must be one of {', '.join(DISTRIBUTORS)}, got {self.distributor!r}")
        if not isinstance(self.ray_address, str):
            problems.append(f"ray_address must be a string, got {self.ray_address!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                or not math.isfinite(self.alpha) or self.alpha < 0):
            problems.append(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) \
                or not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be an integer in 1..100, got {self.jpeg_quality!r}")
        for name in ("save_latents", "resume"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("output", "direction", "bank", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if problems:
            raise SettingsError("; ".join(problems))
        return self

    def shard_plan(self) -> list[tuple[int, int]]:
        """(shard index, kept samples) for every shard; only the last may be smaller."""
        full, rest = divmod(self.n, self.shard_size)
        plan = [(index, self.shard_size) for index in range(full)]
        if rest:
            plan.append((full, rest))
        return plan

    def data_parameters(self) -> dict[str, Any]:
        """The settings that shape the bytes (not where they go or how many processes make them)."""
        return {
            "n": self.n, "shard_size": self.shard_size, "seed": self.seed, "sampler": self.sampler,
            "alpha": float(self.alpha), "batch_size": self.batch_size, "jpeg_quality": self.jpeg_quality,
            "save_latents": self.save_latents, "max_candidates_per_sample": self.max_candidates_per_sample,
            "filters": self.filters.to_params(),
            # CPU and GPU arithmetic differ in the last bits, so the device kind shapes the bytes.
            "device_type": self.device.split(":")[0],
        }
