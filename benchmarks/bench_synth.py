"""Throughput of synthetic-pair rendering, side by side in one run.

Rates of single-core parts are per CPU second of this process (time.process_time), so other
work on the machine does not distort them; wall-clock rates are printed beside them.

1. Post-processing at 128 x 128 on one core: mask synthesis, the three filters, JPEG and PNG
   encoding and the tar write, for candidates whose G(z) and G(z + h) are already rendered
   (every candidate is encoded and written, so this is the cost per written sample).
2. The connected-component filter: the vectorised version (mask rows packed into bits; masks that
   are plainly one component skip labelling, the others are labelled in a few calls per batch)
   against a per-image, per-component loop of the same rule; outputs compared for equality, on
   the testing generator's masks (convex: one run per row), on those masks with pixels flipped,
   and on ragged house-GAN masks (several runs per row, holes: every mask is labelled).
3. gen-synth end to end with the testing generator: samples/s, and the share of worker time spent
   in G, in post-processing and in drawing latents.
4. Drawing latents (what the pipeline's renderer does for every batch before G): the candidate
   streams built afresh for each candidate (`candidate_rng`) against one Philox generator reset
   for each (`CandidateStreams`, what the samplers use), equal outputs checked, alternating rounds.

Run: .venv/bin/python benchmarks/bench_synth.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from generator.backends.testing import ShapesGenerator
from generator.registry import build_generator
from generator.direction import Direction, save_direction
from generator.synth.filters import FilterConfig, apply_filters, filter_components, filter_components_loop
from generator.synth.main import synthesize
from generator.synth.masks import synthesize_masks
from generator.synth.samplers import CandidateStreams, candidate_key, candidate_rng
from generator.synth.settings import SynthSettings
from generator.synth.worker import images_to_uint8, sample_members
from generator.synth.writer import ShardWriter, sample_key

RESOLUTION = 128
BATCH = 50
#: the paper's batch, as the renderer draws it on a GPU
BATCH_RENDERER = 95


def rendered_batches(generator: ShapesGenerator, count: int, seed: int = 0):
    """(images, shifted) batches of G(z) and G(z + h) rendered ahead of the timed part."""
    shift = 5 * generator.planted_direction("lighting")
    rng = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count // BATCH):
        z = torch.randn(BATCH, generator.latent_dim, generator=rng)
        with torch.inference_mode():
            batches.append((generator.generate(z), generator.generate(z + shift)))
    return batches


def bench_postprocessing(batches, folder: Path, filters: FilterConfig) -> tuple[float, float, float]:
    """Samples per CPU second, per wall second, and the share kept: mask, filters, uint8, JPEG, PNG,
    JSON and tar, for every candidate."""
    written = kept = 0
    cpu, start = time.process_time(), time.perf_counter()
    with ShardWriter(folder / "bench.tar") as writer:
        for b, (images, shifted) in enumerate(batches):
            masks = synthesize_masks(images, shifted)
            result = apply_filters(masks.numpy(), shifted.numpy(), filters)
            pixels = images_to_uint8(images)
            for i in range(len(pixels)):
                record = {"key": sample_key(0, written), "index": written, "shard": 0, "candidate": written,
                          "seed": 0, "sampler": "gaussian", "source_index": None, "alpha": None,
                          "foreground_fraction": round(float(result.foreground_fraction[i]), 6),
                          "generator": "testing"}
                writer.add_sample(sample_key(0, written), sample_members(record, pixels[i], result.masks[i], 95))
                written += 1
            kept += int(result.keep.sum())
        writer.close()
    return written / (time.process_time() - cpu), written / (time.perf_counter() - start), kept / written


def house_masks(count: int, seed: int = 0) -> np.ndarray:
    """Masks of the house GAN along a seeded random direction of norm 5, at its own 64 x 64: blobs
    with holes and ragged rows, unlike the testing generator's convex ellipses."""
    generator = build_generator("house")
    rng = torch.Generator().manual_seed(seed)
    direction = torch.randn(generator.latent_dim, generator=rng)
    shift = 5 * direction / direction.norm()
    z = torch.randn(count, generator.latent_dim, generator=rng)
    with torch.inference_mode():
        return synthesize_masks(generator.generate(z), generator.generate(z + shift)).numpy()


def fragmented(masks: np.ndarray, flip: float, seed: int = 0) -> np.ndarray:
    """Masks with a share of pixels flipped: the specks and holes real GAN masks have."""
    rng = np.random.default_rng(seed)
    return masks ^ (rng.random(masks.shape) < flip)


