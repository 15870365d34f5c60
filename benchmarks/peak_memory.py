"""Run a command and report its wall time and peak resident memory, the whole process tree's
and its largest process's, sampled every --interval seconds.

    python benchmarks/peak_memory.py --log data/run.json -- gen-synth --n 1000000 --alpha 0.2

The command's own output passes through; the figures are printed as a table at the end and,
with --log, written as JSON (rewritten at each sample, so a killed run still leaves its peak).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click
import psutil


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """Sum and largest resident set size, in bytes, over root and its descendants."""
    sizes = []
    for process in [root, *root.children(recursive=True)]:
        try:
            sizes.append(process.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited between the listing and the read
    return sum(sizes), max(sizes, default=0)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between memory samples.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures to this JSON file, updated at every sample.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(interval, log_path, command):
    start = time.perf_counter()
    child = subprocess.Popen(list(command))
    root = psutil.Process(child.pid)
    peak_tree = peak_single = 0
    figures = {}
    while True:
        try:
            total, largest = tree_rss(root)
        except psutil.NoSuchProcess:
            total = largest = 0
        peak_tree, peak_single = max(peak_tree, total), max(peak_single, largest)
        figures = {"command": list(command), "wall_s": round(time.perf_counter() - start, 1),
                   "peak_tree_rss_mib": round(peak_tree / 2**20, 1),
                   "peak_process_rss_mib": round(peak_single / 2**20, 1), "returncode": None}
        if child.poll() is not None:
            figures["returncode"] = child.returncode
        if log_path:
            with open(log_path + ".tmp", "w") as handle:
                json.dump(figures, handle, indent=1)
            os.replace(log_path + ".tmp", log_path)
        if figures["returncode"] is not None:
            break
        time.sleep(interval)
    print("| wall | peak RSS, process tree | peak RSS, largest process | exit |")
    print("|---|---|---|---|")
    print(f"| {figures['wall_s']:.1f} s | {figures['peak_tree_rss_mib']:.0f} MiB "
          f"| {figures['peak_process_rss_mib']:.0f} MiB | {figures['returncode']} |")
    sys.exit(figures["returncode"])


if __name__ == "__main__":
    main()
