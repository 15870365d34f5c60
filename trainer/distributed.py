"""Multi-process training with `torchrun`: the process group, this process's rank and device.

`torchrun` (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
without them the run is a single process.  The backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, curves and the model."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Distributed:
    """Join the process group described by the environment (a no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world_size)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def teardown(context: Distributed) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, context: Distributed) -> torch.Tensor:
    """The sum of `value` over ranks (the value itself for a single process)."""
    if context.active:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def rank_batch_size(batch_size: int, context: Distributed) -> int:
    """This rank's share of a global batch; the first `batch_size % world_size` ranks take one more."""
    if batch_size < context.world_size:
        raise ValueError(f"a batch of {batch_size} cannot be split over {context.world_size} ranks")
    return batch_size // context.world_size + (context.rank < batch_size % context.world_size)
