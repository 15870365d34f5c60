"""`discover-direction` end to end on tiny settings: outputs, override, resume, clear errors."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from generator.backends.testing import ShapesGenerator
from generator.direction import DirectionError, load_direction
from generator.discovery.cli import main

GENERATOR = {"name": "testing", "options": {"resolution": 16, "mixing_seed": 1}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {
    "method": "latent-discovery",
    "threads": 1,
    "latent_discovery": {"directions": 3, "steps": 4, "batch_size": 4, "reconstructor_width": 4,
                         "reconstructor_input_size": 16, "reconstructor_depth": 2, "checkpoint_every": 2},
    "single_direction": {"steps": 4, "batch_size": 4},
    "scoring": {"batch_size": 8, "sheet_candidates": 2, "sheet_samples": 2},
}


def write_params(tmp_path, **changes):
    discover = {**TINY, "checkpoint_dir": str(tmp_path / "checkpoints"), **changes}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"generator": GENERATOR, "discover": discover}))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [*args, "--quiet"], catch_exceptions=False)


def test_writes_every_output_and_a_direction_bound_to_its_generator(tmp_path):
    out = tmp_path / "directions"
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "latent-discovery: 4 steps" in result.output and "h_bg = direction" in result.output
    generator = ShapesGenerator(**GENERATOR["options"])
    direction = load_direction(out / "direction.json", generator)
    assert direction.magnitude == 5.0 and direction.chosen_by == "automatic"
    assert direction.method == "latent-discovery" and direction.sign in (1, -1)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["generator"] == generator.identity and len(scores["candidates"]) == 6
    assert scores["chosen"] == {"index": direction.index, "sign": direction.sign, "chosen_by": "automatic",
                                "total": scores["candidates"][0]["total"]}
    assert {"total", "pass_rate", "in_range_rate", "border", "coherence"} <= set(scores["candidates"][0])
    candidates = np.load(out / "candidates.npy", allow_pickle=False)
    assert candidates.shape == (16, 3) and candidates.dtype == np.float32
    assert np.allclose(direction.sign * candidates[:, direction.index], direction.vector, atol=1e-6)
    assert Image.open(out / "contact_sheet.png").format == "PNG"
    assert (out / "history.csv").read_text().splitlines()[0] == "step,accuracy,index_loss,loss,shift_loss"
    assert json.loads((out / "metrics.json").read_text())["steps_run"] == 4
    with pytest.raises(DirectionError, match="not for testing@"):
        load_direction(out / "direction.json", ShapesGenerator(resolution=32, mixing_seed=1))


def test_same_parameters_give_the_same_bytes(tmp_path):
    params = write_params(tmp_path, checkpoint_dir=None)
    invoke("--params", str(params), "--out", str(tmp_path / "a"))
    invoke("--params", str(params), "--out", str(tmp_path / "b"))
    for name in ("direction.json", "scores.json", "contact_sheet.png", "candidates.npy", "history.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_override_in_params_and_on_the_command_line_resumes_the_finished_run(tmp_path):
    out = tmp_path / "directions"
    invoke("--params", str(write_params(tmp_path)), "--out", str(out))
    automatic = load_direction(out / "direction.json")
    params = write_params(tmp_path, override={"index": 2, "sign": -1})
    result = invoke("--params", str(params), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "all steps from the checkpoint" in result.output and "(override)" in result.output
    overridden = load_direction(out / "direction.json")
    assert (overridden.index, overridden.sign, overridden.chosen_by) == (2, -1, "override")
    assert json.loads((out / "scores.json").read_text())["chosen"]["chosen_by"] == "override"
    invoke("--params", str(params), "--out", str(out), "--index", "1", "--sign", "1")
    assert (load_direction(out / "direction.json").index, load_direction(out / "direction.json").sign) == (1, 1)
    invoke("--params", str(params), "--out", str(out), "--automatic")
    again = load_direction(out / "direction.json")
    assert (again.index, again.sign, again.chosen_by) == (automatic.index, automatic.sign, "automatic")


def test_single_direction_method_from_the_command_line(tmp_path):
    out = tmp_path / "directions"
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out), "--method", "single-direction",
                    "--steps", "3")
    assert result.exit_code == 0, result.output
    direction = load_direction(out / "direction.json")
    assert direction.method == "single-direction" and direction.index == 0
    assert len(json.loads((out / "scores.json").read_text())["candidates"]) == 2


@pytest.mark.parametrize("changes, args, message", [
    ({"latent_discovery": {"stepz": 3}}, [], "unknown keys in discover.latent_discovery: stepz"),
    ({"method": "guess"}, [], "discover.method must be one of"),
    ({"override": {"index": 9, "sign": 1}}, [], "override.index 9 is out of range"),
    ({"override": {"index": 1, "sign": 0}}, [], "override.sign must be 1 or -1"),
    ({"magnitude": -1}, [], "discover.magnitude must be a positive number"),
    ({"latent_discovery": {"directions": 20}}, [], "do not fit in a latent space of size 16"),
    ({"scoring": {"foreground_min": 0.6}}, [], "foreground_min < foreground_max"),
    ({"device": "nonsense"}, [], "discover.device"),
    ({}, ["--index", "1"], "give --index and --sign together"),
])
def test_bad_settings_are_clear_errors(tmp_path, changes, args, message):
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path, **changes)),
                                       "--out", str(tmp_path / "o"), "--quiet", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "direction.json").exists()


def test_missing_parameters_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "not found" in result.output


def test_help_explains_every_option():
    result = CliRunner().invoke(main, ["--help"])
    for option in ("--params", "--out", "--method", "--steps", "--directions", "--seed", "--magnitude", "--index",
                   "--sign", "--automatic", "--checkpoint-dir", "--no-checkpoint", "--device", "--quiet"):
        assert option in result.output
