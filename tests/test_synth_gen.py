"""gen-synth end to end with the testing generator: the set, its manifest, determinism, resume
after an interruption (simulated and a real killed process), and clear errors on bad input."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from generator.backends.testing import ShapesGenerator
from generator.direction import Direction, save_direction
from generator.synth import FilterConfig, apply_filters, synthesize_masks
from generator.synth.main import main as gen_synth
from generator.synth.samplers import NeighbourhoodSampler
from generator.synth.verify import read_samples, verify_folder

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 32


def write_params(folder: Path, **synth) -> None:
    params = {
        "generator": {"name": "testing", "weights": None, "options": {"resolution": RESOLUTION}},
        "synth": {"n": 45, "shard_size": 20, "batch_size": 16, "workers": 1, "output": "shards",
                  "direction": "direction.json", "bank": "bank.npy", **synth},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder laid out like the pipeline's: params.yaml, a direction file and a latent bank."""
    generator = ShapesGenerator(resolution=RESOLUTION)
    save_direction(Direction.from_vector(generator.planted_direction("lighting"), generator.identity,
                                         method="planted", index=0, sign=1, chosen_by="params"),
                   tmp_path / "direction.json")
    np.save(tmp_path / "bank.npy", np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32))
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args, expect=0):
    result = CliRunner().invoke(gen_synth, [str(a) for a in args])
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("synth-*.tar"))} | {
        "manifest.json": (folder / "manifest.json").read_bytes()}


def test_default_run_makes_a_verified_set_with_a_complete_manifest(project):
    result = run()
    assert "45 samples from" in result.output and "time in G" in result.output
    folder = project / "shards"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [row["samples"] for row in manifest["shards"]] == [20, 20, 5]      # --n counts kept samples
    assert manifest["generator"]["identity"] == ShapesGenerator(resolution=RESOLUTION).identity
    direction = json.loads((project / "direction.json").read_text())
    assert {k: manifest["direction"][k] for k in ("digest", "method", "index", "sign", "chosen_by")} == \
        {"digest": direction["digest"], "method": "planted", "index": 0, "sign": 1, "chosen_by": "params"}
    assert manifest["latents"]["sampler"] == "neighbourhood" and manifest["latents"]["alpha"] == 0.2
    assert manifest["latents"]["bank"]["count"] == 12
    assert manifest["parameters"]["filters"] == FilterConfig().to_params()
    totals = manifest["totals"]
    assert totals["samples"] == 45
    assert totals["candidates"] == 45 + sum(totals["rejected_by"].values())   # every candidate accounted for
    assert totals["rejected_by"]["histogram"] > 0
    for row in manifest["shards"]:
        assert row["candidates"] == row["samples"] + sum(row["rejected_by"].values())
        assert len(row["sha256"]) == 64 and row["bytes"] == (folder / row["name"]).stat().st_size
    report = verify_folder(folder)
    assert report.ok, report.problems
    assert report.samples == 45


def test_samples_are_what_the_generator_direction_and_filters_make(project):
    run("--save-latents", "--n", 12)
    generator = ShapesGenerator(resolution=RESOLUTION)
    shift = 5 * generator.planted_direction("lighting")
    bank = np.load(project / "bank.npy")
    samples, problems = read_samples(project / "shards" / "synth-000000.tar")
    assert not problems and len(samples) == 12
    previous = -1
    for key, members in samples.items():
        record = json.loads(members["json"])
        assert record["candidate"] > previous            # kept in candidate order
        previous = record["candidate"]
        z = np.load(io.BytesIO(members["latent.npy"]), allow_pickle=False)
        again = NeighbourhoodSampler(bank, 0.2).sample(0, 0, np.array([record["candidate"]]))
        assert np.array_equal(z, again.z[0]) and record["source_index"] == int(again.source_index[0])
        image = generator.generate(torch.from_numpy(z)[None])
        shifted = generator.generate(torch.from_numpy(z)[None] + shift)
        expected_mask = apply_filters(synthesize_masks(image, shifted).numpy(), shifted.numpy()).masks[0]
        mask = np.asarray(Image.open(io.BytesIO(members["mask.png"]))) > 0
        assert np.array_equal(mask, expected_mask)
        decoded = np.asarray(Image.open(io.BytesIO(members["jpg"]))).astype(float)
        rendered = ((image[0].permute(1, 2, 0).numpy() + 1) * 127.5)
        assert np.abs(decoded - rendered).mean() < 3.0   # JPEG of G(z)
        assert record["foreground_fraction"] == pytest.approx(mask.mean(), abs=1e-6)


