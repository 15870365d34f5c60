"""Scores of the model on the synthetic hold-out: the validation curve's numbers."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def validation_scores(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
                      batch_size: int, autocast: Any) -> dict[str, float]:
    """Mean pixel BCE, mean per-image IoU at 0.5 (1 when both masks are empty) and pixel accuracy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, ious, correct = 0.0, [], 0.0
    for start in range(0, len(images), batch_size):
        batch, truth = images[start:start + batch_size].to(device), masks[start:start + batch_size].to(device)
        with autocast():
            logits = model(batch)
        logits = logits.float()
        loss_sum += torch.nn.functional.binary_cross_entropy_with_logits(logits, truth, reduction="sum").item()
        predicted = logits > 0
        actual = truth > 0.5
        intersection = (predicted & actual).flatten(1).sum(1).float()
        union = (predicted | actual).flatten(1).sum(1).float()
        ious.append(torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union)).cpu())
        correct += (predicted == actual).float().sum().item()
    model.train(was_training)
    pixels = masks.numel()
    return {"loss": loss_sum / pixels, "iou": torch.cat(ious).mean().item(), "accuracy": correct / pixels}
