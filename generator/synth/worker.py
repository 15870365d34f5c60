"""The worker: renders one whole shard from its index alone.

Per batch of candidates: latents from the sampler, G(z) and G(z + h_bg), the masks, the filters;
kept samples are encoded and streamed into the shard in candidate order.  A shard keeps the first
`count` candidates that pass, so its content and its candidate count are a pure function of
(settings, shard index): the batch size only groups the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from generator.interface import Generator
from generator.registry import build_generator
from generator.synth.filters import REJECTING_FILTERS, apply_filters
from generator.synth.masks import synthesize_masks
from generator.synth.samplers import GaussianSampler, NeighbourhoodSampler, load_latent_bank
from generator.synth.settings import SynthSettings
from generator.synth.store import open_output
from generator.synth.writer import (
    ShardStats, ShardWriter, encode_jpeg, encode_json, encode_mask_png, encode_npy, sample_key, shard_name)

#: Called after each batch with (samples kept, candidates used).
Progress = Callable[[int, int], None]


class CandidateBudgetExceeded(RuntimeError):
    """A shard used its whole candidate budget without filling up: the filters reject too much."""


@dataclass(frozen=True)
class RenderJob:
    """Everything needed to render any shard; plain values, so it can go to another process."""

    settings: SynthSettings
    generator_spec: dict[str, Any]
    generator_identity: str
    shift: tuple[float, ...]            # h_bg = magnitude * unit direction
    bank_path: str | None               # the resolved bank for the neighbourhood sampler
    output: str
    config_digest: str
    record: dict[str, Any] | None = None   # the run record the digest is of (stored in the stats)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """N x 3 x H x W in [-1, 1] to N x H x W x 3 uint8 (a strided view of an N x 3 x H x W array)."""
    scaled = images.detach().to("cpu", torch.float32).numpy() * np.float32(127.5)
    scaled += np.float32(127.5)                    # in place: one temporary for the whole chain
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


class ShardRenderer:
    """Holds the generator, the shift and the sampler; `render(shard, count)` writes one shard."""

    def __init__(self, job: RenderJob, generator: Generator | None = None) -> None:
        self.job = job
        self.settings = job.settings
        self.generator = (generator or build_generator(job.generator_spec)).to(self.settings.device)
        if self.generator.identity != job.generator_identity:
            raise RuntimeError(f"generator built as {self.generator.identity}, expected {job.generator_identity}")
        self.shift = torch.tensor(job.shift, dtype=torch.float32, device=self.generator.device)
        if self.settings.sampler == "gaussian":
            self.sampler = GaussianSampler(self.generator.latent_dim)
        else:
            bank = load_latent_bank(job.bank_path, self.generator.latent_dim)
            self.sampler = NeighbourhoodSampler(bank, self.settings.alpha)

    def render(self, shard: int, count: int, progress: Progress | None = None) -> ShardStats:
        """Render, filter, encode and write one shard.  On a GPU the next batch is queued before this
        one is post-processed, so the device renders while this process filters and encodes; it is
        queued only while the shard is expected to need it, as the pipeline does."""
        size = self.settings.batch_size
        with ShardAssembler(self.job, shard, count) as assembler:
            queued: LaunchedBatch | None = None
            while not assembler.full:
                launched = queued or self.launch_batch(shard, assembler.used)
                queued = None
                rate = assembler.kept / assembler.used if assembler.used else 1.0
                if launched.on_device and assembler.used + size < assembler.budget and \
                        assembler.kept + size * rate < count:
                    queued = self.launch_batch(shard, assembler.used + size)
                kept, considered = assembler.add(launched.collect())
                if progress is not None:
                    progress(kept, considered)
            return assembler.finish()

    def launch_batch(self, shard: int, first: int) -> "LaunchedBatch":
        """Candidates first .. first + batch_size - 1 of a shard: latents, G(z), G(z + h_bg), masks;
        `collect()` gives them as arrays.  On a GPU this returns once the generator's calls and the
        copies of their results into pinned CPU memory are queued on the device, so the caller can
        queue the next batch behind them before it collects this one.  On a CPU it is all done."""
        counters = np.arange(first, first + self.settings.batch_size)
        on_gpu = self.generator.device.type == "cuda"
        start = time.perf_counter()
        batch = self.sampler.sample(self.settings.seed, shard, counters)
        z = torch.from_numpy(batch.z)
        # From pinned memory the upload is queued like the rest; from pageable memory it would wait
        # for everything queued before it (the previous batch's generator calls).
        z = z.pin_memory().to(self.generator.device, non_blocking=True) if on_gpu else z.to(self.generator.device)
        sample_s = time.perf_counter() - start

        stream = torch.cuda.current_stream(self.generator.device) if on_gpu else None
        timer = _GpuTimer(stream) if on_gpu else None
        start = time.perf_counter()
        with torch.inference_mode():
            images = self.generator.generate(z)
            shifted = self.generator.generate(z + self.shift)
            masks = synthesize_masks(images, shifted)
            if timer is not None:
                timer.stop()
            # non_blocking copies from a GPU land in pinned memory, ready once the batch's event has passed.
            outputs = [tensor.detach().to("cpu", torch.float32, non_blocking=on_gpu) for tensor in (images, shifted)]
            outputs.append(masks.to("cpu", non_blocking=on_gpu))
        copied = torch.cuda.Event() if on_gpu else None
        if copied is not None:
            copied.record(stream)
        return LaunchedBatch(shard=shard, counters=counters, z=batch.z, source_index=batch.source_index,
                             outputs=outputs, copied=copied, timer=timer, sample_s=sample_s,
                             generate_s=time.perf_counter() - start)


class _GpuTimer:
    """A stream's device time from the timer's creation to `stop()`, read without stalling the
    queue until asked."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started, self.stopped = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.started.record(stream)

    def stop(self) -> None:
        self.stopped.record(self.stream)

    def seconds(self) -> float:
        self.stopped.synchronize()
        return self.started.elapsed_time(self.stopped) / 1000.0


