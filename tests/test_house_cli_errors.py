"""The house GAN's commands on bad input, interrupted and unfinished runs: train-house-gan,
pack-house-photos, ship-house-gan and the one-command GPU run refuse clearly and change nothing,
a run interrupted with Ctrl-C can be continued, and the same settings give the same weights."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import generator.house.training as training
from generator.house.cli import main as train_house_gan
from generator.house.cli import pack_main
from generator.house.model_layered import HouseLayeredConfig
from generator.house.pack import PackError, load_pack, pack_photos, read_pack_index
from generator.house.ship import main as ship_house_gan
from generator.house.ship import record_markdown, training_record
from generator.house.training import TrainSettings, load_checkpoint, train
from generator.registry import build_generator
from tests.test_house_v2 import photo_folder, tiny_pack  # noqa: F401 (fixtures)

TINY = HouseLayeredConfig(latent_dim=12, background_dim=4, resolution=16, width=4, background_side=8, harmonics=3)
# the shipped architecture at 16 px through the command line (its default z of 128)
TINY_CLI = ["--resolution", "16", "--batch-size", "4", "--width", "4", "--discriminator-width", "4",
            "--calibration-images", "8", "--device", "cpu", "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _settings(folder: Path, data: Path, **overrides) -> TrainSettings:
    values = dict(data=data, out=folder, export_to=folder, steps=2, encoder_steps=1, batch_size=4, seed=1,
                  checkpoint_every=100, export_every=0, log_every=1, config=TINY, discriminator_width=4,
                  calibration_images=8)
    values.update(overrides)
    return TrainSettings(**values)


def _stop_at(phase: str, step: int):
    """A progress callback that presses Ctrl-C once the given step is done."""
    def progress(done: int, total: int, current: int, losses: dict) -> None:
        if (current, done) == (phase, step):
            raise KeyboardInterrupt
    return progress


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory) -> Path:
    """A finished tiny run (its export in the run folder, as train-house-gan's default --export-to)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("pristine")
    photos = root / "set" / "images"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_settings(root / "run", photos))
    finally:
        torch.set_num_threads(threads)
    return root / "run"


@pytest.fixture
def run(tmp_path, pristine_run) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pristine_run, copy)
    return copy


@pytest.fixture
def old_package(tmp_path) -> Path:
    """A package folder holding a previous generator's files."""
    into = tmp_path / "package"
    into.mkdir()
    for name in ("house_gan.pt", "latent_bank.npy", "latent_bank.json", "samples.png", "reconstructions.png",
                 "TRAINING_RECORD.json"):
        (into / name).write_bytes(f"old {name}".encode())
    (into / "MODEL_CARD.md").write_text("# House\n\nold card\n")
    return into


def _ship(run: Path, photos: Path, into: Path, *extra: str):
    return CliRunner().invoke(ship_house_gan, [str(run), "--photos", str(photos), "--into", str(into), *extra])


# --- 1. ship-house-gan reads and checks everything before it writes anything ---------------------

@pytest.mark.parametrize("broken, content", [
    ("settings.json", b"{bad"),
    ("train_log.jsonl", b'{"phase": "gan", "step": 1}\n{bad\n'),
    ("timing.json", b"{bad"),
    ("MODEL_CARD.md", b"# House \xff\xfe not UTF-8\n"),
])
def test_ship_checks_every_file_before_it_replaces_one(run, photo_folder, old_package, broken,
                                                       content):
    (old_package / broken if broken == "MODEL_CARD.md" else run / broken).write_bytes(content)
    before = _snapshot(old_package)
    result = _ship(run, photo_folder, old_package)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception      # a message, no traceback
    assert broken in result.output
    assert _snapshot(old_package) == before


def test_ship_replaces_the_package_when_the_run_reads(run, photo_folder, old_package):
    result = _ship(run, photo_folder, old_package)
    assert result.exit_code == 0, result.output
    assert (old_package / "house_gan.pt").read_bytes() == (run / "house_gan.pt").read_bytes()
    assert build_generator({"name": "house", "weights": str(old_package / "house_gan.pt")}).bundled_latent_bank


# --- 2. only finished runs are shipped; train-house-gan refuses budgets that leave no GAN step -----

def test_ship_refuses_a_periodic_export_and_an_untrained_run_unless_allowed(tmp_path, photo_folder):
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(_settings(interrupted, photo_folder, steps=4, export_every=2), progress=_stop_at("gan", 3))
    assert torch.load(interrupted / "house_gan.pt", weights_only=True)["training"]["steps"] == 2
    into = tmp_path / "package"
    result = _ship(interrupted, photo_folder, into)
    assert result.exit_code == 1 and "not a finished training run" in result.output
    assert "periodic export" in result.output and "--allow-unfinished" in result.output and not into.exists()
    result = _ship(interrupted, photo_folder, into, "--allow-unfinished")
    assert result.exit_code == 0, result.output
    assert json.loads((into / "TRAINING_RECORD.json").read_text())["unfinished"].startswith("its weights are")

    untrained = tmp_path / "untrained"
    train(_settings(untrained, photo_folder, steps=0, encoder_steps=1))
    result = _ship(untrained, photo_folder, tmp_path / "other")
    assert result.exit_code == 1 and "0 GAN steps" in result.output and not (tmp_path / "other").exists()


