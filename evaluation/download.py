"""Fetching a benchmark's release files from their official addresses, checked and unpacked safely.

Each `Source` (evaluation/datasets.py) names an address, the file and where its content goes.
A download streams to a temporary file while hashing it, then:

- the MD5 / SHA-256 pinned in the source must match (a mismatch deletes the file and fails);
- without a pinned checksum, the SHA-256 of the first download is recorded in
  `<root>/checksums.json` and every later download must match it (trust on first use);
- archives (.zip, .tar, .tgz, .tar.gz) are unpacked into the source's destination, refusing
  members that are absolute, climb out with `..`, or are links or devices; other files are
  copied there as they are.

Any address urllib opens works, `file://` included (the tests use it); on a machine without
network access the download fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from evaluation.datasets import Layout, Source
from generator.files import atomic_write_bytes

CHECKSUMS_FILE = "checksums.json"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A benchmark file that could not be fetched, verified or unpacked."""


def _hashes(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _fetch(url: str, target: Path, opener: Callable = urllib.request.urlopen) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, opener(url) as response:
            shutil.copyfileobj(response, out, CHUNK)
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, (OSError, ValueError)):
            raise DownloadError(f"cannot download {url}: {error}") from error
        raise


def _inside(root: Path, name: str) -> Path:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DownloadError(f"archive member {name!r} would land outside {root}")
    return root / Path(*path.parts) if path.parts else root


def _unpack(archive: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            for member in members:
                _inside(destination, member.filename)
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DownloadError(f"archive member {member.filename!r} is a symbolic link")
            bundle.extractall(destination)
        return
    with tarfile.open(archive) as bundle:
        members = bundle.getmembers()
        for member in members:
            _inside(destination, member.name)
            if not (member.isfile() or member.isdir()):
                raise DownloadError(f"archive member {member.name!r} is a link or a device")
        bundle.extractall(destination, members=members, filter="data")


def _is_archive(name: str) -> bool:
    name = name.lower()
    return name.endswith((".zip", ".tar", ".tgz", ".tar.gz"))


def _record(root: Path) -> dict[str, str]:
    path = root / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DownloadError(f"{path} is not valid JSON: {error}") from error


def _save_record(root: Path, record: dict[str, str]) -> None:
    atomic_write_bytes(root / CHECKSUMS_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def fetch_source(source: Source, root: str | Path, opener: Callable = urllib.request.urlopen,
                 log: Callable[[str], None] = print) -> Path:
    """Download, verify and place one release file under `root`; returns where its content went."""
    root = Path(root)
    downloads = root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / source.filename
    log(f"downloading {source.url}")
    _fetch(source.url, target, opener)
    digests = _hashes(target)
    for kind in ("md5", "sha256"):
        expected = getattr(source, kind)
        if expected and digests[kind] != expected.lower():
            target.unlink()
            raise DownloadError(f"{source.filename}: {kind} {digests[kind]} differs from the published {expected}")
    record = _record(root)
    known = record.get(source.url)
    if known and known != digests["sha256"]:
        target.unlink()
        raise DownloadError(f"{source.filename}: sha256 {digests['sha256']} differs from the first download's "
                            f"{known} (recorded in {root / CHECKSUMS_FILE})")
    if not (source.md5 or source.sha256 or known):
        log(f"{source.filename}: no published checksum; recording sha256 {digests['sha256']}")
    record[source.url] = digests["sha256"]
    _save_record(root, record)
    destination = _inside(root, source.destination)
    if _is_archive(source.filename):
        _unpack(target, destination)
        target.unlink()
    else:
        destination.mkdir(parents=True, exist_ok=True)
        os.replace(target, destination / source.filename)
    return destination


def download_benchmark(layout: Layout, root: str | Path, opener: Callable = urllib.request.urlopen,
                       log: Callable[[str], None] = print) -> Path:
    """Fetch every release file of a benchmark into `root`; returns the benchmark's folder."""
    if not layout.sources:
        raise DownloadError(f"{layout.name} has no direct download address; get it from {layout.homepage} "
                            f"and unpack it as {Path(root) / layout.folder} ({layout.description})")
    for source in layout.sources:
        fetch_source(source, root, opener, log)
    return Path(root) / layout.folder
