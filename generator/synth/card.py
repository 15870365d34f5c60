"""The dataset card: `README.md` beside the shards, what the Hugging Face hub and `datasets` read.

Its YAML header carries the hub's fields (pretty_name, license, task_categories,
size_categories, configs/data_files pointing at the tars, so `load_dataset(folder)` finds the
shards); the text says what the data is, how it was made and how to read it.  It is rendered
from the manifest alone, so the same set gives the same card bytes.  It is written before the
manifest, which lists its size and sha256 (the manifest is the set's commit marker, written last;
it cannot hold its own checksum, so the card holds none of the manifest's).

The licence is the owner's call: the card says `license: unknown` (an identifier the hub accepts,
"License information unavailable") until the owner replaces it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from generator.synth.store import open_output

CARD_NAME = "README.md"
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(count: int) -> str:
    """The hub's size bucket for `count` samples."""
    return next((label for limit, label in SIZE_CATEGORIES if count < limit), "n>1B")


def card_header(manifest: dict[str, Any]) -> str:
    """The YAML front matter, between `---` lines."""
    header = {
        "pretty_name": "Synthetic saliency pairs from a GAN latent direction",
        "license": "unknown",
        "task_categories": ["image-segmentation"],
        "tags": ["saliency", "salient-object-detection", "synthetic", "webdataset"],
        "annotations_creators": ["machine-generated"],
        "source_datasets": ["original"],
        "size_categories": [size_category(manifest["totals"]["samples"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "synth-*.tar"}]}],
    }
    text = yaml.safe_dump(header, sort_keys=False, default_flow_style=False)
    text = text.replace("license: unknown\n",
                        "# TODO(owner): choose the licence: a hub identifier (e.g. cc-by-4.0), or `other` with\n"
                        "# license_name and license_link. It must respect the generator's and its training photos' terms.\n"
                        "license: unknown\n")
    return f"---\n{text}---\n"


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in pairs)


