"""Benchmark loaders: the published folder layouts, pairing images with masks by file stem.

Benchmarks live under one root (`data/benchmarks/` by default, `evaluate.benchmarks_root` in
params.yaml), one folder per benchmark.  The layout assumed for each, as its release unpacks
(each path may also sit one folder deeper, as some archives add a top folder):

| name | folder | images | masks | split |
|---|---|---|---|---|
| ECSSD | ECSSD | images/*.jpg | ground_truth_mask/*.png | all 1,000 |
| DUTS-TE | DUTS-TE | DUTS-TE-Image/*.jpg | DUTS-TE-Mask/*.png | all 5,019 |
| DUT-OMRON | DUT-OMRON | DUT-OMRON-image/*.jpg | pixelwiseGT-new-PNG/*.png | all 5,168 |
| PASCAL-S | PASCAL-S | datasets/imgs/pascal/*.jpg | datasets/masks/pascal/*.png (soft) | all 850 |
| HKU-IS | HKU-IS | imgs/*.png | gt/*.png | all 4,447 |
| CUB-200-2011 | CUB-200-2011 | CUB_200_2011/images/<class>/*.jpg | segmentations/<class>/*.png (soft) | ReDO's test split |
| Flowers | Flowers | jpg/image_NNNNN.jpg | segmim/segmim_NNNNN.jpg | ReDO's test split |

- CUB-200-2011: ReDO (Chen et al., NeurIPS 2019) splits the 11,788 images into train / val / test
  with `train_val_test_split.txt` (lines `<image id> <0|1|2>`, 2 = test), matched to paths by
  `CUB_200_2011/images.txt`; the split file goes in the benchmark folder.
- Flowers (Oxford 102): ReDO's loader takes the images listed as `trnid` in `setid.mat` as its
  test set (1,020 images).  A mask is made from the `segmim` picture the way ReDO's loader does:
  background where R == 0 or G == 0 or B == 254 (the segmentations paint the background blue).
- `generic`: any `images` folder and `masks` folder, paired by stem.

Pairing is by file stem (for Flowers by the image number).  Images without a mask and masks
without an image are reported, with a warning, and listed in the evaluation report; nothing is
dropped silently.  Split entries whose files are missing are reported the same way.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from evaluation.masks import load_mask
from generator.image_io import PHOTO_SUFFIXES

IMAGE_SUFFIXES = PHOTO_SUFFIXES
MASK_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif")


class BenchmarkNotFound(FileNotFoundError):
    """A benchmark folder that is absent or does not have the expected layout."""


@dataclass(frozen=True)
class Source:
    """One file of a benchmark's official release: where to fetch it and how to check it."""

    url: str
    filename: str
    #: where its content goes, relative to the benchmarks root (archives are unpacked there)
    destination: str
    md5: str | None = None
    sha256: str | None = None


def _stem_itself(stem: str) -> str:
    return stem


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its images and masks, and how they pair."""

    name: str
    folder: str
    images: str
    masks: str
    description: str
    recursive: bool = False
    #: maps a file stem to the key images and masks are paired by
    image_key: Callable[[str], str] = _stem_itself
    mask_key: Callable[[str], str] = _stem_itself
    #: the keys of the evaluation split (None: every pair)
    split: Callable[[Path], list[str]] | None = None
    mask_reader: Callable[[Path], np.ndarray] = load_mask
    sources: tuple[Source, ...] = ()
    #: where a person gets the data when there is no direct download address
    homepage: str = ""


@dataclass(frozen=True)
class Pair:
    key: str
    image: Path
    mask: Path


@dataclass
class Benchmark:
    """A benchmark found on disk: its pairs and everything that did not pair."""

    name: str
    folder: Path
    layout: Layout
    pairs: list[Pair]
    unmatched_images: list[str] = field(default_factory=list)
    unmatched_masks: list[str] = field(default_factory=list)
    missing_from_split: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    outside_split: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def read_mask(self, pair: Pair) -> np.ndarray:
        return self.layout.mask_reader(pair.mask)

    def problems(self) -> dict[str, list[str]]:
        """The files that could not be paired, by kind (empty lists left out)."""
        found = {"unmatched_images": self.unmatched_images, "unmatched_masks": self.unmatched_masks,
                 "missing_from_split": self.missing_from_split, "duplicate_keys": self.duplicates}
        return {kind: files for kind, files in found.items() if files}

    def summary(self) -> dict:
        return {"name": self.name, "layout": self.layout.name, "folder": str(self.folder), "pairs": len(self.pairs),
                "outside_split": self.outside_split, **self.problems()}


def _locate(folder: Path, relative: str) -> Path | None:
    """folder/relative, or the one folder/<top>/relative an archive with a top folder gives."""
    direct = folder / relative
    if direct.is_dir():
        return direct
    nested = [candidate for candidate in sorted(folder.glob(f"*/{relative}")) if candidate.is_dir()]
    return nested[0] if len(nested) == 1 else None


def _list_files(folder: Path, suffixes: tuple[str, ...], recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(path for path in folder.glob(pattern)
                  if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."))


def pair_by_key(images: list[Path], masks: list[Path], image_key: Callable[[str], str] = _stem_itself,
                mask_key: Callable[[str], str] = _stem_itself) -> tuple[list[Pair], list[Path], list[Path], list[str]]:
    """Pairs of image and mask with the same key; the unpaired images, unpaired masks and clashing keys."""
    def by_key(paths: list[Path], key: Callable[[str], str]) -> tuple[dict[str, Path], set[str]]:
        found: dict[str, Path] = {}
        clashes: set[str] = set()
        for path in paths:
            k = key(path.stem)
            if k in found:
                clashes.add(k)
            else:
                found[k] = path
        return found, clashes

    image_by_key, image_clashes = by_key(images, image_key)
    mask_by_key, mask_clashes = by_key(masks, mask_key)
    clashes = image_clashes | mask_clashes
    keys = sorted((image_by_key.keys() & mask_by_key.keys()) - clashes)
    pairs = [Pair(k, image_by_key[k], mask_by_key[k]) for k in keys]
    unmatched_images = [path for k, path in image_by_key.items() if k not in mask_by_key]
    unmatched_masks = [path for k, path in mask_by_key.items() if k not in image_by_key]
    return pairs, sorted(unmatched_images), sorted(unmatched_masks), sorted(clashes)


def files_message(benchmark: str, kind: str, files: list[str]) -> str:
    """A warning about some of a benchmark's files: how many, and the first five."""
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return f"{benchmark}: {len(files)} {kind}: {shown}"


