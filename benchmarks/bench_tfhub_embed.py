"""Cost of the TensorFlow bridge (TF-Hub backend) and throughput of the embed stage, on this machine.

Part 1 times a BigBiGAN-shaped SavedModel (the test suite's small module: z [N, 120] -> 128 x 128
images; encode 256 x 256 -> 120) called three ways side by side: TensorFlow directly on TF tensors,
through the backend (torch in, torch NCHW out, host copies and layout changes included), and the
backward pass (TensorFlow's gradient tape re-running the batch).  The module's own compute is tiny,
so the ratios show the bridge's overhead at its most visible; BigBiGAN's ResNet makes it smaller.

Part 2 times `encode_images` on a folder of synthetic JPEG photos (480 x 360) with 1 and 2
decoding threads, for the analytic test generator (decoding dominates) and the small module.

    .venv/bin/python benchmarks/bench_tfhub_embed.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the SavedModel the tests build is the one timed here, so both speak of the same function
from tests.test_tfhub_backend import module_weights, save_module  # noqa: E402

from generator.backends.tfhub import import_tensorflow  # noqa: E402
from generator.embed import encode_images  # noqa: E402
from generator.registry import build_generator  # noqa: E402


def best_seconds(fn, min_seconds: float) -> float:
    """Best of repeated calls (at least one) after one warm-up."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_seconds or best == float("inf"):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def bridge_table(folder: Path, batch_sizes: list[int], min_seconds: float) -> None:
    tf = import_tensorflow()
    generator = build_generator({"name": "tfhub-bigbigan", "weights": str(folder), "options": {"batch_size": 256}})
    signature = generator._generate_call.function
    print(f"\n{generator.identity}: generate 120 -> 3 x 128 x 128 (ms per batch; ratio to TensorFlow direct)")
    print(f"{'batch':>6} {'TF direct':>10} {'backend':>10} {'ratio':>6} {'fwd+bwd':>10} {'ratio':>6}")
    for batch in batch_sizes:
        z = torch.randn(batch, 120, generator=torch.Generator().manual_seed(0))
        z_tf = tf.constant(z.numpy())
        direct = best_seconds(lambda: signature(z=z_tf)["default"].numpy(), min_seconds)
        with torch.no_grad():
            bridged = best_seconds(lambda: generator.generate(z), min_seconds)

        def forward_backward():
            zz = z.clone().requires_grad_(True)
            generator.generate(zz).sum().backward()
        both = best_seconds(forward_backward, min_seconds)
        print(f"{batch:>6} {direct * 1e3:>10.2f} {bridged * 1e3:>10.2f} {bridged / direct:>6.2f} "
              f"{both * 1e3:>10.2f} {both / direct:>6.2f}")


def embed_table(photos: Path, count: int, specs: dict[str, dict], workers: list[int], batch_size: int,
                min_seconds: float) -> None:
    print(f"\nembed: {count} JPEG photos 480 x 360, batch {batch_size} (images per second; ratio to 1 thread)")
    print(f"{'generator':>16} {'threads':>8} {'img/s':>8} {'ratio':>6}")
    for label, spec in specs.items():
        generator = build_generator(spec)
        base = None
        for threads in workers:
            seconds = best_seconds(lambda: encode_images(generator, photos, batch_size, threads, progress=False),
                                   min_seconds)
            rate = count / seconds
            base = base or rate
            print(f"{label:>16} {threads:>8} {rate:>8.1f} {rate / base:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,16,64", help="comma-separated generate batch sizes")
    parser.add_argument("--photos", type=int, default=96, help="photos in the embed folder")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timing per bridge row, seconds")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        module = save_module(scratch / "module", module_weights())
        bridge_table(module, [int(b) for b in args.batch_sizes.split(",")], args.min_seconds)
        photos = scratch / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(photos / f"{i:04d}.jpg",
                                                                                        quality=90)
        embed_table(photos, args.photos, {
            "testing": {"name": "testing", "options": {"resolution": 64}},
            "tfhub (small)": {"name": "tfhub-bigbigan", "weights": str(module)},
        }, workers=[1, 2], batch_size=32, min_seconds=2 * args.min_seconds)


if __name__ == "__main__":
    main()
