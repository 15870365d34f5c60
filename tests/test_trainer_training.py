"""Training: a tiny run learns a separable task, resume equals an uninterrupted run, and the command."""

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.test_trainer_data import write_disc_shards
from evaluation.predictors import UNetPredictor
from generator.runs import FolderLocked, OutputLock, RecordMismatch
from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from trainer.decode import ShardFormatError
from trainer.config import PAPER_SCHEDULE, ConfigError, TrainConfig
from trainer.export import load_trained_model
from trainer.loop import train
from trainer.main import main
from trainer.shards import resolve_shards, shards_identity


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def disc_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discs")
    write_disc_shards(folder, shards=5, per_shard=12, size=16)
    return folder


def tiny_config(shards, folder, **changes):
    settings = dict(shards=str(shards), holdout_shards=1, val_samples=12, base_channels=8, depth=2, steps=30,
                    batch_size=6, lr=5e-3, lr_decay_step=25, lr_decay_factor=0.2, num_workers=0, shuffle_buffer=12,
                    log_every=1, val_every=10, checkpoint_every=10, checkpoint_dir=str(folder / "checkpoints"),
                    model_dir=str(folder / "model"), plots_dir=str(folder / "plots"))
    settings.update(changes)
    return TrainConfig(**settings)


def test_a_tiny_run_learns_the_discs_and_writes_model_curves_and_summary(disc_shards, tmp_path):
    result = train(tiny_config(disc_shards, tmp_path), progress=False)
    losses = [row["loss"] for row in result.history["train"]]
    assert len(losses) == 30 and result.step == 30
    assert result.steady_samples_per_second > 0 and result.samples_per_second > 0
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    # lr is multiplied by 0.2 after 25 steps: step 26 is the first at the lower rate
    assert [row["lr"] for row in result.history["train"]][23:27] == pytest.approx([5e-3, 5e-3, 1e-3, 1e-3])
    validation = result.history["val"]
    assert [row["step"] for row in validation] == [10, 20, 30]
    assert validation[-1]["loss"] < validation[0]["loss"] and validation[-1]["iou"] > 0.8

    model, config = load_trained_model(tmp_path / "model")
    assert config["input_size"] == 16 and config["base_channels"] == 8 and config["steps"] == 30
    described = UNetPredictor(model, config).describe()      # what an evaluation report says of it
    assert described["generator"] == "discs@0000" and described["direction"]["digest"] == "d1sc"
    assert described["shards"]["config_digest"] == "discs-0"
    assert config["holdout_shards"] == ["synth-000004.tar"] and config["training_shard_count"] == 4
    for trained, loaded in zip(result.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(trained, loaded)
    train_csv = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()
    assert train_csv[0] == "step,loss,lr" and len(train_csv) == 31
    assert (tmp_path / "plots" / "val.csv").read_text().splitlines()[0] == "step,loss,iou,accuracy"
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["val_iou"] == pytest.approx(validation[-1]["iou"])


@pytest.mark.parametrize("augment, log_every", [(False, 1), (True, 1), (False, 3)])
def test_resume_repeats_the_uninterrupted_run(disc_shards, tmp_path, augment, log_every):
    # Two loader processes; lr decays after step 8, in the resumed part.  With log_every 3 the losses
    # are read from the device once per row and at each checkpoint (4 falls inside a row), not every step.
    def config(folder, steps):
        return tiny_config(disc_shards, folder, steps=steps, checkpoint_every=4, val_every=4, base_channels=4,
                           lr_decay_step=8, batch_size=4, num_workers=2, augment=augment, log_every=log_every)

    uninterrupted = train(config(tmp_path / "a", 14), progress=False)
    first = train(config(tmp_path / "b", 6), progress=False)  # stops between two checkpoints
    assert first.resumed_from is None
    assert load_checkpoint(tmp_path / "b" / "checkpoints")["step"] == 6
    resumed = train(config(tmp_path / "b", 14), progress=False)
    assert resumed.resumed_from == 6

    expected = [row["loss"] for row in uninterrupted.history["train"]]
    got = [row["loss"] for row in resumed.history["train"]]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert [row["step"] for row in resumed.history["val"]] == [4, 6, 8, 12, 14]  # 6: the first run's end
    for (name, left), right in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(left.float(), right.float(), rtol=1e-5, atol=1e-6), name


def interrupted(folder):
    """Make the finished run's last checkpoint what a run stopped half-way leaves (same bytes but the flag)."""
    state = load_checkpoint(folder)
    save_checkpoint({**state, "finished": False}, folder)
    return (folder / CHECKPOINT_NAME).read_bytes()


def test_augmentation_changes_the_run_and_its_record(disc_shards, tmp_path):
    plain = train(tiny_config(disc_shards, tmp_path / "plain", steps=4), progress=False)
    augmented = train(tiny_config(disc_shards, tmp_path / "augmented", steps=4, augment=True), progress=False)
    assert plain.settings["augment"] is False and augmented.settings["augment"] is True
    assert [row["loss"] for row in plain.history["train"]] != [row["loss"] for row in augmented.history["train"]]
    with pytest.raises(ConfigError, match="augment"):
        tiny_config(disc_shards, tmp_path, augment="yes")


def test_a_checkpoint_of_other_settings_is_refused_naming_the_keys_and_kept(tmp_path):
    shards = tmp_path / "shards"
    write_disc_shards(shards, shards=3, per_shard=4, size=16)
    checkpoints = tmp_path / "checkpoints"
    train(tiny_config(shards, tmp_path, steps=4, checkpoint_every=2), progress=False)
    saved = interrupted(checkpoints)
    with pytest.raises(RecordMismatch, match=r"lr: 0.005 -> 0.001.*every file is kept.*--no-resume") as refused:
        train(tiny_config(shards, tmp_path, steps=6, lr=1e-3), progress=False)
    assert refused.value.differences == ["lr: 0.005 -> 0.001"]
    assert (checkpoints / CHECKPOINT_NAME).read_bytes() == saved

    # Logging, validation, loader workers and bf16 do not shape the weights: the run resumes.
    resumed = train(tiny_config(shards, tmp_path, steps=6, log_every=2, val_every=3, val_samples=4, num_workers=2,
                                bf16=False), progress=False)
    assert resumed.resumed_from == 4

    write_disc_shards(shards, shards=3, per_shard=4, size=16, seed=1)   # same names, other samples
    saved = interrupted(checkpoints)
    with pytest.raises(RecordMismatch, match=r"training_shards: .*synth-000000.tar"):
        train(tiny_config(shards, tmp_path, steps=8), progress=False)
    assert (checkpoints / CHECKPOINT_NAME).read_bytes() == saved

    fresh = train(tiny_config(shards, tmp_path, steps=2, resume=False), progress=False)
    assert fresh.resumed_from is None and load_checkpoint(checkpoints)["step"] == 2

    # A finished run's checkpoint (its model is exported) gives way to a run with other settings.
    messages = []
    again = train(tiny_config(shards, tmp_path, steps=2, lr=1e-3), progress=False, log=messages.append)
    assert again.resumed_from is None and any("finished run with other settings (lr: 0.005 -> 0.001)" in m
                                              for m in messages)


def test_the_command_names_the_differing_keys(disc_shards, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_config(disc_shards, tmp_path, steps=2).as_dict()}))
    assert CliRunner().invoke(main, ["--params", str(params), "--quiet"]).exit_code == 0
    interrupted(tmp_path / "checkpoints")
    outcome = CliRunner().invoke(main, ["--params", str(params), "--quiet", "--steps", "4", "--seed", "3"])
    assert outcome.exit_code == 1 and "seed: 0 -> 3" in outcome.output and "Traceback" not in outcome.output


