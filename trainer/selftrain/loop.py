"""Self-training on unlabeled photos with online label rectification (A2S's second stage).

1. The photos are cached as squares (trainer/selftrain/photos.py).
2. The synthetic-trained U-Net predicts the first labels G^1 (optionally refined against each
   photo by evaluation.refinement), and training starts from its weights.
3. Each epoch visits every photo once in a seeded order with seeded horizontal flips, fits the
   labels with the chosen loss (Adam, constant lr) and keeps the model's prediction Y^j for each
   photo, made in that same forward pass as A2S does.
4. After the epoch the labels are rectified: G^{j+1} = lambda_j G^j + (1 - lambda_j) Y^j
   (trainer/selftrain/labels.py), and how far they moved goes into the curves.
5. With several rounds, the last epoch of a round ends differently: the model as it stands
   labels every photo afresh (refined like G^1), and the next round fits those labels from the
   current weights, with the warm-up and rectification schedule restarting.  Refining a better
   model's predictions gives sharper labels than rectification, which pulls them towards the
   model's smoother predictions.

Writes the model as trainer/export.py does (model_dir/unet.pt + unet.json), the curves
(plots_dir/loss.csv, labels.csv), plots_dir/summary.json and plots_dir/pseudo_labels.png (a few
photos and their labels across epochs).  A killed run resumes exactly (trainer/selftrain/state.py).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from evaluation.evaluate import example_indices
from evaluation.predictors import UNetPredictor
from generator.files import atomic_write_json
from generator.image_io import centre_crop, load_rgb
from generator.runs import OutputLock, resolve_device
from trainer.checkpoint import restore_rng_states, rng_states
from trainer.export import WEIGHTS_NAME, CONFIG_NAME, load_trained_model, save_trained_model
from trainer.selftrain.config import SelfTrainConfig
from trainer.selftrain.curves import write_curves, write_label_grid, write_summary
from trainer.selftrain.labels import (label_weight, load_array, mean_distance, open_predictions, rectify,
                                      save_array)
from trainer.selftrain.losses import LOSSES
from trainer.selftrain.photos import PhotoSet, prepare_photos
from trainer.selftrain.state import labels_path, predictions_path, resumable_state, save_state
from trainer.unet import UNet

SNAPSHOT_PHOTOS = 6
STATUS_NAME = "selftrain.json"


@dataclass
class SelfTrainResult:
    model: UNet | None
    epochs: int
    steps: int
    history: dict[str, list[dict[str, Any]]]
    resumed_from: tuple[int, int] | None
    labels: np.ndarray | None


def _log_to_stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def self_train(config: SelfTrainConfig, progress: bool = True, log: Callable[[str], None] = _log_to_stderr,
               on_step: Callable[[int], None] | None = None) -> SelfTrainResult:
    """Run (or resume) self-training as configured. `on_step(step)` is called after every step."""
    if not config.enabled:
        return _record_disabled(config, log)
    with OutputLock(config.work_dir):  # one run at a time in a work folder
        return _self_train(config, progress, log, on_step)


def _self_train(config: SelfTrainConfig, progress: bool, log: Callable[[str], None],
                on_step: Callable[[int], None] | None) -> SelfTrainResult:
    (Path(config.work_dir) / STATUS_NAME).unlink(missing_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model, model_config = load_trained_model(config.model, map_location=device)
    model_digest = _file_digest(Path(config.model) / WEIGHTS_NAME)  # read once: the folder may be re-linked later
    side = config.input_size or int(model_config["input_size"])
    if side < 2 ** model.architecture["depth"]:
        raise ValueError(f"photos of {side} px are too small for a U-Net of depth {model.architecture['depth']}")
    photos = prepare_photos(config.photos, side, config.max_photos, config.seed, config.work_dir, progress)
    if photos.skipped:
        log(f"skipped {len(photos.skipped)} unreadable photo(s), e.g. {photos.skipped[0]['file']}: "
            f"{photos.skipped[0]['reason']}")
    count = len(photos.files)
    batches_per_epoch = -(-count // config.batch_size)
    settings = {
        "photos": photos.key, "photo_count": count, "input_size": side,
        "model": model_digest,
        "olr_lambda": config.olr_lambda, "olr_warmup_epochs": config.olr_warmup_epochs, "loss": config.loss,
        "refine_labels": config.refine_labels, "batch_size": config.batch_size, "lr": config.lr,
        "seed": config.seed,
    }
    if config.rounds > 1:  # round boundaries fall every `epochs` epochs; one round can still be extended
        settings.update(rounds=config.rounds, epochs_per_round=config.epochs)
    snapshot_rows = sorted(example_indices(count, SNAPSHOT_PHOTOS))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_function = LOSSES[config.loss]

    state = resumable_state(config, settings, log)
    if state is None:
        torch.manual_seed(config.seed)
        labels = _first_labels(model, model_config, photos, config, device, progress)
        save_array(labels_path(config.work_dir, 1), labels)
        history: dict[str, list[dict[str, Any]]] = {"loss": [], "labels": []}
        pending = {"loss_sum": 0.0, "steps": 0, "epoch_sum": 0.0, "epoch_steps": 0}
        snapshots = [_snapshot(labels, snapshot_rows)]
        epoch, batch, resumed_from = 1, 0, None
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"])
        history, pending = state["history"], state["pending"]
        snapshots = list(state["snapshots"])
        epoch, batch = int(state["epoch"]), int(state["batch"])
        labels = load_array(labels_path(config.work_dir, epoch))
        resumed_from = (epoch, batch)
        log(f"all {config.total_epochs} epochs are done; writing the model again ({config.work_dir})"
            if epoch > config.total_epochs else f"resuming at epoch {epoch}, batch {batch} ({config.work_dir})")

    def checkpoint() -> None:
        save_state({"step": (epoch - 1) * batches_per_epoch + batch, "epoch": epoch, "batch": batch,
                    "record": settings, "finished": epoch > total_epochs, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "rng": rng_states(), "history": history,
                    "pending": pending, "snapshots": snapshots}, config)
        write_curves(history, config.plots_dir)

    total_epochs = config.total_epochs
    total_steps = total_epochs * batches_per_epoch
    step = (epoch - 1) * batches_per_epoch + batch
    bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="self-train", unit="step",
               dynamic_ncols=True, disable=not progress, file=sys.stderr)
    model.train()
    while epoch <= total_epochs:
        order, flips = epoch_plan(config.seed, epoch, count)
        predictions = open_predictions(predictions_path(config.work_dir), labels.shape, fresh=batch == 0)
        while batch < batches_per_epoch:
            rows = np.sort(order[batch * config.batch_size:(batch + 1) * config.batch_size])
            images = _flipped(torch.from_numpy(photos.squares[rows]).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
                              flips[rows])
            targets = _flipped(torch.from_numpy(labels[rows].astype(np.float32))[:, None], flips[rows])
            logits = model(images.to(device)).float()
            loss = loss_function(logits, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            predictions[rows] = _flipped(torch.sigmoid(logits.detach()).cpu(), flips[rows])[:, 0].numpy()
            batch += 1
            step += 1
            value = loss.item()
            pending = {"loss_sum": pending["loss_sum"] + value, "steps": pending["steps"] + 1,
                       "epoch_sum": pending["epoch_sum"] + value, "epoch_steps": pending["epoch_steps"] + 1}
            if step % config.log_every == 0 or batch == batches_per_epoch:
                history["loss"].append({"step": step, "epoch": epoch, "loss": pending["loss_sum"] / pending["steps"]})
                pending.update(loss_sum=0.0, steps=0)
            if step % config.checkpoint_every == 0 and batch < batches_per_epoch:
                predictions.flush()
                checkpoint()
            bar.set_postfix({"epoch": epoch, "loss": f"{value:.4f}"}, refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(step)
        predictions.flush()
        round_, epoch_in_round = config.round_of(epoch)
        if epoch_in_round == config.epochs and epoch < total_epochs:  # the round's end: label afresh
            gap = mean_distance(predictions, labels)
            relabelled = _first_labels(model, model_config, photos, config, device, progress)
            labels, moved, weight = relabelled, mean_distance(relabelled, labels), None
        else:
            weight = label_weight(epoch_in_round, config.olr_warmup_epochs, config.olr_lambda)
            labels, moved, gap = rectify(labels, predictions, weight)
        del predictions
        history["labels"].append({"epoch": epoch, "round": round_, "lambda": weight, "label_change": moved,
                                  "prediction_gap": gap,
                                  "loss": pending["epoch_sum"] / max(pending["epoch_steps"], 1)})
        pending.update(epoch_sum=0.0, epoch_steps=0)
        snapshots.append(_snapshot(labels, snapshot_rows))
        update = "relabelled by the model" if weight is None else f"lambda {weight:g}"
        log(f"epoch {epoch} (round {round_}): loss {history['labels'][-1]['loss']:.4f}, {update}, "
            f"labels moved {moved:.4f} (predictions were {gap:.4f} away)")
        epoch, batch = epoch + 1, 0
        save_array(labels_path(config.work_dir, epoch), labels)
        checkpoint()
    bar.close()
    predictions_path(config.work_dir).unlink(missing_ok=True)
    _export(model, model_config, model_digest, photos, config, history, step, snapshots, snapshot_rows)
    log(f"self-trained {total_epochs} epochs ({step} steps) on {count} photos; model in {config.model_dir}")
    return SelfTrainResult(model, total_epochs, step, history, resumed_from, labels)


def epoch_plan(seed: int, epoch: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's photo order and flips: a pure function of (seed, epoch), so a resume needs no state."""
    generator = np.random.default_rng([seed, epoch])
    return generator.permutation(count), generator.random(count) < 0.5