@dataclass
class LaunchedBatch:
    """A batch whose generator calls and copies to the CPU may still be running on the device."""

    shard: int
    counters: np.ndarray
    z: np.ndarray
    source_index: np.ndarray
    outputs: list[torch.Tensor]        # G(z), G(z + h_bg) as float32, masks: CPU tensors (pinned on a GPU)
    copied: Any                        # the CUDA event after the copies; None on a CPU
    timer: _GpuTimer | None
    sample_s: float
    generate_s: float                  # on a CPU; on a GPU the timer's device time replaces it

    @property
    def on_device(self) -> bool:
        """Whether the device may still be working on it (a GPU's batch until collected)."""
        return self.copied is not None

    def collect(self) -> "RenderedBatch":
        """Wait for the device (if any) and return the batch as plain arrays."""
        if self.copied is not None:
            self.copied.synchronize()
        images, shifted, masks = (tensor.numpy() for tensor in self.outputs)
        generate_s = self.timer.seconds() if self.timer is not None else self.generate_s
        return RenderedBatch(shard=self.shard, counters=self.counters, z=self.z, source_index=self.source_index,
                             images=images, masks=masks, shifted=shifted, sample_s=self.sample_s,
                             generate_s=generate_s)


@dataclass
class RenderedBatch:
    """One generator call's output on the CPU, all the post-processing needs (plain arrays)."""

    shard: int
    counters: np.ndarray          # candidate numbers within the shard
    z: np.ndarray
    source_index: np.ndarray
    images: np.ndarray            # G(z), N x 3 x H x W float32 in [-1, 1]
    masks: np.ndarray             # N x H x W bool
    shifted: np.ndarray           # G(z + h_bg), N x 3 x H x W float32
    sample_s: float = 0.0
    generate_s: float = 0.0