def test_a_folder_is_read_through_its_manifest(tmp_path):
    shards = tmp_path / "shards"
    write_disc_shards(shards, shards=3, per_shard=4, size=16)
    listed = resolve_shards(str(shards))
    assert [Path(p).name for p in listed] == ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]
    identity = shards_identity(listed)
    assert identity[0] == ["synth-000000.tar", hashlib.sha256((shards / "synth-000000.tar").read_bytes()).hexdigest()]

    write_disc_shards(tmp_path / "other", shards=1, per_shard=4, size=16)
    shutil.copy(tmp_path / "other" / "synth-000000.tar", shards / "synth-000009.tar")   # a foreign shard
    with pytest.raises(ShardFormatError, match="does not list.*synth-000009.tar.*--no-manifest"):
        train(tiny_config(shards, tmp_path, steps=2), progress=False)
    assert len(resolve_shards(str(shards), manifest=False)) == 4
    (shards / "synth-000009.tar").unlink()
    (shards / "manifest.json").unlink()                     # what an unfinished gen-synth run leaves
    with pytest.raises(ShardFormatError, match="no manifest.json.*not a finished gen-synth set"):
        train(tiny_config(shards, tmp_path, steps=2), progress=False)
    assert train(tiny_config(shards, tmp_path, steps=2, manifest=False), progress=False).step == 2


