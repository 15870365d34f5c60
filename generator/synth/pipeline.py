"""The pipeline distributor: the generator renders in this process while worker processes post-process.

On a GPU the generator is the expensive part and post-processing (filters, JPEG and PNG
encoding, tar writes) is CPU work: doing both in one process leaves the GPU idle half the time.
Here this process only samples latents and renders G(z), G(z + h_bg) and the masks, batch after
batch, and on a GPU it queues each batch (its generator calls and its copy to pinned CPU memory)
before it collects and sends the one before, so the device always has the next batch to work on
while this process waits for a copy or hands a batch over.  A batch's pixels travel in shared
memory slots that each worker maps once and that are reused once a worker is done with them (one
copy; the queue carries only slot numbers and offsets), not as pickled arrays (three copies, and
as many again to unpickle): at 128 px a batch of 95 is 39 MB.
Each worker process assembles one shard at a time from the batches it is sent
(`ShardAssembler`, the same code the single-process path runs), so the bytes are those of any
other distributor.  The renderer works ahead: up to `AHEAD` batches per worker wait in its
queue, and a shard's batches past the one that filled it are dropped unread.
"""

from __future__ import annotations

import dataclasses
import mmap
import multiprocessing
import os
import queue
import warnings
from multiprocessing.reduction import DupFd
from typing import Any

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
            inboxes[number].put(("batch", *slots.pack(batch.collect(), number)))
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
    renderer = multiprocessing.parent_process()
    while (message := _next_message(inbox, renderer)) is not None:
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


def _next_message(inbox, renderer, poll_seconds: float = 1.0):
    """The next message, or None (stop) once the renderer's process is gone: killed, it can send
    no None, and a worker waiting for ever would hold its memory and leave its shard's temporary
    file behind."""
    while True:
        try:
            return inbox.get(timeout=poll_seconds)
        except queue.Empty:
            if renderer is not None and not renderer.is_alive():
                return None


#: The arrays of a batch that are images, which travel through shared memory.
PIXEL_FIELDS = ("images", "masks", "shifted")


@dataclasses.dataclass(frozen=True)
class SlotArray:
    """Where one array of a batch lies in a slot of shared memory: what a queue carries instead of
    its pixels.  `handle` (the slot's file descriptor, sent through `multiprocessing`) comes only
    with the first batch a worker receives in that slot."""

    slot: int
    offset: int
    shape: tuple[int, ...]
    dtype: str
    handle: Any = None


class SharedSlots:
    """Slots of shared memory for the pixels of batches on their way to the workers.

    A slot is an anonymous memory file (`memfd_create`) holding one batch's arrays.  `pack`
    copies a batch into a free slot (a new one when none is free) and returns it with its arrays
    replaced by `SlotArray`s; the first time a worker is sent a slot, the slot's file descriptor
    goes with it, and the worker maps it once and keeps it mapped (`unpacked`).  The worker frees
    the slot (`release`) once it has used the batch, and the slot is written again.  So nothing is
    created, passed or mapped per batch after the first few: a shared torch tensor passes a file
    descriptor per array per send, through a socket served by this process, and is mapped and
    page-faulted afresh each time, and at 128 px a batch of 95 is 39 MB.  The memory has no name:
    it is freed when the last process holding it ends, however it ends, and /dev/shm's size
    does not bound it.  Where a slot cannot be made (no `memfd_create` outside Linux, or no
    memory), batches go as plain arrays, pickled whole, with a warning: slower, same bytes.
    `close` releases this process's hold on every slot."""

    def __init__(self) -> None:
        self.memories: list[mmap.mmap] = []
        self.files: list[int] = []                  # the slots' file descriptors, open until close()
        self.layouts: list[dict[str, SlotArray]] = []
        self.free: list[int] = []
        self.shared_with: set[tuple[int, int]] = set()   # (worker, slot) whose descriptor was sent
        self.failure: Exception | None = None

    def pack(self, batch: RenderedBatch, worker: int = 0) -> tuple[RenderedBatch, int | None]:
        """(the batch to send to `worker`, its slot, or None when it goes as plain arrays)."""
        if self.failure is None:
            try:
                slot = self._slot_for(batch)
                for name, place in self.layouts[slot].items():
                    np.copyto(_view(self.memories[slot], place), getattr(batch, name))
                places = dict(self.layouts[slot])
                if (worker, slot) not in self.shared_with:
                    self.shared_with.add((worker, slot))
                    first = PIXEL_FIELDS[0]               # `unpacked` maps the slot on meeting it
                    places[first] = dataclasses.replace(places[first], handle=DupFd(self.files[slot]))
                return dataclasses.replace(batch, **places), slot
            except (OSError, AttributeError) as error:   # AttributeError: no os.memfd_create here
                self.failure = error
                warnings.warn(f"gen-synth: shared memory refused a batch ({error}); batches are pickled from now "
                              f"on, which costs more CPU time", RuntimeWarning, stacklevel=2)
        return batch, None

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def close(self) -> None:
        """Unmap and close every slot here (workers' mappings stay valid until they exit)."""
        for memory, file in zip(self.memories, self.files):
            memory.close()
            os.close(file)
        self.memories, self.files, self.layouts, self.free = [], [], [], []
        self.shared_with.clear()

    def _slot_for(self, batch: RenderedBatch) -> int:
        arrays = {name: np.asarray(getattr(batch, name)) for name in PIXEL_FIELDS}
        wanted = {name: (array.shape, array.dtype.str) for name, array in arrays.items()}
        while self.free:
            slot = self.free.pop()
            if {name: (place.shape, place.dtype) for name, place in self.layouts[slot].items()} == wanted:
                return slot
        slot, offsets, size = len(self.memories), {}, 0
        for name, array in arrays.items():
            offsets[name] = size
            size += -(-array.nbytes // 64) * 64      # each array starts on a cache line
        file = os.memfd_create(f"gen-synth-slot-{slot}", os.MFD_CLOEXEC)
        try:
            os.posix_fallocate(file, 0, max(1, size))   # fails now, not later as SIGBUS on a write
            memory = mmap.mmap(file, max(1, size))
        except OSError:
            os.close(file)
            raise
        self.memories.append(memory)
        self.files.append(file)
        self.layouts.append({name: SlotArray(slot, offsets[name], array.shape, array.dtype.str)
                             for name, array in arrays.items()})
        return slot


#: Slots this process has mapped, kept mapped for its life (a worker's whole run).
_MAPPED: dict[int, mmap.mmap] = {}


def _view(memory: mmap.mmap, place: SlotArray) -> np.ndarray:
    return np.ndarray(place.shape, np.dtype(place.dtype), buffer=memory, offset=place.offset)


def unpacked(batch: RenderedBatch) -> RenderedBatch:
    """A batch as `SharedSlots.pack` sent it, with arrays again (views of the shared memory)."""
    arrays = {}
    for name in PIXEL_FIELDS:
        place = getattr(batch, name)
        if isinstance(place, SlotArray):
            if place.handle is not None:            # a slot met for the first time, or made anew
                file = place.handle.detach()
                _MAPPED[place.slot] = mmap.mmap(file, 0)
                os.close(file)
            arrays[name] = _view(_MAPPED[place.slot], place)
    return dataclasses.replace(batch, **arrays)
