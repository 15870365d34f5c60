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

GENERATOR = {"name": "testing", "options": {"resolution": 16, "mixing_seed": 5}}  # a seed whose tiny run scores above 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {
    "method": "latent-discovery",
    "threads": 1,
    "latent_discovery": {"directions": 3, "steps": 4, "batch_size": 4, "reconstructor_width": 4,
                         "reconstructor_input_size": 16, "reconstructor_depth": 2, "checkpoint_every": 2},
    "single_direction": {"steps": 4, "batch_size": 4},
    "scoring": {"batch_size": 8, "sheet_candidates": 2, "sheet_samples": 2},
    "refine": {"steps": 3, "batch_size": 4},
}


SYNTH = {"sampler": "gaussian"}  # scoring draws its latents as gen-synth would: here z ~ N(0, I)


def write_params(tmp_path, generator=GENERATOR, synth=SYNTH, **changes):
    discover = {**TINY, "checkpoint_dir": str(tmp_path / "checkpoints"), **changes}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"generator": generator, "discover": discover, "synth": synth}))
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
                                "method": "latent-discovery", "total": scores["candidates"][0]["total"]}
    assert {"total", "pass_rate", "in_range_rate", "border", "coherence"} <= set(scores["candidates"][0])
    candidates = np.load(out / "candidates.npy", allow_pickle=False)
    assert candidates.shape == (16, 3) and candidates.dtype == np.float32
    chosen = direction.sign * candidates[:, direction.index]
    refinement = direction.extra["refinement"]
    if refinement["refined"]:  # the saved vector is the refined one, at the recorded cosine from the choice
        assert np.dot(chosen, direction.vector) == pytest.approx(refinement["cosine_to_chosen"], abs=1e-5)
    else:
        assert np.allclose(chosen, direction.vector, atol=1e-6)
    assert Image.open(out / "contact_sheet.png").format == "PNG"
    assert [path.name for path in (out / "history").iterdir()] == ["latent-discovery.csv"]
    assert (out / "history" / "latent-discovery.csv").read_text().splitlines()[0] == \
        "step,accuracy,index_loss,loss,shift_loss"
    assert json.loads((out / "metrics.json").read_text())["steps_run"] == 4
    with pytest.raises(DirectionError, match="not for testing@"):
        load_direction(out / "direction.json", ShapesGenerator(resolution=32, mixing_seed=1))


def test_same_parameters_give_the_same_bytes(tmp_path):
    params = write_params(tmp_path, checkpoint_dir=None)
    invoke("--params", str(params), "--out", str(tmp_path / "a"))
    invoke("--params", str(params), "--out", str(tmp_path / "b"))
    for name in ("direction.json", "scores.json", "contact_sheet.png", "candidates.npy",
                 "history/latent-discovery.csv"):
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
    (out / "history").mkdir(parents=True)
    (out / "history" / "latent-discovery.csv").write_text("step,loss\n0,1\n")   # from a run of another method
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out), "--method", "single-direction",
                    "--steps", "3")
    assert result.exit_code == 0, result.output
    direction = load_direction(out / "direction.json")
    assert direction.method == "single-direction" and direction.index == 0
    assert len(json.loads((out / "scores.json").read_text())["candidates"]) == 2
    assert [path.name for path in (out / "history").iterdir()] == ["single-direction.csv"]


