"""DistributedDataParallel: one step over two gloo processes is the step of one process, and a
whole run under `torchrun` ends with the same weights on both ranks.

The first test splits a fixed batch of 7 samples 4 + 3 over two processes and compares the
gradients, weights and BatchNorm statistics after one step with those of one process on all 7:
this holds only if BatchNorm is synchronised over ranks and the loss scaling turns DDP's gradient
average into the gradient of the whole batch's mean.  The second launches this file through
`torchrun --nproc_per_node 2`; each rank trains and saves its own final state dict.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing

from tests.test_trainer_data import write_disc_shards

REPO_ROOT = Path(__file__).resolve().parents[1]


BATCH, SIZE = 7, 16


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """7 images (a bright square on noise, of varied sizes) and their masks."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator) * 0.6 - 1
    masks = torch.zeros(BATCH, 1, SIZE, SIZE)
    for i in range(BATCH):
        side = 4 + i
        masks[i, :, 2:2 + side, 3:3 + side] = 1
    return images + masks * 1.2, masks


def one_step(rank: int, world_size: int, port: int, out_folder: str) -> None:
    """One training step of `rank` of `world_size` on its share of the fixed batch; saves the result."""
    from trainer import distributed
    from trainer.loop import training_step, wrap_for_ranks
    from trainer.unet import UNet

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context = distributed.setup("cpu")
    try:
        torch.manual_seed(0)
        model = UNet(3, 4, 2, True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        network = wrap_for_ranks(model, context)
        share = distributed.rank_batch_size(BATCH, context)
        start = sum(distributed.rank_batch_size(BATCH, distributed.Distributed(r, world_size, r, context.device))
                    for r in range(rank))
        images, masks = fixed_batch()
        network.train()
        training_step(network, optimizer, images[start:start + share], masks[start:start + share],
                      BATCH * SIZE * SIZE, world_size)
        torch.save({"share": share, "state": model.state_dict(),
                    "grads": {name: p.grad.clone() for name, p in model.named_parameters()}},
                   Path(out_folder) / f"step-rank{rank}-of{world_size}.pt")
    finally:
        distributed.teardown(context)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_batch_of_7_split_4_and_3_over_two_processes_makes_the_step_of_one_process(tmp_path):
    one_step(0, 1, free_port(), str(tmp_path))
    torch.multiprocessing.spawn(one_step, args=(2, free_port(), str(tmp_path)), nprocs=2)
    single = torch.load(tmp_path / "step-rank0-of1.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"step-rank{rank}-of2.pt", weights_only=True) for rank in (0, 1)]
    assert single["share"] == 7 and [r["share"] for r in ranks] == [4, 3]
    for name, gradient in single["grads"].items():
        assert gradient.abs().max() > 0, name
        for rank in ranks:
            assert torch.allclose(rank["grads"][name], gradient, rtol=1e-4, atol=1e-7), name
    for name, value in single["state"].items():   # weights after the step and BatchNorm statistics
        for rank in ranks:
            assert torch.allclose(rank["state"][name].float(), value.float(), rtol=1e-4, atol=1e-6), name


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
