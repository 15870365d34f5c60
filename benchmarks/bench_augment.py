"""What augmenting the generated pairs costs a U-Net training step, at the demo's settings.

    python benchmarks/bench_augment.py                 # batch 32, 64 x 64, width 16, depth 4
    python benchmarks/bench_augment.py --batch-size 95 --side 128 --width 64

Rows, measured in one process, interleaved step by step on the same random batches so that
other work on the machine weighs on both alike:
  augment only           trainer.augment.augment_pairs on one batch (mirror, colour, blur, grain)
  step, plain            one optimiser step of the U-Net on the batch as it is
  step, augmented        augment_pairs, then the same step
Times are milliseconds of wall clock per batch (median over the steps); the ratio is augmented
over plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.augment import augment_pairs  # noqa: E402
from trainer.loop import training_step  # noqa: E402
from trainer.unet import UNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="U-Net base channels")
    parser.add_argument("--steps", type=int, default=30, help="measured steps of each kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.side, args.side, generator=generator) * 2 - 1
    masks = (torch.rand(args.batch_size, 1, args.side, args.side, generator=generator) > 0.5).float()
    torch.manual_seed(0)
    model = UNet(3, args.width, 4, True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    pixels = args.batch_size * args.side * args.side

    def augment() -> tuple[torch.Tensor, torch.Tensor]:
        return augment_pairs(images, masks, generator)

    def plain_step() -> None:
        training_step(model, optimizer, images, masks, pixels, 1)

    def augmented_step() -> None:
        training_step(model, optimizer, *augment(), pixels, 1)

    rows = {"augment only": augment, "step, plain": plain_step, "step, augmented": augmented_step}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for work in rows.values():  # warm-up
        work()
    for _ in range(args.steps):
        for name, work in rows.items():
            started = time.perf_counter()
            work()
            times[name].append((time.perf_counter() - started) * 1000)

    print(f"batch {args.batch_size}, {args.side} x {args.side}, U-Net width {args.width}, "
          f"{args.threads} threads, median of {args.steps}")
    print(f"{'row':<18}{'ms / batch':>12}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:<18}{value:>12.1f}")
    print(f"augmented / plain step: {medians['step, augmented'] / medians['step, plain']:.3f}")


if __name__ == "__main__":
    main()
