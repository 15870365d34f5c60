"""How fast gen-synth's pipeline can hand rendered batches to its post-processing workers.

    python benchmarks/bench_handoff.py                 # 64 and 128 px, batch 95
    python benchmarks/bench_handoff.py --sizes 128 --batches 60

On a GPU the renderer's process does little but queue the generator's calls and hand each batch
(G(z) and G(z + h_bg) as float32, the masks) to a worker; the hand-off must keep up with the
device.  Each row sends the same fresh batches (a `RenderedBatch` of random pixels) through a
forkserver queue to one worker process, which turns them back into arrays and reads every pixel,
at most two batches in flight as in the pipeline, and gives the batches/s and candidates/s one
queue carries and the sending process's CPU time per batch (its feeder thread included):
  pickled   the arrays pickled into the queue, as plain arrays are
  shared    the pipeline's way (generator/synth/pipeline.py, `SharedSlots` / `unpacked`): the
            arrays copied into a slot of shared memory the worker is handed once, keeps mapped and
            frees once it has read the batch, only the slot's number and the arrays' places pickled
Rounds alternate between the two, so a change in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.synth.pipeline import SharedSlots, unpacked  # noqa: E402
from generator.synth.worker import RenderedBatch  # noqa: E402


def fresh_batch(rng: np.random.Generator, size: int, batch: int) -> RenderedBatch:
    """A batch as the renderer collects it: new arrays each time (a copy of a batch already in
    shared memory would cost nothing to send again)."""
    pixels = rng.random((2, batch, 3, size, size), dtype=np.float32) * 2 - 1
    return RenderedBatch(shard=0, counters=np.arange(batch), z=rng.standard_normal((batch, 120), dtype=np.float32),
                         source_index=np.zeros(batch, np.int64), images=pixels[0], shifted=pixels[1],
                         masks=pixels[0, :, 0] > pixels[1, :, 0])


def receive(inbox, outbox) -> None:
    """The worker: take each batch, turn it back into arrays, read every pixel, free its slot."""
    while (message := inbox.get()) is not None:
        batch, slot = message
        batch = unpacked(batch)
        float(batch.images.sum() + batch.shifted.sum()) + int(batch.masks.sum())
        outbox.put(slot)


def carry(shared: bool, size: int, batch: int, count: int) -> tuple[float, float]:
    """(batches/s, sending process's CPU ms per batch) over `count` fresh batches."""
    context = multiprocessing.get_context("forkserver")
    inbox, outbox = context.Queue(), context.Queue()
    worker = context.Process(target=receive, args=(inbox, outbox), daemon=True)
    worker.start()
    rng = np.random.default_rng(0)
    batches = [fresh_batch(rng, size, batch) for _ in range(count + 2)]   # made before the clock starts
    slots = SharedSlots()
    wrap = slots.pack if shared else (lambda item: (item, None))

    def taken() -> None:
        slot = outbox.get()
        if slot is not None:
            slots.release(slot)

    for item in batches[:2]:                                              # the worker's start-up
        inbox.put(wrap(item))
        taken()
    in_flight = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for item in batches[2:]:
        inbox.put(wrap(item))
        in_flight += 1
        while in_flight >= 2:
            taken()
            in_flight -= 1
    while in_flight:
        taken()
        in_flight -= 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    inbox.put(None)
    worker.join()
    slots.close()
    return count / wall, 1000 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sides (BigBiGAN: 128)")
    parser.add_argument("--batch-size", type=int, default=95, help="candidates per batch (the paper's 95)")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per row")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{'px':>4} {'transport':>9} {'round':>5} {'MB/batch':>8} {'batches/s':>9} {'candidates/s':>12} "
          f"{'x pickled':>9} {'CPU ms/batch':>12}")
    for size in args.sizes:
        megabytes = args.batch_size * size * size * (3 * 4 * 2 + 1) / 1e6
        for round_ in range(1, args.rounds + 1):
            rates = {}
            for shared in (False, True):
                rate, cpu = carry(shared, size, args.batch_size, args.batches)
                rates[shared] = rate
                print(f"{size:4d} {'shared' if shared else 'pickled':>9} {round_:5d} {megabytes:8.1f} {rate:9.1f} "
                      f"{rate * args.batch_size:12.0f} {rate / rates[False]:9.2f} {cpu:12.1f}", flush=True)


if __name__ == "__main__":
    main()
