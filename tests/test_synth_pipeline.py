"""The pipeline distributor (G in one process, post-processing in others, as on a GPU) gives the bytes
of the single-process path however the work is split, and stops with a shard's error."""

import errno
import pickle
import queue
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch

from generator.synth import pipeline
from generator.synth.pipeline import AHEAD, SharedSlots, unpacked
from generator.synth.worker import LaunchedBatch, RenderedBatch, ShardAssembler, ShardRenderer
from tests.test_synth_gen import project, run, shard_bytes, write_params  # noqa: F401 (fixture)

SETTINGS = {"n": 50, "shard_size": 10, "batch_size": 4}


@pytest.mark.parametrize("workers, as_on_a_gpu", [(1, False), (3, False), (3, True)])
def test_the_pipeline_gives_the_bytes_of_the_single_process_path(project, workers, as_on_a_gpu, monkeypatch):
    if as_on_a_gpu:   # each batch is sent only once the next is queued, as a GPU's batches are
        monkeypatch.setattr(LaunchedBatch, "on_device", property(lambda batch: True))
    write_params(project, **SETTINGS, workers=1, output="reference")
    run()
    write_params(project, **SETTINGS, workers=workers, distributor="pipeline")
    result = run()
    assert "50 samples from" in result.output
    assert shard_bytes(project / "shards") == shard_bytes(project / "reference")
    assert not list((project / "shards").glob(".*.tmp"))


def test_a_shard_over_budget_stops_the_pipeline_keeping_the_finished_ones(project):
    write_params(project, **SETTINGS, workers=2, distributor="pipeline", filters={"size": {"max_foreground": 0.15}},
                 max_candidates_per_sample=3)
    failed = run(expect=1)
    assert "only" in failed.output and "passed the filters" in failed.output
    folder = project / "shards"
    assert not (folder / "manifest.json").exists() and not list(folder.glob(".*.tmp"))
    write_params(project, **SETTINGS, workers=2, distributor="pipeline", filters={"size": {"max_foreground": 0.15}})
    run()
    write_params(project, **SETTINGS, workers=1, filters={"size": {"max_foreground": 0.15}}, output="reference")
    run()
    assert shard_bytes(folder) == shard_bytes(project / "reference")


def test_bad_distributor_settings_are_named(project):
    write_params(project, distributor="spark", retries=-1)
    failed = run(expect=1)
    assert "distributor must be one of multiprocessing, pipeline, ray" in failed.output
    assert "retries must be a non-negative integer" in failed.output


@pytest.mark.parametrize("filters", [{}, {"size": {"max_foreground": 0.15}}])
def test_one_process_queueing_the_next_batch_as_on_a_gpu_gives_the_same_bytes(project, monkeypatch, filters):
    # Strict filters keep few candidates: a shard then takes many batches, each queued ahead.
    write_params(project, **SETTINGS, workers=1, output="reference", filters=filters)
    run()
    monkeypatch.setattr(LaunchedBatch, "on_device", property(lambda batch: True))
    events = []
    launch, add = ShardRenderer.launch_batch, ShardAssembler.add
    monkeypatch.setattr(ShardRenderer, "launch_batch", lambda renderer, shard, first:
                        events.append(("launch", shard, first)) or launch(renderer, shard, first))
    monkeypatch.setattr(ShardAssembler, "add", lambda assembler, batch:
                        events.append(("add", batch.shard, int(batch.counters[0]))) or add(assembler, batch))
    write_params(project, **SETTINGS, workers=1, filters=filters)
    run()
    assert shard_bytes(project / "shards") == shard_bytes(project / "reference")
    launches = [event[1:] for event in events if event[0] == "launch"]
    assert len(launches) == len(set(launches))                       # no batch rendered twice
    # The next batch was queued before this one was post-processed.
    size = SETTINGS["batch_size"]
    assert any(events[:i].count(("launch", shard, first + size)) for i, (kind, shard, first) in enumerate(events)
               if kind == "add")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_queued_batches_give_the_bytes_of_the_single_process_path(project):
    write_params(project, **SETTINGS, workers=1, device="cuda", output="reference")
    run()
    write_params(project, **SETTINGS, workers=3, device="cuda", distributor="pipeline")
    run()
    assert shard_bytes(project / "shards") == shard_bytes(project / "reference")


def random_batch(rng, shard=0, count=4, side=16):
    """A batch as the renderer collects it, of random pixels."""
    pixels = rng.random((2, count, 3, side, side), dtype=np.float32)
    return RenderedBatch(shard=shard, counters=np.arange(count), z=rng.standard_normal((count, 8)),
                         source_index=np.arange(count), images=pixels[0], shifted=pixels[1],
                         masks=pixels[0, :, 0] > pixels[1, :, 0])


