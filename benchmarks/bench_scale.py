"""Generation at scale: the generator's own speed against gen-synth's, side by side in one run.

    python benchmarks/bench_scale.py                         # CPU: the house generator
    python benchmarks/bench_scale.py --quick                 # the same, tiny (a smoke test)
    python benchmarks/bench_scale.py --device cuda --generator standin --generator house \\
        --n 18000 --shard-size 500 --batch-size 95 --workers 12 --trainer   # a GPU: a few minutes

For each generator, rows measured one after the other:
  forward      G(z) and G(z + h) for a batch, nothing else (on CPU with one torch thread, as the
               gen-synth paths use): candidates/s, the ceiling of everything below
  sampling     the renderer's own CPU cost of drawing a batch's latents (gen-synth's Gaussian
               sampler, counter-based Philox streams), as candidates/s
  hand-off     the pipeline renderer's own CPU cost of handing a batch over: putting fresh batches
               of this size in shared memory (benchmarks/bench_handoff.py has the whole hand-off),
               as candidates/s
               Both run in the renderer's process while the device renders, so each is free when
               well above forward; together they bound the pipeline at 1 / (1/sampling + 1/hand-off)
  single       gen-synth with everything in one process (--workers 1): today's path on a GPU
  pipeline     gen-synth with G in this process and --workers processes post-processing
  processes    (CPU only) gen-synth with whole shards in --workers processes
Each gen-synth path runs twice, for --n and --short-n kept samples: the difference of the two
runs is the steady rate, without the start-up both pay (starting the worker processes, seconds on
some machines), and the row gives that steady candidates/s (what G renders), kept samples/s, the
ratio of its candidates/s to the forward row's, the start-up, and over the --n run the share of
the wall time the device spent in G and the share the post-processing processes were busy (which
of the two holds the rate back; when neither is near 100%, the renderer process itself does), and
the post-processing ceiling: the candidates/s its processes would reach if they never waited for
a batch (candidates per busy second, times the processes), what the row can reach with a free G.
The `standin` generator is benchmarks/bigbigan_standin.py,
BigGAN's 128 x 128 generator with random weights (BigBiGAN's cost); its direction's sign is
chosen so about a quarter of the pixels move, and its runs keep every candidate (no histogram
test, size bounds 0 to 1: random weights draw no object the paper's filters would pass), so its
samples/s equals its candidates/s and its post-processing is that of a run keeping everything.

--trainer adds, on the standin's shards when it ran (128 px, BigBiGAN's size), else the last
generator's: the loader's own ceiling (decoded pairs/s with no model); the paper U-Net step's
ceiling (batch 95, width 64, 128 x 128, random data already on the device); then train-unet's own
loop (trainer.loop.train, the paper's network and batch; on a GPU bf16, channels_last and pinned
batches) for --unet-steps steps from the shards with --loader-workers processes: its steady
steps/s and samples/s (after the first fifth of the steps, which holds the start-up), the start-up
time and the 12,000-step schedule's time at that rate; with --compile (the default on a GPU) the
same loop under torch.compile (train.compile), its speed-up and its start-up, compilation included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from generator.wheels import import_from_wheels  # noqa: E402

#: What gen-synth and the trainer import besides torch and numpy (module -> wheel).  A bare GPU
#: machine may lack them: they come from the wheels carried beside the code (README, "Reproducing
#: the paper"), data/wheels (Pillow, as for the house generator's run) and data/bench_wheels.
#: Dependencies come before the modules that import them (webdataset needs yaml and braceexpand).
NEEDED = {"PIL.Image": "pillow", "scipy.sparse": "scipy", "click": "click", "yaml": "pyyaml", "tqdm": "tqdm",
          "braceexpand": "braceexpand", "webdataset": "webdataset"}
try:
    import_from_wheels(NEEDED, [ROOT / "data" / "wheels", ROOT / "data" / "bench_wheels"])
except ImportError as error:
    raise SystemExit(f"bench_scale: {error}")

from generator.direction import Direction, DirectionError, load_direction, save_direction  # noqa: E402
from generator.registry import build_generator  # noqa: E402
from generator.synth.filters import FilterConfig  # noqa: E402
from generator.synth.main import synthesize  # noqa: E402
from generator.synth.masks import synthesize_masks  # noqa: E402
from generator.synth.pipeline import SharedSlots  # noqa: E402
from generator.synth.samplers import GaussianSampler  # noqa: E402
from generator.synth.settings import SynthSettings  # noqa: E402

SPECS = {
    "house": {"name": "house"},
    "standin": {"name": "python:benchmarks.bigbigan_standin:build_standin"},
}
#: The standin's random weights draw no object: the histogram filter rejects every one of its
#: images and the size filter half of its masks, so a run with the paper's filters would spend its
#: whole candidate budget and stop.  Its runs keep every candidate instead: masks are still built,
#: their components filtered and their foreground measured (size bounds 0 to 1), and every
#: candidate is encoded and written, which is more post-processing per candidate than any real run.
KEEP_EVERY_CANDIDATE = FilterConfig(histogram=False, min_foreground=0.0, max_foreground=1.0)
FILTERS = {"house": FilterConfig(), "standin": KEEP_EVERY_CANDIDATE}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(generator, shift: torch.Tensor, batch: int, seconds: float) -> float:
    """Candidates per second of G(z) and G(z + h) alone (one warm-up batch first)."""
    z = torch.randn(batch, generator.latent_dim, generator=torch.Generator().manual_seed(0)).to(generator.device)
    done, start = -1, 0.0
    with torch.inference_mode():
        while done < 0 or time.perf_counter() - start < seconds:
            generator.generate(z)
            generator.generate(z + shift)
            synchronize(generator.device)
            if done < 0:
                start = time.perf_counter()
            done += 1
    return done * batch / (time.perf_counter() - start)


def pack_rate(generator, batch: int, rounds: int = 6) -> float:
    """Candidates/s at which the pipeline's renderer puts fresh batches of this generator's size in
    shared memory for its workers (`SharedSlots.pack` into a slot a worker has freed, done in the
    renderer's process while the device renders the next batch): far above the forward rate, it
    costs the device nothing."""
    with torch.inference_mode():
        side = generator.generate(torch.zeros(1, generator.latent_dim, device=generator.device)).shape[-1]
    from bench_handoff import fresh_batch
    rng = np.random.default_rng(0)
    slots, seconds = SharedSlots(), 0.0
    try:
        for round_ in range(rounds + 1):               # the first round warms up
            rendered = fresh_batch(rng, side, batch)
            started = time.perf_counter()
            _, slot = slots.pack(rendered)
            seconds += (time.perf_counter() - started) if round_ else 0.0
            if slots.failure is not None:
                raise slots.failure
            slots.release(slot)                       # as a worker does once it has read the batch
    finally:
        slots.close()
    return rounds * batch / seconds


def sampling_rate(generator, batch: int, rounds: int = 20) -> float:
    """Candidates/s at which gen-synth's Gaussian sampler draws latents (the renderer does it for
    every batch before launching G)."""
    sampler = GaussianSampler(generator.latent_dim)
    sampler.sample(0, 0, np.arange(batch))                # warm-up
    started = time.perf_counter()
    for round_ in range(rounds):
        sampler.sample(0, 1, np.arange(round_ * batch, (round_ + 1) * batch))
    return rounds * batch / (time.perf_counter() - started)


def chosen_shift(generator, magnitude: float) -> torch.Tensor:
    """A seeded random direction, its sign chosen so the mask covers nearer a quarter of the image."""
    vector = torch.randn(generator.latent_dim, generator=torch.Generator().manual_seed(1))
    shift = magnitude * vector / vector.norm()
    z = torch.randn(8, generator.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        base = generator.generate(z.to(generator.device))
        fraction = {sign: synthesize_masks(base, generator.generate((z + sign * shift).to(generator.device)))
                    .float().mean().item() for sign in (1, -1)}
    sign = min(fraction, key=lambda s: abs(fraction[s] - 0.25))
    return sign * shift


@dataclasses.dataclass
class Run:
    """One gen-synth run: its totals, wall time and the busy seconds its shards recorded."""

    candidates: int
    samples: int
    seconds: float
    generate_s: float        # device (or CPU) time in G, summed over batches
    postprocess_s: float     # post-processing time, summed over the processes doing it


def end_to_end(name: str, generator, direction: Path, output: Path, distributor: str, workers: int,
               n: int, args) -> Run:
    """A fresh gen-synth run of n kept samples into `output`."""
    settings = SynthSettings(n=n, shard_size=args.shard_size, batch_size=args.batch_size, sampler="gaussian",
                             workers=workers, device=args.device, distributor=distributor, resume=False,
                             output=str(output), direction=str(direction), max_candidates_per_sample=200,
                             filters=FILTERS[name])
    with contextlib.redirect_stderr(io.StringIO()):
        summary = synthesize(settings, SPECS[name], overwrite=True, generator=generator, echo=lambda *a, **k: None)
    totals = summary.manifest["totals"]
    busy = {key: sum(stats.timing.get(key, 0.0) for stats in summary.made) for key in ("generate_s", "postprocess_s")}
    return Run(totals["candidates"], totals["samples"], summary.seconds, **busy)


@dataclasses.dataclass
class PathRow:
    """A gen-synth path's figures: steady rates (from two run lengths) and where the time went."""

    candidates: float        # per second, steady
    samples: float
    start_up: float | None   # seconds both runs pay; None when the runs were too short to tell
    g_busy: float            # share of the long run's wall time spent in G
    workers_busy: float      # share of the post-processing processes' wall time spent working
    postprocess_ceiling: float | None   # candidates/s of the post-processing processes never kept waiting


