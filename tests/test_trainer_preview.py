"""`train-unet --preview`: the first step's pairs, exactly as the U-Net is given them."""

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import trainer.loop
from tests.test_trainer_training import disc_shards, tiny_config  # noqa: F401  (fixture)
from trainer.loop import train
from trainer.main import main
from trainer.preview import PREVIEW_COLUMNS, first_step_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _FirstStep(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("augment", [False, True])
def test_the_preview_is_the_batch_the_first_step_trains_on(disc_shards, tmp_path, monkeypatch,  # noqa: F811
                                                           augment, workers):
    config = tiny_config(disc_shards, tmp_path, augment=augment, num_workers=workers)
    seen = {}

    def first_step(network, optimizer, images, masks, *args):
        seen["images"], seen["masks"] = images, masks
        raise _FirstStep

    monkeypatch.setattr(trainer.loop, "training_step", first_step)
    with pytest.raises(_FirstStep):
        train(config, progress=False)
    images, masks, keys = first_step_pairs(config)
    assert torch.equal(images, seen["images"]) and torch.equal(masks, seen["masks"])
    assert len(keys) == config.batch_size
    plain, plain_masks, plain_keys = first_step_pairs(tiny_config(disc_shards, tmp_path, num_workers=workers))
    assert plain_keys == keys and torch.equal(plain, images) is not augment


def test_the_command_writes_the_sheet_and_trains_nothing(disc_shards, tmp_path):  # noqa: F811
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_config(disc_shards, tmp_path, augment=True).as_dict()}))
    runner = CliRunner()
    outcome = runner.invoke(main, ["--params", str(params), "--preview", str(tmp_path / "sheet.png")])
    assert outcome.exit_code == 0, outcome.output
    assert "the first 6 pairs of step 0 (augmented)" in outcome.output
    sheet = Image.open(tmp_path / "sheet.png")
    tile = 16 * 8                              # 16 px pairs, enlarged to about 128 px
    rows = -(-6 // PREVIEW_COLUMNS)
    assert sheet.size == (PREVIEW_COLUMNS * (3 * tile + 4) + (PREVIEW_COLUMNS - 1) * 6, rows * tile + (rows - 1) * 2)
    assert not (tmp_path / "model").exists() and not (tmp_path / "checkpoints").exists()
    missing = runner.invoke(main, ["--params", str(params), "--shards", str(tmp_path / "nowhere"),
                                   "--preview", str(tmp_path / "x.png")])
    assert missing.exit_code == 1 and "not found" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "x.png").exists()
