"""The shared run core: records compared key by key, the resume policy, the folder lock, devices."""

import json
import os
import subprocess
import sys

import pytest
import torch
from pathlib import Path

from generator.files import atomic_write_bytes
from generator.runs import (LOCK_NAME, FolderLocked, OutputLock, RecordMismatch, UnreadableTorchFile, load_on_cpu,
                            load_torch_file, may_resume, record_differences, record_digest, resolve_device)

REPO = Path(__file__).resolve().parents[1]
RECORD = {"generator": {"identity": "house@1"}, "parameters": {"seed": 0, "alpha": 0.2, "filters": {"bins": 12}}}


def changed(**parameters):
    return {**RECORD, "parameters": {**RECORD["parameters"], **parameters}}


def test_records_are_compared_key_by_key_and_digested_whatever_the_order():
    assert record_differences(RECORD, RECORD) == []
    assert record_differences(RECORD, changed(seed=1, filters={"bins": 10})) == [
        "parameters.filters.bins: 12 -> 10", "parameters.seed: 0 -> 1"]
    assert record_differences(RECORD, {**RECORD, "extra": [1]}) == ["extra: (absent) -> [1]"]
    assert record_digest(RECORD) == record_digest(dict(reversed(list(RECORD.items()))))
    assert record_digest(RECORD) != record_digest(changed(seed=1))


def test_the_resume_policy():
    kwargs = {"what": "the set in x", "hint": "Pass --overwrite."}
    assert may_resume(None, RECORD, **kwargs) is False            # nothing saved: start afresh
    assert may_resume(RECORD, RECORD, **kwargs) is True
    with pytest.raises(RecordMismatch, match=r"the set in x was made with other settings \(parameters.seed: 0 "
                                             r"-> 1\); every file is kept. Pass --overwrite."):
        may_resume(RECORD, changed(seed=1), **kwargs)
    with pytest.raises(RecordMismatch):                            # unfinished work is never replaced
        may_resume(RECORD, changed(seed=1), replace_finished=True, **kwargs)
    messages = []
    assert may_resume(RECORD, changed(seed=1), finished=True, replace_finished=True, log=messages.append,
                      **kwargs) is False
    assert messages == ["the set in x is of a finished run with other settings (parameters.seed: 0 -> 1); "
                        "starting afresh"]


def test_a_folder_lock_excludes_a_second_holder_and_is_released(tmp_path):
    with OutputLock(tmp_path / "out") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(FolderLocked, match=rf'out is in use by another run \(lock .*{LOCK_NAME}: .*"pid": '
                                               rf'{os.getpid()}'):
            OutputLock(tmp_path / "out").acquire()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    OutputLock(tmp_path / "out").acquire().release()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    # A process that takes the lock and is killed: its file stays, its lock goes with it.
    script = ("import os, sys; from generator.runs import OutputLock; OutputLock(sys.argv[1]).acquire(); "
              "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (tmp_path / LOCK_NAME).is_file()
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_devices_are_spelled_one_way():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ValueError, match="'tpu' is not a device; spell it auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="GPU index must be a number"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)


def test_load_on_cpu_reads_tensors_saved_anywhere_onto_the_cpu_and_never_unpickles(tmp_path):
    import io
    import pickle

    from tests.test_trainer_training import storages_tagged
    buffer = io.BytesIO()
    with storages_tagged("cuda:3"):
        torch.save({"rng": torch.get_rng_state(), "w": [torch.ones(2)]}, buffer)
    atomic_write_bytes(tmp_path / "state.pt", buffer.getvalue())
    state = load_on_cpu(tmp_path / "state.pt")
    assert state["rng"].device.type == "cpu" and state["w"][0].device.type == "cpu"
    torch.set_rng_state(state["rng"])                        # what a resumed run does with it

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}, protocol=2))
    with pytest.raises(UnreadableTorchFile, match="^it holds objects other than tensors .* never unpickled$"):
        load_on_cpu(tmp_path / "evil.pt")


@pytest.mark.parametrize("content", [b"", b"root:x:0:0:root:/root:/bin/bash\n" * 20, bytes(range(256)) * 4,
                                     b"<html><body>Not Found</body></html>"])
def test_an_unreadable_torch_file_is_one_line_without_advice_to_unpickle(tmp_path, content):
    (tmp_path / "weights.pt").write_bytes(content)
    with pytest.raises(UnreadableTorchFile) as raised:
        load_torch_file(tmp_path / "weights.pt")
    message = str(raised.value)
    assert message.startswith("truncated, or not a torch file") and "\n" not in message
    assert "weights_only" not in message
