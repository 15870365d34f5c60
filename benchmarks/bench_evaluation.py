"""Evaluation throughput on ECSSD, and the same metric set computed by PySODMetrics in the same run.

    python benchmarks/bench_evaluation.py                        # ../shared/datasets/ECSSD, all 1,000 images
    python benchmarks/bench_evaluation.py --limit 200            # a quicker look
    python benchmarks/bench_evaluation.py --model data/model     # end-to-end rows with the trained U-Net too

Rows, measured one after the other in one process on the same 8-bit predictions and masks:
  metrics  <kind>   MetricSuite under the toolbox convention (saliency metrics: max/mean/adaptive F,
                    MAE, IoU and accuracy at 0.5, S-measure, max/mean/adaptive E) against PySODMetrics'
                    Fmeasure, MAE, Smeasure, Emeasure and FmeasureV2 (IoU, accuracy) on the same images;
                    speed-up = PySODMetrics' time / ours, max |diff| over the ten shared numbers
  full     <conv>   the whole metric set including MaxBoxAcc and PxAP, per convention
  end-to-end        images/s of `evaluate_benchmark`: reading, the inference protocol, the centre prior
                    (and --model), every metric under both conventions
Times are CPU seconds of this process (process_time), so other work on the machine does not count.
Prediction kinds: centre_prior (a Gaussian), blurred_gt (the mask blurred, sigma 8), random (seeded noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.conventions import PAPER, TOOLBOX  # noqa: E402
from evaluation.datasets import get_layout, load_benchmark  # noqa: E402
from evaluation.evaluate import evaluate_benchmark  # noqa: E402
from evaluation.metrics import MetricSuite  # noqa: E402
from evaluation.predictors import CentrePrior, UNetPredictor  # noqa: E402
from evaluation.pysod_reference import PREDICTION_KINDS, SHARED_OUTPUTS, PySODReference, synthetic_prediction  # noqa: E402


def timed(feed, pairs) -> float:
    started = time.process_time()
    for prediction, mask in pairs:
        feed(prediction, mask)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"),
                        help="benchmarks root holding ECSSD/")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--model", default=None, help="trained-model folder for the end-to-end rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    benchmark = load_benchmark(get_layout("ECSSD"), Path(args.root) / "ECSSD")
    pairs = benchmark.pairs[:args.limit] if args.limit else benchmark.pairs
    masks = [benchmark.read_mask(pair) for pair in pairs]
    n = len(masks)
    print(f"ECSSD: {n} images, {int(np.mean([m.size for m in masks]))} pixels on average\n")
    print(f"{'row':10s} {'kind':18s} {'ours img/s':>11s} {'PySOD img/s':>12s} {'speed-up':>9s} {'max |diff|':>11s}")

    for kind in PREDICTION_KINDS:
        data = [(synthetic_prediction(kind, mask, seed=i), mask) for i, mask in enumerate(masks)]
        ours, reference = MetricSuite(TOOLBOX, localisation=False), PySODReference()
        ours_seconds = timed(ours.update, data)
        reference_seconds = timed(reference.update, data)
        got, expected = ours.compute(), reference.compute()
        diff = max(abs(got[name] - expected[name]) for name in SHARED_OUTPUTS)
        print(f"{'metrics':10s} {kind:18s} {n / ours_seconds:11.1f} {n / reference_seconds:12.1f} "
              f"{reference_seconds / ours_seconds:8.1f}x {diff:11.1e}")

    data = [(synthetic_prediction("blurred_gt", mask), mask) for mask in masks]
    for convention in (PAPER, TOOLBOX):
        suite = MetricSuite(convention)
        # the paper's convention reads probabilities: the same maps as floats in [0, 1]
        feed = [(p / 255.0 if convention is PAPER else p, m) for p, m in data]
        seconds = timed(suite.update, feed)
        print(f"{'full':10s} {convention.name:18s} {n / seconds:11.1f} {'-':>12s} {'-':>9s} {'-':>11s}")

    predictors = []
    if args.model:
        predictors.append(UNetPredictor.from_folder(args.model))
    predictors.append(CentrePrior(predictors[0].input_size if predictors else 128))
    started, wall = time.process_time(), time.perf_counter()
    result = evaluate_benchmark(benchmark, predictors, [PAPER, TOOLBOX], batch_size=16, examples=0,
                                limit=args.limit, progress=False)
    seconds, wall = time.process_time() - started, time.perf_counter() - wall
    names = "+".join(p.name for p in predictors)
    print(f"{'end-to-end':10s} {names:18s} {n / seconds:11.1f} {'-':>12s} {'-':>9s} {'-':>11s}"
          f"   ({seconds:.1f} s CPU, {wall:.1f} s wall for {n} images, both conventions)")
    headline = result.metrics["paper"]["centre_prior"]
    print(f"\ncentre prior, paper convention: max F {headline['max_f']:.3f}, IoU {headline['iou']:.3f}, "
          f"accuracy {headline['accuracy']:.3f}, MaxBoxAcc {headline['max_box_acc']:.3f}, PxAP {headline['pxap']:.3f}")


if __name__ == "__main__":
    main()