def _flipped(batch: torch.Tensor, flips: np.ndarray) -> torch.Tensor:
    """N x C x H x W with the rows marked in `flips` mirrored left to right (its own inverse)."""
    if flips.any():
        batch = batch.clone()
        chosen = torch.from_numpy(np.flatnonzero(flips))
        batch[chosen] = batch[chosen].flip(-1)
    return batch


@torch.no_grad()
def _first_labels(model: UNet, model_config: dict, photos: PhotoSet, config: SelfTrainConfig,
                  device: torch.device, progress: bool) -> np.ndarray:
    """A round's first labels: the model's predictions on the squares, optionally refined (G^1:
    the synthetic-trained model's)."""
    predictor = UNetPredictor(model, model_config, config.model, device=device)
    side = photos.squares.shape[1]
    labels = np.empty(photos.squares.shape[:3], dtype=np.float16)
    for start in tqdm(range(0, len(labels), config.batch_size), desc="first labels", unit="batch",
                      disable=not progress, file=sys.stderr):
        squares = torch.from_numpy(photos.squares[start:start + config.batch_size])
        probabilities = predictor(squares.permute(0, 3, 1, 2).float() / 127.5 - 1.0)
        if config.refine_labels:
            files = photos.files[start:start + config.batch_size]
            probabilities = torch.stack([_refined(photos.folder / name, map_, side)
                                         for name, map_ in zip(files, probabilities)])
        labels[start:start + len(squares)] = probabilities.numpy()
    model.train()
    return labels