def test_both_methods_pool_their_candidates_and_the_choice_names_its_method(tmp_path):
    out, alone = tmp_path / "directions", tmp_path / "alone"
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out), "--method", "both")
    assert result.exit_code == 0, result.output
    assert "both: 8 steps" in result.output
    scores = json.loads((out / "scores.json").read_text())
    assert scores["candidate_methods"] == ["latent-discovery"] * 3 + ["single-direction"]
    assert len(scores["candidates"]) == 8  # 4 candidates, 2 signs
    best = max(scores["candidates"], key=lambda c: (c["total"], -c["index"], c["sign"]))
    direction = load_direction(out / "direction.json")
    assert (direction.index, direction.sign) == (best["index"], best["sign"])
    assert direction.method == scores["candidate_methods"][best["index"]] == scores["chosen"]["method"]
    assert np.load(out / "candidates.npy", allow_pickle=False).shape == (16, 4)
    # each method's losses in a table of its own, with the column the DVC plot names
    tables = {path.name: path.read_text().splitlines() for path in (out / "history").iterdir()}
    assert sorted(tables) == ["latent-discovery.csv", "single-direction.csv"]
    assert tables["latent-discovery.csv"][0] == "step,accuracy,index_loss,loss,shift_loss"
    assert tables["single-direction.csv"][0] == "step,darken_loss,edge_loss,loss"
    assert all(len(rows) == 1 + 4 for rows in tables.values())  # both ran 4 steps
    # each method's candidates are exactly those it finds alone (same seed, own checkpoint)
    invoke("--params", str(write_params(tmp_path, checkpoint_dir=str(tmp_path / "c2"))), "--out", str(alone),
           "--method", "single-direction")
    pooled = np.load(out / "candidates.npy", allow_pickle=False)
    np.testing.assert_array_equal(pooled[:, 3:], np.load(alone / "candidates.npy", allow_pickle=False))
    # an override may name any pooled candidate; --steps is one method's and refused here
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out), "--method", "both",
                    "--index", "3", "--sign", "-1")
    assert result.exit_code == 0, result.output
    assert load_direction(out / "direction.json").method == "single-direction"
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path)), "--out", str(out), "--method",
                                       "both", "--steps", "2", "--quiet"])
    assert result.exit_code != 0 and "with method both" in result.output


@pytest.mark.parametrize("changes, args, message", [
    ({"latent_discovery": {"stepz": 3}}, [], "unknown keys in discover.latent_discovery: stepz"),
    ({"method": "guess"}, [], "discover.method must be one of"),
    ({"override": {"index": 9, "sign": 1}}, [], "override.index 9 is out of range"),
    ({"method": "both", "override": {"index": 4, "sign": 1}}, [], "there are 4 candidate directions"),
    ({"override": {"index": 1, "sign": 0}}, [], "override.sign must be 1 or -1"),
    ({"magnitude": -1}, [], "discover.magnitude must be a positive, finite number"),
    ({"latent_discovery": {"directions": 20}}, [], "do not fit in a latent space of size 16"),
    ({"scoring": {"foreground_min": 0.6}}, [], "foreground_min < foreground_max"),
    ({"device": "nonsense"}, [], "discover.device"),
    ({}, ["--index", "1"], "give --index and --sign together"),
    ({"method": "single-direction"}, ["--directions", "7"], "--directions sets latent discovery's K"),
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


def test_direction_file_records_the_refinement(tmp_path):
    out = tmp_path / "directions"
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out))
    assert result.exit_code == 0, result.output
    record = load_direction(out / "direction.json").extra["refinement"]
    assert set(record) == {"refined", "reason", "steps", "cosine_to_chosen", "score_before", "score_after",
                           "mask_quality_before", "mask_quality_after"}
    assert record["steps"] == 3 and record["score_before"] == json.loads((out / "scores.json").read_text())[
        "chosen"]["total"]
    assert "refinement:" in result.output


def test_no_refine_saves_the_chosen_candidate_as_it_is(tmp_path):
    out = tmp_path / "directions"
    result = invoke("--params", str(write_params(tmp_path)), "--out", str(out), "--no-refine")
    assert result.exit_code == 0, result.output
    direction = load_direction(out / "direction.json")
    assert direction.extra["refinement"]["refined"] is False and "off" in direction.extra["refinement"]["reason"]
    candidates = np.load(out / "candidates.npy")
    assert np.allclose(direction.sign * candidates[:, direction.index], direction.vector, atol=1e-6)


# mixing seed 1: no candidate of the tiny run makes a plausible mask
HOPELESS = {"name": "testing", "options": {"resolution": 16, "mixing_seed": 1}}