def test_ship_refuses_weights_short_of_the_steps_the_settings_ask_for(tmp_path, photo_folder):
    folder = tmp_path / "run"
    train(_settings(folder, photo_folder, steps=2))
    # resumed for more steps and interrupted before an export: the weights are still step 2's
    with pytest.raises(KeyboardInterrupt):
        train(_settings(folder, photo_folder, steps=4), resume=folder / "checkpoint.pt", progress=_stop_at("gan", 3))
    result = _ship(folder, photo_folder, tmp_path / "package")
    assert result.exit_code == 1 and "2 GAN / 1 encoder steps" in result.output and "4 / 1" in result.output


@pytest.mark.parametrize("arguments, option", [(["--minutes", "0.01"], "--minutes"),
                                               (["--minutes", "1", "--encoder-share", "1"], "--encoder-share")])
def test_train_refuses_a_budget_that_leaves_no_gan_step(tmp_path, tiny_pack, arguments, option):
    result = CliRunner().invoke(train_house_gan, ["--data", str(tiny_pack), "--out", str(tmp_path / "out"),
                                                  *TINY_CLI, *arguments])
    assert result.exit_code == 2 and option in result.output, result.output
    assert not (tmp_path / "out").exists()


# --- 3. the same seed and settings give the same weight bytes ------------------------------------

def _clock(tick: float) -> types.SimpleNamespace:
    """A stand-in for the time module whose clocks move `tick` seconds at each reading."""
    now = [0.0]

    def read() -> float:
        now[0] += tick
        return now[0]
    return types.SimpleNamespace(perf_counter=read, monotonic=read)


def test_same_seed_and_settings_give_byte_identical_weights(tmp_path, photo_folder, monkeypatch):
    runs = {}
    for name, tick in (("fast", 0.5), ("slow", 3.0)):   # two machines of different speed
        monkeypatch.setattr(training, "time", _clock(tick))
        out = tmp_path / name
        result = CliRunner().invoke(train_house_gan, ["--data", str(photo_folder), "--out", str(out),
                                                      "--steps", "2", "--encoder-steps", "1", *TINY_CLI])
        assert result.exit_code == 0, result.output
        runs[name] = out
    assert (runs["fast"] / "house_gan.pt").read_bytes() == (runs["slow"] / "house_gan.pt").read_bytes()
    # the time a run took is in its log, and shipping records it from there
    log = [json.loads(line) for line in (runs["slow"] / "train_log.jsonl").read_text().splitlines()]
    house = build_generator({"name": "house", "weights": str(runs["slow"] / "house_gan.pt")})
    assert "train_seconds" not in house.training_summary
    record = training_record(runs["slow"], house)
    assert record["train_seconds"] == log[-1]["seconds"] > 0
    card = record_markdown({**record, "bank": {"count": 0, "photos": "-"}})
    assert f"| training time | {log[-1]['seconds']} s |" in card


# --- 4. a resume continues only the same training ------------------------------------------------

@pytest.mark.parametrize("changed, named", [
    ({"lr_generator": 1e-3}, "training.lr_generator"),
    ({"seed": 2}, "training.seed"),
    ({"batch_size": 2}, "training.batch_size"),
    ({"config": HouseLayeredConfig(**{**TINY.as_dict(), "resolution": 32})}, "architecture.resolution"),
])
def test_resume_with_other_settings_is_refused_before_anything_is_written(tmp_path, photo_folder, changed,
                                                                          named):
    folder = tmp_path / "run"
    train(_settings(folder, photo_folder, steps=1, encoder_steps=0))
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        train(_settings(folder, photo_folder, steps=2, encoder_steps=0, **changed), resume=folder / "checkpoint.pt")
    assert _snapshot(folder) == before                                    # settings.json included


def test_resume_refusal_in_the_command_names_the_option(tmp_path, photo_folder):
    out = tmp_path / "out"
    common = ["--data", str(photo_folder), "--out", str(out), "--steps", "1", "--encoder-steps", "0", *TINY_CLI]
    assert CliRunner().invoke(train_house_gan, common).exit_code == 0
    result = CliRunner().invoke(train_house_gan, [*common, "--lr-generator", "0.001",
                                                  "--resume", str(out / "checkpoint.pt")])
    assert result.exit_code == 1 and "lr_generator: 0.0002 -> 0.001" in result.output
    assert isinstance(result.exception, SystemExit)
    assert json.loads((out / "settings.json").read_text())["lr_generator"] == 2e-4