def path_row(long: Run, short: Run, g_processes: int, postprocess_processes: int) -> PathRow:
    """Steady rates from the difference of two runs; the long run's own rates when the difference
    is too small to mean anything (tiny --quick runs)."""
    extra = long.seconds - short.seconds
    if extra > 0.05 * long.seconds and long.candidates > short.candidates:
        candidates = (long.candidates - short.candidates) / extra
        samples = (long.samples - short.samples) / extra
        start_up = max(0.0, long.seconds - long.candidates / candidates)
    else:
        candidates, samples, start_up = long.candidates / long.seconds, long.samples / long.seconds, None
    ceiling = postprocess_processes * long.candidates / long.postprocess_s if long.postprocess_s > 0 else None
    return PathRow(candidates, samples, start_up, long.generate_s / (g_processes * long.seconds),
                   long.postprocess_s / (postprocess_processes * long.seconds), ceiling)


def pipeline_direction_for(generator, path: str):
    """The pipeline's direction when it was found for this generator; None (with a note) otherwise."""
    if not Path(path).is_file():
        return None
    try:
        return load_direction(path, generator)
    except DirectionError as error:
        print(f"note: not using {path} ({error}); a random direction instead", flush=True)
        return None


def failure(error: Exception) -> str:
    """A row's text for a measurement that failed: the rows before and after it still stand."""
    return f"failed: {type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0][:200]


