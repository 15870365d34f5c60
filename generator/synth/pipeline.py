"""The pipeline distributor: the generator renders in this process while worker processes post-process.

On a GPU the generator is the expensive part and post-processing (filters, JPEG and PNG
encoding, tar writes) is CPU work: doing both in one process leaves the GPU idle half the time.
Here this process only samples latents and renders G(z), G(z + h_bg) and the masks, batch after
batch, and on a GPU it queues each batch (its generator calls and its copy to pinned CPU memory)
before it collects and sends the one before, so the device always has the next batch to work on
while this process waits for a copy or hands a batch over.  A batch's pixels travel in shared
memory slots, named blocks each worker maps once and that are reused once a worker is done with
them (one copy; the queue carries only names and offsets), not as pickled arrays (three copies,
and as many again to unpickle): at 128 px a batch of 95 is 39 MB.
Each worker process assembles one shard at a time from the batches it is sent
(`ShardAssembler`, the same code the single-process path runs), so the bytes are those of any
other distributor.  The renderer works ahead: up to `AHEAD` batches per worker wait in its
queue, and a shard's batches past the one that filled it are dropped unread.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import shutil
import warnings
from multiprocessing import shared_memory

import numpy as np
import torch

from generator.interface import Generator
from generator.synth.worker import (
    CandidateBudgetExceeded, LaunchedBatch, RenderedBatch, RenderJob, ShardAssembler, ShardRenderer)
from generator.synth.writer import ShardStats

#: Batches rendered ahead for each worker: enough to cover a slow batch, few enough to bound memory.
AHEAD = 2


def pipeline_distributor(job: RenderJob, shards: list[tuple[int, int]], workers: int, progress=None,
                         shard_done=None, generator: Generator | None = None) -> list[ShardStats]:
    """Render in this process, post-process in `workers` processes; return the shards' stats."""
    from generator.synth.distributor import WorkerFailed
    threads = torch.get_num_threads()
    if job.settings.device == "cpu":
        torch.set_num_threads(1)            # the same arithmetic as every other distributor
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["generator.synth.worker"])
    outbox = context.Queue()
    inboxes = [context.Queue() for _ in range(max(1, min(workers, len(shards))))]
    processes = [context.Process(target=_postprocess, args=(job, number, inbox, outbox, dict(os.environ)),
                                 daemon=True)
                 for number, inbox in enumerate(inboxes)]
    for process in processes:
        process.start()
    slots = SharedSlots()
    try:
        renderer = ShardRenderer(job, generator)
        return _feed(renderer, job, shards, inboxes, processes, outbox, slots, progress, shard_done, WorkerFailed)
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        slots.close()                                # after the workers: nothing reads them any more
        torch.set_num_threads(threads)