def render_card(manifest: dict[str, Any]) -> str:
    """The whole card for a finished set's manifest."""
    generator, direction, latents = manifest["generator"], manifest["direction"], manifest["latents"]
    parameters, totals = manifest["parameters"], manifest["totals"]
    samples, candidates, size = totals["samples"], totals["candidates"], manifest["image_size"]
    bank = latents.get("bank")
    sampler = ("z ~ N(0, I)" if latents["sampler"] == "gaussian" else
               f"encoder neighbourhood: z = E(I_i) + alpha * xi over a bank of {bank['count'] if bank else '?'} "
               f"encoded photos (bank digest {bank['digest'] if bank else '?'}), alpha = {latents['alpha']}")
    made = _rows([
        ("generator", f"`{generator['identity']}` (backend `{generator['spec'].get('name')}`, latent size "
                      f"{generator['latent_dim']}, {generator['resolution']} x {generator['resolution']} images)"),
        ("direction h_bg", f"digest `{direction['digest']}`, norm {direction['magnitude']}, found by "
                           f"{direction['method']} (index {direction['index']}, sign {direction['sign']}); choice: "
                           + ("automatic, by the discover stage's scores (filter pass rate, foreground "
                              "fraction, border contact, components)" if direction["chosen_by"] == "automatic"
                              else "a person's override (discover.override in params.yaml)"
                              if direction["chosen_by"] == "override" else direction["chosen_by"])),
        ("latent sampler", sampler),
        ("seed", f"{parameters['seed']} (sample j of shard k is a function of (seed, k, j) alone)"),
        ("filters", ", ".join(f"{name} {_describe_filter(settings)}" for name, settings
                              in parameters["filters"].items() if name != "order")
         + f"; applied in the order {', '.join(parameters['filters']['order'])}"),
        ("encoding", f"JPEG quality {parameters['jpeg_quality']}, PNG masks, {parameters['shard_size']} "
                     f"samples per shard, rendered on {parameters.get('device_type', 'cpu')}"),
    ])
    # in the filters' order, whatever order the counts were summed in (a resumed run reads them back sorted)
    order = list(parameters["filters"]["order"])
    by_filter = sorted(totals["rejected_by"].items(),
                       key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]))
    rejected = [(f"rejected by the {name} filter", f"{count} ({100 * count / candidates:.1f}% of candidates)"
                 if candidates else count) for name, count in by_filter]
    counts = _rows([("samples", samples), ("shards", len(manifest["shards"])), ("candidates rendered", candidates),
                    ("accepted", f"{100 * (totals['acceptance_rate'] or 0):.1f}%"), *rejected])
    members = ", ".join(f"`KEY.{member}`" for member in manifest["members"])
    return f"""{card_header(manifest)}
# Synthetic saliency pairs

{samples} pairs of an image and its saliency mask, {size} x {size}, made without any human label:
a GAN renders G(z) and G(z + h_bg), where moving along the latent direction h_bg lights the object
and darkens the background, and the mask is M = [gray(G(z + h_bg)) > gray(G(z))] (the method of
Voynov, Morozov and Babenko, "Big GANs Are Watching You"). Candidates pass the filters below
before they are kept. The masks are the method's output, not ground truth.

## How it was made

{made}
## Counts

{counts}
`manifest.json` beside the shards records every parameter and each shard's sample count,
candidate count, byte size and sha256 (and this card's).

## Layout

WebDataset tar shards `synth-000000.tar`, ... holding per sample:
{members}.
The image is an RGB JPEG, the mask an 8-bit grey PNG holding 0 or 255, the record a JSON object
(key, index, shard, candidate, seed, sampler, source_index, alpha, foreground_fraction,
generator). Keys hold no dots.

## Licence

Not chosen yet: the owner sets `license` in the header above before publishing (see the comment
there).

## Reading

With plain webdataset and PIL:

```python
import io, json, glob
import webdataset as wds
from PIL import Image

for sample in wds.WebDataset(sorted(glob.glob("synth-*.tar")), shardshuffle=False):
    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    mask = Image.open(io.BytesIO(sample["mask.png"]))   # 8-bit L, 0 or 255
    info = json.loads(sample["json"])
```

With Hugging Face `datasets` (in this folder, or `load_dataset(".")` through this card):

```python
from datasets import load_dataset

dataset = load_dataset("webdataset", data_files={{"train": "synth-*.tar"}}, split="train")
sample = dataset[0]   # "jpg": PIL RGB image, "mask.png": PIL L image (0/255), "json": dict of typed fields
```
"""


def _describe_filter(settings: dict[str, Any]) -> str:
    if not settings.get("enabled", True):
        return "(off)"
    details = ", ".join(f"{key} {value}" for key, value in settings.items() if key != "enabled" and value is not None)
    return f"({details})"


def write_card(folder, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the card atomically into a folder (a path, a URL or an open store); return the
    manifest's entry for it (name, bytes, sha256)."""
    data = render_card(manifest).encode()
    open_output(folder).write_bytes(CARD_NAME, data)
    return {"name": CARD_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_card(folder, manifest: dict[str, Any]) -> list[str]:
    """Problems with the card a manifest lists (none for a set made before cards existed)."""
    entry = manifest.get("card")
    if entry is None:
        return []
    if entry.get("name") != CARD_NAME:
        return [f"manifest lists a dataset card named {entry.get('name')!r}, expected {CARD_NAME}"]
    try:
        data = open_output(folder).read_bytes(CARD_NAME)
    except (FileNotFoundError, IsADirectoryError):
        return [f"{CARD_NAME} (the dataset card) is missing"]
    except OSError as error:
        return [f"{CARD_NAME} (the dataset card) cannot be read: {error}"]
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return [f"{CARD_NAME} (the dataset card) does not match its sha256 in the manifest: it was changed "
                f"after gen-synth wrote it (filling the licence counts: edit it in the copy you publish)"]
    return []
