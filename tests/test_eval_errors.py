"""`evaluate-saliency` on damaged or surprising benchmarks and outputs: clean errors, warnings that
say what was done, and a user's own files left alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from evaluation.datasets import flowers_mask
from evaluation.main import main
from evaluation.masks import UnreadableMaskError
from tests.test_eval_command import project, run, write_pairs  # noqa: F401  (fixture)


def test_an_unreadable_flowers_mask_is_an_unreadable_mask(tmp_path):
    junk = tmp_path / "segmim_00001.jpg"
    junk.write_bytes(b"junk\n")
    with pytest.raises(UnreadableMaskError, match="segmim_00001.jpg"):
        flowers_mask(junk)


def written_files(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_a_new_run_removes_only_the_files_the_previous_run_wrote(project):  # noqa: F811
    output = project["output"]
    assert run("--params", str(project["params"])).exit_code == 0
    assert "plots/pr/Mine.paper.model.csv" in written_files(output)
    mine = [output / "plots" / "thesis_figure.svg",
            output / "plots" / "pr" / "Mine.notes.csv", output / "grids" / "Mine.draft.png"]
    for path in mine:
        path.write_text("mine")
    result = run("--params", str(project["params"]), "--benchmark", "ECSSD")
    assert result.exit_code == 0, result.output
    left = written_files(output)
    assert all(path.read_text() == "mine" for path in mine)
    assert not [name for name in left if "Mine.paper" in name or name == "grids/Mine.png"]
    assert "plots/pr/ECSSD.paper.model.csv" in left and "grids/ECSSD.png" in left
    report = json.loads((output / "report.json").read_text())
    ours = set(left) - {str(path.relative_to(output)) for path in mine} - {"metrics.json", "report.json"}
    assert sorted(report["files"]) == sorted(ours)


def test_a_report_without_its_file_list_names_its_files_by_their_pattern(project):  # noqa: F811
    output = project["output"]
    assert run("--params", str(project["params"])).exit_code == 0
    report = json.loads((output / "report.json").read_text())
    report.pop("files", None)      # as written before the list was kept
    (output / "report.json").write_text(json.dumps(report))
    (output / "plots" / "thesis_figure.svg").write_text("mine")
    assert run("--params", str(project["params"]), "--benchmark", "ECSSD").exit_code == 0
    left = written_files(output)
    assert "plots/thesis_figure.svg" in left and "grids/ECSSD.png" in left
    assert not [name for name in left if "Mine" in name]


def test_files_a_report_lists_outside_plots_and_grids_are_never_removed(project):  # noqa: F811
    output = project["output"]
    assert run("--params", str(project["params"])).exit_code == 0
    (output.parent / "elsewhere.txt").write_text("mine")
    (output / "notes.txt").write_text("mine")
    report = json.loads((output / "report.json").read_text())
    report["files"] = report.get("files", []) + ["../elsewhere.txt", "notes.txt", "plots/../notes.txt", str(output / "notes.txt")]
    (output / "report.json").write_text(json.dumps(report))
    assert run("--params", str(project["params"])).exit_code == 0
    assert (output.parent / "elsewhere.txt").is_file() and (output / "notes.txt").is_file()


def test_no_benchmark_evaluated_fails_and_keeps_the_previous_results(project, tmp_path):  # noqa: F811
    output = project["output"]
    assert run("--params", str(project["params"])).exit_code == 0
    before = {name: (output / name).read_bytes() for name in written_files(output)}
    params = yaml.safe_load(project["params"].read_text())
    params["evaluate"]["required"] = []
    optional = tmp_path / "optional.yaml"
    optional.write_text(yaml.safe_dump(params))
    result = run("--params", str(optional), "--benchmarks-root", str(tmp_path / "benchmakrs"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no benchmark was evaluated" in result.output and "benchmakrs" in result.output
    assert {name: (output / name).read_bytes() for name in written_files(output)} == before


def test_benchmark_on_the_command_line_replaces_the_required_list(project):  # noqa: F811
    write_pairs(project["root"] / "HKU-IS", "imgs", "gt", ["x", "y"])
    result = run("--params", str(project["params"]), "--benchmark", "HKU-IS")   # params require ECSSD
    assert result.exit_code == 0, result.output
    assert list(json.loads((project["output"] / "metrics.json").read_text())) == ["HKU-IS"]
    # asked for by name, a benchmark must be found: no silent skip
    result = run("--params", str(project["params"]), "--benchmark", "HKU-IS", "--benchmark", "DUTS-TE")
    assert result.exit_code == 1 and "required benchmark missing: DUTS-TE" in result.output


def test_help_says_what_benchmark_does_to_required():
    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert "Replaces the list in params" in help_text and "must be found" in help_text


def test_masks_of_another_size_are_scored_and_reported(project):  # noqa: F811
    small = project["root"] / "Small"
    write_pairs(small, "images", "masks", ["p", "q", "r"])
    for stem in ("p", "r"):
        Image.fromarray(np.full((10, 12), 255, np.uint8)).save(small / "masks" / f"{stem}.png")
    params = yaml.safe_load(project["params"].read_text())
    params["evaluate"]["benchmarks"].append({"name": "Small", "images": "images", "masks": "masks"})
    project["params"].write_text(yaml.safe_dump(params))
    reports = []
    for processes in ("1", "2"):
        result = run("--params", str(project["params"]), "--processes", processes, "--refinement")
        assert result.exit_code == 0, result.output
        expected = "Small: 2 masks of another size than their image (scored at the mask's size): masks/p.png, masks/r.png"
        assert f"warning: {expected}" in result.output
        report = json.loads((project["output"] / "report.json").read_text())
        assert expected in report["warnings"]
        assert report["benchmarks"]["Small"]["mask_size_mismatches"] == ["masks/p.png", "masks/r.png"]
        assert "mask_size_mismatches" not in report["benchmarks"]["ECSSD"]
        assert report["benchmarks"]["Small"]["evaluated"] == 3
        reports.append(report)
    assert reports[0]["warnings"] == reports[1]["warnings"]