def _feed(renderer, job, shards, inboxes, processes, outbox, slots, progress, shard_done, WorkerFailed):
    settings = job.settings
    budget = settings.max_candidates_per_sample * settings.shard_size
    todo = list(reversed(shards))
    assigned: dict[int, _Shard] = {}             # worker -> the shard it assembles
    in_flight = [0] * len(inboxes)               # batches sent to a worker and not yet taken
    totals = [0, 0]                              # kept, considered over the whole run
    results: list[ShardStats] = []
    turn = 0
    launched: list[tuple[int, LaunchedBatch]] = []   # (worker, batch) queued on the device, not yet sent

    def send_launched() -> None:
        for number, batch in launched:
            inboxes[number].put(("batch", *slots.pack(batch.collect())))
        launched.clear()

    def handle(message) -> None:
        kind, number, *values = message
        if kind == "taken":
            in_flight[number] -= 1
        elif kind == "free":
            slots.release(values[0])
        elif kind == "batch":
            assigned[number].kept += values[0]
            assigned[number].considered += values[1]
            totals[0] += values[0]
            totals[1] += values[1]
            if progress is not None:
                progress(*values)
        elif kind == "done":
            assigned.pop(number, None)
            results.append(values[0])
            if shard_done is not None:
                shard_done(values[0])
        elif kind == "budget":
            raise CandidateBudgetExceeded(values[0])
        else:
            raise WorkerFailed(f"post-processing shard {values[0]} failed: {values[1]}")

    while todo or assigned:
        for number, inbox in enumerate(inboxes):
            if number not in assigned and todo:
                index, count = todo.pop()
                inbox.put(("shard", index, count))
                assigned[number] = _Shard(index, count)
        rate = totals[0] / totals[1] if totals[1] else 1.0
        ready = [number for number, shard in assigned.items()
                 if in_flight[number] < AHEAD and shard.rendered < budget and shard.wants_more(rate)]
        if ready:
            number = ready[turn % len(ready)]
            turn += 1
            shard = assigned[number]
            batch = renderer.launch_batch(shard.index, shard.rendered)
            send_launched()                      # the previous batch, while the device renders this one
            launched.append((number, batch))
            if not batch.on_device:
                send_launched()                  # on a CPU it is already done: nothing to overlap
            shard.rendered += settings.batch_size
            in_flight[number] += 1
            timeout = None
        else:
            send_launched()                      # nothing more to render until a worker takes a batch
            timeout = 0.2
        while True:
            try:
                message = outbox.get(timeout=timeout) if timeout else outbox.get_nowait()
            except queue.Empty:
                break
            handle(message)
            timeout = None
        dead = [number for number, process in enumerate(processes) if process.exitcode is not None]
        if dead:
            shards_of = [str(assigned[number].index) for number in dead if number in assigned] or ["unknown"]
            raise WorkerFailed(f"a worker process died while post-processing shard {', '.join(shards_of)} "
                               f"(killed: out of memory, or a signal)")
    return results


class _Shard:
    """What the renderer knows of a shard being assembled: candidates rendered, kept and used so far."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count
        self.rendered = self.kept = self.considered = 0

    def wants_more(self, run_rate: float) -> bool:
        """Whether the batches in flight are not expected to fill the shard (batches past a full
        shard are rendered for nothing).  The acceptance rate is the shard's own once known."""
        rate = self.kept / self.considered if self.considered else run_rate
        return self.kept + (self.rendered - self.considered) * rate < self.count


def _postprocess(job: RenderJob, number: int, inbox, outbox, environment: dict[str, str]) -> None:
    """A worker: assemble the shard it is given from its batches; drop batches of other shards."""
    from generator.synth.distributor import adopt_environment
    adopt_environment(environment)
    torch.set_num_threads(1)
    assembler: ShardAssembler | None = None
    while (message := inbox.get()) is not None:
        slot = None
        if message[0] == "batch":
            outbox.put(("taken", number))
            slot = message[2]
        try:
            if message[0] == "shard":
                assembler = ShardAssembler(job, message[1], message[2])
                continue
            batch = unpacked(message[1])
            if assembler is None or batch.shard != assembler.shard:
                continue                          # rendered ahead for a shard already full
            kept, considered = assembler.add(batch)
            if slot is not None:                  # read and encoded: the slot may be written again
                outbox.put(("free", number, slot))
                slot = None
            outbox.put(("batch", number, kept, considered))
            if assembler.full:
                outbox.put(("done", number, assembler.finish()))
                assembler = None
        except CandidateBudgetExceeded as error:
            assembler.abort()
            outbox.put(("budget", number, str(error)))
            assembler = None
        except Exception as error:
            shard = message[1] if message[0] == "shard" else batch.shard
            if assembler is not None:
                assembler.abort()
            outbox.put(("error", number, shard, f"{type(error).__name__}: {error}"))
            assembler = None
        finally:
            if slot is not None:                  # a batch dropped or failed: its slot is free too
                outbox.put(("free", number, slot))
    if assembler is not None:
        assembler.abort()


#: The arrays of a batch that are images, which travel through shared memory.
PIXEL_FIELDS = ("images", "masks", "shifted")
#: Where shared-memory blocks live on Linux: a block is refused when it would not fit there.
SHARED_MEMORY_FOLDER = "/dev/shm"


@dataclasses.dataclass(frozen=True)
class SlotArray:
    """Where one array of a batch lies in a named shared-memory block: what a queue carries
    instead of its pixels (a few dozen bytes)."""

    block: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


