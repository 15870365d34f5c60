"""Each stage lists its code file by file or folder by folder (so an unrelated edit reruns
nothing): every project module a stage's command imports must be among its deps, or a change to
it would not rerun the stage."""

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("generator", "trainer", "evaluation")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def command_modules() -> dict[str, str]:
    """{console script: the module that defines it}, from setup.cfg."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip().split(":")[0] for name, target in (line.split("=") for line in lines)}


def imported_project_files(module: str) -> set[str]:
    listing = (f"import json, sys, {module}; "
               "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) "
               "if getattr(m, '__file__', None))))")
    files = json.loads(subprocess.run([sys.executable, "-c", listing], cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout)
    resolved = (Path(file).resolve() for file in files if Path(file).is_absolute())
    return {path.relative_to(REPO).as_posix() for path in resolved
            if any(path.is_relative_to(REPO / package) for package in PACKAGES)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    module = command_modules()[STAGES[stage]["cmd"].split()[0]]
    ours = imported_project_files(module)
    assert module.replace(".", "/") + ".py" in ours          # the check sees the modules it should
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in STAGES[stage]["deps"]]
    missing = sorted(path for path in ours
                     if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps))
    assert not missing, f"add to the {stage} stage's deps in dvc.yaml: {missing}"