def bench_generator(name: str, args, folder: Path) -> Iterator[tuple]:
    """(generator, path, processes, value) rows, as measured; the value is candidates/s (forward,
    hand-off), a PathRow (gen-synth) or a failure's text."""
    spec = SPECS[name]
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    generator = build_generator(spec).to(device)
    direction = folder / f"{name}-direction.json"
    pipeline_direction = pipeline_direction_for(generator, args.house_direction) if name == "house" else None
    if pipeline_direction is not None:
        direction = Path(args.house_direction)           # the pipeline's: its real acceptance rate
        shift = pipeline_direction.shift()
    else:
        shift = chosen_shift(generator, args.magnitude)
        save_direction(Direction.from_vector(shift.cpu(), generator.identity, method="random", index=0, sign=1,
                                             chosen_by="params"), direction)
    forward = forward_rate(generator, shift.to(device), args.batch_size, args.seconds)
    torch.set_num_threads(threads)
    yield name, "forward", 1, forward
    yield name, "sampling", 1, sampling_rate(generator, args.batch_size)
    try:
        yield name, "hand-off", 1, pack_rate(generator, args.batch_size)
    except Exception as error:  # noqa: BLE001  (no shared memory: the pipeline pickles instead)
        yield name, "hand-off", 1, failure(error)
    paths = [("single", "multiprocessing", 1), ("pipeline", "pipeline", args.workers)]
    if device.type == "cpu":
        paths.append(("processes", "multiprocessing", args.workers))
    for label, distributor, workers in paths:
        try:
            # the long run first: what only a first run pays then counts against the steady rate
            long = end_to_end(name, generator, direction, folder / f"{name}-{label}", distributor, workers,
                              args.n, args)
            short = end_to_end(name, generator, direction, folder / f"{name}-{label}-short", distributor, workers,
                               args.short_n, args)
        except Exception as error:  # noqa: BLE001  (one path failing leaves the others to measure)
            yield name, label, workers, failure(error)
            continue
        # the pipeline runs G in one process; the other paths run it where they post-process
        yield name, label, workers, path_row(long, short, 1 if label == "pipeline" else workers, workers)


