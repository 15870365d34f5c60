"""segment-images throughput on ECSSD's photos, and ONNX Runtime against PyTorch for one photo.

    python benchmarks/bench_segment.py                          # data/model (or data/selftrain_model), all of ECSSD
    python benchmarks/bench_segment.py --model data/model --limit 200 --threads 1 2

Rows:
  segment-images  the command itself (in process, fresh output folder, probability maps; with
                  --refine refined), once per --threads value (one process) and once per --processes
                  value (one thread each): photos/s over wall time, its ratio to the first row, and
                  for one process CPU seconds per photo (process time, both threads: inference and
                  decoding; worker processes are not this process's children, so not for them)
  latency         one photo with a 128-px shorter side (the first ECSSD photo resized, 128 x W),
                  the U-Net forward + sigmoid in PyTorch and in ONNX Runtime (CPU provider), each
                  with 1 thread, calls interleaved, median and spread of --repeats runs after warm-up;
                  for the trained model and for the paper's width (64 base channels, depth 4; random
                  weights: the time does not depend on their values)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.segment import main as segment_images  # noqa: E402
from generator.image_io import load_rgb, resize_shorter_side, to_unit_range  # noqa: E402
from trainer.export import load_trained_model  # noqa: E402
from trainer.model_folders import default_model_folder  # noqa: E402
from trainer.onnx_export import INPUT_NAME, ProbabilityUNet, export_onnx_bytes  # noqa: E402
from trainer.unet import UNet  # noqa: E402


def bench_segment(images: Path, model: Path, threads: int, limit: int | None, batch_size: int,
                  processes: int = 1, refine: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        source = images
        if limit:
            source = Path(scratch) / "photos"
            source.mkdir()
            for photo in sorted(images.glob("*.jpg"))[:limit]:
                (source / photo.name).symlink_to(photo.resolve())
        output = Path(scratch) / "masks"
        wall, cpu = time.perf_counter(), time.process_time()
        result = CliRunner().invoke(segment_images, [str(source), str(output), "--model", str(model), "--quiet",
                                                     "--threads", str(threads), "--batch-size", str(batch_size),
                                                     "--processes", str(processes)] + (["--refine"] if refine else []))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if result.exit_code != 0:
            raise SystemExit(f"segment-images failed: {result.output}")
        count = sum(1 for _ in output.rglob("*.png"))
    return {"photos": count, "wall_s": wall, "photos_per_s": count / wall, "cpu_s_per_photo": cpu / count}


def bench_latency(unet: UNet, config: dict, image: torch.Tensor, repeats: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(export_onnx_bytes(unet, config), options, providers=["CPUExecutionProvider"])
    model = ProbabilityUNet(unet.eval()).eval()
    feed = {INPUT_NAME: image.numpy()}
    with torch.inference_mode():
        reference = model(image).numpy()
    difference = float(np.abs(session.run(None, feed)[0] - reference).max())
    times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    for _ in range(2):                                   # warm-up
        session.run(None, feed)
        with torch.inference_mode():
            model(image)
    for _ in range(repeats):                             # interleaved, so load changes hit both alike
        start = time.perf_counter()
        with torch.inference_mode():
            model(image)
        times["pytorch"].append(time.perf_counter() - start)
        start = time.perf_counter()
        session.run(None, feed)
        times["onnxruntime"].append(time.perf_counter() - start)
    return {"difference": difference, **{name: (statistics.median(values), min(values), max(values))
                                         for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"
                                                / "ECSSD" / "images"), help="folder of photos (ECSSD's)")
    parser.add_argument("--model", default=None, help="trained-model folder (default: as segment-images)")
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads, one row each")
    parser.add_argument("--processes", type=int, nargs="+", default=[2],
                        help="worker processes (one thread each), one row each")
    parser.add_argument("--refine", action="store_true", help="segment with --refine")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30, help="latency runs per engine (median reported)")
    parser.add_argument("--skip-segment", action="store_true", help="only the latency rows")
    args = parser.parse_args()

    images = Path(args.images)
    model = Path(args.model) if args.model else default_model_folder()
    if model is None or not images.is_dir():
        raise SystemExit(f"need a trained model (data/model, or --model) and photos in {images}")
    unet, config = load_trained_model(model)
    print(f"model {model}: base_channels {unet.base_channels}, depth {unet.depth}, input_size {config['input_size']}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} default threads")

    if not args.skip_segment:
        print(f"\n{'segment-images':16s} {'threads':>7s} {'procs':>5s} {'photos':>7s} {'wall s':>8s} {'photos/s':>9s} "
              f"{'x first':>7s} {'CPU s/photo':>12s}{'  (refined)' if args.refine else ''}")
        first = None
        for threads, processes in [(t, 1) for t in args.threads] + [(1, p) for p in args.processes if p > 1]:
            row = bench_segment(images, model, threads, args.limit, args.batch_size, processes, args.refine)
            first = first or row["photos_per_s"]
            cpu = f"{row['cpu_s_per_photo']:12.4f}" if processes == 1 else f"{'-':>12s}"
            print(f"{'':16s} {threads:7d} {processes:5d} {row['photos']:7d} {row['wall_s']:8.1f} "
                  f"{row['photos_per_s']:9.1f} {row['photos_per_s'] / first:7.2f} {cpu}", flush=True)

    torch.set_num_threads(1)
    photo = sorted(images.glob("*.jpg"))[0]
    image = resize_shorter_side(to_unit_range(load_rgb(photo))[None], 128)
    torch.manual_seed(0)
    paper = UNet(base_channels=64, depth=4, bilinear=True)
    print(f"\nlatency, one photo {tuple(image.shape[-2:])} ({photo.name}), 1 thread, median (min-max) of "
          f"{args.repeats} runs")
    print(f"{'network':28s} {'PyTorch ms':>22s} {'ONNX Runtime ms':>22s} {'ORT speed-up':>12s} {'max |diff|':>11s}")
    for name, network, network_config in [(f"trained (width {unet.base_channels})", unet, config),
                                          ("paper width 64, depth 4", paper, {"input_size": 128})]:
        row = bench_latency(network, network_config, image, args.repeats)
        cells = [f"{1e3 * median:7.1f} ({1e3 * low:.1f}-{1e3 * high:.1f})"
                 for median, low, high in (row["pytorch"], row["onnxruntime"])]
        print(f"{name:28s} {cells[0]:>22s} {cells[1]:>22s} {row['pytorch'][0] / row['onnxruntime'][0]:11.2f}x "
              f"{row['difference']:11.1e}")


if __name__ == "__main__":
    main()
