"""The training loop: pixel-wise BCE with Adam and a step decay, checkpoints, curves, export.

One process, or one per GPU/CPU group under `torchrun` (DistributedDataParallel, with the
U-Net's BatchNorm layers synchronised over ranks (trainer/distributed.py) so every rank normalises with the whole batch's
statistics).  The batch size is the global one: ranks split it, unevenly when it does not divide,
and each rank's loss is its pixels' BCE sum scaled by world size / pixels in the whole batch, so
that DDP's gradient average is exactly the gradient of the mean over the whole batch.

A run resumed from a checkpoint with the same run record repeats the uninterrupted run's steps
exactly: model, optimiser, scheduler and RNG states are restored and the data stream restarts at
its position (trainer/shards.py).  The record holds what shapes the weights (data checksums,
network, schedule, seed), not how often the run logs or validates, nor how many processes or
loader workers it uses, nor bf16 or compilation: changing those resumes too (the data order after
the resume then follows the new layout).  A checkpoint with another record is refused, naming the
keys that differ, and kept, unless it is a finished run's (its model was exported) or `resume` is
off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generator.runs import OutputLock, may_resume, record_digest
from trainer import distributed
from trainer.augment import augment_pairs
from trainer.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from trainer.config import ConfigError, TrainConfig
from trainer.curves import write_curves, write_summary
from trainer.decode import ShardFormatError
from trainer.export import save_trained_model
from trainer.shards import (StreamPlan, derived_seed, loader_workers, manifest_summary, probe_image_size, read_pairs,
                            resolve_shards, shards_identity, split_holdout, training_loader)
from trainer.unet import UNet
from trainer.validation import validation_scores


@dataclass
class TrainResult:
    """What a run leaves in memory (the files are written by rank 0)."""

    model: UNet
    step: int
    history: dict[str, list[dict[str, Any]]]
    resumed_from: int | None
    samples_per_second: float        # over the whole call, start-up included
    steady_samples_per_second: float | None = None  # after the call's first logged row: without start-up
    rank: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def _log_to_stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def train(config: TrainConfig, progress: bool = True, log: Callable[[str], None] = _log_to_stderr,
          device: str | None = None) -> TrainResult:
    """Run (or resume) training as configured; rank 0 writes checkpoints, curves and the model.

    `device` (auto, cpu, cuda or cuda:N) wins over `config.device`.  Rank 0 holds the checkpoint
    folder's lock for the run.  Raises generator.runs.RecordMismatch for a checkpoint of other
    settings and generator.runs.FolderLocked when another run uses the folder.
    """
    context = distributed.setup(device or config.device)
    lock = OutputLock(config.checkpoint_dir) if context.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        return _train(config, context, progress, log)
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(context)


def _train(config: TrainConfig, context: distributed.Distributed, progress: bool,
           log: Callable[[str], None]) -> TrainResult:
    log = log if context.is_main else (lambda message: None)
    device = context.device
    if config.threads:
        torch.set_num_threads(config.threads)
    elif device.type == "cpu" and context.active:
        # Ranks on one machine share its cores; oversubscribed threads slow every rank down.
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))

    training, held, input_size, plan = training_plan(config, context)
    autocast_on = config.bf16 and device.type == "cuda"
    # The run record: what shapes the weights.  `steps` is not in it, so a run can be extended.
    settings = {
        "training_shards": shards_identity(training), "holdout_shards": shards_identity(held),
        "input_size": input_size, "base_channels": config.base_channels, "depth": config.depth,
        "bilinear": config.bilinear, "batch_size": config.batch_size, "lr": config.lr,
        "lr_decay_step": config.lr_decay_step, "lr_decay_factor": config.lr_decay_factor, "seed": config.seed,
        "shuffle_buffer": config.shuffle_buffer, "augment": config.augment,
    }

    torch.manual_seed(config.seed)
    # On a GPU, channels_last lets cuDNN run its fastest (NHWC) bf16 convolutions; a CPU keeps
    # the default layout, so CPU runs are unchanged.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = UNet(3, config.base_channels, config.depth, config.bilinear).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    milestones = [config.lr_decay_step] if config.lr_decay_step else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_decay_factor)
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    pending = {"loss_sum": 0.0, "steps": 0}  # train-loss steps not yet written to the curve
    step, resumed_from = 0, None

    state = load_checkpoint(config.checkpoint_dir) if config.resume else None
    if state is not None and not _may_resume(state, settings, config, log):
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"])
        history, pending = state["history"], state["pending"]
        step = resumed_from = int(state["step"])
        log(f"resuming from step {step} ({config.checkpoint_dir})")
    _check_ranks_agree(step, context)

    network = wrap_for_ranks(model, context)
    if config.compile:
        network = torch.compile(network)
    autocast = partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16) if autocast_on \
        else contextlib.nullcontext
    validation = read_pairs(held, input_size, config.val_samples)[:2] if held and context.is_main else None
    # Pinned batches let the copy to a GPU overlap the step in flight.
    loader = run_loader(config, plan, input_size, consumed_batches=step, pin_memory=device.type == "cuda")
    pixels_per_step = config.batch_size * input_size * input_size
    unread: list[torch.Tensor] = []  # the BCE sums of steps whose loss is still on the device
    last_loss: float | None = None

    def read_losses() -> None:
        """Bring the unread steps' losses to `pending`: one wait for the device per call, not one
        per step, so the GPU is never left idle while this process reads a number."""
        nonlocal pending, last_loss
        if not unread:
            return
        for loss_sum in distributed.all_sum(torch.stack(unread), context).tolist():
            last_loss = loss_sum / pixels_per_step
            pending = {"loss_sum": pending["loss_sum"] + last_loss, "steps": pending["steps"] + 1}
        unread.clear()

    def checkpoint() -> None:
        save_checkpoint({
            "step": step, "record": settings, "record_digest": record_digest(settings),
            "finished": step >= config.steps,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_states(), "history": history, "pending": pending,
        }, config.checkpoint_dir)
        write_curves(history, config.plots_dir)

    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and context.is_main), file=sys.stderr)
    started, start_step = time.perf_counter(), step
    # The steady rate leaves out the first row of steps, which holds the start-up: loader processes
    # filling their shuffle buffers, cuDNN choosing kernels, compilation.
    steady_from: tuple[float, int] | None = None
    steady_until: tuple[float, int] | None = None   # the last row's (time, step)
    model.train()
    batches = iter(loader)
    while step < config.steps:
        images, masks, _ = _next_batch(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        images, masks = augmented_for_step(config, images, masks, step, context.rank)
        images = images.contiguous(memory_format=memory_format)
        learning_rate = optimizer.param_groups[0]["lr"]
        unread.append(training_step(network, optimizer, images, masks, pixels_per_step, context.world_size, autocast))
        scheduler.step()
        step += 1
        last_step = step == config.steps
        if step % config.log_every == 0 or step % config.checkpoint_every == 0 or last_step:
            read_losses()  # on every rank alike: with several, it is a collective
        if step % config.log_every == 0 or last_step:
            # The losses were just read, so the device has finished these steps.
            steady_until = (time.perf_counter(), step)
            steady_from = steady_from or steady_until
            history["train"].append({"step": step, "loss": pending["loss_sum"] / pending["steps"],
                                     "lr": learning_rate})
            pending = {"loss_sum": 0.0, "steps": 0}
        if validation is not None and (step % config.val_every == 0 or step == config.steps):
            scores = validation_scores(model, *validation, batch_size=config.batch_size, autocast=autocast)
            history["val"].append({"step": step, **scores})
        if context.is_main and (step % config.checkpoint_every == 0 or last_step):
            checkpoint()
        rate = (step - start_step) * config.batch_size / max(time.perf_counter() - started, 1e-9)
        shown = {"loss": "..." if last_loss is None else f"{last_loss:.4f}", "samples/s": f"{rate:.1f}"}
        if history["val"]:
            shown["val_iou"] = f"{history['val'][-1]['iou']:.3f}"
        bar.set_postfix(shown, refresh=False)
        bar.update(1)
    bar.close()
    del batches
    elapsed = time.perf_counter() - started
    samples_per_second = (step - start_step) * config.batch_size / elapsed if step > start_step else 0.0
    steady = None
    if steady_from is not None and steady_until is not None and steady_until[1] > steady_from[1]:
        steady = (steady_until[1] - steady_from[1]) * config.batch_size / (steady_until[0] - steady_from[0])

    if context.is_main:
        write_curves(history, config.plots_dir)
        last_val = history["val"][-1] if history["val"] else {}
        record = {
            "input_size": input_size, "steps": step, "batch_size": config.batch_size, "lr": config.lr,
            "lr_decay_step": config.lr_decay_step, "lr_decay_factor": config.lr_decay_factor,
            "seed": config.seed, "world_size": context.world_size, "shards": config.shards,
            "training_shard_count": len(training), "holdout_shards": [url.rsplit("/", 1)[-1] for url in held],
            "final_train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "validation": {key: last_val[key] for key in ("step", "loss", "iou", "accuracy") if key in last_val},
            "provenance": manifest_summary(config.shards),
        }
        save_trained_model(model, record, config.model_dir)
        write_summary({"steps": step, "train_loss": record["final_train_loss"],
                       **{f"val_{key}": value for key, value in record["validation"].items() if key != "step"}},
                      config.plots_dir)
        speed = f" ({steady:.1f} samples/s after the first {steady_from[1] - start_step} steps)" if steady else ""
        log(f"trained {step} steps{speed}; model in {config.model_dir}, curves in {config.plots_dir}")
    if context.active:
        dist.barrier()
    return TrainResult(model=model, step=step, history=history, resumed_from=resumed_from,
                       samples_per_second=samples_per_second, steady_samples_per_second=steady,
                       rank=context.rank, settings=settings)


def training_plan(config: TrainConfig, context: distributed.Distributed) -> tuple[list[str], list[str], int,
                                                                                StreamPlan]:
    """(training shards, held-out shards, input size, this rank's stream plan) of a run."""
    training, held = split_holdout(resolve_shards(config.shards, config.manifest), config.holdout_shards)
    input_size = config.input_size or probe_image_size(training[0])
    if input_size < 2 ** config.depth:
        raise ConfigError(f"images of {input_size} px are too small for a U-Net of depth {config.depth}")
    workers = loader_workers(config.num_workers, len(training), context.world_size)
    plan = StreamPlan(tuple(training), config.seed, context.rank, context.world_size, workers,
                      distributed.rank_batch_size(config.batch_size, context), config.shuffle_buffer)
    return training, held, input_size, plan


def run_loader(config: TrainConfig, plan: StreamPlan, input_size: int, consumed_batches: int = 0,
               pin_memory: bool = False):
    """The loader of a plan's batches, in this process when `config.num_workers` is 0."""
    return training_loader(plan, input_size, consumed_batches=consumed_batches,
                           processes=0 if config.num_workers == 0 else plan.workers, pin_memory=pin_memory)


def augmented_for_step(config: TrainConfig, images: torch.Tensor, masks: torch.Tensor, step: int,
                       rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch a step trains on: augmented when `config.augment`, the draws from (seed, step,
    rank) alone, so a resumed run augments alike."""
    if not config.augment:
        return images, masks
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "augment", step, rank))
    return augment_pairs(images, masks, generator)


def _may_resume(state: dict[str, Any], settings: dict[str, Any], config: TrainConfig,
                log: Callable[[str], None]) -> bool:
    """The resume policy of generator/runs.py for a training checkpoint."""
    saved = state.get("record")
    if saved is None:                            # written before checkpoints held their record
        saved = {"fingerprint": state.get("fingerprint")}
    if state["step"] > config.steps:
        saved, settings = {**saved, "step": state["step"]}, {**settings, "step": f"<= {config.steps}"}
    return may_resume(saved, settings, what=f"the checkpoint in {config.checkpoint_dir} (step {state['step']})",
                      hint="Pass --no-resume (train.resume: false) to train from the start and replace it, "
                           "or set train.checkpoint_dir to another folder.",
                      finished=bool(state.get("finished")), replace_finished=True, log=log)


def wrap_for_ranks(model: torch.nn.Module, context: distributed.Distributed) -> torch.nn.Module:
    """The model as one rank of several trains it: BatchNorm synchronised over ranks (so each
    normalises with the statistics of the whole batch, as one process would), inside DDP.  A
    single process trains the model itself.  The BatchNorm layers are replaced in `model`."""
    if not context.active:
        return model
    distributed.synchronise_batch_norm(model)
    device_ids = [context.device] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  masks: torch.Tensor, pixels_per_step: int, world_size: int,
                  autocast: Callable[[], Any] = contextlib.nullcontext) -> torch.Tensor:
    """One optimiser step on this rank's share of the batch; returns its BCE sum (detached).

    Each rank's loss is its BCE sum x world_size / pixels in the whole batch: DDP averages the
    gradients over ranks (divides their sum by world_size), so the update is the gradient of the
    mean BCE over the whole batch however unevenly it is split.
    """
    with autocast():
        logits = network(images)
    loss_sum = F.binary_cross_entropy_with_logits(logits.float(), masks, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (world_size / pixels_per_step)).backward()
    optimizer.step()
    return loss_sum.detach()


def _next_batch(batches: Any) -> Any:
    try:
        return next(batches)
    except ShardFormatError as error:
        # A loader process's error arrives with its traceback folded into the message: keep the message.
        message = str(error).strip().splitlines()[-1]
        raise ShardFormatError(message.split("ShardFormatError: ", 1)[-1]) from None


def _check_ranks_agree(step: int, context: distributed.Distributed) -> None:
    """Every rank must start at the same step (checkpoints must sit on storage all ranks see)."""
    if not context.active:
        return
    bounds = torch.tensor([step, -step], dtype=torch.int64, device=context.device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if bounds[0].item() != -bounds[1].item():
        raise RuntimeError(f"ranks would resume from different steps ({-bounds[1].item()} to {bounds[0].item()}); "
                           f"put train.checkpoint_dir on storage that every rank sees")
