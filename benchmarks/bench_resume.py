"""What an interruption costs gen-synth, side by side in one run, on the real command.

1. An uninterrupted run (the reference bytes and wall time).
2. The same run killed with SIGKILL to its whole process group half-way, then rerun: how many
   finished shards the rerun keeps, how many it makes, its wall time, and whether the set's bytes
   equal the reference.
3. A worker process killed with SIGKILL: seconds until the run exits, its exit status, and
   whether the message names the shard; then a rerun completes the set (bytes compared).

Run: .venv/bin/python benchmarks/bench_resume.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from generator.backends.testing import ShapesGenerator
from generator.direction import Direction, save_direction

REPO = Path(__file__).resolve().parents[1]


def prepare(folder: Path, n: int) -> None:
    generator = ShapesGenerator(resolution=32)
    save_direction(Direction.from_vector(generator.planted_direction("lighting"), generator.identity),
                   folder / "direction.json")
    np.save(folder / "bank.npy", np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32))
    (folder / "params.yaml").write_text(yaml.safe_dump({
        "generator": {"name": "testing", "options": {"resolution": 32}},
        "synth": {"n": n, "shard_size": 10, "batch_size": 2, "workers": 2, "output": "shards",
                  "direction": "direction.json", "bank": "bank.npy"}}))


def gen_synth(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "generator.synth.main", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(folder: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    process = gen_synth(folder, *args)
    _, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"gen-synth failed:\n{err}")
    return time.perf_counter() - start, err


def set_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("synth-*.tar"))}


def wait_for(condition, process, seconds=120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller set (noisier figures)")
    args = parser.parse_args()
    n = 120 if args.quick else 300
    shards = n // 10
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, n)
        reference_s, _ = finish(folder, "--output", "reference")
        reference = set_bytes(folder / "reference")

        process = gen_synth(folder)
        wait_for(lambda: len(list((folder / "shards").glob("*.stats.json"))) >= shards // 2, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kept = len(list((folder / "shards").glob("synth-*.tar")))
        rerun_s, err = finish(folder)
        said = re.search(r"\((\d+) already complete\)", err)
        killed_row = (kept, int(said.group(1)) if said else -1, rerun_s, set_bytes(folder / "shards") == reference)

        process = gen_synth(folder, "--output", "worker-killed")
        wait_for(lambda: len(list((folder / "worker-killed").glob(".synth-*.tar.*.tmp"))) >= 2, process)
        servers = [child for child in psutil.Process(process.pid).children()
                   if "forkserver" in " ".join(child.cmdline())]
        workers = [worker for server in servers for worker in server.children()]
        killed_at = time.perf_counter()
        workers[0].send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=120)
        detected_s = time.perf_counter() - killed_at
        named = bool(re.search(r"died while rendering shard \d+", err))
        finish(folder, "--output", "worker-killed")
        worker_equal = set_bytes(folder / "worker-killed") == reference

    print(f"gen-synth, testing generator 32 x 32, {n} samples in {shards} shards, 2 workers, SIGKILL")
    print(f"{'case':<34}{'kept':>6}{'made':>6}{'wall s':>8}{'same bytes':>12}")
    print(f"{'uninterrupted':<34}{'-':>6}{shards:>6}{reference_s:>8.1f}{'-':>12}")
    kept, complete, seconds, equal = killed_row
    print(f"{'killed half-way, then rerun':<34}{complete:>6}{shards - complete:>6}{seconds:>8.1f}{str(equal):>12}")
    print(f"\na worker killed: the run exited {detected_s:.1f} s later with status {process.returncode}, "
          f"naming its shard: {named}; a rerun completed the set with the reference bytes: {worker_equal}")
    print(f"(finished shard files on disk when killed: {kept}; the rerun kept {complete} of them)")


if __name__ == "__main__":
    main()
