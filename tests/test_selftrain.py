"""Self-training: the label update rule, exact resume, the model it writes, and bad photo folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from trainer.checkpoint import load_checkpoint
from trainer.export import load_trained_model, save_trained_model
from trainer.selftrain.config import ConfigError, SelfTrainConfig
from trainer.selftrain.labels import label_weight, mean_distance, rectify
from trainer.selftrain.loop import self_train
from trainer.selftrain.main import main
from trainer.selftrain.photos import PhotoFolderError, prepare_photos
from trainer.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_photos(folder, count=10, seed=0):
    """Photos of a bright rectangle on a dark ground, of a few sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = [(24, 32), (30, 20), (20, 20)][i % 3]
        photo = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        top, left = rng.integers(2, 8, 2)
        photo[top:top + 10, left:left + 10] = rng.integers(180, 255, 3, dtype=np.uint8)
        Image.fromarray(photo).save(folder / f"photo-{i:02d}.png")


@pytest.fixture
def synthetic_model(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "model"
    save_trained_model(UNet(3, 4, 2, True), {"input_size": 16, "steps": 1}, folder)
    return folder


def tiny_config(tmp_path, synthetic_model, run="run", **changes):
    settings = dict(photos=str(tmp_path / "photos"), model=str(synthetic_model), epochs=4, olr_lambda=0.4,
                    olr_warmup_epochs=2, loss="a2s", batch_size=4, lr=5e-3, seed=0, threads=1, log_every=1,
                    checkpoint_every=2, work_dir=str(tmp_path / run / "work"),
                    model_dir=str(tmp_path / run / "model"), plots_dir=str(tmp_path / run / "plots"))
    settings.update(changes)
    return SelfTrainConfig(**settings)


def test_label_update_rule_and_its_schedule():
    assert [label_weight(epoch, 2, 0.4) for epoch in (1, 2, 3, 4)] == [1.0, 1.0, 0.4, 0.4]
    assert [label_weight(epoch, 0, 0.4) for epoch in (1, 2)] == [0.4, 0.4]
    with pytest.raises(ValueError):
        label_weight(0, 2, 0.4)
    labels = np.array([[[0.0, 1.0], [0.5, 0.25]]], dtype=np.float16)
    predictions = np.array([[[1.0, 0.0], [0.5, 0.75]]], dtype=np.float16)
    updated, moved, gap = rectify(labels, predictions, 0.4)
    assert updated.dtype == np.float16
    np.testing.assert_allclose(updated, [[[0.6, 0.4], [0.5, 0.55]]], atol=1e-3)
    assert moved == pytest.approx((0.6 + 0.6 + 0.0 + 0.3) / 4, abs=1e-3)
    assert gap == pytest.approx((1 + 1 + 0 + 0.5) / 4, abs=1e-3)
    kept, moved, _ = rectify(labels, predictions, 1.0)
    np.testing.assert_array_equal(kept, labels)
    assert moved == 0.0
    with pytest.raises(ValueError):
        rectify(labels, predictions[:, :1], 0.4)
    assert mean_distance(labels, predictions) == pytest.approx(gap, rel=1e-6)
    with pytest.raises(ValueError, match="cannot be compared"):
        mean_distance(labels, predictions[:, :1])


def test_a_run_writes_model_curves_and_moves_labels_only_after_the_warm_up(tmp_path, synthetic_model):
    write_photos(tmp_path / "photos")
    config = tiny_config(tmp_path, synthetic_model)
    result = self_train(config, progress=False)
    assert result.steps == 4 * 3  # 10 photos, batches of 4
    rows = result.history["labels"]
    assert [row["lambda"] for row in rows] == [1.0, 1.0, 0.4, 0.4]
    assert rows[0]["label_change"] == 0.0 and rows[1]["label_change"] == 0.0
    assert rows[2]["label_change"] > 0 and rows[2]["label_change"] == pytest.approx(0.6 * rows[2]["prediction_gap"],
                                                                                    rel=0.02)
    model, record = load_trained_model(config.model_dir)
    assert record["input_size"] == 16 and record["selftrain"]["loss"] == "a2s"
    assert record["selftrain"]["photo_count"] == 10 and record["initialised_from"]["folder"] == str(synthetic_model)
    for trained, loaded in zip(result.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(trained, loaded)
    plots = tmp_path / "run" / "plots"
    assert (plots / "labels.csv").read_text().splitlines()[0] == "epoch,round,lambda,label_change,prediction_gap,loss"
    assert len((plots / "loss.csv").read_text().splitlines()) == 13
    assert json.loads((plots / "summary.json").read_text())["photos"] == 10
    with Image.open(plots / "pseudo_labels.png") as grid:
        assert grid.width == 64 * 6  # photo + G1..G5
    messages = []
    again = self_train(config, progress=False, log=messages.append)     # a finished run, run again
    assert again.steps == result.steps and any("all 4 epochs are done" in message for message in messages)


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tmp_path, synthetic_model):
    write_photos(tmp_path / "photos")
    uninterrupted = self_train(tiny_config(tmp_path, synthetic_model, "a"), progress=False)

    def interrupt(step):
        if step == 9:  # epoch 3 (the first with lambda < 1), after the checkpoint at step 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        self_train(tiny_config(tmp_path, synthetic_model, "b"), progress=False, on_step=interrupt)
    assert load_checkpoint(tmp_path / "b" / "work")["step"] == 8
    resumed = self_train(tiny_config(tmp_path, synthetic_model, "b"), progress=False)
    assert resumed.resumed_from == (3, 2)
    # Same steps, same labels; floats agree to rounding (as the train stage's resume test: CPU kernels
    # may sum in another order once the weights sit at other addresses).
    for curve in ("loss", "labels"):
        expected, got = uninterrupted.history[curve], resumed.history[curve]
        assert [sorted(row) for row in got] == [sorted(row) for row in expected]
        for want, have in zip(expected, got):
            assert have == pytest.approx(want, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(resumed.labels.astype(np.float32), uninterrupted.labels.astype(np.float32), atol=2e-3)
    for (name, left), right in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(left.float(), right.float(), rtol=1e-4, atol=1e-5), name

    messages = []
    again = self_train(tiny_config(tmp_path, synthetic_model, "b", lr=1e-3), progress=False, log=messages.append)
    assert again.resumed_from is None and any("other settings" in message for message in messages)


def test_each_round_after_the_first_starts_from_labels_the_model_so_far_makes(tmp_path, synthetic_model):
    from trainer.selftrain import loop

    write_photos(tmp_path / "photos")
    first_labels = []
    original = loop._first_labels

    def recording(model, *args):
        first_labels.append((original(model, *args), {k: v.clone() for k, v in model.state_dict().items()}))
        return first_labels[-1][0]

    config = tiny_config(tmp_path, synthetic_model, "rounds", epochs=2, rounds=2)
    loop._first_labels = recording
    try:
        result = self_train(config, progress=False)
    finally:
        loop._first_labels = original
    assert result.epochs == 4 and result.steps == 4 * 3
    rows = result.history["labels"]
    assert [row["round"] for row in rows] == [1, 1, 2, 2]
    assert [row["lambda"] for row in rows] == [1.0, None, 1.0, 1.0]  # the warm-up restarts with round 2
    assert len(first_labels) == 2  # the synthetic model's G^1, then the round-1 model's labels
    relabelled, weights_then = first_labels[1]
    assert rows[1]["label_change"] == pytest.approx(
        float(np.abs(relabelled.astype(np.float32) - first_labels[0][0].astype(np.float32)).mean()), rel=1e-5)
    assert rows[1]["label_change"] > 0
    # the relabelling model is the one after round 1's last step, not the synthetic one
    synthetic, _ = load_trained_model(synthetic_model)
    assert any(not torch.equal(weights_then[name], value) for name, value in synthetic.state_dict().items())
    record = load_trained_model(config.model_dir)[1]
    assert record["selftrain"]["rounds"] == 2 and record["epochs"] == 4
    plots = tmp_path / "rounds" / "plots"
    assert (plots / "labels.csv").read_text().splitlines()[2].startswith("2,1,,")  # relabelled: no lambda
    assert json.loads((plots / "summary.json").read_text())["rounds"] == 2


def test_a_run_of_two_rounds_resumes_across_the_relabelling(tmp_path, synthetic_model):
    write_photos(tmp_path / "photos")
    uninterrupted = self_train(tiny_config(tmp_path, synthetic_model, "a", epochs=2, rounds=2), progress=False)

    def interrupt(step):
        if step == 7:  # the first batch of round 2, after the checkpoint that ended round 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        self_train(tiny_config(tmp_path, synthetic_model, "b", epochs=2, rounds=2), progress=False, on_step=interrupt)
    assert load_checkpoint(tmp_path / "b" / "work")["epoch"] == 3
    resumed = self_train(tiny_config(tmp_path, synthetic_model, "b", epochs=2, rounds=2), progress=False)
    assert resumed.resumed_from == (3, 0)
    np.testing.assert_allclose(resumed.labels.astype(np.float32), uninterrupted.labels.astype(np.float32), atol=2e-3)
    for want, have in zip(uninterrupted.history["labels"], resumed.history["labels"]):
        assert have["lambda"] == want["lambda"] and have["round"] == want["round"]
        for key in ("label_change", "prediction_gap", "loss"):
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6)

    from generator.runs import RecordMismatch
    with pytest.raises(KeyboardInterrupt):
        self_train(tiny_config(tmp_path, synthetic_model, "c", epochs=2, rounds=2), progress=False, on_step=interrupt)
    with pytest.raises(RecordMismatch, match="rounds"):  # an unfinished run of other rounds is refused
        self_train(tiny_config(tmp_path, synthetic_model, "c", epochs=2, rounds=3), progress=False)


def test_an_unfinished_run_with_other_settings_is_refused_and_kept(tmp_path, synthetic_model):
    from generator.runs import RecordMismatch

    write_photos(tmp_path / "photos")

    def interrupt(step):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        self_train(tiny_config(tmp_path, synthetic_model, "c"), progress=False, on_step=interrupt)
    with pytest.raises(RecordMismatch, match="lr"):
        self_train(tiny_config(tmp_path, synthetic_model, "c", lr=1e-3), progress=False)
    assert load_checkpoint(tmp_path / "c" / "work")["step"] == 8  # kept, not overwritten


def test_unreadable_and_one_pixel_photos_are_handled(tmp_path, synthetic_model):
    write_photos(tmp_path / "photos", count=4)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "photos" / "empty.png").write_bytes(b"")
    Image.fromarray(np.array([[[200, 30, 30]]], dtype=np.uint8)).save(tmp_path / "photos" / "dot.png")
    messages = []
    config = tiny_config(tmp_path, synthetic_model, epochs=1, refine_labels=True)
    self_train(config, progress=False, log=messages.append)
    index = json.loads((tmp_path / "run" / "work" / "photos.json").read_text())
    assert sorted(entry["file"] for entry in index["skipped"]) == ["broken.jpg", "empty.png"]
    assert "dot.png" in index["files"] and len(index["files"]) == 5
    assert any("skipped 2 unreadable" in message for message in messages)
    _, record = load_trained_model(config.model_dir)
    assert record["selftrain"]["skipped_photos"] == 2 and record["selftrain"]["photo_count"] == 5


