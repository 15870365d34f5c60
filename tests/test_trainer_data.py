"""The shard stream: sources, safe decoding, refusals, the hold-out, and a reproducible order.

`write_disc_shards` (also used by the other trainer tests) writes shards in the public layout
of DESIGN.md section 3 with the standard library's tarfile: a bright disc on a dark, noisy
background, the mask being the disc, which a U-Net separates easily.
"""

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.decode import ShardFormatError, check_member_name
from trainer.shards import (StreamPlan, loader_workers, probe_image_size, read_pairs, resolve_shards, split_holdout,
                            training_loader)


def disc_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on a dark noisy background (uint8 H x W x 3) and its mask (bool H x W)."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = rng.uniform(0.15, 0.3) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    image = rng.normal(50, 15, (size, size, 3))
    image[mask] = rng.normal(200, 15, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, quality=95) if fmt == "JPEG" else \
        Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_disc_shards(folder: Path, shards: int = 4, per_shard: int = 8, size: int = 32, seed: int = 0,
                      extra: dict | None = None, manifest: bool = True) -> list[Path]:
    """`synth-000000.tar` ... with KEY.jpg, KEY.mask.png (0/255), KEY.json and KEY.latent.npy, and
    (with `manifest`) a manifest.json listing them as gen-synth's does.

    `extra` maps a member name to bytes added to the first shard (for refusal tests).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(shards):
        path = folder / f"synth-{shard:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position in range(per_shard):
                key = f"{shard:06d}_{position:06d}"
                image, mask = disc_sample(rng, size)
                _add(tar, f"{key}.jpg", _encoded(image, "JPEG"))
                _add(tar, f"{key}.mask.png", _encoded(mask.astype(np.uint8) * 255, "PNG"))
                _add(tar, f"{key}.json", json.dumps({"index": position, "shard": shard,
                                                     "foreground_fraction": float(mask.mean())}).encode())
                latent = io.BytesIO()
                np.save(latent, rng.normal(size=4).astype(np.float32), allow_pickle=False)
                _add(tar, f"{key}.latent.npy", latent.getvalue())
            if shard == 0:
                for name, data in (extra or {}).items():
                    _add(tar, name, data)
        paths.append(path)
    if manifest:
        write_manifest_of(folder, paths, seed)
    return paths


def write_manifest_of(folder: Path, paths: list[Path], seed: int = 0) -> None:
    """A manifest.json in gen-synth's format (the fields the trainer reads) listing `paths`."""
    rows = [{"shard": i, "name": path.name, "bytes": path.stat().st_size,
             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for i, path in enumerate(paths)]
    (folder / "manifest.json").write_text(json.dumps({
        "format_version": 1, "name": "synth", "config_digest": f"discs-{seed}",
        "generator": {"identity": "discs@0000"}, "direction": {"digest": "d1sc", "method": "drawn"},
        "shards": rows}))


def keys_of(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {name.split(".", 1)[0] for name in tar.getnames()}


@pytest.fixture
def shard_folder(tmp_path):
    write_disc_shards(tmp_path / "shards", shards=6, per_shard=5)
    return tmp_path / "shards"


def test_decoded_pairs_are_scaled_images_and_binary_masks(tmp_path):
    write_disc_shards(tmp_path, shards=1, per_shard=3, size=24, seed=3)
    images, masks, keys = read_pairs([str(tmp_path / "synth-000000.tar")], None, 10)
    assert keys == ["000000_000000", "000000_000001", "000000_000002"]
    assert images.shape == (3, 3, 24, 24) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert masks.shape == (3, 1, 24, 24) and set(masks.unique().tolist()) == {0.0, 1.0}
    rng = np.random.default_rng(3)
    with tarfile.open(tmp_path / "synth-000000.tar") as tar:
        for index, key in enumerate(keys):
            _, mask = disc_sample(rng, 24)
            rng.normal(size=4)  # the latent drawn after each sample
            assert torch.equal(masks[index, 0], torch.from_numpy(mask).float())
            # the image as an independent reader decodes it: tarfile + PIL
            stored = np.asarray(Image.open(tar.extractfile(f"{key}.jpg")).convert("RGB"), dtype=np.float32)
            assert torch.equal(images[index], torch.from_numpy(stored).permute(2, 0, 1) / 127.5 - 1)
    assert probe_image_size(str(tmp_path / "synth-000000.tar")) == 24
    resized, resized_masks, _ = read_pairs([str(tmp_path / "synth-000000.tar")], 16, 1)
    assert resized.shape == (1, 3, 16, 16) and set(resized_masks.unique().tolist()) <= {0.0, 1.0}


def test_folder_pattern_file_pipe_and_http_sources_read_the_same_samples(shard_folder):
    first_two = [str(shard_folder / "synth-000000.tar"), str(shard_folder / "synth-000001.tar")]
    assert resolve_shards(str(shard_folder))[:2] == first_two
    assert resolve_shards(str(shard_folder / "synth-{000000..000001}.tar")) == first_two
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sources = {
            "paths": resolve_shards(str(shard_folder / "synth-{000000..000001}.tar")),
            "file": resolve_shards(f"file:{shard_folder}/synth-{{000000..000001}}.tar"),
            "pipe": [f"pipe:cat {path}" for path in first_two],
            "http": resolve_shards(f"http://127.0.0.1:{server.server_port}/synth-{{000000..000001}}.tar"),
        }
        read = {name: read_pairs(urls, None, 100) for name, urls in sources.items()}
    finally:
        server.shutdown()
    assert len(read["http"][2]) == 10
    for name, (images, masks, keys) in read.items():
        assert keys == read["paths"][2], name
        assert torch.equal(images, read["paths"][0]) and torch.equal(masks, read["paths"][1]), name


@pytest.mark.parametrize("name, message", [
    ("000000_000009.pyd", "extension .pyd, which is never decoded"),
    ("000000_000009.pickle", "extension .pickle"),
    ("000000_000009.weights.pth", "extension .pth"),
    ("../000000_000009.jpg", "climbs out of the archive"),
    ("sub/../../etc.jpg", "climbs out of the archive"),
    ("/tmp/000000_000009.jpg", "absolute path"),
    ("000000_000009", "has no extension"),
])
def test_refused_members_stop_the_stream_naming_shard_and_member(tmp_path, name, message):
    write_disc_shards(tmp_path, shards=1, per_shard=2, extra={name: b"\x80\x04K\x01."})
    shard = str(tmp_path / "synth-000000.tar")
    with pytest.raises(ShardFormatError, match=message) as raised:
        read_pairs([shard], None, 100)
    assert shard in str(raised.value) and repr(name) in str(raised.value)


def test_a_pickled_npy_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    pickled = io.BytesIO()
    np.save(pickled, np.array([Payload()], dtype=object), allow_pickle=True)
    write_disc_shards(tmp_path / "shards", shards=1, per_shard=1, extra={"000000_000000x.jpg": _encoded(
        np.zeros((32, 32, 3), np.uint8), "JPEG"), "000000_000000x.latent.npy": pickled.getvalue()})
    with pytest.raises(ShardFormatError, match=r"000000_000000x\.latent\.npy: cannot decode .*pickle"):
        read_pairs([str(tmp_path / "shards" / "synth-000000.tar")], None, 100)
    assert not marker.exists()


def test_a_jpg_member_holding_another_format_is_refused(tmp_path):
    write_disc_shards(tmp_path, shards=1, per_shard=1, extra={"000000_000001.jpg": b"GIF89a not a jpeg",
                                                              "000000_000001.mask.png": b""})
    with pytest.raises(ShardFormatError, match=r"sample 000000_000001\.jpg: cannot decode as \.jpg"):
        read_pairs([str(tmp_path / "synth-000000.tar")], None, 100)


def test_a_sample_without_a_mask_is_a_clear_error(tmp_path):
    write_disc_shards(tmp_path, shards=1, per_shard=1, extra={"000000_000001.jpg": _encoded(
        np.zeros((32, 32, 3), np.uint8), "JPEG")})
    with pytest.raises(ShardFormatError, match="000000_000001 lacks its image .* or mask"):
        read_pairs([str(tmp_path / "synth-000000.tar")], None, 100)


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_shard_that_is_not_a_whole_tar_stops_the_stream_naming_it(tmp_path, damage):
    write_disc_shards(tmp_path, shards=2, per_shard=4)
    shard = tmp_path / "synth-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:3000] if damage == "cut" else b"\x17" * 4096)     # cut inside its first member
    with pytest.raises(ShardFormatError, match="is not a readable tar .* synth-verify") as raised:
        read_pairs([str(tmp_path / "synth-000000.tar"), str(shard)], None, 100)
    assert str(shard) in str(raised.value)


def test_member_names_in_sub_folders_are_allowed():
    check_member_name("part/000001_000002.mask.png", "s.tar")


def test_holdout_is_the_last_shards_by_name_or_a_named_list(shard_folder):
    shards = resolve_shards(str(shard_folder))
    training, held = split_holdout(list(reversed(shards)), 2)
    assert [Path(url).name for url in held] == ["synth-000004.tar", "synth-000005.tar"]
    assert training == shards[:4]
    training, held = split_holdout(shards, ["synth-000001.tar", shards[3]])
    assert held == [shards[1], shards[3]] and not set(held) & set(training)
    assert split_holdout(shards, 0) == (shards, [])
    with pytest.raises(ShardFormatError, match="not among the shards: synth-000099.tar"):
        split_holdout(shards, ["synth-000099.tar"])
    with pytest.raises(ShardFormatError, match="nothing is left to train on"):
        split_holdout(shards, 6)


def test_holdout_shards_never_reach_training(shard_folder):
    training, held = split_holdout(resolve_shards(str(shard_folder)), 2)
    plan = StreamPlan(tuple(training), seed=1, workers=2, batch_size=3, shuffle_buffer=4)
    seen = []
    loader = iter(training_loader(plan, None))
    for _ in range(30):  # 90 samples: more than four epochs of the 20 training samples
        seen.extend(next(loader)[2])
    held_keys = set().union(*(keys_of(Path(url)) for url in held))
    training_keys = set().union(*(keys_of(Path(url)) for url in training))
    assert not set(seen) & held_keys
    assert set(seen) == training_keys


def test_each_epoch_deals_every_shard_to_exactly_one_rank_and_worker():
    shards = tuple(f"s{index:02d}.tar" for index in range(11))
    for epoch in range(3):
        dealt = [StreamPlan(shards, 5, rank, 2, 2).epoch_shards(epoch, worker) for rank in range(2) for worker in range(2)]
        flat = [name for part in dealt for name in part]
        assert sorted(flat) == list(shards) and all(dealt)
    orders = [StreamPlan(shards, 5, 0, 1, 1).epoch_shards(epoch, 0) for epoch in range(3)]
    assert orders[0] != orders[1] != orders[2]  # a fresh permutation each epoch
    assert loader_workers(8, 11, 2) == 5 and loader_workers(0, 11, 2) == 1
    with pytest.raises(ShardFormatError, match="cannot feed 2 rank"):
        StreamPlan(shards[:3], 0, 0, 2, 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stream_is_reproducible_and_restarts_at_any_batch(shard_folder, workers):
    training, _ = split_holdout(resolve_shards(str(shard_folder)), 1)
    plan = StreamPlan(tuple(training), seed=7, workers=workers, batch_size=3, shuffle_buffer=6)

    def batches(start, count, processes):
        stream = iter(training_loader(plan, None, consumed_batches=start, processes=processes))
        return [next(stream) for _ in range(count)]

    full = batches(0, 12, workers)
    again = batches(0, 12, 0 if workers == 1 else workers)
    resumed = batches(5, 7, workers)
    for left, right in zip(full, again):
        assert left[2] == right[2] and torch.equal(left[0], right[0])
    for left, right in zip(full[5:], resumed):
        assert left[2] == right[2] and torch.equal(left[0], right[0]) and torch.equal(left[1], right[1])
    other_seed = StreamPlan(tuple(training), seed=8, workers=workers, batch_size=3, shuffle_buffer=6)
    stream = iter(training_loader(other_seed, None))
    assert [next(stream)[2] for _ in range(12)] != [batch[2] for batch in full]


def test_a_shard_cut_between_samples_is_refused_when_no_manifest_vouches_for_its_size(tmp_path):
    paths = write_disc_shards(tmp_path / "shards", shards=2, per_shard=4, size=16, manifest=False)
    assert len(resolve_shards(str(tmp_path / "shards"), manifest=False)) == 2
    with tarfile.open(paths[1]) as tar:
        members = tar.getmembers()
    last_sample_start = next(member.offset for member in members if member.name.startswith("000001_000003"))
    paths[1].write_bytes(paths[1].read_bytes()[:last_sample_start])      # 3 whole samples, no end marker
    with tarfile.open(paths[1]) as tar:
        assert len(tar.getmembers()) == 12                                # reads fine, just short
    for source in (str(tmp_path / "shards"), str(tmp_path / "shards" / "synth-{000000..000001}.tar")):
        with pytest.raises(ShardFormatError, match="synth-000001.tar does not end with a tar's end marker"):
            resolve_shards(source, manifest=False)
    (tmp_path / "not-a-tar.tar").write_bytes(b"\x01" * 100)
    with pytest.raises(ShardFormatError, match="not a tar file"):
        resolve_shards(str(tmp_path / "not-a-tar.tar"))


def test_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(ShardFormatError, match=r"s3:// URLs are read through a pipe: command, e.g. "
                                               r"'pipe:aws s3 cp s3://b/set/synth-\{000000..000001\}.tar -'"):
        resolve_shards(["s3://b/set/synth-{000000..000001}.tar"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardFormatError, match="no .tar shards in folder"):
        resolve_shards(str(tmp_path / "empty"), manifest=False)
    with pytest.raises(ShardFormatError, match="no manifest.json"):
        resolve_shards(str(tmp_path / "empty"))
    (tmp_path / "empty" / "manifest.json").write_text('{"format_version": 1}')
    with pytest.raises(ShardFormatError, match="not a shard manifest"):
        resolve_shards(str(tmp_path / "empty"))
    with pytest.raises(ShardFormatError, match="2 shard.* not found"):
        resolve_shards(str(tmp_path / "synth-{000000..000001}.tar"))
    with pytest.raises(ShardFormatError, match="nosuch not found: neither a folder of shards nor a shard"):
        resolve_shards(str(tmp_path / "nosuch"))
