"""`manifest.json`: what a shard set is, how it was made, and what each shard must hash to.

    {"format_version": 1, "name": "synth", "config_digest": "...",
     "generator": {"identity", "spec", "latent_dim", "resolution"},
     "direction": {"digest", "path", "magnitude", "method", "index", "sign", "chosen_by", "found_for"},
     "latents": {"sampler", "alpha", "bank": {"path", "digest", "count"} or null},
     "parameters": {n, shard_size, seed, ..., "filters": {...}},
     "members": ["jpg", "mask.png", "json"], "image_size": 128, "code": "digest of the rendering modules",
     "totals": {"samples", "candidates", "acceptance_rate", "rejected_by": {...}, "empty_masks"},
     "shards": [{"shard", "name", "samples", "candidates", "rejected_by", "bytes", "sha256", "empty_masks"}],
     "card": {"name": "README.md", "bytes", "sha256"}}

`card` (the dataset card, generator/synth/card.py) is added by gen-synth after `build_manifest`;
sets made before cards existed have none, and readers treat it as optional.

Everything in it is a function of the parameters, so the same run gives the same manifest bytes.
The config digest is the digest of the run record (`run_record`): everything above `totals` that
shapes a shard's bytes.  Paths, the generator spec (its identity holds the weights digest), `n`
and `max_candidates_per_sample` are left out: a moved file, a larger set or a larger candidate
budget changes no finished shard, so such a rerun resumes.  Each shard's stats file holds the
record, so a rerun with other settings can name the keys that differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import NoneType
from typing import Any

from generator.interface import digest_bytes
from generator.runs import record_digest
from generator.synth.store import StoreError, open_output
from generator.synth.writer import ShardStats, json_file_bytes

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that is missing or cannot be read, with a message saying why."""


#: Settings that change no finished shard's bytes: a rerun with other values resumes.
RESUMABLE_PARAMETERS = ("n", "max_candidates_per_sample")
#: The modules whose code decides a shard's bytes; their digest is part of the run record, so
#: finished shards are never mixed with shards an edited renderer makes.
RENDERING_MODULES = ("worker", "writer", "filters", "masks", "samplers", "settings")


def code_digest() -> str:
    """Digest of the rendering modules' source."""
    folder = Path(__file__).parent
    return digest_bytes(*((folder / f"{name}.py").read_bytes() for name in RENDERING_MODULES))


def run_record(description: dict[str, Any]) -> dict[str, Any]:
    """What must match for a finished shard to be kept: the run's description less paths, the
    generator spec and the resumable parameters."""
    generator = {key: value for key, value in description["generator"].items() if key != "spec"}
    direction = {key: value for key, value in description["direction"].items() if key != "path"}
    latents = dict(description["latents"])
    if latents.get("bank") is not None:
        latents["bank"] = {key: value for key, value in latents["bank"].items() if key != "path"}
    parameters = {key: value for key, value in description["parameters"].items()
                  if key not in RESUMABLE_PARAMETERS}
    return {**description, "generator": generator, "direction": direction, "latents": latents,
            "parameters": parameters}


def config_digest(description: dict[str, Any]) -> str:
    """Digest of the run record of a run's description."""
    return record_digest(run_record(description))


def build_manifest(description: dict[str, Any], shards: list[ShardStats]) -> dict[str, Any]:
    """The manifest of a complete set: the run's description, totals and one row per shard."""
    shards = sorted(shards, key=lambda stats: stats.shard)
    samples = sum(stats.samples for stats in shards)
    candidates = sum(stats.candidates for stats in shards)
    rejected_by: dict[str, int] = {}
    for stats in shards:
        for name, count in stats.rejected_by.items():
            rejected_by[name] = rejected_by.get(name, 0) + count
    rows = []
    for stats in shards:
        row = stats.to_json()
        row.pop("config_digest")
        row.pop("record")
        rows.append(row)
    return {
        "format_version": FORMAT_VERSION,
        "name": "synth",
        "config_digest": config_digest(description),
        **description,
        "totals": {"samples": samples, "candidates": candidates,
                   "acceptance_rate": round(samples / candidates, 6) if candidates else None,
                   "rejected_by": rejected_by, "empty_masks": sum(stats.empty_masks for stats in shards)},
        "shards": rows,
    }


