"""The whole DVC pipeline on tiny settings: embed, discover, synthesize, train, selftrain, evaluate.

Runs `dvc repro` for real in a scratch copy of the project (the `testing` generator, a few photos
and a four-image benchmark made here), then checks what a user relies on: a second repro does
nothing, changing `synth.alpha` re-scores the direction (from discovery's finished checkpoint) and
re-runs the stages after it, and the shards travel
through a DVC remote into a fresh clone where the README's plain-webdataset snippet reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CODE = ["generator", "trainer", "evaluation"]
ALL_STAGES = {"embed", "discover", "synthesize", "train", "selftrain", "evaluate"}

TINY_PARAMS = {
    "generator": {"name": "testing", "weights": None, "options": {"resolution": 32}},
    "embed": {"images": "photos", "output": "data/bank", "batch_size": 4, "workers": 1, "device": "cpu"},
    "discover": {
        "method": "single-direction", "seed": 0, "magnitude": 5.0, "device": "cpu", "threads": 1,
        "checkpoint_dir": "data/discover/checkpoints", "override": None,
        "single_direction": {"steps": 150, "batch_size": 16, "circle_radius": 0.3, "checkpoint_every": 50},
        "scoring": {"batch_size": 16, "sheet_candidates": 1, "sheet_samples": 2},
    },
    "synth": {"n": 24, "shard_size": 8, "seed": 0, "sampler": "neighbourhood", "alpha": 0.2,
              "batch_size": 16, "workers": 1, "device": "cpu"},
    "train": {"holdout_shards": 1, "val_samples": 8, "base_channels": 4, "depth": 2, "steps": 4,
              "batch_size": 4, "lr_decay_step": 3, "num_workers": 0, "shuffle_buffer": 8, "threads": 1,
              "log_every": 1, "val_every": 2, "checkpoint_every": 2},
    "selftrain": {"enabled": True, "photos": "photos", "max_photos": None, "epochs": 3, "batch_size": 4, "log_every": 1,
                  "checkpoint_every": 2, "threads": 1},
    "evaluate": {"benchmarks_root": "benchmarks", "benchmarks": ["ECSSD"], "required": ["ECSSD"],
                 "conventions": ["paper"], "localisation": False, "batch_size": 4, "examples": 2,
                 "threads": 1},
}


def run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(cwd), DVC_NO_ANALYTICS="1")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def merge(base: dict, tiny: dict) -> dict:
    merged = dict(base)
    for key, value in tiny.items():
        merged[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def make_images(folder: Path, count: int, with_masks: bool = False) -> None:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    if with_masks:
        (folder / "ground_truth_mask").mkdir()
    for i in range(count):
        image = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
        image[10:30, 12:36] += 150
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.jpg")
        if with_masks:
            mask = np.zeros((40, 48), np.uint8)
            mask[10:30, 12:36] = 255
            Image.fromarray(mask).save(folder / "ground_truth_mask" / f"{i:04d}.png")


def make_project(root: Path, **sections) -> Path:
    """A scratch copy of the project with TINY_PARAMS (and `sections` merged over them), under git and DVC."""
    root.mkdir()
    for name in CODE:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ["dvc.yaml", ".dvcignore", "README.md"]:
        shutil.copy(REPO / name, root / name)
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS), sections)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_images(root / "photos", 6)
    make_images(root / "benchmarks" / "ECSSD", 4, with_masks=True)
    (root / ".gitignore").write_text("/data/*\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "pipeline@test"], root)
    run(["git", "config", "user.name", "pipeline test"], root)
    run(["dvc", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("pipeline") / "project")


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return run(["dvc", "repro"], project)


def test_repro_runs_every_stage_and_writes_metrics(project, first_repro):
    assert stages_run(first_repro) == ALL_STAGES
    metrics = json.loads((project / "data" / "eval" / "metrics.json").read_text())
    assert "ECSSD" in json.dumps(metrics)
    assert list(metrics["ECSSD"]["paper"]) == ["model", "model_refined", "selftrained", "selftrained_refined",
                                               "centre_prior", "centre_prior_refined"]
    manifest = json.loads((project / "data" / "shards" / "manifest.json").read_text())
    assert sum(shard["samples"] for shard in manifest["shards"]) == 24
    assert (project / "data" / "model" / "unet.pt").is_file()
    # The report names what made the model it scored: generator, shard set and direction.
    model = json.loads((project / "data" / "eval" / "report.json").read_text())["predictors"][0]
    direction = json.loads((project / "data" / "directions" / "direction.json").read_text())
    assert model["generator"] == manifest["generator"]["identity"]
    assert model["shards"]["config_digest"] == manifest["config_digest"]
    assert model["shards"]["manifest_sha256"] == \
        hashlib.sha256((project / "data" / "shards" / "manifest.json").read_bytes()).hexdigest()[:16]
    assert model["direction"]["digest"] == manifest["direction"]["digest"] == direction["digest"]


def test_second_repro_does_nothing(project, first_repro):
    assert stages_run(run(["dvc", "repro"], project)) == set()


def test_editing_code_synthesis_does_not_import_reruns_nothing(project, first_repro):
    preview = project / "generator" / "synth" / "preview.py"
    preview.write_text(preview.read_text() + "\n# an edit\n")
    assert stages_run(run(["dvc", "repro"], project)) == set()


def test_changing_alpha_rescores_the_direction_and_reruns_synthesize_train_evaluate(project, first_repro):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"]["alpha"] = 0.3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(["dvc", "repro"], project)
    # candidates are scored on the latents synthesis draws, so the direction is chosen again, but
    # discovery itself is not rerun: its finished checkpoint is reused
    assert stages_run(output) == {"discover", "synthesize", "train", "selftrain", "evaluate"}
    assert "all steps from the checkpoint" in output


def test_repro_killed_in_synthesize_resumes_without_remaking_finished_shards(tmp_path):
    # 40 samples in 10 shards, one candidate per generator call: slow enough to stop half-way.
    root = make_project(tmp_path / "project", synth={"n": 40, "shard_size": 4, "batch_size": 1})
    run(["dvc", "repro", "discover"], root)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(root), DVC_NO_ANALYTICS="1")
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(["dvc", "repro", "synthesize"], cwd=root, env=env, start_new_session=True,
                               stdout=log, stderr=subprocess.STDOUT)
    shards = root / "data" / "shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*.stats.json"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    assert process.poll() is None, f"dvc repro ended before it was killed:\n{(tmp_path / 'killed.log').read_text()}"
    os.killpg(process.pid, signal.SIGKILL)                # dvc, gen-synth and any worker at once
    process.wait()
    log.close()
    finished = {path.name: path.stat().st_mtime_ns for path in shards.glob("synth-*.tar")}
    assert 2 <= len(finished) < 10 and not (shards / "manifest.json").exists()

    output = run(["dvc", "repro", "synthesize"], root)
    assert stages_run(output) == {"synthesize"}
    assert f"({len(finished)} already complete)" in output
    assert {name: (shards / name).stat().st_mtime_ns for name in finished} == finished   # not re-rendered
    run(["gen-synth", "--output", "uninterrupted"], root)
    made = {path.name: path.read_bytes() for path in shards.iterdir()}
    assert made == {path.name: path.read_bytes() for path in (root / "uninterrupted").iterdir()}
    assert stages_run(run(["dvc", "repro", "synthesize"], root)) == set()


def readme_snippet(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- snippet: {name} -->\s*```(?:python|bash)\n(.*?)```", text, re.S)
    assert match, f"README.md has no snippet {name!r}"
    return match.group(1)


def test_shards_travel_through_a_remote_to_a_fresh_clone(project, first_repro, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], project)
    run(["dvc", "push", "synthesize"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "synthesize"], clone)
    pulled = sorted(p.name for p in (clone / "data" / "shards").iterdir())
    made = sorted(p.name for p in (project / "data" / "shards").iterdir())
    assert pulled == made
    run(["synth-verify", "data/shards"], clone)

    # Another team reads them with plain webdataset and PIL, as the README shows.
    script = clone / "read_shards.py"
    script.write_text(readme_snippet("read-shards") + "\nprint('read', count)\n")
    out = run([sys.executable, str(script)], clone)
    assert "read 24" in out
