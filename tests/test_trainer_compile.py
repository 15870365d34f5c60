"""The trainer through torch.compile: the same run as without it, and a clean error when it cannot compile."""

import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.test_trainer_data import write_disc_shards
from tests.test_trainer_training import tiny_config
from trainer.config import ConfigError, TrainConfig
from trainer.export import load_trained_model
from trainer.loop import train
from trainer.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_a_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                      reason="torch.compile needs a C++ compiler on a CPU")


@pytest.fixture(scope="module")
def disc_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discs")
    write_disc_shards(folder, shards=3, per_shard=12, size=16)
    return folder


@needs_a_compiler
def test_a_compiled_run_is_the_plain_run(disc_shards, tmp_path):
    def run(folder, compile_model):
        return train(tiny_config(disc_shards, folder, steps=6, log_every=1, val_every=3, checkpoint_every=3,
                                 base_channels=4, compile=compile_model), progress=False)

    plain, compiled = run(tmp_path / "plain", False), run(tmp_path / "compiled", True)
    expected = [row["loss"] for row in plain.history["train"]]
    assert [row["loss"] for row in compiled.history["train"]] == pytest.approx(expected, rel=1e-4)
    # The files hold the network's own weights, under the plain names, not the compiled wrapper's.
    model, config = load_trained_model(tmp_path / "compiled" / "model")
    assert list(model.state_dict()) == list(plain.model.state_dict())
    for name, weights in model.state_dict().items():
        assert torch.allclose(weights.float(), plain.model.state_dict()[name].float(), rtol=1e-3, atol=1e-5), name


def test_a_failed_compilation_stops_the_command_with_a_clean_message(disc_shards, tmp_path):
    from torch._inductor import config as inductor
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_config(disc_shards, tmp_path, steps=2).as_dict()}))
    with inductor.patch({"cpp.cxx": (None, "/bin/false")}):   # a "compiler" that always fails
        outcome = CliRunner().invoke(main, ["--params", str(params), "--compile", "--quiet"])
    assert outcome.exit_code == 1 and "Traceback" not in outcome.output, outcome.output
    assert "torch.compile failed" in outcome.output and "--no-compile" in outcome.output


def test_compile_must_be_true_or_false():
    with pytest.raises(ConfigError, match="train.compile must be true or false"):
        TrainConfig(compile="yes")
    assert TrainConfig.from_section({"compile": True}).compile is True