def _refined(path: Path, probability: torch.Tensor, side: int) -> torch.Tensor:
    """A label refined against the photo's own centre square at full resolution, back at side x side."""
    from evaluation.refinement import refine
    rgb = load_rgb(path)
    crop = min(rgb.shape[:2])
    square = centre_crop(torch.from_numpy(rgb).permute(2, 0, 1)[None], crop)[0].permute(1, 2, 0).numpy()
    refined = torch.from_numpy(refine(np.ascontiguousarray(square), probability.numpy()))
    if crop != side:
        refined = F.interpolate(refined[None, None], size=(side, side), mode="bilinear", align_corners=False,
                                antialias=crop > side)[0, 0]
    return refined.clamp(0.0, 1.0)


def _snapshot(labels: np.ndarray, rows: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.rint(labels[rows].astype(np.float32) * 255).astype(np.uint8))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _export(model: UNet, model_config: dict, model_digest: str, photos: PhotoSet, config: SelfTrainConfig,
            history: dict[str, list[dict[str, Any]]], step: int, snapshots: list[torch.Tensor],
            snapshot_rows: list[int]) -> None:
    side = photos.squares.shape[1]
    last = history["labels"][-1] if history["labels"] else {}
    record = {
        "input_size": side, "steps": step, "epochs": config.total_epochs, "batch_size": config.batch_size,
        "lr": config.lr, "seed": config.seed,
        "selftrain": {"loss": config.loss, "rounds": config.rounds, "epochs_per_round": config.epochs,
                      "olr_lambda": config.olr_lambda,
                      "olr_warmup_epochs": config.olr_warmup_epochs, "refine_labels": config.refine_labels,
                      "photos": str(config.photos), "photo_count": len(photos.files),
                      "skipped_photos": len(photos.skipped), "max_photos": config.max_photos,
                      "final_loss": last.get("loss")},
        "initialised_from": {"folder": str(config.model), "weights_sha256_16": model_digest},
        **{key: model_config[key] for key in ("generator", "data_manifest", "provenance") if key in model_config},
    }
    model.eval()
    save_trained_model(model, record, config.model_dir)
    (Path(config.model_dir) / STATUS_NAME).unlink(missing_ok=True)
    write_curves(history, config.plots_dir)
    write_summary({"enabled": True, "rounds": config.rounds, "epochs": config.total_epochs, "steps": step,
                   "photos": len(photos.files),
                   "skipped_photos": len(photos.skipped), "final_loss": last.get("loss"),
                   "final_label_change": last.get("label_change")}, config.plots_dir)
    write_label_grid(photos.squares[snapshot_rows], snapshots, Path(config.plots_dir) / "pseudo_labels.png")


def _record_disabled(config: SelfTrainConfig, log: Callable[[str], None]) -> SelfTrainResult:
    """Self-training off: no model (a stale one is removed), empty curves, a summary saying so."""
    model_dir = Path(config.model_dir)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        (model_dir / name).unlink(missing_ok=True)
    status = {"enabled": False, "reason": "selftrain.enabled is false"}
    for folder in (model_dir, Path(config.work_dir)):  # both are pipeline outputs: neither may be empty
        atomic_write_json(folder / STATUS_NAME, status)
    history: dict[str, list[dict[str, Any]]] = {"loss": [], "labels": []}
    write_curves(history, config.plots_dir)
    write_summary({"enabled": False}, config.plots_dir)
    log(f"self-training is off (selftrain.enabled: false); {model_dir} holds no model")
    return SelfTrainResult(None, 0, 0, history, None, None)
