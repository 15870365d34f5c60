"""Trainer throughput: the shard loader against the U-Net it feeds, and the paper U-Net's step time.

    python benchmarks/bench_trainer.py                  # CPU; synthetic 64 x 64 shards in a temp folder
    python benchmarks/bench_trainer.py --device cuda    # adds nothing to the loader, times the GPU steps
    python benchmarks/bench_trainer.py --shards data/shards
    python benchmarks/bench_trainer.py --threads 1              # a CPU shared with other work

Rows, measured one after the other in one run:
  loader       decoded (image, mask) pairs per second from `training_loader` with --workers processes
  unet-demo    training samples per second of the demo's U-Net (params.yaml `train`: width, depth, batch)
  unet-paper   the paper's U-Net (64 base channels, bilinear) at batch 95 on 128 x 128 inputs
The loader must outpace the demo U-Net by 3x or more, or training waits for data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train-unet sets it (trainer/main.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.params import load_section  # noqa: E402
from trainer.config import PAPER_SCHEDULE, TrainConfig  # noqa: E402
from trainer.shards import StreamPlan, probe_image_size, resolve_shards, split_holdout, training_loader  # noqa: E402
from trainer.unet import UNet  # noqa: E402


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> None:
    """Shards in the public layout: noisy images with a bright ellipse, its mask, a JSON record."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"synth-{shard:06d}.tar")) as sink:
            for position in range(per_shard):
                (cy, cx), (ry, rx) = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.1, 0.3, 2) * size
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                image = np.clip(rng.normal(60, 30, (size, size, 3)) + 120 * mask[..., None], 0, 255).astype(np.uint8)
                jpg, png = io.BytesIO(), io.BytesIO()
                Image.fromarray(image).save(jpg, format="JPEG", quality=95)
                Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
                sink.write({"__key__": f"{shard:06d}_{position:06d}", "jpg": jpg.getvalue(),
                            "mask.png": png.getvalue(), "json": {"index": position, "shard": shard}})


def loader_rate(urls: list[str], workers: int, batch_size: int, batches: int) -> float:
    plan = StreamPlan(tuple(urls), seed=0, workers=workers, batch_size=batch_size, shuffle_buffer=1000)
    stream = iter(training_loader(plan, None, processes=workers))
    for _ in range(2 * workers):  # worker start-up and the shuffle buffers' first fill
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * batch_size / (time.perf_counter() - started)
    del stream
    return rate


def step_time(model: UNet, batch_size: int, size: int, steps: int, device: torch.device, bf16: bool) -> float:
    """Seconds per Adam step (forward, BCE, backward, update) on random data, after one warm-up step."""
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch_size, 3, size, size, device=device) * 2 - 1
    masks = (torch.rand(batch_size, 1, size, size, device=device) > 0.5).float()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        with autocast():
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="its `train` section is the demo's model")
    parser.add_argument("--shards", help="shards to read (default: synthetic 64 x 64 shards in a temp folder)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--batches", type=int, default=60, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=5, help="demo U-Net steps timed")
    parser.add_argument("--paper-steps", type=int, default=1, help="paper U-Net steps timed (0: skip)")
    parser.add_argument("--threads", type=int, help="torch threads of the U-Net rows (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device of the U-Net rows")
    args = parser.parse_args()

    try:
        demo = TrainConfig.from_section(load_section("train", args.params))
    except (FileNotFoundError, KeyError):
        demo = TrainConfig()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        if args.shards:
            urls = split_holdout(resolve_shards(args.shards), demo.holdout_shards)[0]
        else:
            write_shards(Path(scratch), shards=8, per_shard=300, size=64)
            urls = resolve_shards(scratch, manifest=False)   # its own shards, written without a manifest
        size = demo.input_size or probe_image_size(urls[0])
        rows = []
        loader = loader_rate(urls, args.workers, demo.batch_size, args.batches)
        rows.append(("loader", f"{args.workers} workers, batch {demo.batch_size}, {size} px", loader, None))

        torch.manual_seed(0)
        model = UNet(3, demo.base_channels, demo.depth, demo.bilinear)
        seconds = step_time(model, demo.batch_size, size, args.steps, device, bf16=False)
        rows.append(("unet-demo", f"width {demo.base_channels}, batch {demo.batch_size}, {size} px, fp32",
                     demo.batch_size / seconds, seconds))
        if args.paper_steps:
            batch, width = PAPER_SCHEDULE["batch_size"], PAPER_SCHEDULE["base_channels"]
            for bf16 in ([False, True] if device.type == "cuda" else [False]):
                model = UNet(3, width, PAPER_SCHEDULE["depth"], PAPER_SCHEDULE["bilinear"])
                seconds = step_time(model, batch, 128, args.paper_steps, device, bf16=bf16)
                rows.append(("unet-paper", f"width {width}, batch {batch}, 128 px, {'bf16' if bf16 else 'fp32'}",
                             batch / seconds, seconds))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"trainer throughput ({name}; torch {torch.__version__})")
    print(f"| {'row':<10} | {'setting':<36} | {'samples/s':>10} | {'s/step':>8} |")
    print(f"|{'-' * 12}|{'-' * 38}|{'-' * 12}|{'-' * 10}|")
    for row, setting, rate, seconds in rows:
        print(f"| {row:<10} | {setting:<36} | {rate:>10.1f} | {'' if seconds is None else f'{seconds:.3f}':>8} |")
    print(f"loader / demo U-Net: {loader / rows[1][2]:.1f}x (must be >= 3x)")


if __name__ == "__main__":
    main()
