"""Safe reading of shard members: names are checked, and only jpg, png, json and npy are decoded.

Shards come from elsewhere, so their content is untrusted.  A member whose name is absolute or
climbs out of the archive (`..`), or whose extension is not one of the four formats the shard
format uses, stops the run with an error naming the shard and the member: it is never decoded,
and nothing is ever unpickled (`.npy` is read with `allow_pickle=False`).  WebDataset reads tar
files as streams and extracts nothing to disk; the name check still refuses such shards, since
a writer that produces them is broken or hostile.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

#: Last extension of a member name -> how it is decoded.
DECODED_EXTENSIONS = ("jpg", "jpeg", "png", "json", "npy")
_PIL_FORMATS = {"jpg": ["JPEG"], "jpeg": ["JPEG"], "png": ["PNG"]}


class ShardFormatError(ValueError):
    """A shard member that is refused or cannot be decoded; the message names shard and member."""


def check_member_name(name: str, shard: str) -> None:
    """Refuse absolute names, `..` components and extensions other than the decoded ones."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ShardFormatError(f"shard {shard}: member {name!r} has an absolute path; refusing the shard")
    if ".." in parts:
        raise ShardFormatError(f"shard {shard}: member {name!r} climbs out of the archive ('..'); refusing the shard")
    basename = parts[-1]
    if "." not in basename:
        raise ShardFormatError(f"shard {shard}: member {name!r} has no extension; refusing the shard")
    extension = basename.rsplit(".", 1)[1].lower()
    if extension not in DECODED_EXTENSIONS:
        raise ShardFormatError(
            f"shard {shard}: member {name!r} has extension .{extension}, which is never decoded "
            f"(allowed: {', '.join('.' + e for e in DECODED_EXTENSIONS)}); refusing the shard")


def checked_members(files: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pipeline stage between WebDataset's tar expander and its key grouper: check every name."""
    for member in files:
        if member:  # an empty dict marks the end of a shard
            check_member_name(member["fname"], member.get("__url__", "?"))
        yield member


def decode_value(field: str, data: bytes, where: str) -> Any:
    """Decode one field of a sample (`jpg`, `mask.png`, `json`, `latent.npy`, ...)."""
    extension = field.rsplit(".", 1)[-1].lower()
    try:
        if extension in _PIL_FORMATS:
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS[extension]) as image:
                image.load()
                return image.copy()
        if extension == "json":
            return json.loads(data.decode("utf-8"))
        if extension == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # every decoder's own failure, reported with its place
        raise ShardFormatError(f"{where}.{field}: cannot decode as .{extension}: {error}") from error
    raise ShardFormatError(f"{where}.{field}: extension .{extension} is never decoded")


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode every field of a grouped sample; WebDataset's `__key__`-style fields pass through."""
    where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    return {field: value if field.startswith("__") else decode_value(field, value, where)
            for field, value in sample.items()}


def training_pair(sample: dict[str, Any], input_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(image 3 x S x S float32 in [-1, 1], mask 1 x S x S float32 in {0, 1}, key) from a decoded sample.

    Masks are 0/255 by the shard format; anything >= 128 counts as foreground.  When
    `input_size` differs from the stored size the image is resized bilinearly, the mask by nearest.
    """
    where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    image = sample.get("jpg", sample.get("jpeg"))
    mask = sample.get("mask.png")
    if image is None or mask is None:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise ShardFormatError(f"{where} lacks its image (.jpg) or mask (.mask.png); it has {present}")
    if image.size != mask.size:
        raise ShardFormatError(f"{where}: image size {image.size} differs from mask size {mask.size}")
    image, mask = image.convert("RGB"), mask.convert("L")
    if input_size is not None and image.size != (input_size, input_size):
        image = image.resize((input_size, input_size), Image.BILINEAR)
        mask = mask.resize((input_size, input_size), Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    foreground = torch.from_numpy(np.asarray(mask) >= 128).to(torch.float32)[None]
    return pixels.contiguous(), foreground, str(sample.get("__key__"))
