"""Where a shard set lives: a local folder, or a folder at any fsspec URL (s3://, gs://, az://,
file://, ...).  `open_output` picks one from the spelling of synth.output.

Both kinds keep the same promises, so the rest of gen-synth does not ask which it has:

- **A file is under its final name only when whole.**  A local folder writes a unique hidden
  temporary name (`.NAME.XXXX.tmp`, generator/files.py) and renames it.  A URL folder renders
  each shard into a local staging file exactly as a local folder does (so the bytes are the same),
  uploads it to such a hidden name and then moves it into place: a rename on file systems, a
  server-side copy on object stores, which creates the final object whole or not at all.
- **One run at a time.**  A local folder takes an `flock` (generator/runs.OutputLock).  A URL
  folder takes a lease (`LeaseLock`): a lock file naming its holder and an expiry that the holder
  renews while it runs.  A lease left by a killed run lapses after `lease_seconds`, and the next
  run takes it over.
- **Leftovers are a dead run's.**  Hidden temporary names found while the lock or lease is held
  are removed.

Credentials and endpoints of a URL come from fsspec's usual places (environment variables such as
AWS_PROFILE or AWS_ENDPOINT_URL, the cloud SDK's configuration, or fsspec's config files).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from generator.files import TEMPORARY_SUFFIX, atomic_write_bytes, temporary_beside
from generator.runs import LOCK_NAME, FolderLocked, OutputLock

#: How long a URL folder's lease lasts without renewal: a killed run blocks its folder this long.
LEASE_SECONDS = 120.0


class StoreError(ValueError):
    """An output location that cannot be opened or written, with a message saying why."""


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def open_output(location: str | Path, lease_seconds: float = LEASE_SECONDS) -> "Store":
    """The folder `location` names: a local path, or an fsspec URL (`protocol://...`)."""
    if isinstance(location, (LocalFolder, UrlFolder)):
        return location
    return UrlFolder(str(location), lease_seconds) if is_url(location) else LocalFolder(location)


class LocalFolder:
    """A folder on this machine's file system (or a shared one mounted at the same path)."""

    is_url = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)

    def __reduce__(self):
        return LocalFolder, (self.path,)

    def where(self, name: str) -> str:
        return str(self.path / name)

    def listing(self) -> dict[str, int | None]:
        """Every entry directly inside: file name -> size in bytes, or None for a sub-folder."""
        if not self.path.is_dir():
            return {}
        return {entry.name: (entry.stat().st_size if entry.is_file() else None) for entry in self.path.iterdir()}

    def read_bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        return {name: self.read_bytes(name) for name in names}

    def open(self, name: str):
        return open(self.path / name, "rb")

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path / name, data)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def staging(self, name: str) -> Path:
        """A new empty file to write `name` into; `publish` puts it in place."""
        return temporary_beside(self.path / name)

    def publish(self, staged: Path, name: str) -> None:
        os.replace(staged, self.path / name)

    def create(self) -> bool:
        """Make the folder if need be; True when this call made it."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"output {self.path} exists and is not a folder")
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot write to output folder {self.path}: {error.strerror or error}") from error
        return created

    def remove_if_empty(self) -> None:
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def lock(self) -> OutputLock:
        return OutputLock(self.path).acquire()


class UrlFolder:
    """A folder at an fsspec URL; each process opens the file system itself (workers included)."""

    is_url = True

    def __init__(self, url: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.location = url.rstrip("/")
        self.lease_seconds = lease_seconds
        try:
            import fsspec
            self.fs, root = fsspec.core.url_to_fs(self.location)
        except ImportError as error:
            raise StoreError(f"cannot open {url}: {error} (the package for its protocol is not installed)") from error
        except (ValueError, OSError) as error:
            raise StoreError(f"cannot open {url}: {error}") from error
        self.root = root.rstrip("/")

    def __reduce__(self):
        return UrlFolder, (self.location, self.lease_seconds)

    def where(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def listing(self) -> dict[str, int | None]:
        try:
            entries = self.fs.ls(self.root, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        except Exception as error:          # an object store's own errors (no credentials, ...) are not OSErrors
            raise StoreError(f"cannot list {self.location}: {type(error).__name__}: {error}") from error
        listed = {}
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["name"].rstrip("/") == self.root:
                continue                    # some file systems list the folder itself
            listed[name] = int(entry.get("size") or 0) if entry.get("type") == "file" else None
        return listed

    def read_bytes(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(name))
        except OSError:
            raise                           # FileNotFoundError and the like: the callers tell them apart
        except Exception as error:          # an object store's own errors (no credentials, ...)
            raise StoreError(f"cannot read {self.where(name)}: {type(error).__name__}: {error}") from error

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """Many small files in one call: object stores fetch them concurrently."""
        if not names:
            return {}
        found = self.fs.cat([self._path(name) for name in names], on_error="omit")
        return {path.rsplit("/", 1)[-1]: data for path, data in found.items()}

    def open(self, name: str):
        return self.fs.open(self._path(name), "rb")

    def write_bytes(self, name: str, data: bytes) -> None:
        staged = self._hidden_name(name)
        self.fs.pipe_file(self._path(staged), data)
        self._move_into_place(staged, name)

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def staging(self, name: str) -> Path:
        handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMPORARY_SUFFIX)
        os.close(handle)
        return Path(path)

    def publish(self, staged: Path, name: str) -> None:
        uploaded = self._hidden_name(name)
        try:
            self.fs.put_file(str(staged), self._path(uploaded))
            self._move_into_place(uploaded, name)
        finally:
            staged.unlink(missing_ok=True)

    def create(self) -> bool:
        try:
            created = not self.fs.exists(self.root)
            self.fs.makedirs(self.root, exist_ok=True)
        except Exception as error:          # an object store's own errors (no credentials, ...) are not OSErrors
            raise StoreError(f"cannot write to output {self.location}: {type(error).__name__}: {error}") from error
        return created

    def remove_if_empty(self) -> None:
        pass                  # an object store has no folders to leave behind; a file system keeps it

    def lock(self) -> "LeaseLock":
        return LeaseLock(self, self.lease_seconds).acquire()

    def _hidden_name(self, name: str) -> str:
        return f".{name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"

    def _move_into_place(self, hidden: str, name: str) -> None:
        try:
            self.fs.mv(self._path(hidden), self._path(name))
        except BaseException:
            self.remove(hidden)
            raise


Store = LocalFolder | UrlFolder


class LeaseLock:
    """An output URL's lock: a lease file naming its holder, renewed every third of its length.

    A second run meeting a live lease fails at once with FolderLocked naming the holder.  Object
    stores offer no atomic create-if-absent through fsspec, so two runs starting within the same
    second are told apart after the fact: each writes its lease, waits `settle_seconds` and reads it
    back, and only the one it names goes on.  Expiry is judged by wall clocks, so the machines'
    clocks must agree to well within the lease's length.
    """

    def __init__(self, folder: UrlFolder, lease_seconds: float = LEASE_SECONDS, settle_seconds: float = 1.0) -> None:
        self.folder, self.lease_seconds, self.settle_seconds = folder, float(lease_seconds), settle_seconds
        self.owner = secrets.token_hex(8)
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.folder.read_bytes(LOCK_NAME))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}                               # unreadable: a lease whose holder cannot be named

    def _write(self) -> None:
        lease = {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                 "command": " ".join(sys.argv)[:200], "expires": time.time() + self.lease_seconds,
                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.folder.write_bytes(LOCK_NAME, (json.dumps(lease) + "\n").encode())

    def _refuse(self, lease: dict[str, Any]) -> FolderLocked:
        holder = (f"pid {lease.get('pid')} on {lease.get('host')}, {lease.get('command')!r}, since {lease.get('since')}"
                  if lease else "a holder whose lease cannot be read")
        left = max(0.0, float(lease.get("expires", 0)) - time.time()) if lease else self.lease_seconds
        return FolderLocked(f"{self.folder.location} is in use by another run (lease {LOCK_NAME}: {holder}); wait "
                            f"for it to finish, or, if it was killed, for its lease to lapse in {left:.0f} s")

    def acquire(self) -> "LeaseLock":
        lease = self._read()
        if lease is not None and (not lease or float(lease.get("expires", 0)) > time.time()):
            raise self._refuse(lease)
        self._write()
        time.sleep(self.settle_seconds)
        lease = self._read()
        if not lease or lease.get("owner") != self.owner:
            raise self._refuse(lease or {})
        self._renewer = threading.Thread(target=self._renew, name="lease-renewal", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                lease = self._read()
                if lease and lease.get("owner") != self.owner:
                    self.lost = True                 # our lease lapsed and another run took it
                    return
                self._write()
            except OSError:
                continue                             # a network hiccup: try again at the next renewal

    def check(self) -> None:
        """Raise FolderLocked when another run has taken the lease over (ours lapsed unrenewed)."""
        lease = self._read()
        if self.lost or not lease or lease.get("owner") != self.owner:
            raise FolderLocked(f"{self.folder.location}: this run's lease lapsed and another run took the folder "
                               f"over; its finished shards are kept, rerun once that run is done")

    def release(self) -> None:
        if self._renewer is None:
            return
        self._stop.set()
        self._renewer.join()
        self._renewer = None
        lease = self._read()
        if lease and lease.get("owner") == self.owner:
            self.folder.remove(LOCK_NAME)

    def __enter__(self) -> "LeaseLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
