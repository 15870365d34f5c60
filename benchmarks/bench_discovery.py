"""Direction discovery speed: the demo's discover stage, and the paper's K = 120 per 1,000 steps.

    python benchmarks/bench_discovery.py                    # house generator, demo settings of params.yaml
    python benchmarks/bench_discovery.py --generator testing --steps 100

Rows, measured one after the other in one process:
  demo stage       the whole discover stage (discovery + scoring + contact sheet) with the `discover`
                   section of params.yaml on the generator of its `generator` section (or --generator);
                   this is what `dvc repro discover` runs
  demo <method>    the discovery loop alone with the demo's settings, both methods
  K=120 ...        latent discovery with K = 120 (the paper's BigBiGAN setting: batch 32, |eps| <= 6,
                   plain directions when the latent space is smaller than 120), run for --steps steps
                   and extrapolated to 1,000 steps (say so: the rate is taken as constant)
Wall seconds are what a user waits; CPU seconds (process_time, all threads) do not count other work
on the machine.  `x demo` is each row's time per step over the demo latent-discovery row's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.discovery.config import DiscoverConfig  # noqa: E402
from generator.discovery.latent_discovery import discover_latent_directions  # noqa: E402
from generator.discovery.single_direction import discover_single_direction  # noqa: E402
from generator.discovery.stage import run_stage  # noqa: E402
from generator.params import load_params  # noqa: E402
from generator.registry import build_generator  # noqa: E402


def measure(run) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--generator", default=None, help="generator name instead of params.yaml's (e.g. testing)")
    parser.add_argument("--steps", type=int, default=200, help="steps measured for the K = 120 rows")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: discover.threads)")
    args = parser.parse_args()
    params = load_params(args.params)
    spec = {"name": args.generator} if args.generator else params["generator"]
    generator = build_generator(spec)
    config = DiscoverConfig.from_params(params.get("discover")).with_changes(checkpoint_dir=None)
    threads = args.threads or config.threads
    if threads:
        torch.set_num_threads(threads)
    print(f"generator {generator.identity}: latent {generator.latent_dim}, {generator.resolution} px; "
          f"torch threads {torch.get_num_threads()}")

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu, outcome = measure(lambda: run_stage(generator, config, folder, progress=False))
    run = outcome.discovery.outcome
    rows.append((f"demo stage ({config.method}, {run.steps_run} steps)", run.steps_run, wall, cpu,
                 f"loop {run.seconds:.1f} s, scoring + sheet {wall - run.seconds:.1f} s; h_bg "
                 f"{outcome.choice.index}{outcome.choice.sign:+d}, score {outcome.choice.score.total:.3f}"))

    latent, single = config.latent_discovery, config.single_direction
    wall, cpu, _ = measure(lambda: discover_latent_directions(generator, latent, config.seed, progress=False))
    rows.append((f"demo latent-discovery (K={latent.directions}, batch {latent.batch_size})", latent.steps,
                 wall, cpu, ""))
    wall, cpu, _ = measure(lambda: discover_single_direction(generator, single, config.seed, progress=False))
    rows.append((f"demo single-direction (batch {single.batch_size})", single.steps, wall, cpu, ""))

    direction_type = "orthonormal" if generator.latent_dim >= 120 else "plain"
    for width, size in ((latent.reconstructor_width, latent.reconstructor_input_size), (64, generator.resolution)):
        paper = dataclasses.replace(latent, directions=120, batch_size=32, steps=args.steps,
                                    direction_type=direction_type, reconstructor_width=width,
                                    reconstructor_input_size=size, checkpoint_every=0)
        wall, cpu, _ = measure(lambda: discover_latent_directions(generator, paper, config.seed, progress=False))
        rows.append((f"K=120 {direction_type}, batch 32, R width {width} at {size} px", args.steps, wall, cpu,
                     "extrapolated from the measured steps"))

    base = rows[1][2] / rows[1][1]
    print(f"\n{'run':58s} {'steps':>6s} {'wall s':>8s} {'cpu s':>8s} {'steps/s':>8s} {'s/1000 steps':>13s} "
          f"{'x demo':>7s}  note")
    for name, steps, wall, cpu, note in rows:
        per_step = wall / steps
        print(f"{name:58s} {steps:6d} {wall:8.1f} {cpu:8.1f} {steps / wall:8.2f} {1000 * per_step:13.0f} "
              f"{per_step / base:7.2f}  {note}")


if __name__ == "__main__":
    main()