# --- 5. Ctrl-C saves the run; a folder with a checkpoint is not overwritten ----------------------

def test_ctrl_c_saves_a_checkpoint_from_which_the_run_continues_exactly(tmp_path, photo_folder):
    straight = _settings(tmp_path / "straight", photo_folder, steps=3, encoder_steps=0)
    train(straight)
    stopped = _settings(tmp_path / "stopped", photo_folder, steps=3, encoder_steps=0)
    with pytest.raises(KeyboardInterrupt) as stop:           # before the first periodic checkpoint (every 100)
        train(stopped, progress=_stop_at("gan", 1))
    checkpoint = tmp_path / "stopped" / "checkpoint.pt"
    assert getattr(stop.value, "checkpoint", None) == checkpoint
    assert load_checkpoint(checkpoint, stopped).step == 1
    train(stopped, resume=checkpoint)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt", straight)
    b = load_checkpoint(checkpoint, stopped)
    assert b.step == 3
    for key, value in a.ema_generator.state_dict().items():
        assert torch.equal(value, b.ema_generator.state_dict()[key]), key


def test_ctrl_c_in_the_command_prints_how_to_continue(tmp_path, photo_folder, monkeypatch):
    real_step = training.gan_step

    def step_then_ctrl_c(state, photos, settings):
        losses = real_step(state, photos, settings)
        if state.step == 1:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                raise KeyboardInterrupt      # nobody would catch a real one: fail without ending the session
            signal.raise_signal(signal.SIGINT)
        return losses

    monkeypatch.setattr(training, "gan_step", step_then_ctrl_c)
    out = tmp_path / "out"
    try:
        result = CliRunner().invoke(train_house_gan, ["--data", str(photo_folder), "--out", str(out),
                                                      "--steps", "3", "--encoder-steps", "0", *TINY_CLI])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command as a traceback")
    assert result.exit_code == 130, result.output
    assert f"--resume {out / 'checkpoint.pt'}" in result.output and "continue with: train-house-gan" in result.output
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["state"]["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # restored


def test_an_out_holding_a_checkpoint_needs_resume(tmp_path, photo_folder):
    folder = tmp_path / "run"
    train(_settings(folder, photo_folder, steps=1, encoder_steps=0))
    before = _snapshot(folder)
    with pytest.raises(ValueError, match="--resume"):
        train(_settings(folder, photo_folder, steps=1, encoder_steps=0, seed=5))
    assert _snapshot(folder) == before


# --- 6. paths: folders of symlinks, outputs under a file -----------------------------------------

def test_a_folder_of_symlinked_photos_trains_and_packs(tmp_path, photo_folder):
    links = tmp_path / "deep" / "linked" / "images"         # the photos lie outside its grandparent
    links.mkdir(parents=True)
    for photo in sorted(photo_folder.iterdir()):
        (links / photo.name).symlink_to(photo)
    weights = train(_settings(tmp_path / "run", links, steps=1, encoder_steps=0))
    index = json.loads((weights.parent / "latent_bank.json").read_text())
    assert index["files"][0] == "linked/images/grey.jpg" and index["skipped"][0]["path"] == "linked/images/broken.jpg"
    pack_photos([links], tmp_path / "pack.pt", side=16)
    assert read_pack_index(tmp_path / "pack.pt")["names"][0] == "linked/images/grey.jpg"


def test_outputs_under_a_file_are_refused_before_any_work(tmp_path, photo_folder, tiny_pack,
                                                          monkeypatch):
    with pytest.raises(ValueError, match="--export-to"):
        train(_settings(tmp_path / "run", photo_folder, export_to=tiny_pack / "sub"))
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(pack_main, ["--photos", str(photo_folder), "--out", str(tiny_pack / "x.pt")])
    assert result.exit_code == 1 and "pack.pt is a file, not a folder" in result.output
    assert "7 photos" not in result.output

    def no_encoding(*args, **kwargs):
        raise AssertionError("photos encoded before --into was checked")
    monkeypatch.setattr("generator.house.ship.encode_images", no_encoding)
    run = tmp_path / "fake_run"
    run.mkdir()
    result = _ship(run, photo_folder, tiny_pack / "x")
    assert result.exit_code == 1 and "--into" in result.output and "pack.pt is a file" in result.output


# --- 7. damaged files are clear errors ------------------------------------------------------------

def test_resume_from_a_truncated_or_pickled_checkpoint_is_a_clear_error(tmp_path, photo_folder):
    out = tmp_path / "out"
    common = ["--data", str(photo_folder), "--out", str(out), "--steps", "1", "--encoder-steps", "0", *TINY_CLI]
    assert CliRunner().invoke(train_house_gan, common).exit_code == 0
    data = (out / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[:len(data) // 2])
    pickled = tmp_path / "pickled.pt"
    torch.save({"state": argparse.Namespace(step=1)}, pickled)
    for bad, said in ((truncated, "not a readable train-house-gan checkpoint: truncated"), (pickled, "never unpickled")):
        result = CliRunner().invoke(train_house_gan, [*common, "--resume", str(bad)])
        assert result.exit_code == 1 and said in result.output, result.output
        assert isinstance(result.exception, SystemExit) and "weights_only" not in result.output


def test_a_damaged_pack_names_the_photo(tmp_path, tiny_pack):
    payload = read_pack_index(tiny_pack)
    start, end = payload["offsets"][2].item(), payload["offsets"][3].item()
    payload["jpeg"][start + (end - start) // 4:start + (end - start) // 2] = 0    # inside the coded data
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    with pytest.raises(PackError, match=r"packed photo 2 \(set/images/p1\.png\)"):
        load_pack(damaged)


@pytest.mark.parametrize("arguments", [["--resolution", "48"], ["--batch-size", "0"], ["--limit", "0"],
                                       ["--encoder-share", "2"], ["--minutes", "0"], ["--minutes", "0.1"],
                                       ["--architecture", "layered", "--latent-dim", "32"]])
def test_gpu_run_checks_its_options_before_any_work(tmp_path, tiny_pack, arguments, capsys):
    from generator.house.gpu_run import main as gpu_run

    # tiny settings first, so that a check that is missing costs a moment, not the 8-minute default budget
    tiny = ["--steps", "1", "--encoder-steps", "1", "--limit", "2", "--batch-size", "2", "--resolution", "16",
            "--width", "2", "--discriminator-width", "2", "--latent-dim", "40", "--calibration-images", "4",
            "--export-reserve", "1"]
    with pytest.raises(SystemExit) as refused:
        gpu_run(["--pack", str(tiny_pack), "--out", str(tmp_path / "out"), "--device", "cpu", *tiny, *arguments])
    assert refused.value.code == 2
    assert arguments[-2] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gpu_run_refuses_a_foreign_pack_before_any_work(tmp_path):
    from generator.house.gpu_run import main as gpu_run

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(SystemExit, match="not a photo pack"):
        gpu_run(["--pack", str(foreign), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()


# --- 8. --help names the shipped architecture's defaults; --latent-dim's error names it -----------

def test_help_lists_the_layered_defaults_and_a_small_latent_dim_names_the_option(tmp_path, tiny_pack):
    shown = " ".join(CliRunner().invoke(train_house_gan, ["--help"]).output.split())
    for default in ("Size of z [layered: 128, v1: 64, v2: 128]", "[layered: 64, v1: 64, v2: 128;",
                    "[layered: 32, v1: 32, v2: 8]", "[layered: 48, v1: 48, v2: 32]",
                    "G [layered: 2e-4, v1: 2e-4, v2: 1e-4]", "D [layered: 2e-4, v1: 2e-4, v2: 4e-4]"):
        assert default in shown
    result = CliRunner().invoke(train_house_gan, ["--data", str(tiny_pack), "--out", str(tmp_path / "out"),
                                                  "--latent-dim", "32"])
    assert result.exit_code == 2 and "--latent-dim" in result.output and "background" in result.output


# --- 9. the GPU run's temporary checkpoint folder ------------------------------------------------

def test_gpu_run_names_its_temporary_folder_and_removes_it_once_exported(tmp_path, tiny_pack, monkeypatch,
                                                                         capsys):
    import tempfile

    from generator.house.gpu_run import main as gpu_run

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    common = ["--pack", str(tiny_pack), "--device", "cpu", "--minutes", "2", "--export-reserve", "5",
              "--steps", "1", "--encoder-steps", "1", "--batch-size", "2", "--resolution", "16", "--width", "2",
              "--encoder-width", "2", "--discriminator-width", "2", "--latent-dim", "8", "--calibration-images", "4",
              "--limit", "3"]
    with pytest.raises(SystemExit, match="training failed") as failed:
        gpu_run([*common, "--out", str(tmp_path / "failed"), "--lr-generator", "-1"])
    kept = list(scratch.iterdir())
    assert len(kept) == 1 and str(kept[0]) in str(failed.value)          # a failed run keeps its checkpoints
    shutil.rmtree(kept[0])
    capsys.readouterr()
    gpu_run([*common, "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert f"checkpoints in {scratch}/house-run-" in printed
    assert (tmp_path / "out" / "house_gan.pt").is_file() and list(scratch.iterdir()) == []