class ShardAssembler:
    """Post-processes a shard's batches in candidate order into its tar: filters, encoding, writes.

    Batches must come as candidates 0.., B.., 2B..; `add` returns (kept, considered).  A shard that
    uses its whole candidate budget without filling up raises CandidateBudgetExceeded.  Use as a
    context manager: leaving it by an exception removes the temporary file.
    """

    def __init__(self, job: RenderJob, shard: int, count: int) -> None:
        self.job, self.settings, self.shard, self.count = job, job.settings, shard, count
        self.budget = self.settings.max_candidates_per_sample * self.settings.shard_size
        self.rejected = {name: 0 for name in self.settings.filters.order if name in REJECTING_FILTERS}
        self.timing = {"sample_s": 0.0, "generate_s": 0.0, "postprocess_s": 0.0}
        self.kept = self.used = self.empty = 0
        self.name = shard_name(shard)
        self.writer = ShardWriter(self.name, store=open_output(job.output))

    @property
    def full(self) -> bool:
        return self.kept >= self.count

    def add(self, batch: RenderedBatch) -> tuple[int, int]:
        if batch.counters[0] != self.used:
            raise ValueError(f"shard {self.shard}: batch from candidate {batch.counters[0]}, expected {self.used}")
        start = time.perf_counter()
        settings = self.settings
        result = apply_filters(batch.masks, batch.shifted, settings.filters)
        # Candidates past the budget do not count; of the rest, take the first that pass.
        usable = min(len(batch.counters), self.budget - self.used)
        passing = np.flatnonzero(result.keep[:usable])[: self.count - self.kept]
        considered = passing[-1] + 1 if len(passing) == self.count - self.kept else usable
        for name in self.rejected:
            self.rejected[name] += int(np.count_nonzero(result.rejected[name][:considered]))
        pixels = images_to_uint8(torch.from_numpy(batch.images[passing]))
        for row, i in enumerate(passing):
            position = self.kept + row
            self.writer.add_sample(sample_key(self.shard, position),
                                   self._members(position, int(batch.counters[i]), pixels[row], result.masks[i],
                                                 float(result.foreground_fraction[i]), int(batch.source_index[i]),
                                                 batch.z[i]))
        self.kept += len(passing)
        self.empty += int(np.count_nonzero(result.foreground_fraction[passing] == 0))
        self.used += int(considered)
        self.timing["sample_s"] += batch.sample_s
        self.timing["generate_s"] += batch.generate_s
        self.timing["postprocess_s"] += time.perf_counter() - start
        if not self.full and self.used >= self.budget:
            raise CandidateBudgetExceeded(self._budget_message())
        return len(passing), int(considered)

    def finish(self) -> ShardStats:
        start = time.perf_counter()
        size, digest = self.writer.close()
        self.timing["postprocess_s"] += time.perf_counter() - start
        return ShardStats(shard=self.shard, name=self.name, samples=self.kept, candidates=self.used,
                          rejected_by=self.rejected, bytes=size, sha256=digest, empty_masks=self.empty,
                          config_digest=self.job.config_digest, record=self.job.record, timing=self.timing)

    def abort(self) -> None:
        self.writer.abort()

    def __enter__(self) -> "ShardAssembler":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _members(self, position: int, candidate: int, pixels: np.ndarray, mask: np.ndarray,
                 fraction: float, source_index: int, z: np.ndarray) -> dict[str, bytes]:
        settings, shard = self.settings, self.shard
        record = {
            "key": sample_key(shard, position),
            "index": shard * settings.shard_size + position,
            "shard": shard,
            "candidate": candidate,
            "seed": settings.seed,
            "sampler": settings.sampler,
            "source_index": source_index if source_index >= 0 else None,
            "alpha": float(settings.alpha) if settings.sampler == "neighbourhood" else None,
            "foreground_fraction": round(fraction, 6),
            "generator": self.job.generator_identity,
        }
        return sample_members(record, pixels, mask, settings.jpeg_quality, z if settings.save_latents else None)

    def _budget_message(self) -> str:
        shard, count, kept, used, rejected = self.shard, self.count, self.kept, self.used, self.rejected
        worst = max(rejected, key=rejected.get) if rejected and max(rejected.values()) > 0 else None
        counts = ", ".join(f"{name} filter {value}" for name, value in rejected.items())
        advice = (f"the {worst} filter rejected the most; check the direction (dvc repro discover) or "
                  f"relax or switch off synth.filters.{worst} in params.yaml" if worst else
                  "check the direction and the filter settings")
        return (f"shard {shard}: only {kept} of {count} samples passed the filters after {used} candidates "
                f"(max_candidates_per_sample = {self.settings.max_candidates_per_sample}); rejected by: "
                f"{counts or 'none'}; {advice}")


def sample_members(record: dict[str, Any], pixels: np.ndarray, mask: np.ndarray, jpeg_quality: int,
                   latent: np.ndarray | None = None) -> dict[str, bytes]:
    """One sample's tar members: the image, its mask, its record and optionally its latent."""
    members = {"jpg": encode_jpeg(pixels, jpeg_quality), "mask.png": encode_mask_png(mask),
               "json": encode_json(record)}
    if latent is not None:
        members["latent.npy"] = encode_npy(latent.astype(np.float32))
    return members