def test_the_identity_is_the_checksums_not_the_paths(tmp_path):
    write_disc_shards(tmp_path / "shards", shards=3, per_shard=4, size=16)
    train(tiny_config(tmp_path / "shards", tmp_path, steps=2), progress=False)
    shutil.move(tmp_path / "shards", tmp_path / "moved")
    assert train(tiny_config(tmp_path / "moved", tmp_path, steps=4), progress=False).resumed_from == 2


def test_a_second_run_on_the_same_checkpoints_refuses_at_once(disc_shards, tmp_path):
    with OutputLock(tmp_path / "checkpoints"):
        with pytest.raises(FolderLocked, match=f'in use by another run.*"pid": {os.getpid()}'):
            train(tiny_config(disc_shards, tmp_path, steps=2), progress=False)


@contextlib.contextmanager
def storages_tagged(location):
    """torch.save writes every storage as saved on `location` (what a run on that device writes)."""
    entry = (0, lambda storage: location, lambda storage, tag: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda item: item[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu_and_resumes(disc_shards, tmp_path):
    train(tiny_config(disc_shards, tmp_path, steps=2), progress=False)
    state = load_checkpoint(tmp_path / "checkpoints")
    with storages_tagged("cuda:0"):
        save_checkpoint(state, tmp_path / "checkpoints")
    if not torch.cuda.is_available():           # the file does say cuda:0
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    loaded = load_checkpoint(tmp_path / "checkpoints")
    tensors = [value for value in _leaves(loaded) if isinstance(value, torch.Tensor)]
    assert tensors and all(tensor.device.type == "cpu" for tensor in tensors)
    assert train(tiny_config(disc_shards, tmp_path, steps=4), progress=False).resumed_from == 2


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_run_resumes_on_the_gpu_and_a_gpu_checkpoint_on_the_cpu(disc_shards, tmp_path):
    uninterrupted = train(tiny_config(disc_shards, tmp_path / "a", steps=6, device="cuda", bf16=False), progress=False)
    train(tiny_config(disc_shards, tmp_path / "b", steps=3, device="cuda", bf16=False), progress=False)
    resumed = train(tiny_config(disc_shards, tmp_path / "b", steps=6, device="cuda", bf16=False), progress=False)
    assert resumed.resumed_from == 3
    expected = [row["loss"] for row in uninterrupted.history["train"]]
    # cuDNN's kernels are not bitwise reproducible from run to run: on an H200 the two runs part
    # by about 1e-3 at step 4, whose loss follows only updates both made from scratch.  A resume
    # that lost Adam's state parts by about 4% at step 5, one that lost the data order by more.
    assert [row["loss"] for row in resumed.history["train"]] == pytest.approx(expected, rel=5e-3)
    convolution = next(weights for weights in resumed.model.parameters() if weights.dim() == 4)
    assert convolution.is_cuda and convolution.is_contiguous(memory_format=torch.channels_last)
    on_cpu = train(tiny_config(disc_shards, tmp_path / "b", steps=8, device="cpu"), progress=False)
    assert on_cpu.resumed_from == 6


def test_a_checkpoint_holding_code_is_refused(disc_shards, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "checkpoints").mkdir()
    with open(tmp_path / "checkpoints" / CHECKPOINT_NAME, "wb") as f:
        pickle.dump({"step": Payload()}, f, protocol=2)
    runner = CliRunner()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_config(disc_shards, tmp_path, steps=2).as_dict()}))
    outcome = runner.invoke(main, ["--params", str(params), "--quiet"])
    assert outcome.exit_code == 1 and "cannot read checkpoint" in outcome.output
    assert "unpickled!" not in outcome.output


