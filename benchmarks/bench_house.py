"""Forward throughput of the house generator (and its encoder) on this machine's CPU.

Prints images per second at the shipped resolution for a few batch sizes and torch thread counts,
side by side with the 150 images/s target.  The load average is printed too: on a busy 2-core
machine two threads can be far slower than one (OpenMP workers wait for each other).

    .venv/bin/python benchmarks/bench_house.py            # shipped weights, 2 and 1 threads
    .venv/bin/python benchmarks/bench_house.py --weights data/house_gan/house_gan.pt
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from generator.registry import build_generator

TARGET_IMAGES_PER_SECOND = 150.0


def images_per_second(fn, batch: torch.Tensor, min_seconds: float) -> float:
    """Best of repeated timed calls (after one warm-up), in images per second."""
    with torch.no_grad():
        fn(batch)
        best, spent = float("inf"), 0.0
        while spent < min_seconds:
            start = time.perf_counter()
            fn(batch)
            elapsed = time.perf_counter() - start
            best, spent = min(best, elapsed), spent + elapsed
    return batch.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="house weights file (default: the shipped one)")
    parser.add_argument("--threads", default="2,1", help="comma-separated torch CPU thread counts")
    parser.add_argument("--batch-sizes", default="1,32,128", help="comma-separated batch sizes")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timing per row, seconds")
    args = parser.parse_args()

    generator = build_generator({"name": "house", "weights": args.weights})
    side = generator.resolution
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{generator.identity}: {side} x {side}, latent {generator.latent_dim}; "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"{'threads':>7} {'batch':>6} {'generate img/s':>15} {'x target':>9} {'encode img/s':>13}")
    rng = torch.Generator().manual_seed(0)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for size in (int(s) for s in args.batch_sizes.split(",")):
            z = torch.randn(size, generator.latent_dim, generator=rng)
            images = torch.rand(size, 3, side, side, generator=rng) * 2 - 1
            forward = images_per_second(generator.generate, z, args.min_seconds)
            encode = images_per_second(generator.encode, images, args.min_seconds)
            print(f"{threads:>7} {size:>6} {forward:>15.0f} {forward / TARGET_IMAGES_PER_SECOND:>9.1f} "
                  f"{encode:>13.0f}")


if __name__ == "__main__":
    main()
