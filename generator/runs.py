"""What every resumable stage does alike: a run record, one resume policy, a lock per output folder,
checkpoints read on the CPU, and the device spelled one way.

- A **run record** is a plain dict of the things that shape a stage's bytes (generator identity,
  direction digest, bank digest, the parameters that change the result), never paths, worker
  counts or logging settings.  `record_digest` hashes it; `record_differences` compares two
  records key by key and says what changed.
- **The resume policy** (`may_resume`): continue when the saved record matches; when it does not,
  refuse with a `RecordMismatch` naming every key that differs, and keep every file.  A caller
  starts afresh only when told to (`--no-resume` or `--overwrite`), or when the saved state is of
  a run that finished and delivered its product elsewhere (`replace_finished`).
- **A lock per output folder** (`OutputLock`): a second run writing into the same folder stops at
  once with the first one's process id and command.  The lock is an `flock` on a small file, so
  the kernel releases it when its holder dies, even by SIGKILL: a lock file left by a dead run is
  not a lock and is simply taken over.
- **Checkpoints are read on the CPU** (`load_on_cpu`), never unpickled, and moved to the device
  by `load_state_dict`; RNG states, which must stay CPU tensors, are never moved.
- **Devices** are spelled `auto`, `cpu`, `cuda` or `cuda:N` in every section (`resolve_device`).
- **Worker processes end with their run** (`end_with_the_run`): a stage's process killed on its
  own (by the out-of-memory killer, say) can no longer stop its workers, which would otherwise
  finish their whole share of the work, writing outputs nobody waits for.

Atomic writes (unique temporary names, then a rename) live in generator/files.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

LOCK_NAME = ".run.lock"


# --- the run record ------------------------------------------------------------------------------

def record_digest(record: Mapping[str, Any]) -> str:
    """A short, stable digest of a run record (sorted keys, so the order of entries does not count)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(record, Mapping) and record:
        flat: dict[str, Any] = {}
        for key, value in record.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: record}


def record_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved -> current` for every leaf (dotted key) that differs, sorted by key."""
    before, after = _flatten(json.loads(json.dumps(saved, default=str))), \
        _flatten(json.loads(json.dumps(current, default=str)))
    missing = "(absent)"

    def shown(value: Any) -> str:
        text = json.dumps(value) if value is not missing else value
        return text if len(text) <= 80 else text[:77] + "..."

    return [f"{key}: {shown(before.get(key, missing))} -> {shown(after.get(key, missing))}"
            for key in sorted(set(before) | set(after)) if before.get(key, missing) != after.get(key, missing)]


class RecordMismatch(ValueError):
    """Saved work made under another run record: nothing is resumed and nothing is deleted."""

    def __init__(self, what: str, differences: list[str], hint: str) -> None:
        self.differences = differences
        listed = "; ".join(differences) or "the saved record cannot be read"
        super().__init__(f"{what} was made with other settings ({listed}); every file is kept. {hint}")


def may_resume(saved: Mapping[str, Any] | None, current: Mapping[str, Any], *, what: str, hint: str,
               finished: bool = False, replace_finished: bool = False,
               log: Callable[[str], None] | None = None) -> bool:
    """The resume policy: True to continue from the saved state, False to start afresh.

    `saved` is the record stored with the saved state (None when there is no saved state: start
    afresh).  A matching record continues.  A different one raises RecordMismatch naming the keys,
    `what` saying which state and `hint` how to start over, unless the state is of a finished run
    (`finished`) whose product is kept elsewhere (`replace_finished`): then the differences are
    logged and the run starts afresh.
    """
    if saved is None:
        return False
    differences = record_differences(saved, current)
    if not differences:
        return True
    if finished and replace_finished:
        if log is not None:
            log(f"{what} is of a finished run with other settings ({'; '.join(differences)}); starting afresh")
        return False
    raise RecordMismatch(what, differences, hint)


# --- the lock ------------------------------------------------------------------------------------

class FolderLocked(RuntimeError):
    """Another live run holds the folder's lock."""


class OutputLock:
    """An exclusive lock on an output folder, held from `acquire` (or `with`) to `release`.

    The lock file `LOCK_NAME` names its holder (pid, host, command, start time).  A second run
    fails at once with FolderLocked naming the holder.  The lock itself is an `flock`: the kernel
    drops it when the holder exits or is killed, so a file left by a dead run does not block
    anyone.  On a network file system without working `flock`, two machines are not kept apart.
    """

    def __init__(self, folder: str | Path, name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self._handle: Any = None

    def acquire(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "a run that has not written its name yet"
                handle.close()
                raise FolderLocked(f"{self.folder} is in use by another run (lock {self.path}: {holder}); "
                                   f"wait for it to finish or stop it") from None
            # The file may have been unlinked by its previous holder between our open and lock.
            try:
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(sys.argv)[:200],
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        handle.flush()
        os.set_inheritable(handle.fileno(), False)
        self._handle = handle
        return self

    def check(self) -> None:
        """Nothing to check: the kernel keeps an flock for its holder until it is released."""

    def release(self) -> None:
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)          # unlinked while still held: see the inode check above
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --- checkpoints and devices ---------------------------------------------------------------------

class UnreadableTorchFile(ValueError):
    """A torch file that cannot be read, with a one-line reason (and never torch's own advice to
    load it unsafely)."""


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What `torch.save` wrote to `path`, weights only: tensors and plain data, never unpickled
    objects.  UnreadableTorchFile says why a file cannot be read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise                               # the file is not there to judge: the caller says so
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a pickle naming a class or function: never run
            raise UnreadableTorchFile("it holds objects other than tensors and plain data, which are never "
                                      "unpickled") from error
        raise UnreadableTorchFile("truncated, or not a torch file (it does not parse)") from error
    except Exception as error:      # torch's reader fails on empty, cut or foreign files in many ways
        raise UnreadableTorchFile(f"truncated, or not a torch file ({type(error).__name__})") from error


def load_on_cpu(path: str | Path) -> Any:
    """A torch file read onto the CPU whatever device saved it, weights only (never unpickled).

    Module and optimiser states reach their device through `load_state_dict`; RNG states must be
    CPU tensors, which is why nothing here is moved to the run's device.
    """
    return load_torch_file(path, "cpu")


DEVICE_SPELLINGS = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | None, local_rank: int | None = None) -> torch.device:
    """The torch device a params `device` value names; ValueError for a bad or unavailable one.

    `auto` (or None) is cuda when a GPU is present, else cpu.  `cuda` is the current GPU, or
    cuda:LOCAL_RANK for one of several processes (`local_rank`).  `cuda:N` is that GPU.
    """
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec[5:]
        if index_text and not index_text.isdigit():
            raise ValueError(f"device {spec!r}: the GPU index must be a number (spell it {DEVICE_SPELLINGS})")
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here (use auto or cpu)")
        index = int(index_text) if index_text else (local_rank if local_rank is not None
                                                    else torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    raise ValueError(f"{spec!r} is not a device; spell it {DEVICE_SPELLINGS}")


# --- worker processes ----------------------------------------------------------------------------

def end_with_the_run() -> None:
    """In a worker process: exit at once when the process that started it is gone.  A daemon
    thread waits on the parent's sentinel, so the worker needs no polling of its own; a worker
    started otherwise than by `multiprocessing` has no such parent and is left alone."""
    run = multiprocessing.parent_process()
    if run is not None:
        threading.Thread(target=_exit_when_ended, args=(run.sentinel,), daemon=True).start()


def _exit_when_ended(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)
