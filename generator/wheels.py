"""Modules from shipped wheels, for runs on a bare machine with no installer and no network.

A GPU machine may hold only Python and torch.  A run that needs more carries the wheels
(`pip download --only-binary=:all: --python-version 3.12 ...`, see README) and calls
`import_from_wheels` before importing the project: each module that does not import is taken
from its wheel, unpacked into one private folder put at the front of `sys.path`.  A wheel is a
zip archive laid out as an installed package, so unpacking is installing; `zipfile` never writes
outside the folder, and the folder is removed when the process exits.  Standard library only: it
must run before anything else can be imported.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path


def fits_this_python(wheel_name: str) -> bool:
    """Whether a wheel's Python tag (name-version[-build]-python-abi-platform.whl) fits this interpreter."""
    parts = wheel_name[:-len(".whl")].split("-")
    if len(parts) < 5:
        return False
    tags = parts[-3].split(".")
    return f"cp{sys.version_info.major}{sys.version_info.minor}" in tags or "py3" in tags


def _wheel_of(distribution: str, folders: list[Path]) -> Path | None:
    """The newest-named wheel of `distribution` (case and - / _ ignored) for this Python in the folders."""
    wanted = distribution.lower().replace("-", "_")
    found = [path for folder in folders if folder.is_dir() for path in folder.glob("*.whl")
             if path.name.split("-", 1)[0].lower().replace("-", "_") == wanted and fits_this_python(path.name)]
    return max(found, key=lambda path: path.name) if found else None


def import_from_wheels(modules: dict[str, str], folders: list[str | Path]) -> dict[str, str]:
    """Import each module (name -> its wheel's distribution name), from `folders`' wheels when missing.

    Modules are imported in the order given: list a wheel's own dependencies before it.  Returns
    module -> "installed" or the wheel's file name.  Raises ImportError naming every module that
    neither imports nor comes from a wheel, and the wheels to ship.
    """
    folders = [Path(folder) for folder in folders]
    sources: dict[str, str] = {}
    problems: dict[str, str] = {}      # module -> why it could not be imported
    target: Path | None = None
    for module, distribution in modules.items():
        try:
            importlib.import_module(module)
            sources[module] = "installed"
            continue
        except ImportError:
            pass
        wheel = _wheel_of(distribution, folders)
        if wheel is None:
            problems[module] = "no wheel"
            continue
        if target is None:
            target = Path(tempfile.mkdtemp(prefix="wheels-"))
            sys.path.insert(0, str(target))
            # Child processes (spawned or forked) never run this: only the process that unpacked it.
            atexit.register(shutil.rmtree, target, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        importlib.invalidate_caches()
        try:
            importlib.import_module(module)
            sources[module] = wheel.name
        except ImportError as error:
            problems[module] = f"unusable {wheel.name}: {error}"
    if problems:
        details = "; ".join(f"{module} ({problem})" for module, problem in problems.items())
        wanted = sorted({modules[module] for module in problems})
        raise ImportError(f"missing here: {details}. Ship these wheels for this machine's Python in "
                          f"{', '.join(map(str, folders))}: {', '.join(wanted)}")
    return sources