def write_manifest(folder, manifest: dict[str, Any]) -> str:
    """Write the manifest into a folder (a path, a URL or an open store); return where it went."""
    store = open_output(folder)
    store.write_bytes(MANIFEST_NAME, json_file_bytes(manifest))
    return store.where(MANIFEST_NAME)


#: What readers (synth-verify, the card check) rely on: field -> the JSON types it may have, checked
#: in this order so a parent is known sound before its children.  `[]` stands for every element of
#: a list; NoneType marks a field that may be absent (sets made before it existed have none).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "generator": (dict,), "generator.identity": (str,), "generator.latent_dim": (int,),
    "image_size": (int,), "members": (list,), "members[]": (str,),
    "parameters": (dict,), "totals": (dict,), "totals.empty_masks": (int, NoneType),
    "shards": (list,), "shards[]": (dict,), "shards[].shard": (int,), "shards[].name": (str,),
    "shards[].samples": (int,), "shards[].candidates": (int,), "shards[].bytes": (int,),
    "shards[].sha256": (str,), "card": (dict, NoneType),
}
#: Members every sample has (`latent.npy` only with --save-latents).
REQUIRED_MEMBERS = ("jpg", "mask.png", "json")
_MISSING = object()
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", NoneType: "null"}


def _field_values(manifest: dict[str, Any], field: str) -> list[tuple[str, Any]]:
    """(name, value) of every field `field` names, e.g. ("shards[2].name", "synth-000002.tar")."""
    found: list[tuple[str, Any]] = [("", manifest)]
    for part in field.split("."):
        key = part.removesuffix("[]")
        found = [(f"{name}.{key}".lstrip("."), parent.get(key, _MISSING)) for name, parent in found]
        if part.endswith("[]"):
            found = [(f"{name}[{index}]", item) for name, items in found for index, item in enumerate(items)]
    return found


def check_field_types(manifest: dict[str, Any], where: str) -> None:
    """ManifestError naming the first field of FIELD_TYPES that is missing or of another type.

    The exact type is compared, so JSON's true is not taken for an integer."""
    for field, types in FIELD_TYPES.items():
        for name, value in _field_values(manifest, field):
            if value is _MISSING and NoneType in types:
                continue
            if value is _MISSING:
                raise ManifestError(f"{where} has no `{name}` field")
            if type(value) not in types:
                expected = " or ".join(_TYPE_NAMES[kind] for kind in types)
                raise ManifestError(f"{where}: `{name}` is {_TYPE_NAMES.get(type(value), type(value).__name__)}, "
                                    f"expected {expected}")
    lacking = [member for member in REQUIRED_MEMBERS if member not in manifest["members"]]
    if lacking:
        raise ManifestError(f"{where}: `members` lacks {', '.join(lacking)}")


def read_manifest(folder) -> dict[str, Any]:
    """The manifest of a shard folder (a path, a URL or an open store); ManifestError when missing
    or malformed, including any field readers rely on being of the wrong type (it is often edited
    by hand, or comes from elsewhere)."""
    store = open_output(folder)
    where = store.where(MANIFEST_NAME)
    try:
        manifest = json.loads(store.read_bytes(MANIFEST_NAME))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ManifestError(f"{where} not found: not a finished gen-synth output folder") from None
    except (OSError, StoreError) as error:             # StoreError: an object store's own refusal
        raise ManifestError(f"{where} cannot be read: {error}") from error
    except (ValueError, RecursionError) as error:       # not JSON, not UTF-8, or nested past the parser's depth
        raise ManifestError(f"{where} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{where} is not a shard manifest of format version {FORMAT_VERSION}")
    check_field_types(manifest, where)
    return manifest