def test_a_folder_without_photos_is_a_clear_error(tmp_path, synthetic_model):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no photo here")
    with pytest.raises(PhotoFolderError, match="no photo"):
        prepare_photos(tmp_path / "photos", 16, None, 0, tmp_path / "work")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(PhotoFolderError, match="none of the 1 photos"):
        prepare_photos(tmp_path / "photos", 16, None, 0, tmp_path / "work")
    with pytest.raises(PhotoFolderError, match="not found"):
        prepare_photos(tmp_path / "missing", 16, None, 0, tmp_path / "work")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"selftrain": tiny_config(tmp_path, synthetic_model).as_dict()}))
    outcome = CliRunner().invoke(main, ["--params", str(params), "--quiet"])
    assert outcome.exit_code == 1 and "could be read" in outcome.output


def test_every_device_spelling_params_offers_runs_and_a_bad_one_is_a_clear_error(tmp_path, synthetic_model):
    write_photos(tmp_path / "photos", count=4)
    reference = self_train(tiny_config(tmp_path, synthetic_model, "cpu", epochs=1, device="cpu"), progress=False)
    automatic = self_train(tiny_config(tmp_path, synthetic_model, "auto", epochs=1, device="auto"), progress=False)
    if not torch.cuda.is_available():             # auto is the cpu here: the same run
        for ours, theirs in zip(reference.model.state_dict().values(), automatic.model.state_dict().values()):
            assert torch.equal(ours, theirs)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"selftrain": tiny_config(tmp_path, synthetic_model, "bad").as_dict()}))
    outcome = CliRunner().invoke(main, ["--params", str(params), "--quiet", "--device", "gpu"])
    assert outcome.exit_code == 1 and "'gpu' is not a device" in outcome.output
    assert not list((tmp_path / "bad" / "work").glob("*"))   # refused before any photo is read


