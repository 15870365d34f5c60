"""Multi-process training with `torchrun`: the process group, this process's rank and device, and
BatchNorm synchronised over ranks.

`torchrun` (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
without them the run is a single process.  The backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_autograd
from torch import nn

from generator.runs import resolve_device


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
    """Join the process group described by the environment (a no-op for a single process).

    `device` is auto (None too), cpu, cuda or cuda:N; auto and cuda mean cuda:LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank)
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


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over every rank.

    torch's SyncBatchNorm runs on GPUs only; this one runs on any backend (gloo on CPUs too).  The
    sums are reduced with autograd-aware all-reduces, so each rank's gradient takes in how its
    samples moved the other ranks' normalisation, as one process on the whole batch would; ranks
    may hold different numbers of samples.  Without a process group (or in eval mode) it is a
    plain BatchNorm2d, with the same state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = distributed_autograd.all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean[None, :, None, None]
        variance = distributed_autograd.all_reduce((centred * centred).sum(dim=(0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * unbiased.detach())
        normalised = centred * torch.rsqrt(variance + self.eps)[None, :, None, None]
        if self.affine:
            normalised = normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return normalised


def synchronise_batch_norm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d in `module` into a SyncedBatchNorm holding the same parameter and
    buffer objects (so an optimiser built before still updates them); returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncedBatchNorm):
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.__dict__["_parameters"] = child._parameters
            synced.__dict__["_buffers"] = child._buffers
            synced.training = child.training
            setattr(module, name, synced)
        else:
            synchronise_batch_norm(child)
    return module