class SharedSlots:
    """Named shared-memory blocks ("slots") for the pixels of batches on their way to the workers.

    `pack` copies a batch into a free slot (a new one when none is free) and returns it with its
    arrays replaced by `SlotArray`s; a worker maps each block once, by name, and keeps it mapped
    (`unpacked`), and frees the slot (`release`) once it has used the batch, so the slot is
    written again.  Nothing is created, mapped or page-faulted per batch after the first few:
    passing a file descriptor per array (what a shared torch tensor does) costs a socket round
    trip to this process and a fresh mapping each time, and at 128 px a batch of 95 is 39 MB.
    A block that would not fit in /dev/shm (a default container's is 64 MB) is refused here,
    before any write: after one refusal batches go as plain arrays, pickled whole, which is
    slower and gives the same bytes.  `close` unlinks every block."""

    def __init__(self) -> None:
        self.blocks: list[shared_memory.SharedMemory] = []
        self.layouts: list[dict[str, SlotArray]] = []
        self.free: list[int] = []
        self.failure: Exception | None = None

    def pack(self, batch: RenderedBatch) -> tuple[RenderedBatch, int | None]:
        """(the batch to send, its slot, or None when it goes as plain arrays)."""
        if self.failure is None:
            try:
                slot = self._slot_for(batch)
                for name, place in self.layouts[slot].items():
                    np.copyto(_view(self.blocks[slot], place), getattr(batch, name))
                return dataclasses.replace(batch, **self.layouts[slot]), slot
            except OSError as error:
                self.failure = error
                warnings.warn(f"gen-synth: shared memory refused a batch ({error}); batches are pickled from now "
                              f"on, which costs more CPU time (is /dev/shm small?)", RuntimeWarning, stacklevel=2)
        return batch, None

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def close(self) -> None:
        """Unlink every block; mappings made by `unpacked` stay valid until their process exits."""
        for block in self.blocks:
            block.close()
            block.unlink()
        self.blocks, self.layouts, self.free = [], [], []

    def _slot_for(self, batch: RenderedBatch) -> int:
        arrays = {name: np.asarray(getattr(batch, name)) for name in PIXEL_FIELDS}
        wanted = {name: (array.shape, array.dtype.str) for name, array in arrays.items()}
        while self.free:
            slot = self.free.pop()
            if {name: (place.shape, place.dtype) for name, place in self.layouts[slot].items()} == wanted:
                return slot
        offsets, size = {}, 0
        for name, array in arrays.items():
            offsets[name] = size
            size += -(-array.nbytes // 64) * 64      # each array starts on a cache line
        if os.path.isdir(SHARED_MEMORY_FOLDER) and shutil.disk_usage(SHARED_MEMORY_FOLDER).free < size:
            raise OSError(f"no room for a {size / 2 ** 20:.0f} MiB block in {SHARED_MEMORY_FOLDER}")
        block = shared_memory.SharedMemory(create=True, size=max(1, size))
        self.blocks.append(block)
        self.layouts.append({name: SlotArray(block.name, offsets[name], array.shape, array.dtype.str)
                             for name, array in arrays.items()})
        return len(self.blocks) - 1


#: Blocks this process has mapped by name, kept mapped for its life (a worker's whole run).
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _view(block: shared_memory.SharedMemory, place: SlotArray) -> np.ndarray:
    return np.ndarray(place.shape, np.dtype(place.dtype), buffer=block.buf, offset=place.offset)


def unpacked(batch: RenderedBatch) -> RenderedBatch:
    """A batch as `SharedSlots.pack` sent it, with arrays again (views of the shared memory)."""
    arrays = {}
    for name in PIXEL_FIELDS:
        place = getattr(batch, name)
        if isinstance(place, SlotArray):
            if place.block not in _ATTACHED:
                _ATTACHED[place.block] = shared_memory.SharedMemory(name=place.block)
            arrays[name] = _view(_ATTACHED[place.block], place)
    return dataclasses.replace(batch, **arrays)