def test_a_batch_travels_through_shared_memory_as_a_handle_and_arrives_whole():
    batch = random_batch(np.random.default_rng(0), shard=3, count=5, side=32)
    slots = SharedSlots()
    packed, slot = slots.pack(batch)
    assert slot == 0
    sent = ForkingPickler.dumps(packed)
    assert len(sent) < 2 * batch.images.nbytes / 10            # the pixels did not go into the pickle
    arrived = unpacked(pickle.loads(sent))
    for name in ("images", "shifted", "masks", "counters", "z"):
        assert isinstance(getattr(arrived, name), np.ndarray)
        np.testing.assert_array_equal(getattr(arrived, name), getattr(batch, name))
    slots.close()
    assert slots.memories == [] and slots.files == []


def test_without_shared_memory_batches_are_pickled_with_a_warning_and_the_same_bytes(project, monkeypatch):
    def refused(size_or_name, *flags):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    write_params(project, **SETTINGS, workers=1, output="reference")
    run()
    monkeypatch.setattr(pipeline.os, "memfd_create", refused)
    write_params(project, **SETTINGS, workers=2, distributor="pipeline")
    with pytest.warns(RuntimeWarning, match="shared memory refused a batch"):
        run()
    assert shard_bytes(project / "shards") == shard_bytes(project / "reference")


def test_a_freed_slot_is_written_again_and_a_busy_one_never():
    rng = np.random.default_rng(1)
    slots = SharedSlots()
    first, second = random_batch(rng, 0), random_batch(rng, 1)
    (packed_first, slot_first), (packed_second, slot_second) = slots.pack(first), slots.pack(second)
    assert slot_first != slot_second                              # the first is still in use
    np.testing.assert_array_equal(unpacked(packed_first).images, first.images)
    slots.release(slot_first)
    third = random_batch(rng, 2)
    packed_third, slot_third = slots.pack(third)
    assert slot_third == slot_first and len(slots.memories) == 2
    np.testing.assert_array_equal(unpacked(packed_third).images, third.images)
    np.testing.assert_array_equal(unpacked(packed_second).images, second.images)   # untouched
    bigger = random_batch(rng, 3, side=32)                        # another size never reuses a slot
    slots.release(slot_third)
    assert slots.pack(bigger)[1] == 2
    slots.close()


def test_a_worker_is_handed_a_slot_once_and_then_only_its_number():
    rng = np.random.default_rng(2)
    slots = SharedSlots()
    batch = random_batch(rng, 0)
    first, slot = slots.pack(batch, worker=0)
    assert first.images.handle is not None and first.shifted.handle is None     # one handle a slot
    np.testing.assert_array_equal(unpacked(pickle.loads(ForkingPickler.dumps(first))).shifted, batch.shifted)
    slots.release(slot)
    again, _ = slots.pack(batch := random_batch(rng, 1), worker=0)
    assert again.images.handle is None                                          # worker 0 has it mapped
    np.testing.assert_array_equal(unpacked(pickle.loads(ForkingPickler.dumps(again))).images, batch.images)
    slots.release(slot)
    other, _ = slots.pack(random_batch(rng, 2), worker=1)
    assert other.images.handle is not None                                      # worker 1 has not
    slots.close()


def test_the_pipeline_reuses_its_slots(project, monkeypatch):
    made, slots_used = [], []
    init, pack = SharedSlots.__init__, SharedSlots.pack

    def packing(slots, batch, worker=0):
        packed = pack(slots, batch, worker)
        slots_used.append(packed[1])
        return packed

    monkeypatch.setattr(SharedSlots, "__init__", lambda slots: made.append(slots) or init(slots))
    monkeypatch.setattr(SharedSlots, "pack", packing)
    write_params(project, **SETTINGS, workers=2, distributor="pipeline")
    run()
    slots, = made
    # A worker holds at most AHEAD batches in its queue and one in hand; the slots are closed at the end.
    assert slots.memories == [] and None not in slots_used
    assert 1 <= len(set(slots_used)) <= 2 * (AHEAD + 1) < len(slots_used)


def test_a_worker_stops_waiting_once_the_renderers_process_is_gone():
    class Renderer:
        alive = True

        def is_alive(self):
            return self.alive

    renderer = Renderer()
    inbox = queue.Queue()
    inbox.put(("shard", 0, 10))
    assert pipeline._next_message(inbox, renderer, poll_seconds=0.01) == ("shard", 0, 10)
    renderer.alive = False              # killed: no None will ever come
    assert pipeline._next_message(inbox, renderer, poll_seconds=0.01) is None
