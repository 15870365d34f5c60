"""Forward throughput of the house generator v2 beside v1, in one run, on this machine's CPU.

The machine is shared and its speed moves from second to second, so the two models are timed in
alternating rounds and each keeps its best round; the ratio v2 / v1 is the figure to trust, and
the absolute images/s are printed beside the 150 images/s target (and v1's quiet-machine figure,
about 900 images/s at batch 32 on 2 threads).

    .venv/bin/python benchmarks/bench_house_v2.py                 # untrained v2 of the default shape
    .venv/bin/python benchmarks/bench_house_v2.py --v2-weights data/house_gan_v2/house_gan.pt
    .venv/bin/python benchmarks/bench_house_v2.py --v1-weights OLD.pt --v2-weights generator/house/house_gan.pt
                                      # any two house weights files: the second is timed as "v2"
    .venv/bin/python benchmarks/bench_house_v2.py --width 12      # another v2 shape, untrained
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from generator.house.model_v2 import HouseV2Config, HouseV2EncoderNet, HouseV2GeneratorNet
from generator.house.training import save_weights
from generator.registry import build_generator

TARGET_IMAGES_PER_SECOND = 150.0


def _timed(fn, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def _v2_functions(args) -> tuple[str, int, int, object, object, dict]:
    if args.v2_weights:
        house = build_generator({"name": "house", "weights": args.v2_weights})
        nets = {"generator": house.generator_net, "encoder": house.encoder_net}
        return (f"{house.architecture} {house.identity}", house.latent_dim, house.resolution, house.generate,
                house.encode, nets)
    # an untrained v2 exported as the backend reads it, so the timed path is the product's
    config = HouseV2Config(width=args.width, encoder_width=args.encoder_width, latent_dim=args.latent_dim,
                           residual_up_to=args.residual_up_to)
    torch.manual_seed(0)
    generator, encoder = HouseV2GeneratorNet(config).eval(), HouseV2EncoderNet(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        save_weights(generator, encoder, {"steps": 0}, Path(folder) / "house_gan.pt")
        house = build_generator({"name": "house", "weights": str(Path(folder) / "house_gan.pt")})
    nets = {"generator": house.generator_net, "encoder": house.encoder_net}
    return (f"v2 untrained, width {args.width}", house.latent_dim, house.resolution, house.generate, house.encode,
            nets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1-weights", default=None,
                        help="v1 weights file (default: the shipped one, which is the layered generator; "
                             "v1's: git show 1c4e3e6:generator/house/house_gan.pt > V1.pt)")
    parser.add_argument("--v2-weights", default=None, help="v2 weights file (default: an untrained v2)")
    parser.add_argument("--width", type=int, default=HouseV2Config.width, help="untrained v2: generator width")
    parser.add_argument("--residual-up-to", type=int, default=HouseV2Config.residual_up_to)
    parser.add_argument("--encoder-width", type=int, default=HouseV2Config.encoder_width)
    parser.add_argument("--latent-dim", type=int, default=HouseV2Config.latent_dim)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12, help="alternating timed rounds per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    v1 = build_generator({"name": "house", "weights": args.v1_weights})
    v2_name, v2_latent, v2_side, v2_generate, v2_encode, v2_nets = _v2_functions(args)
    rng = torch.Generator().manual_seed(0)
    n = args.batch_size
    inputs = {
        "v1 generate": (v1.generate, torch.randn(n, v1.latent_dim, generator=rng)),
        "v2 generate": (v2_generate, torch.randn(n, v2_latent, generator=rng)),
        "v1 encode": (v1.encode, torch.rand(n, 3, v1.resolution, v1.resolution, generator=rng) * 2 - 1),
        "v2 encode": (v2_encode, torch.rand(n, 3, v2_side, v2_side, generator=rng) * 2 - 1),
    }
    best = {name: float("inf") for name in inputs}
    with torch.no_grad():
        for fn, batch in inputs.values():
            fn(batch)  # warm-up
        for _ in range(args.rounds):
            for name, (fn, batch) in inputs.items():
                best[name] = min(best[name], _timed(fn, batch))
    rate = {name: n / seconds for name, seconds in best.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"v1: {v1.identity}, {v1.resolution} px, latent {v1.latent_dim}")
    params = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M" for k, m in v2_nets.items())
    print(f"v2: {v2_name}, {v2_side} px, latent {v2_latent}; parameters: {params}")
    print(f"{args.threads} threads, batch {n}, best of {args.rounds} alternating rounds; "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"{'':>9} {'v1 img/s':>9} {'v2 img/s':>9} {'v2 / v1':>8} {'v2 x target':>12}")
    for what in ("generate", "encode"):
        a, b = rate[f"v1 {what}"], rate[f"v2 {what}"]
        print(f"{what:>9} {a:>9.0f} {b:>9.0f} {b / a:>8.3f} {b / TARGET_IMAGES_PER_SECOND:>12.2f}")


if __name__ == "__main__":
    main()