def bench_trainer(shards: Path, args, folder: Path) -> Iterator[tuple[str, str]]:
    """The loader's ceiling on `shards`, the paper U-Net step's ceiling (no loader), then
    train-unet's own loop on the shards (plain, and compiled with --compile); rows come as they are
    measured, so a run cut short still shows what it reached."""
    from bench_trainer import loader_rate, step_time   # the trainer's own benchmark's measurements
    from trainer.shards import loader_workers
    from trainer.unet import UNet
    urls = [str(p) for p in sorted(shards.glob("synth-*.tar"))]
    device = torch.device(args.device)
    batch, size = args.unet_batch, args.unet_size
    # at most one worker per shard, as train-unet allows (webdataset splits shards among workers)
    for workers in sorted({loader_workers(count, len(urls), 1) for count in (2, args.loader_workers)}):
        label = f"loader ceiling, {workers} workers, batch {batch} (no model)"
        try:
            yield label, f"{loader_rate(urls, workers, batch, args.loader_batches):.0f} samples/s"
        except Exception as error:  # noqa: BLE001  (a small /dev/shm for the loader, say: the rows below still run)
            yield label, failure(error)
    bf16 = device.type == "cuda"
    torch.manual_seed(0)
    model = UNet(base_channels=64, depth=4, bilinear=True).to(device)
    model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
    label = "U-Net step ceiling (random data on the device, no loader)"
    try:
        seconds = step_time(model, batch, size, args.unet_steps, device, bf16=bf16)
        yield label, f"{1 / seconds:.2f} steps/s, {batch / seconds:.0f} samples/s"
    except Exception as error:  # noqa: BLE001
        yield label, failure(error)
    del model
    plain, workers = None, loader_workers(args.loader_workers, len(urls), 1)   # at most one per shard
    for compiled in [False, True] if args.compile else [False]:
        label = f"train-unet loop, {workers} loader workers{', torch.compile' if compiled else ''}"
        try:
            result = trainer_run(shards, args, compiled, folder / f"train-{'compiled' if compiled else 'plain'}")
        except Exception as error:  # noqa: BLE001  (no compiler on the machine, for one: the rows above stand)
            yield label, failure(error)
            continue
        steady = result.steady_samples_per_second
        if steady is None:
            yield label, "too few steps for a steady rate (give --unet-steps 10 or more)"
            continue
        start_up = args.unet_steps * batch / result.samples_per_second - args.unet_steps * batch / steady
        versus = f", {steady / plain:.2f}x plain" if compiled and plain else ""
        yield label, (f"{steady / batch:.2f} steps/s, {steady:.0f} samples/s{versus}; start-up about "
                      f"{start_up:.0f} s")
        yield (f"  the paper's 12,000 steps at that rate{', start-up included' if compiled else ''}",
               f"{(12000 * batch / steady + (start_up if compiled else 0)) / 60:.1f} min")
        plain = plain or steady