def test_same_parameters_give_the_same_bytes_whatever_the_workers_or_batches(project):
    run()
    run("--output", "again")
    run("--output", "pooled", "--workers", 2)
    run("--output", "batched", "--batch-size", 5)
    reference = shard_bytes(project / "shards")
    assert shard_bytes(project / "again") == reference
    assert shard_bytes(project / "pooled") == reference
    batched = shard_bytes(project / "batched")
    assert {k: v for k, v in batched.items() if k != "manifest.json"} == \
        {k: v for k, v in reference.items() if k != "manifest.json"}
    run("--output", "seeded", "--seed", 1)
    assert shard_bytes(project / "seeded")["synth-000000.tar"] != reference["synth-000000.tar"]


def test_rerun_after_an_interruption_remakes_only_incomplete_shards(project):
    write_params(project, n=70, shard_size=10)
    run("--output", "reference")
    reference = shard_bytes(project / "reference")
    run()
    folder = project / "shards"
    # What an interruption can leave: a shard never renamed (temp file), one renamed before its
    # stats were written, one not begun; and a manifest of the earlier complete set.
    (folder / "synth-000002.tar").rename(folder / ".synth-000002.tar.tmp")
    (folder / ".synth-000002.stats.json").unlink(missing_ok=True)
    (folder / "synth-000002.stats.json").unlink()
    with open(folder / ".synth-000002.tar.tmp", "r+b") as f:
        f.truncate(3000)
    (folder / "synth-000004.stats.json").unlink()
    (folder / "synth-000005.tar").unlink()
    (folder / "synth-000005.stats.json").unlink()
    untouched = (folder / "synth-000000.tar").stat().st_mtime_ns
    os.utime(folder / "synth-000000.tar", ns=(untouched - 10**9, untouched - 10**9))
    result = run()
    assert "(4 already complete)" in result.output
    assert (folder / "synth-000000.tar").stat().st_mtime_ns == untouched - 10**9   # not rewritten
    assert shard_bytes(folder) == reference
    assert not list(folder.glob(".*"))
    assert verify_folder(folder).ok


def test_rerun_after_killing_a_real_run_gives_identical_bytes(project):
    write_params(project, n=300, shard_size=20, batch_size=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "generator.synth.main"], cwd=project, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = project / "shards"
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.stats.json"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (folder / "manifest.json").exists(), "the run finished before it could be killed"
    finished = sorted(folder.glob("synth-*.tar"))
    assert 2 <= len(finished) < 15
    for path in finished:                     # whatever has a final name is a whole shard
        samples, problems = read_samples(path)
        assert not problems and len(samples) == 20
    run()
    write_params(project, n=300, shard_size=20, batch_size=1, output="reference")
    run()
    assert shard_bytes(folder) == shard_bytes(project / "reference")


def test_gaussian_sampler_needs_no_bank(project):
    (project / "bank.npy").unlink()
    run("--sampler", "gaussian", "--n", 5)
    manifest = json.loads((project / "shards" / "manifest.json").read_text())
    assert manifest["latents"] == {"sampler": "gaussian", "alpha": None, "bank": None}
    with tarfile.open(project / "shards" / "synth-000000.tar") as tar:
        record = json.loads(tar.extractfile("000000_000000.json").read())
    assert record["source_index"] is None and record["alpha"] is None


def test_overwrite_replaces_and_resume_refuses_other_parameters(project):
    run()
    failed = run("--seed", 4, expect=1)
    assert "made with other settings" in failed.output and "--overwrite" in failed.output
    run("--seed", 4, "--overwrite")
    assert json.loads((project / "shards" / "manifest.json").read_text())["parameters"]["seed"] == 4
    failed = run("--no-resume", expect=1)
    assert "already holds shards" in failed.output and "--resume" in failed.output


def save_other_direction(path, vector, identity):
    save_direction(Direction.from_vector(vector, identity), path)