def best_time(function, repeats: int = 3) -> float:
    """Least CPU time of this process over the repeats (robust to other processes on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def bench_components(masks: np.ndarray, repeats: int) -> dict[str, float]:
    from scipy import ndimage
    fast = filter_components(masks)
    slow = filter_components_loop(masks)
    components = np.mean([ndimage.label(mask)[1] for mask in masks])
    vectorised = best_time(lambda: filter_components(masks), repeats)
    loop = best_time(lambda: filter_components_loop(masks), repeats)
    return {"components": components, "equal": bool(np.array_equal(fast, slow)),
            "vectorised": len(masks) / vectorised, "loop": len(masks) / loop, "ratio": loop / vectorised}


def bench_end_to_end(folder: Path, n: int, workers: int, resolution: int) -> dict[str, float]:
    generator = ShapesGenerator(resolution=resolution)
    direction = folder / f"direction-{resolution}.json"
    save_direction(Direction.from_vector(generator.planted_direction("lighting"), generator.identity), direction)
    settings = SynthSettings(n=n, shard_size=max(1, n // 4), sampler="gaussian", batch_size=BATCH,
                             workers=workers, direction=str(direction), resume=False,
                             output=str(folder / f"e2e-{resolution}-{workers}"))
    summary = synthesize(settings, {"name": "testing", "options": {"resolution": resolution}},
                         echo=lambda *args, **kwargs: None)
    seconds = {key: sum(stats.timing[key] for stats in summary.made)
               for key in ("generate_s", "postprocess_s", "sample_s")}
    busy = sum(seconds.values())
    totals = summary.manifest["totals"]
    return {"rate": n / summary.seconds, "G": seconds["generate_s"] / busy,
            "post": seconds["postprocess_s"] / busy, "latents": seconds["sample_s"] / busy,
            "accepted": totals["acceptance_rate"], "wall": summary.seconds}


def bench_latent_streams(batch: int, latent_dim: int, rounds: int) -> dict[str, float]:
    """Candidates per CPU second of drawing a batch of latents both ways, best of alternating rounds."""
    key = candidate_key(0, 1)

    def fresh(first: int) -> np.ndarray:
        return np.stack([candidate_rng(key, c).standard_normal(latent_dim, dtype=np.float32)
                         for c in range(first, first + batch)])

    def reused(first: int) -> np.ndarray:
        streams, z = CandidateStreams(key), np.empty((batch, latent_dim), dtype=np.float32)
        for row, c in enumerate(range(first, first + batch)):
            streams.at(c).standard_normal(latent_dim, dtype=np.float32, out=z[row])
        return z

    equal = np.array_equal(fresh(0), reused(0))
    best = {"fresh": 0.0, "reused": 0.0}
    for round_ in range(rounds):
        for name, draw in (("fresh", fresh), ("reused", reused)):
            start = time.process_time()
            for repeat in range(20):
                draw((round_ * 20 + repeat) * batch)
            best[name] = max(best[name], 20 * batch / max(time.process_time() - start, 1e-9))
    return {**best, "ratio": best["reused"] / best["fresh"], "equal": equal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, noisier figures)")
    args = parser.parse_args()
    candidates, n_e2e, repeats = (200, 400, 1) if args.quick else (2000, 2000, 3)

    torch.set_num_threads(1)
    generator = ShapesGenerator(resolution=RESOLUTION)
    batches = rendered_batches(generator, candidates)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"post-processing at {RESOLUTION}x{RESOLUTION}, 1 thread, {candidates} candidates, every one "
              f"masked, filtered, JPEG + PNG encoded and written to a tar")
        print(f"{'filters':<22}{'samples/CPU-s':>14}{'samples/wall-s':>16}{'kept':>7}")
        for name, filters in (("paper (default)", FilterConfig()), ("reference code", FilterConfig.reference())):
            rates = [bench_postprocessing(batches, folder, filters) for _ in range(repeats)]
            cpu_rate, wall_rate, kept = max(rates)
            print(f"{name:<22}{cpu_rate:>14.0f}{max(r[1] for r in rates):>16.0f}{100 * kept:>6.0f}%")

        masks = np.concatenate([synthesize_masks(images, shifted).numpy() for images, shifted in batches[:8]])
        print(f"\nconnected-component filter, {len(masks)} masks of {RESOLUTION}x{RESOLUTION} "
              f"(4-connectivity, keep >= 0.2 x largest), masks per CPU second, best of {repeats}")
        print(f"{'masks':<28}{'comp/mask':>10}{'vector/s':>10}{'loop/s':>10}{'ratio':>8}{'equal':>7}")
        for name, flip in (("generator masks", 0.0), ("0.5% pixels flipped", 0.005),
                           ("2% pixels flipped", 0.02)):
            result = bench_components(fragmented(masks, flip), repeats)
            print(f"{name:<28}{result['components']:>10.1f}{result['vectorised']:>10.0f}{result['loop']:>10.0f}"
                  f"{result['ratio']:>7.1f}x{str(result['equal']):>7}")
        result = bench_components(house_masks(len(masks)), repeats)
        print(f"{'house GAN masks (64x64)':<28}{result['components']:>10.1f}{result['vectorised']:>10.0f}"
              f"{result['loop']:>10.0f}{result['ratio']:>7.1f}x{str(result['equal']):>7}")

        torch.set_num_threads(torch.get_num_interop_threads())
        print(f"\ngen-synth end to end, testing generator, {n_e2e} samples, batch {BATCH}, wall time "
              f"including start-up of workers; load average before: {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores")
        print(f"{'resolution':<12}{'workers':>8}{'samples/s':>11}{'G':>7}{'post':>7}{'latents':>9}{'kept':>7}")
        for resolution in (RESOLUTION, 64):
            for workers in (1, 2):
                result = bench_end_to_end(folder, n_e2e, workers, resolution)
                print(f"{resolution:<12}{workers:>8}{result['rate']:>11.0f}{100 * result['G']:>6.0f}%"
                      f"{100 * result['post']:>6.0f}%{100 * result['latents']:>8.0f}%"
                      f"{100 * result['accepted']:>6.0f}%")

    print(f"\ndrawing latents, batch {BATCH_RENDERER}, candidates per CPU second, best of {repeats + 2} "
          f"alternating rounds")
    print(f"{'latent size':<12}{'fresh':>10}{'reused':>10}{'ratio':>8}{'equal':>7}")
    for latent_dim in (120, 128):
        result = bench_latent_streams(BATCH_RENDERER, latent_dim, repeats + 2)
        print(f"{latent_dim:<12}{result['fresh']:>10.0f}{result['reused']:>10.0f}{result['ratio']:>7.2f}x"
              f"{str(result['equal']):>7}")


if __name__ == "__main__":
    main()
