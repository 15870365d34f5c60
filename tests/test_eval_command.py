"""`evaluate-saliency`: the evaluate stage end to end on tiny benchmarks, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from evaluation.main import main
from trainer.export import save_trained_model
from trainer.unet import UNet


def write_pairs(folder: Path, images: str, masks: str, stems: list[str], size=(36, 48)) -> None:
    rng = np.random.default_rng(len(stems))
    (folder / images).mkdir(parents=True, exist_ok=True)
    (folder / masks).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / images / f"{stem}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[8:28, 12:36] = 255
        Image.fromarray(mask).save(folder / masks / f"{stem}.png")


@pytest.fixture
def project(tmp_path) -> dict[str, Path]:
    root = tmp_path / "benchmarks"
    write_pairs(root / "ECSSD", "images", "ground_truth_mask", ["0001", "0002", "0003"])
    (root / "ECSSD" / "images" / "0004.jpg").write_bytes((root / "ECSSD" / "images" / "0001.jpg").read_bytes())
    write_pairs(root / "Mine", "pictures", "labels", ["a", "b"], size=(40, 30))
    torch.manual_seed(0)
    model = tmp_path / "model"
    save_trained_model(UNet(base_channels=4, depth=2), {"input_size": 24}, model)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {
        "model": str(model), "benchmarks_root": str(root), "output": str(tmp_path / "eval"),
        "benchmarks": ["ECSSD", "DUTS-TE", {"name": "Mine", "images": "pictures", "masks": "labels"}],
        "required": ["ECSSD"], "conventions": ["paper", "toolbox"], "batch_size": 2, "examples": 2,
    }}))
    return {"params": params, "root": root, "model": model, "output": tmp_path / "eval"}


def run(*args: str):
    return CliRunner().invoke(main, [*args, "--quiet"], catch_exceptions=False)


def test_stage_writes_metrics_plots_report_and_grids(project):
    result = run("--params", str(project["params"]))
    assert result.exit_code == 0, result.output
    assert "skipping DUTS-TE" in result.output
    output = project["output"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"ECSSD", "Mine"}
    for benchmark in metrics.values():
        assert set(benchmark) == {"paper", "toolbox"}
        for by_predictor in benchmark.values():
            assert set(by_predictor) == {"model", "centre_prior"}
            for values in by_predictor.values():
                assert {"max_f", "iou", "accuracy", "mae", "s_measure", "max_e", "max_box_acc", "pxap"} <= set(values)
                assert 0 <= values["max_f"] <= 1
    report = json.loads((output / "report.json").read_text())
    assert report["headline_convention"] == "paper" and set(report["conventions"]) == {"paper", "toolbox"}
    assert report["benchmarks"]["ECSSD"]["unmatched_images"] == ["images/0004.jpg"]
    assert report["benchmarks"]["ECSSD"]["evaluated"] == 3
    assert [s["name"] for s in report["skipped"]] == ["DUTS-TE"]
    assert report["predictors"][0]["name"] == "model" and report["predictors"][1]["name"] == "centre_prior"
    assert report["inference"]["shorter_side"] == 24
    pr = (output / "plots" / "pr" / "ECSSD.paper.model.csv").read_text().splitlines()
    assert pr[0] == "threshold,precision,recall" and len(pr) == 256
    curve = (output / "plots" / "f_threshold" / "Mine.toolbox.centre_prior.csv").read_text().splitlines()
    assert curve[0] == "threshold,f,e,box_acc" and len(curve) == 257
    grid = Image.open(output / "grids" / "ECSSD.png")
    assert grid.size == (128 * 4, 18 + 128 * 2)
    assert "ECSSD" in result.output and "centre_prior" in result.output


def test_same_parameters_give_the_same_bytes(project, tmp_path):
    assert run("--params", str(project["params"])).exit_code == 0
    first = (project["output"] / "metrics.json").read_bytes()
    assert run("--params", str(project["params"]), "--output", str(tmp_path / "again")).exit_code == 0
    assert (tmp_path / "again" / "metrics.json").read_bytes() == first


def test_command_line_overrides_params(project):
    result = run("--params", str(project["params"]), "--benchmark", "ECSSD", "--convention", "toolbox",
                 "--no-localisation", "--model", "none", "--limit", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((project["output"] / "metrics.json").read_text())
    assert list(metrics) == ["ECSSD"] and list(metrics["ECSSD"]) == ["toolbox"]
    assert list(metrics["ECSSD"]["toolbox"]) == ["centre_prior"]
    assert "max_box_acc" not in metrics["ECSSD"]["toolbox"]["centre_prior"]
    report = json.loads((project["output"] / "report.json").read_text())
    assert report["benchmarks"]["ECSSD"]["evaluated"] == 2


def test_missing_required_benchmark_fails_cleanly(project):
    result = run("--params", str(project["params"]), "--required", "DUTS-TE")
    assert result.exit_code != 0
    assert "required benchmark missing" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model"], "cannot load the trained model"),
    (["--benchmark", "SOD"], "unknown benchmark"),
    (["--required", "PASCAL-S", "--benchmark", "ECSSD"], "not in the list"),
])
def test_bad_settings_are_reported(project, args, message):
    result = run("--params", str(project["params"]), *args)
    assert result.exit_code != 0 and message in result.output


def test_unknown_setting_and_missing_params_file(project, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"evaluate": {"modle": "x"}}))
    result = run("--params", str(bad))
    assert result.exit_code != 0 and "unknown evaluate settings modle" in result.output
    result = run("--params", str(tmp_path / "absent.yaml"))
    assert result.exit_code != 0 and "not found" in result.output


def test_help_explains_the_options():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--model", "--benchmarks-root", "--convention", "--required", "--download", "--limit"):
        assert option in result.output


def test_centre_prior_on_real_ecssd(shared_datasets, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {}\n")
    result = run("--params", str(params), "--model", "none",
                 "--benchmarks-root", str(shared_datasets), "--benchmark", "ECSSD", "--limit", "40",
                 "--output", str(tmp_path / "eval"), "--no-localisation")
    assert result.exit_code == 0, result.output
    values = json.loads((tmp_path / "eval" / "metrics.json").read_text())["ECSSD"]["paper"]["centre_prior"]
    # the whole of ECSSD gives 0.553 / 0.402 / 0.786 (DESIGN.md); 40 images land near it
    assert 0.45 < values["max_f"] < 0.7 and 0.3 < values["iou"] < 0.55 and 0.7 < values["accuracy"] < 0.9


def test_reports_write_nan_as_null_and_never_half_files(tmp_path):
    from evaluation.report import write_json
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": np.float64(0.5), "c": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": 0.5, "c": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