def trainer_run(shards: Path, args, compiled: bool, folder: Path):
    """train-unet's loop (trainer.loop.train) for --unet-steps of the paper's U-Net and batch on
    the shards, as a GPU run trains: bf16, channels_last, pinned batches, --loader-workers."""
    from trainer.config import TrainConfig
    from trainer.loop import train
    steps = args.unet_steps
    config = dataclasses.replace(
        TrainConfig().with_paper_schedule(), shards=str(shards), holdout_shards=0, input_size=args.unet_size,
        batch_size=args.unet_batch, steps=steps, lr_decay_step=None, num_workers=args.loader_workers,
        log_every=max(1, steps // 5), val_every=steps, checkpoint_every=steps, device=args.device, compile=compiled,
        resume=False, checkpoint_dir=str(folder / "checkpoints"), model_dir=str(folder / "model"),
        plots_dir=str(folder / "plots"))
    return train(config, progress=False, log=lambda message: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", action="append", choices=sorted(SPECS), help="house (default), standin")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=2000, help="kept samples of a gen-synth path's long run")
    parser.add_argument("--short-n", type=int, default=None,
                        help="kept samples of its short run (default: about a quarter of --n, in whole rounds "
                             "of --workers x --shard-size)")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="post-processing or shard processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on the forward row")
    parser.add_argument("--magnitude", type=float, default=5.0, help="norm of the random direction")
    parser.add_argument("--trainer", action="store_true", help="add the loader and U-Net rows")
    parser.add_argument("--loader-workers", type=int, default=8)
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--unet-steps", type=int, default=20)
    parser.add_argument("--unet-batch", type=int, default=95, help="the paper's batch")
    parser.add_argument("--unet-size", type=int, default=128, help="the paper's input size")
    parser.add_argument("--house-direction", default="data/directions/direction.json",
                        help="the house generator's direction, when present (else a random one)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time train-unet's loop under torch.compile (default: on a GPU only)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = parser.parse_args()
    if args.compile is None:
        args.compile = torch.device(args.device).type == "cuda"
    if args.quick:
        args.n, args.short_n, args.shard_size, args.batch_size, args.seconds = 40, 20, 10, 8, 0.5
        args.loader_workers, args.loader_batches, args.unet_steps = 1, 2, 2
        args.unet_batch, args.unet_size = 2, 32
    # both runs end on a full round of shards, one per process, so neither leaves processes idle
    # for longer than the other: their difference is then the steady rate
    round_ = args.workers * args.shard_size
    if args.short_n is None:
        args.short_n = round_ * max(1, round(args.n / 4 / round_))
    if args.short_n < round_ or args.n < 2 * args.short_n:
        parser.error(f"--short-n ({args.short_n}) must be at least --workers x --shard-size ({round_}) and --n "
                     f"({args.n}) at least twice --short-n: give --n {2 * max(args.short_n, round_)} or more")
    generators = args.generator or ["house"]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        shm = shutil.disk_usage("/dev/shm") if Path("/dev/shm").is_dir() else None
        print(f"device {args.device}, n {args.n}, shard size {args.shard_size}, batch {args.batch_size}, "
              f"workers {args.workers}, torch {torch.__version__}, "
              + (f"/dev/shm {shm.free / 2 ** 30:.1f} of {shm.total / 2 ** 30:.1f} GiB free" if shm else "no /dev/shm"))
        print(f"gen-synth rows: steady rates from runs of {args.n} and {args.short_n} kept samples")
        print(f"{'generator':<10} {'path':<10} {'procs':>5} {'candidates/s':>13} {'samples/s':>10} {'of forward':>10} "
              f"{'start-up':>9} {'G busy':>7} {'post busy':>9} {'post ceiling':>12}")
        for name in generators:
            forward = None
            for generator, label, workers, value in bench_generator(name, args, folder):
                head = f"{generator:<10} {label:<10} {workers:>5}"
                if isinstance(value, str):
                    print(f"{head} {value}", flush=True)
                elif isinstance(value, PathRow):
                    of_forward = f"{100 * value.candidates / forward:>9.0f}%" if forward else f"{'':>10}"
                    start_up = "?" if value.start_up is None else f"{value.start_up:.1f} s"
                    ceiling = "?" if value.postprocess_ceiling is None else f"{value.postprocess_ceiling:.0f}"
                    print(f"{head} {value.candidates:>13.1f} {value.samples:>10.1f} {of_forward} {start_up:>9} "
                          f"{100 * value.g_busy:>6.0f}% {100 * value.workers_busy:>8.0f}% {ceiling:>12}", flush=True)
                else:
                    forward = forward or value
                    print(f"{head} {value:>13.1f} {'':>10} {100 * value / forward:>9.0f}%", flush=True)
        if args.trainer:
            # BigBiGAN's size (the standin's 128 px shards) when it ran: the production run's decode cost.
            source = "standin" if "standin" in generators else generators[-1]
            shards = folder / f"{source}-pipeline"
            for label, value in bench_trainer(shards, args, folder):
                print(f"{label:<55} {value}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