def test_the_command_trains_with_overrides_and_reports_bad_input(disc_shards, tmp_path):
    params = tmp_path / "params.yaml"
    section = tiny_config(disc_shards, tmp_path, steps=50).as_dict()
    params.write_text(yaml.safe_dump({"generator": {"name": "testing"}, "train": section}))
    runner = CliRunner()
    outcome = runner.invoke(main, ["--params", str(params), "--steps", "3", "--base-channels", "6", "--quiet"])
    assert outcome.exit_code == 0, outcome.output
    _, config = load_trained_model(tmp_path / "model")
    assert config["steps"] == 3 and config["base_channels"] == 6

    missing = runner.invoke(main, ["--params", str(params), "--shards", str(tmp_path / "nowhere"), "--quiet"])
    assert missing.exit_code == 1 and "not found" in missing.output and "Traceback" not in missing.output
    params.write_text(yaml.safe_dump({"train": {**section, "stpes": 3}}))
    typo = runner.invoke(main, ["--params", str(params)])
    assert typo.exit_code == 1 and "unknown key(s) in the train section: stpes" in typo.output
    assert runner.invoke(main, ["--help"]).exit_code == 0


def test_a_refused_shard_stops_the_command_with_a_clean_message(tmp_path):
    write_disc_shards(tmp_path / "shards", shards=3, per_shard=4, size=16, extra={"000000_000009.pyd": b"MZ"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_config(tmp_path / "shards", tmp_path, num_workers=2).as_dict()}))
    outcome = CliRunner().invoke(main, ["--params", str(params), "--quiet"])
    assert outcome.exit_code == 1 and "Traceback" not in outcome.output
    assert outcome.output.strip().endswith(f"Error: shard {tmp_path / 'shards' / 'synth-000000.tar'}: member "
                                           f"'000000_000009.pyd' has extension .pyd, which is never decoded "
                                           f"(allowed: .jpg, .jpeg, .png, .json, .npy); refusing the shard")
    assert not (tmp_path / "model").exists()


def test_paper_schedule_and_config_checks():
    paper = TrainConfig().with_paper_schedule()
    assert (paper.steps, paper.batch_size, paper.lr, paper.lr_decay_step, paper.lr_decay_factor,
            paper.base_channels, paper.bilinear) == (12_000, 95, 1e-3, 8_000, 0.2, 64, True)
    assert PAPER_SCHEDULE["lr_decay_step"] == 8_000
    assert TrainConfig.from_section({"lr": "1e-3"}).lr == 1e-3  # YAML reads 1e-3 as a string
    with pytest.raises(ConfigError, match="train.batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="holdout_shards"):
        TrainConfig(holdout_shards=-1)
    with pytest.raises(ConfigError, match="input_size"):
        TrainConfig(input_size=8, depth=4)