def load_benchmark(layout: Layout, folder: str | Path) -> Benchmark:
    """Find a benchmark's pairs in `folder` (the benchmark's own folder, e.g. root/ECSSD)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkNotFound(f"{layout.name}: folder {folder} not found")
    image_dir, mask_dir = _locate(folder, layout.images), _locate(folder, layout.masks)
    for relative, found in ((layout.images, image_dir), (layout.masks, mask_dir)):
        if found is None:
            raise BenchmarkNotFound(f"{layout.name}: {folder} has no {relative}/ folder ({layout.description})")
    images = _list_files(image_dir, IMAGE_SUFFIXES, layout.recursive)
    masks = _list_files(mask_dir, MASK_SUFFIXES, layout.recursive)
    pairs, unmatched_images, unmatched_masks, clashes = pair_by_key(images, masks, layout.image_key, layout.mask_key)
    benchmark = Benchmark(layout.name, folder, layout, pairs, duplicates=clashes,
                          unmatched_images=[str(p.relative_to(folder)) for p in unmatched_images],
                          unmatched_masks=[str(p.relative_to(folder)) for p in unmatched_masks])
    if layout.split is not None:
        wanted = layout.split(folder)
        wanted_set = set(wanted)
        by_key = {pair.key: pair for pair in pairs}
        benchmark.pairs = [by_key[k] for k in sorted(wanted_set) if k in by_key]
        benchmark.outside_split = len(pairs) - len(benchmark.pairs)
        benchmark.missing_from_split = sorted(k for k in wanted_set if k not in by_key)
        # files outside the split are expected to lack a partner only when they are in the split
        benchmark.unmatched_images = [p for p in benchmark.unmatched_images
                                      if layout.image_key(Path(p).stem) in wanted_set]
        benchmark.unmatched_masks = [p for p in benchmark.unmatched_masks
                                     if layout.mask_key(Path(p).stem) in wanted_set]
    for kind, files in benchmark.problems().items():
        warnings.warn(files_message(layout.name, kind.replace("_", " "), files), stacklevel=2)
    if not benchmark.pairs:
        raise BenchmarkNotFound(f"{layout.name}: no image in {image_dir} has a mask in {mask_dir}")
    return benchmark


# -- dataset-specific pieces ---------------------------------------------------------------------

def _cub_test_split(folder: Path) -> list[str]:
    """Stems of ReDO's CUB test images (split value 2)."""
    split_file = _find_file(folder, "train_val_test_split.txt")
    images_file = _find_file(folder, "images.txt")
    if split_file is None or images_file is None:
        raise BenchmarkNotFound(f"CUB-200-2011: {folder} needs CUB_200_2011/images.txt and ReDO's "
                                "train_val_test_split.txt beside it")
    paths = {}
    for line in images_file.read_text().split("\n"):
        if line.strip():
            image_id, path = line.split(maxsplit=1)
            paths[image_id] = path.strip()
    stems = []
    for line in split_file.read_text().split("\n"):
        if line.strip():
            image_id, part = line.split()
            if part == "2":
                if image_id not in paths:
                    raise BenchmarkNotFound(f"CUB-200-2011: split entry {image_id} is not in {images_file}")
                stems.append(Path(paths[image_id]).stem)
    return stems


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / "CUB_200_2011" / name):
        if candidate.is_file():
            return candidate
    return None