def test_no_plausible_candidate_stops_with_what_rejected_them(tmp_path):
    out = tmp_path / "directions"
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path, generator=HOPELESS)), "--out", str(out),
                                       "--quiet"])
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "no direction makes plausible saliency masks" in message and "scores 0.000" in message
    assert "size" in message and "histogram" in message and "[0.05, 0.5]" in message
    assert "discover.method" in message and "discover.override" in message
    assert (out / "scores.json").is_file() and (out / "contact_sheet.png").is_file()
    assert not (out / "direction.json").exists()
    assert json.loads((out / "scores.json").read_text())["chosen"]["total"] == 0


def test_a_floor_above_the_best_score_stops_the_stage_and_leaves_no_earlier_direction(tmp_path):
    out = tmp_path / "out"
    assert invoke("--params", str(write_params(tmp_path)), "--out", str(out)).exit_code == 0
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path, min_score=0.99)),
                                       "--out", str(out), "--quiet"])
    assert result.exit_code != 0 and "not above discover.min_score 0.99" in " ".join(result.output.split())
    # the earlier run's direction would pass for this run's choice beside its new scores
    assert not (out / "direction.json").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "scores.json").read_text())["chosen"]["total"] <= 0.99


@pytest.mark.parametrize("option", ["--out", "--checkpoint-dir"])
def test_a_folder_that_cannot_be_made_stops_the_stage_before_any_training(tmp_path, option):
    (tmp_path / "a_file").write_text("not a folder")
    other = {"--out": ["--checkpoint-dir", str(tmp_path / "checkpoints")],
             "--checkpoint-dir": ["--out", str(tmp_path / "out")]}[option]
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path)), option,
                                       str(tmp_path / "a_file" / "sub"), *other, "--quiet"])
    assert result.exit_code == 1 and "cannot make the folder" in result.output and "Traceback" not in result.output
    assert "steps" not in result.output and not (tmp_path / "checkpoints" / "latent-discovery.pt").exists()


def test_an_override_below_the_floor_is_kept_with_a_warning(tmp_path):
    out = tmp_path / "directions"
    params = write_params(tmp_path, generator=HOPELESS, override={"index": 1, "sign": -1})
    result = CliRunner().invoke(main, ["--params", str(params), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: the override is kept" in result.output
    direction = load_direction(out / "direction.json")
    assert (direction.index, direction.sign, direction.chosen_by) == (1, -1, "override")


def test_candidates_are_scored_under_the_synthesis_filters_and_sampler(tmp_path):
    bank = tmp_path / "bank.npy"
    np.save(bank, np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32))
    synth = {"sampler": "neighbourhood", "alpha": 0.5, "bank": str(bank),
             "filters": {"histogram": {"enabled": False}}}
    out = tmp_path / "directions"
    result = invoke("--params", str(write_params(tmp_path, synth=synth)), "--out", str(out))
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "scores.json").read_text())
    assert scores["scoring"]["sampler"] == "neighbourhood" and scores["scoring"]["alpha"] == 0.5
    assert scores["scoring"]["bank"] == str(bank)
    assert scores["scoring"]["filters"]["histogram"]["enabled"] is False
    assert all("histogram" not in c["rejected_by"] or c["rejected_by"]["histogram"] == 0
               for c in scores["candidates"])


def test_scoring_rules_are_not_set_in_the_discover_section(tmp_path):
    params = write_params(tmp_path, scoring={**TINY["scoring"], "filters": {}})
    result = CliRunner().invoke(main, ["--params", str(params), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code != 0 and "set synth.filters instead" in result.output


def test_a_missing_bank_for_the_neighbourhood_sampler_is_a_clear_error_before_any_training(tmp_path):
    synth = {"sampler": "neighbourhood", "bank": str(tmp_path / "absent.npy")}
    result = CliRunner().invoke(main, ["--params", str(write_params(tmp_path, synth=synth)),
                                       "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code != 0 and "no latent bank" in result.output
    assert not list(tmp_path.glob("checkpoints/*"))          # it stopped before training, not after
