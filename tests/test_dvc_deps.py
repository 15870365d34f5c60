"""The synthesize stage lists its code file by file (so an unrelated edit re-renders nothing): every
project module gen-synth imports must be among them, or a change to it would not rerun the stage."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_every_module_gen_synth_imports_is_a_dependency_of_synthesize():
    listing = ("import json, sys, generator.synth.main; "
               "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) "
               "if getattr(m, '__file__', None))))")
    files = json.loads(subprocess.run([sys.executable, "-c", listing], cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout)
    ours = {Path(file).resolve().relative_to(REPO).as_posix() for file in files
            if Path(file).resolve().is_relative_to(REPO / "generator")}
    assert "generator/synth/store.py" in ours          # the check sees the modules it should
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["synthesize"]["deps"]
    missing = sorted(module for module in ours
                     if not any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in deps))
    assert not missing, f"add to the synthesize stage's deps in dvc.yaml: {missing}"
