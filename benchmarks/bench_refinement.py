"""Cost of the edge-aware refinement (fast bilateral solver) per ECSSD image, and what sharing the grid saves.

    python benchmarks/bench_refinement.py              # ../shared/datasets/ECSSD, the first 100 images
    python benchmarks/bench_refinement.py --limit 1000

Rows, measured one after the other in one process on the same photos (ECSSD, about 300 x 400):
  refine, 1 map          `refine(photo, map)`: the grid, its bistochastisation and one CG solve
  refine_maps, 3 maps    three maps of one photo (the evaluate stage's three models) on one grid
  3 x refine             the same three maps, one `refine` call each
  pseudo-label, 128 px   one DUTS-TR-size square (128 x 128), as `selftrain.refine_labels` refines
Times are CPU seconds of this process (process_time), so other work on the machine does not count;
the maps are the centre prior, the ground truth blurred (sigma 8) and seeded noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.datasets import get_layout, load_benchmark  # noqa: E402
from evaluation.predictors import centre_prior_map  # noqa: E402
from evaluation.refinement import refine, refine_maps  # noqa: E402
from generator.image_io import load_rgb  # noqa: E402


def per_image_ms(work, items) -> float:
    started = time.process_time()
    for item in items:
        work(*item)
    return (time.process_time() - started) / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"),
                        help="benchmarks root holding ECSSD/")
    parser.add_argument("--limit", type=int, default=100, help="first N images")
    args = parser.parse_args()

    benchmark = load_benchmark(get_layout("ECSSD"), Path(args.root) / "ECSSD")
    pairs = benchmark.pairs[:args.limit]
    rng = np.random.default_rng(0)
    items = []
    for pair in pairs:
        photo, mask = load_rgb(pair.image), benchmark.read_mask(pair)
        maps = [centre_prior_map(*mask.shape), ndimage.gaussian_filter(mask.astype(np.float32), 8),
                rng.random(mask.shape).astype(np.float32)]
        items.append((photo, maps))
    squares = [(np.ascontiguousarray(photo[:128, :128]), maps[1][:128, :128]) for photo, maps in items]
    pixels = int(np.mean([photo.shape[0] * photo.shape[1] for photo, _ in items]))
    print(f"ECSSD: {len(items)} images, {pixels} pixels on average (about {int(np.sqrt(pixels * 3 / 4))} x "
          f"{int(np.sqrt(pixels * 4 / 3))})\n")

    one = per_image_ms(lambda photo, maps: refine(photo, maps[1]), items)
    shared = per_image_ms(lambda photo, maps: refine_maps(photo, maps), items)
    separate = per_image_ms(lambda photo, maps: [refine(photo, m) for m in maps], items)
    square = per_image_ms(refine, squares)
    print(f"{'what':24s} {'ms / image':>11s}")
    print(f"{'refine, 1 map':24s} {one:11.1f}")
    print(f"{'refine_maps, 3 maps':24s} {shared:11.1f}")
    print(f"{'3 x refine':24s} {separate:11.1f}   ({separate / shared:.2f}x the shared grid)")
    print(f"{'pseudo-label, 128 px':24s} {square:11.1f}")


if __name__ == "__main__":
    main()
