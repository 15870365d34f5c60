"""`evaluate-saliency --processes`: one process against several, wall time, in alternating rounds.

    python benchmarks/bench_eval_processes.py --model data/model --selftrained-model data/selftrain_model
    python benchmarks/bench_eval_processes.py --limit 200 --processes 2 --rounds 1   # a quicker look

Each round runs `evaluate_benchmark` on ECSSD as the demo's evaluate stage does (the given U-Nets
and the centre prior, each also refined; paper and toolbox conventions; localisation) once with
one process and once with each --processes, and prints wall seconds, images/s, the ratio to one
process and the largest difference between their metrics.  Wall time, not CPU time: the point
is the other cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.conventions import PAPER, TOOLBOX  # noqa: E402
from evaluation.datasets import get_layout, load_benchmark  # noqa: E402
from evaluation.evaluate import evaluate_benchmark  # noqa: E402
from evaluation.predictors import CentrePrior, UNetPredictor  # noqa: E402


def largest_difference(a: dict, b: dict) -> float:
    return max(abs(value - b[convention][row][name]) for convention, rows in a.items()
               for row, values in rows.items() for name, value in values.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"),
                        help="folder holding ECSSD/")
    parser.add_argument("--model", action="append", default=[], help="U-Net folder (repeatable)")
    parser.add_argument("--selftrained-model", dest="model", action="append", help="another U-Net folder")
    parser.add_argument("--processes", type=int, action="append", help="worker processes to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    benchmark = load_benchmark(get_layout("ECSSD"), Path(args.root) / "ECSSD")
    predictors = [UNetPredictor.from_folder(folder) for folder in args.model]
    predictors.append(CentrePrior(predictors[0].input_size if predictors else 128))
    counts = [1, *(args.processes or [2])]
    seconds: dict[int, list[float]] = {count: [] for count in counts}
    metrics: dict[int, dict] = {}
    for _ in range(args.rounds):
        for count in counts:
            started = time.perf_counter()
            result = evaluate_benchmark(benchmark, predictors, [PAPER, TOOLBOX], limit=args.limit, progress=False,
                                        refinement=True, processes=count)
            seconds[count].append(time.perf_counter() - started)
            metrics[count] = result.metrics
    images = result.count
    print(f"ECSSD, {images} images, {len(predictors)} predictors, refined too, 2 conventions, "
          f"{args.rounds} rounds, torch {torch.__version__}")
    print(f"{'processes':>9} {'seconds (each round)':>24} {'images/s':>9} {'x one':>6} {'max |diff|':>11}")
    for count in counts:
        best = min(seconds[count])
        print(f"{count:>9} {' '.join(f'{s:.1f}' for s in seconds[count]):>24} {images / best:>9.1f} "
              f"{min(seconds[1]) / best:>6.2f} {largest_difference(metrics[1], metrics[count]):>11.1e}")


if __name__ == "__main__":
    main()
