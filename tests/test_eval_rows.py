"""Every model found is reported alone and "+ refinement", each row naming its model."""

from __future__ import annotations

import json

import torch
from PIL import Image

from tests.test_eval_command import project, run  # noqa: F401  (the fixture)
from trainer.export import save_trained_model
from trainer.unet import UNet


def test_selftrained_and_refined_rows_beside_the_plain_ones(project, tmp_path):  # noqa: F811
    torch.manual_seed(1)
    selftrained = tmp_path / "selftrain_model"
    save_trained_model(UNet(base_channels=4, depth=2), {"input_size": 32}, selftrained)  # another input size
    result = run("--params", str(project["params"]), "--benchmark", "ECSSD", "--selftrained-model", str(selftrained),
                 "--refinement", "--no-localisation")
    assert result.exit_code == 0, result.output
    metrics = json.loads((project["output"] / "metrics.json").read_text())
    rows = ["model", "model_refined", "selftrained", "selftrained_refined", "centre_prior", "centre_prior_refined"]
    assert list(metrics["ECSSD"]["paper"]) == rows
    plain = json.loads(json.dumps(metrics["ECSSD"]["paper"]["model"]))
    assert plain["mae"] != metrics["ECSSD"]["paper"]["model_refined"]["mae"]
    report = json.loads((project["output"] / "report.json").read_text())
    assert [(row["row"], row["model"], bool(row["refinement"])) for row in report["rows"]] == [
        ("model", "model", False), ("model_refined", "model", True), ("selftrained", "selftrained", False),
        ("selftrained_refined", "selftrained", True), ("centre_prior", "centre_prior", False),
        ("centre_prior_refined", "centre_prior", True)]
    assert report["benchmarks"]["ECSSD"]["evaluated"] == 3
    assert Image.open(project["output"] / "grids" / "ECSSD.png").width == 128 * (2 + len(rows))

    # Without refinement the plain rows are unchanged; a folder without a model is left out with a note.
    result = run("--params", str(project["params"]), "--benchmark", "ECSSD", "--selftrained-model",
                 str(tmp_path / "empty"), "--no-localisation")
    assert result.exit_code == 0 and "no self-trained model" in result.output
    metrics = json.loads((project["output"] / "metrics.json").read_text())
    assert list(metrics["ECSSD"]["paper"]) == ["model", "centre_prior"]
    assert metrics["ECSSD"]["paper"]["model"] == plain
