"""DistributedDataParallel under `torchrun`: 2 CPU processes (gloo) end with the same weights.

The test launches this file through `torchrun --nproc_per_node 2`; each rank trains and saves its
own final state dict, which the test then compares.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_trainer_data import write_disc_shards

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_two_gloo_processes_end_with_the_same_weights(tmp_path):
    write_disc_shards(tmp_path / "shards", shards=5, per_shard=6, size=16)
    config = dict(shards=str(tmp_path / "shards"), holdout_shards=1, val_samples=6, base_channels=4, depth=2,
                  steps=6, batch_size=7, num_workers=1, shuffle_buffer=6, log_every=1, val_every=3,
                  checkpoint_every=3, checkpoint_dir=str(tmp_path / "checkpoints"),
                  model_dir=str(tmp_path / "model"), plots_dir=str(tmp_path / "plots"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(tmp_path / "config.json"), str(tmp_path / "ranks")],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-3000:]

    ranks = [torch.load(tmp_path / "ranks" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["batch_share"] == 4 and ranks[1]["batch_share"] == 3  # 7 split unevenly
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 6
    initial = ranks[0]["initial"]
    assert any(not torch.equal(initial[name], ranks[0]["state"][name]) for name in initial)  # it did train
    # Only rank 0 writes files.
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["unet.json", "unet.pt"]
    assert json.loads((tmp_path / "model" / "unet.json").read_text())["world_size"] == 2
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]


def _run_rank(config_path: str, out_folder: str) -> None:
    import torch.distributed as dist

    from trainer.config import TrainConfig
    from trainer.distributed import Distributed, rank_batch_size
    from trainer.loop import train
    from trainer.unet import UNet

    config = TrainConfig(**json.loads(Path(config_path).read_text()))
    torch.manual_seed(config.seed)
    initial = UNet(3, config.base_channels, config.depth, config.bilinear).state_dict()
    result = train(config, progress=False)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert not dist.is_initialized()  # the trainer leaves the process group it joined
    share = rank_batch_size(config.batch_size, Distributed(rank, world_size, 0, torch.device("cpu")))
    Path(out_folder).mkdir(exist_ok=True)
    torch.save({"state": result.model.state_dict(), "initial": initial, "world_size": world_size,
                "batch_share": share, "losses": [row["loss"] for row in result.history["train"]]},
               Path(out_folder) / f"rank{rank}.pt")


if __name__ == "__main__":
    _run_rank(sys.argv[1], sys.argv[2])