def _flowers_test_split(folder: Path) -> list[str]:
    """Image numbers ReDO's loader evaluates on: `trnid` of setid.mat (sic: its test set)."""
    from scipy.io import loadmat
    setid = folder / "setid.mat"
    if not setid.is_file():
        raise BenchmarkNotFound(f"Flowers: {setid} not found (the release's setid.mat holds the splits)")
    ids = np.asarray(loadmat(setid)["trnid"]).ravel()
    return [f"{int(i):05d}" for i in ids]


def _number_key(stem: str) -> str:
    match = re.search(r"(\d+)$", stem)
    return f"{int(match.group(1)):05d}" if match else stem


def flowers_mask(path: Path) -> np.ndarray:
    """ReDO's rule for the Flowers segmentations: background where R == 0 or G == 0 or B == 254."""
    return load_mask(path, _flowers_foreground)


def _flowers_foreground(image: Image.Image) -> np.ndarray:
    rgb = np.array(image.convert("RGB"))
    background = (rgb[..., 0] == 0) | (rgb[..., 1] == 0) | (rgb[..., 2] == 254)
    return np.where(background, 0, 255).astype(np.uint8)


SALIENCY_HOME = "http://saliencydetection.net"
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("ECSSD", "ECSSD", "images", "ground_truth_mask",
           "CUHK release: images.zip and ground_truth_mask.zip",
           sources=(Source("https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/images.zip",
                           "images.zip", "ECSSD"),
                    Source("https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/ground_truth_mask.zip",
                           "ground_truth_mask.zip", "ECSSD")),
           homepage="https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/dataset.html"),
    Layout("DUTS-TE", "DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask", "DUTS release: DUTS-TE.zip",
           sources=(Source(f"{SALIENCY_HOME}/duts/download/DUTS-TE.zip", "DUTS-TE.zip", "."),),
           homepage=f"{SALIENCY_HOME}/duts/"),
    Layout("DUT-OMRON", "DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG",
           "DUT-OMRON release: DUT-OMRON-image.zip and the pixel-wise ground truth",
           sources=(Source(f"{SALIENCY_HOME}/dut-omron/download/DUT-OMRON-image.zip", "DUT-OMRON-image.zip",
                           "DUT-OMRON"),
                    Source(f"{SALIENCY_HOME}/dut-omron/download/DUT-OMRON-gt-pixelwise.zip.zip",
                           "DUT-OMRON-gt-pixelwise.zip", "DUT-OMRON")),
           homepage=f"{SALIENCY_HOME}/dut-omron/"),
    Layout("PASCAL-S", "PASCAL-S", "datasets/imgs/pascal", "datasets/masks/pascal",
           "salObj release (Li et al., CVPR 2014): PASCAL-S images and averaged annotator masks",
           sources=(Source("http://cbs.ic.gatech.edu/salobj/download/salObj.zip", "salObj.zip", "PASCAL-S"),),
           homepage="http://cbs.ic.gatech.edu/salobj/"),
    Layout("HKU-IS", "HKU-IS", "imgs", "gt", "HKU-IS release (Li and Yu, CVPR 2015): imgs/ and gt/",
           homepage="https://sites.google.com/site/ligb86/hkuis"),
    Layout("CUB-200-2011", "CUB-200-2011", "CUB_200_2011/images", "segmentations",
           "CUB_200_2011.tgz and segmentations.tgz unpacked side by side, with ReDO's split file",
           recursive=True, split=_cub_test_split,
           sources=(Source("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                           "CUB_200_2011.tgz", "CUB-200-2011", md5="97eceeb196236b17998738112f37df78"),
                    Source("https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz",
                           "segmentations.tgz", "CUB-200-2011", md5="4d47ba1228eae64f2fa547c47bc65255"),
                    Source("https://raw.githubusercontent.com/mickaelChen/ReDO/master/datasplits/cub/"
                           "train_val_test_split.txt", "train_val_test_split.txt", "CUB-200-2011")),
           homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/"),
    Layout("Flowers", "Flowers", "jpg", "segmim",
           "Oxford 102 Flowers: 102flowers.tgz, 102segmentations.tgz and setid.mat",
           image_key=_number_key, mask_key=_number_key, split=_flowers_test_split, mask_reader=flowers_mask,
           sources=(Source("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz",
                           "Flowers", md5="52808999861908f626f3c1f4e79d11fa"),
                    Source("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102segmentations.tgz",
                           "102segmentations.tgz", "Flowers"),
                    Source("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", "setid.mat", "Flowers",
                           md5="a5357ecc9cb78c4bef273ce3793fc85c")),
           homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
)}


def generic_layout(name: str, images: str = "images", masks: str = "masks", recursive: bool = False) -> Layout:
    """Any benchmark given as an images folder and a masks folder, paired by stem."""
    return Layout(name, name, images, masks, f"generic pair of folders {images}/ and {masks}/", recursive=recursive)


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(LAYOUTS)} "
                         "(or give images and masks folders for a generic one)") from None