def test_a_subset_is_seeded_and_the_cache_is_reused(tmp_path):
    write_photos(tmp_path / "photos", count=9)
    first = prepare_photos(tmp_path / "photos", 16, 5, 3, tmp_path / "work", progress=False)
    again = prepare_photos(tmp_path / "photos", 16, 5, 3, tmp_path / "work", progress=False)
    other = prepare_photos(tmp_path / "photos", 16, 5, 4, tmp_path / "work2", progress=False)
    assert first.files == again.files == sorted(first.files) and len(first.files) == 5
    assert first.files != other.files
    assert first.squares.shape == (5, 16, 16, 3) and first.squares.dtype == np.uint8
    # the cache as made and as read back: same pixels and the same memory layout, so a run that makes
    # the cache and one that resumes from it feed the network the same batches, to the bit
    np.testing.assert_array_equal(first.squares, again.squares)
    assert first.squares.strides == again.squares.strides and first.squares.flags.c_contiguous


def test_disabled_stage_records_that_it_is_off(tmp_path, synthetic_model):
    config = tiny_config(tmp_path, synthetic_model, enabled=False)
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "unet.pt").write_bytes(b"stale")
    result = self_train(config, progress=False)
    assert result.model is None and not (tmp_path / "run" / "model" / "unet.pt").exists()
    assert json.loads((tmp_path / "run" / "plots" / "summary.json").read_text()) == {"enabled": False}


def test_config_checks():
    with pytest.raises(ConfigError, match="loss"):
        SelfTrainConfig(loss="mse")
    with pytest.raises(ConfigError, match="olr_lambda"):
        SelfTrainConfig(olr_lambda=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        SelfTrainConfig.from_section({"lambda": 0.4})
    assert SelfTrainConfig.from_section({"lr": "1e-4"}).lr == 1e-4
