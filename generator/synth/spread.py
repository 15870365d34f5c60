"""How much a set's masks move and change from sample to sample: whether they follow generated
objects or light up one fixed region whatever the image holds.

A direction that only brightens the middle of the frame gives masks that sit in one place with
one size: their centroids barely spread, and any two of them overlap almost fully.  Masks that
follow objects spread like real objects do.  `mask_spread` measures both for a stack of masks;
`benchmarks/mask_spread.py` prints it for shard sets side by side.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from generator.synth.manifest import read_manifest
from generator.synth.store import open_output
from generator.synth.verify import read_samples


def mask_spread(masks: np.ndarray) -> dict[str, float]:
    """Spread of N x H x W binary masks.

    - centroid_std: standard deviation of the centroid, in image sides, the mean of x's and y's;
    - area_mean, area_std: foreground fraction;
    - pairwise_iou: mean IoU over all pairs (1 for one fixed region, near 0 for disjoint ones);
    - majority_iou: mean IoU of each mask with the pixelwise majority mask of the set.
    Empty masks have no centroid and are left out of centroid_std; an empty pair counts IoU 1.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or len(masks) < 2:
        raise ValueError(f"need a stack of at least two H x W masks, got shape {masks.shape}")
    count, height, width = masks.shape
    flat = masks.reshape(count, -1).astype(np.float32)
    areas = flat.sum(axis=1)
    filled = areas > 0
    ys, xs = np.mgrid[0:height, 0:width]
    centroid_x = (flat @ (xs.ravel() / (width - 1 or 1)))[filled] / areas[filled]
    centroid_y = (flat @ (ys.ravel() / (height - 1 or 1)))[filled] / areas[filled]
    centroid_std = float((centroid_x.std() + centroid_y.std()) / 2) if filled.sum() >= 2 else float("nan")
    overlap = flat @ flat.T
    union = areas[:, None] + areas[None, :] - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 1.0)
    pairs = np.triu_indices(count, k=1)
    majority = flat.mean(axis=0) > 0.5
    with_majority = flat @ majority.astype(np.float32)
    majority_union = areas + majority.sum() - with_majority
    majority_iou = np.where(majority_union > 0, with_majority / np.maximum(majority_union, 1), 1.0)
    return {"masks": count, "centroid_std": centroid_std, "area_mean": float(areas.mean() / (height * width)),
            "area_std": float(areas.std() / (height * width)), "pairwise_iou": float(iou[pairs].mean()),
            "majority_iou": float(majority_iou.mean())}


def read_set_masks(folder, limit: int) -> np.ndarray:
    """The first `limit` masks of a finished shard set (a path or a URL), in manifest order."""
    store = open_output(folder)
    manifest = read_manifest(store)
    masks = []
    for row in manifest["shards"]:
        samples, problems = read_samples(row["name"], io.BytesIO(store.read_bytes(row["name"])))
        if problems:
            raise ValueError(f"{store.where(row['name'])}: {problems[0]}")
        for members in samples.values():
            with Image.open(io.BytesIO(members["mask.png"])) as image:
                masks.append(np.asarray(image.convert("L")) > 127)
            if len(masks) >= limit:
                return np.stack(masks)
    if len(masks) < 2:
        raise ValueError(f"{store.location} holds {len(masks)} mask(s); at least two are needed")
    return np.stack(masks)
