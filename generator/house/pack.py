"""One packed file of square training photos, small enough to ship to a training machine.

`pack_photos` applies the project's one image rule (`generator.image_io.load_square`: shorter side
resized, centre square crop) to every photo of some folders and stores each crop as JPEG bytes in
one file written by `torch.save` and read back with `torch.load(..., weights_only=True)`:

    {"format": "house-photo-pack", "format_version": 1, "side": S, "quality": Q,
     "names": ["DUTS-TR/images/x.jpg", ...], "offsets": int64 N + 1, "jpeg": uint8 (all bytes),
     "skipped": [{"path", "reason"}, ...]}

Photo i is `jpeg[offsets[i]:offsets[i + 1]]`.  Reading needs torch and a JPEG decoder: Pillow, or
torchvision when Pillow is absent; numpy is never needed, so a bare PyTorch machine with one
Pillow wheel can train from it.
"""

from __future__ import annotations

import ctypes
import io
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from generator.runs import UnreadableTorchFile, load_torch_file

PACK_FORMAT = "house-photo-pack"
PACK_FORMAT_VERSION = 1


class PackError(ValueError):
    """A file that is not a photo pack, or one that cannot be decoded here."""


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor, in memory order, without numpy.

    (`bytes(tensor.untyped_storage())` reads element by element: seconds per megabyte.)
    """
    tensor = tensor.detach().cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def _jpeg_bytes(crop: torch.Tensor, quality: int) -> bytes:
    from PIL import Image

    _, side, _ = crop.shape
    pixels = ((crop.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    image = Image.frombytes("RGB", (side, side), tensor_bytes(pixels))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def evenly_spaced(count: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(count) (all of them when limit is None or larger)."""
    if limit is None or limit >= count:
        return list(range(count))
    return [i * count // limit for i in range(limit)]


def pack_photos(folders: Sequence[str | Path], out: str | Path, side: int = 128, quality: int = 80,
                max_photos: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Crop, encode and pack the photos of `folders` (in order, names sorted) into `out`.

    `max_photos` keeps an evenly spaced subset of each folder's photos.  Returns a summary
    (count, skipped, bytes).  Unreadable files are recorded, not packed.
    """
    from generator.house.photos import list_photos, photo_name
    from generator.house.training import check_output_folder
    from generator.image_io import load_square

    if not 8 <= side <= 1024:
        raise ValueError(f"side must be within 8..1024, got {side}")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be within 1..95, got {quality}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"the pack {out} would replace a folder")
    check_output_folder(out, "--out", itself=False)
    paths: list[tuple[Path, Path]] = []
    for folder in folders:
        found = list_photos(folder)
        paths += [(found[i], Path(folder)) for i in evenly_spaced(len(found), max_photos)]
    names, chunks, offsets, skipped = [], [], [0], []
    for done, (path, folder) in enumerate(paths, start=1):
        name = photo_name(path, folder)  # keeps the data set's name: DUTS-TR/images/x.jpg
        try:
            crop = load_square(path, side)[0]
        except (OSError, ValueError) as error:
            skipped.append({"path": name, "reason": f"{type(error).__name__}: {error}"})
        else:
            chunks.append(_jpeg_bytes(crop, quality))
            offsets.append(offsets[-1] + len(chunks[-1]))
            names.append(name)
        if progress is not None:
            progress(done, len(paths))
    if not names:
        raise ValueError(f"no readable photos in {', '.join(str(f) for f in folders)}")
    payload = {"format": PACK_FORMAT, "format_version": PACK_FORMAT_VERSION, "side": side, "quality": quality,
               "names": names, "offsets": torch.tensor(offsets, dtype=torch.int64),
               "jpeg": torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8), "skipped": skipped}
    from generator.house.training import atomic_save

    atomic_save(payload, out)
    return {"count": len(names), "skipped": len(skipped), "bytes": out.stat().st_size, "side": side,
            "quality": quality}


def read_pack_index(path: str | Path) -> dict:
    """The pack's fields (JPEG bytes still encoded), checked; PackError when it is not a pack."""
    try:
        payload = load_torch_file(path)
    except UnreadableTorchFile as error:
        raise PackError(f"{path} is not a photo pack: {error}") from error
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != PACK_FORMAT:
        raise PackError(f"{path} is not a photo pack (format {found!r})")
    if payload.get("format_version") != PACK_FORMAT_VERSION:
        raise PackError(f"{path}: unsupported pack format_version {payload.get('format_version')!r}")
    offsets, jpeg = payload["offsets"], payload["jpeg"]
    if offsets.ndim != 1 or len(offsets) != len(payload["names"]) + 1 or int(offsets[-1]) != jpeg.numel():
        raise PackError(f"{path}: offsets do not match the names and bytes")
    return payload


def jpeg_decoder() -> tuple[str, Callable[[bytes, int], torch.Tensor]]:
    """The decoder this machine has (Pillow first, then torchvision): name and bytes -> 3 x S x S uint8."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        def decode_pillow(data: bytes, side: int) -> torch.Tensor:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB")
                if rgb.size != (side, side):
                    raise PackError(f"a packed photo is {rgb.size}, not {side} x {side}")
                pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            return pixels.view(side, side, 3).permute(2, 0, 1).contiguous()
        return "pillow", decode_pillow
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise PackError("decoding a photo pack needs Pillow or torchvision, and neither imports here "
                        "(install the shipped Pillow wheel: see generator/house/gpu_run.py)") from None

    def decode_torchvision(data: bytes, side: int) -> torch.Tensor:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if tuple(pixels.shape) != (3, side, side):
            raise PackError(f"a packed photo is {tuple(pixels.shape)}, not 3 x {side} x {side}")
        return pixels
    return "torchvision", decode_torchvision


def load_pack(path: str | Path, side: int | None = None, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Decode a pack to N x 3 x side x side uint8 (resized when `side` differs from the pack's).

    `limit` decodes an evenly spaced subset (quick trials).  Returns the photos and their names.
    """
    payload = read_pack_index(path)
    _, decode = jpeg_decoder()
    pack_side = int(payload["side"])
    blob = memoryview(tensor_bytes(payload["jpeg"]))
    offsets = payload["offsets"].tolist()
    keep = evenly_spaced(len(payload["names"]), limit)
    photos = torch.empty(len(keep), 3, pack_side, pack_side, dtype=torch.uint8)

    def decode_row(row: int) -> None:
        i = keep[row]
        try:
            photos[row] = decode(bytes(blob[offsets[i]:offsets[i + 1]]), pack_side)
        except Exception as error:  # noqa: BLE001 - decoders raise OSError, ValueError, RuntimeError...
            raise PackError(f"{path}: packed photo {i} ({payload['names'][i]}) cannot be decoded "
                            f"({type(error).__name__}: {error}); the pack is damaged, pack the photos again") from error

    # decoders release the GIL, so threads decode in parallel; each row is written by one of them
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(decode_row, range(len(keep))))
    names = [payload["names"][i] for i in keep]
    if side is not None and side != pack_side:
        resized = [F.interpolate(chunk.float(), size=(side, side), mode="bilinear", align_corners=False,
                                 antialias=side < pack_side) for chunk in photos.split(512)]
        photos = torch.cat(resized).round().clamp(0, 255).to(torch.uint8)
    return photos, names
