"""`synth-verify --processes`: one process against several on a shard set, wall time, in
alternating rounds.

    python benchmarks/bench_verify.py data/shards
    python benchmarks/bench_verify.py /big/set --processes 2 --processes 4 --rounds 3

The set is read once before the rounds, so every round finds it in the page cache alike (a set
larger than the free memory is read from disk in every round: then the disk is measured too).
Each round runs `verify_folder` once with one process and once with each --processes, and the
table gives wall seconds, samples/s and the ratio to one process; the reports must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.synth.verify import verify_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a finished shard set (gen-synth's output)")
    parser.add_argument("--processes", type=int, action="append", help="worker processes to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for path in sorted(Path(args.folder).glob("*.tar")):     # into the page cache, for every round alike
        path.read_bytes()
    counts = [1, *(args.processes or [2])]
    seconds: dict[int, list[float]] = {count: [] for count in counts}
    reports = {}
    for _ in range(args.rounds):
        for count in counts:
            started = time.perf_counter()
            reports[count] = verify_folder(args.folder, processes=count)
            seconds[count].append(time.perf_counter() - started)
    first = reports[1]
    for count, report in reports.items():
        if (report.problems, report.shards, report.samples) != (first.problems, first.shards, first.samples):
            sys.exit(f"the report with {count} processes differs from one process's")
    status = "sound" if first.ok else f"{len(first.problems)} problems, the same with every process count"
    print(f"{args.folder}: {first.shards} shards, {first.samples} samples ({status}); {args.rounds} rounds")
    print(f"{'processes':>9} {'seconds (each round)':>28} {'samples/s':>10} {'x one':>6}")
    base = statistics.median(seconds[1])
    for count in counts:
        median = statistics.median(seconds[count])
        rounds = " / ".join(f"{value:.1f}" for value in seconds[count])
        print(f"{count:>9} {rounds:>28} {first.samples / median:>10.0f} {base / median:>6.2f}")


if __name__ == "__main__":
    main()