@pytest.mark.parametrize("args, setup, message, code", [
    (["--n", "0"], None, "--n", 2),
    (["--n", "-3"], None, "--n", 2),
    (["--alpha", "-0.1"], None, "--alpha", 2),
    (["--alpha", "abc"], None, "'abc' is not a valid float", 2),
    (["--alpha", "nan"], None, "finite", 2),
    (["--bank", "wide.npy"], "wide_bank", "latents of size 20, but the generator's latent size is 16", 1),
    (["--bank", "empty.npy"], "empty_bank", "empty", 1),
    (["--bank", "zero_bytes.npy"], "zero_byte_bank", "zero_bytes.npy is not a .npy array", 1),
    (["--weights", "w.pt"], None, "generator .testing. does not accept .* .weights.", 1),   # the weights reach it
    (["--params", "broken.yaml"], "broken_params", "broken.yaml is not valid YAML", 1),
    (["--params", "list.yaml"], "list_section", "synth section must map settings to values, got list", 1),
    (["--params", "bad_generator.yaml"], "bad_generator", "`generator` section: a generator spec", 1),
    (["--bank", "missing.npy"], None, "missing.npy not found", 1),
    ([], "no_bank", "no latent bank.*dvc repro embed.*--bank.*--sampler gaussian", 1),
    (["--direction", "short.json"], "short_direction", "20 dimensions .* latent size of 16", 1),
    (["--direction", "other.json"], "other_direction", "was found for testing@.*not for testing@", 1),
    (["--direction", "nowhere.json"], None, "not found.*dvc repro discover.*or pass --direction", 1),
    (["--output", "a_file/shards"], "a_file", "cannot write to output folder", 1),
    (["--output", "a_file"], "a_file", "is a file", 2),
    (["--params", "absent.yaml"], None, "absent.yaml not found", 1),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], None, "device", 1),
    (["--max-candidates-per-sample", "3"], "reject_all", "size filter rejected the most", 1),
])
def test_bad_input_is_a_clear_error_and_leaves_nothing(project, args, setup, message, code):
    if setup == "wide_bank":
        np.save(project / "wide.npy", np.ones((4, 20), np.float32))
    elif setup == "empty_bank":
        np.save(project / "empty.npy", np.ones((0, 16), np.float32))
    elif setup == "zero_byte_bank":
        (project / "zero_bytes.npy").write_bytes(b"")
    elif setup == "broken_params":
        (project / "broken.yaml").write_text(": : :\n")
    elif setup == "list_section":
        (project / "list.yaml").write_text("synth: [1, 2]\n")
    elif setup == "bad_generator":
        (project / "bad_generator.yaml").write_text("generator: [1, 2]\nsynth: {output: shards}\n")
    elif setup == "no_bank":
        (project / "bank.npy").unlink()
    elif setup == "short_direction":
        save_other_direction(project / "short.json", np.ones(20), ShapesGenerator(resolution=RESOLUTION).identity)
    elif setup == "other_direction":
        save_other_direction(project / "other.json", np.ones(16), ShapesGenerator(resolution=16).identity)
    elif setup == "a_file":
        (project / "a_file").write_text("not a folder")
    elif setup == "reject_all":
        write_params(project, filters={"size": {"max_foreground": 0.0}})
    result = CliRunner().invoke(gen_synth, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, AttributeError))
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert not (project / "shards").exists()


def test_help_explains_every_option():
    result = CliRunner().invoke(gen_synth, ["--help"])
    assert result.exit_code == 0
    for option in ("--n", "--alpha", "--output", "--generator", "--direction", "--bank", "--shard-size",
                   "--seed", "--workers", "--batch-size", "--device", "--resume", "--overwrite"):
        assert option in result.output


def test_empty_masks_are_counted_in_the_manifest(project):
    generator = ShapesGenerator(resolution=RESOLUTION)
    # darker everywhere: every mask is empty, and with the histogram filter off nothing rejects it
    save_direction(Direction.from_vector(-generator.planted_direction("brightness"), generator.identity),
                   project / "direction.json")
    write_params(project, filters={"histogram": {"enabled": False}})
    result = run("--n", 12)
    manifest = json.loads((project / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["empty_masks"] == 12
    assert sum(row["empty_masks"] for row in manifest["shards"]) == 12
    assert "warning: 12 of the 12 masks are empty" in result.output


def test_a_rate_below_ten_is_not_printed_as_zero():
    from generator.synth.main import _rate
    assert [_rate(value) for value in (0.3, 4.0, 9.96, 12.4, 2074.0)] == ["0.3", "4", "10", "12", "2074"]


def test_a_set_of_object_masks_counts_no_empty_one(project):
    result = run("--n", 12)
    manifest = json.loads((project / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["empty_masks"] == 0 and "empty" not in result.output
