"""The three filters every candidate (mask, shifted image) passes before it is kept.

By default they follow the paper's text (DESIGN.md section 1):

- size: reject when the mask's foreground fraction exceeds 0.5;
- histogram: 12-bin histogram of gray(G(z + h_bg)) over [-1, 1], smoothed with a moving average of
  window 3; reject when a local maximum lies outside the first and the last bin;
- connected components (4-connectivity): with M_1 the largest, drop every component smaller than
  0.2 |M_1|.  This edits the mask and rejects nothing.

The paper's code differs in places; each difference is an option (`FilterConfig.reference()` sets
all of them): the histogram pools the three RGB channels, pads the moving average with zeros and
keeps a sample with at least two local maxima (a bin >= both neighbours, the ends compared on one
side only); components use 8-connectivity and keep those with area ratio > 0.2 (strictly); the
component filter runs first, then size, then histogram.

Two readings of the paper's text, stated here because the text leaves them open: the moving
average at the first and last bin averages the neighbours that exist (zero padding would make a
peak at an end look like a peak next to it), and a local maximum is a plateau of equal bins whose
nearest different neighbours on both sides are lower, so flat stretches of empty bins are not maxima.

Everything is vectorised over the batch: one `np.bincount` for all histograms; for the components,
one pass that packs every mask row into bits, then a graph of foreground runs for the masks that are
not plainly one component.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from generator.synth.masks import GRAY_WEIGHTS

FILTER_NAMES = ("size", "histogram", "components")
#: Filters that can reject a candidate (the component filter only edits the mask).
REJECTING_FILTERS = ("size", "histogram")
RULES = ("paper", "reference")
PAPER_ORDER = ("size", "histogram", "components")
REFERENCE_ORDER = ("components", "size", "histogram")


@dataclass(frozen=True)
class FilterConfig:
    """Switches and settings of the three filters; the defaults are the paper's text."""

    size: bool = True
    max_foreground: float = 0.5       # reject when the foreground fraction is above this
    min_foreground: float = 0.0       # reject when it is below this (0: never, as in the paper)
    histogram: bool = True
    histogram_bins: int = 12
    histogram_window: int = 3
    histogram_rule: str = "paper"     # "reference": RGB channels, zero padding, >= 2 maxima kept
    components: bool = True
    connectivity: int = 4             # 4 (paper's text) or 8 (reference code)
    component_ratio: float = 0.2
    component_rule: str = "paper"     # "paper": keep |M_i| >= ratio |M_1|; "reference": keep >
    order: tuple[str, ...] = field(default=PAPER_ORDER)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(self.order))
        problems = []
        if not 0.0 <= self.min_foreground <= self.max_foreground <= 1.0:
            problems.append(f"need 0 <= min_foreground <= max_foreground <= 1, got "
                            f"{self.min_foreground} and {self.max_foreground}")
        if int(self.histogram_bins) != self.histogram_bins or self.histogram_bins < 3:
            problems.append(f"histogram_bins must be an integer >= 3, got {self.histogram_bins}")
        if (int(self.histogram_window) != self.histogram_window or self.histogram_window < 1
                or self.histogram_window % 2 == 0):
            problems.append(f"histogram_window must be an odd integer >= 1, got {self.histogram_window}")
        if self.histogram_rule not in RULES:
            problems.append(f"histogram_rule must be one of {', '.join(RULES)}, got {self.histogram_rule!r}")
        if self.connectivity not in (4, 8):
            problems.append(f"connectivity must be 4 or 8, got {self.connectivity}")
        if not 0.0 <= self.component_ratio <= 1.0:
            problems.append(f"component_ratio must lie in [0, 1], got {self.component_ratio}")
        if self.component_rule not in RULES:
            problems.append(f"component_rule must be one of {', '.join(RULES)}, got {self.component_rule!r}")
        if sorted(self.order) != sorted(FILTER_NAMES):
            problems.append(f"order must list each of {', '.join(FILTER_NAMES)} once, got {list(self.order)}")
        for flag in ("size", "histogram", "components"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if problems:
            raise ValueError("invalid filter settings: " + "; ".join(problems))

    @classmethod
    def reference(cls, **overrides: Any) -> "FilterConfig":
        """The reference code's variants of all three filters and their order."""
        settings = dict(histogram_rule="reference", connectivity=8, component_rule="reference",
                        order=REFERENCE_ORDER)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "FilterConfig":
        """Build from params.yaml's nested `synth.filters` section (missing keys: the paper's text).

        size: {enabled, max_foreground, min_foreground}; histogram: {enabled, bins, window, rule};
        components: {enabled, connectivity, min_ratio, rule}; order: [names].
        """
        section = dict(section or {})
        layout = {
            "size": {"enabled": "size", "max_foreground": "max_foreground",
                     "min_foreground": "min_foreground"},
            "histogram": {"enabled": "histogram", "bins": "histogram_bins", "window": "histogram_window",
                          "rule": "histogram_rule"},
            "components": {"enabled": "components", "connectivity": "connectivity",
                           "min_ratio": "component_ratio", "rule": "component_rule"},
        }
        unknown = set(section) - set(layout) - {"order"}
        if unknown:
            raise ValueError(f"unknown filter settings: {', '.join(sorted(unknown))} "
                             f"(expected {', '.join([*layout, 'order'])})")
        settings: dict[str, Any] = {}
        for name, keys in layout.items():
            sub = section.get(name) or {}
            if not isinstance(sub, Mapping):
                raise ValueError(f"filters.{name} must be a mapping, got {sub!r}")
            unknown = set(sub) - set(keys)
            if unknown:
                raise ValueError(f"unknown settings in filters.{name}: {', '.join(sorted(unknown))} "
                                 f"(expected {', '.join(keys)})")
            settings.update({keys[key]: value for key, value in sub.items()})
        if "order" in section:
            settings["order"] = tuple(section["order"])
        return cls(**settings)

    def to_params(self) -> dict[str, Any]:
        """The nested form `from_params` reads (what the manifest records)."""
        return {
            "size": {"enabled": self.size, "max_foreground": self.max_foreground,
                     "min_foreground": self.min_foreground},
            "histogram": {"enabled": self.histogram, "bins": self.histogram_bins,
                          "window": self.histogram_window, "rule": self.histogram_rule},
            "components": {"enabled": self.components, "connectivity": self.connectivity,
                           "min_ratio": self.component_ratio, "rule": self.component_rule},
            "order": list(self.order),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FilterResult:
    """What the filters made of a batch of N candidates."""

    masks: np.ndarray                      # bool N x H x W, component-edited (every candidate)
    keep: np.ndarray                       # bool N, passed every enabled filter
    rejected_by: dict[str, int]            # filter -> candidates it rejected first, in `order`
    failed: dict[str, np.ndarray]          # filter -> bool N, failed it (whatever came before)
    rejected: dict[str, np.ndarray]        # filter -> bool N, rejected by it first (sums: rejected_by)
    foreground_fraction: np.ndarray        # float N of the returned masks


def apply_filters(masks: np.ndarray, shifted: np.ndarray, config: FilterConfig | None = None) -> FilterResult:
    """Run the enabled filters in `config.order` over a batch.

    masks: bool N x H x W (from `synthesize_masks`); shifted: float32 N x 3 x H x W in [-1, 1],
    the shifted images G(z + h_bg).  A candidate rejected by several filters is counted once, under
    the first of them in `order`.
    """
    config = config or FilterConfig()
    masks = np.asarray(masks)
    shifted = np.asarray(shifted)
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be a bool array N x H x W, got {masks.dtype} {masks.shape}")
    n, h, w = masks.shape
    if shifted.shape != (n, 3, h, w):
        raise ValueError(f"shifted images must be N x 3 x H x W = {(n, 3, h, w)}, got {shifted.shape}")

    failed = {name: np.zeros(n, dtype=bool) for name in REJECTING_FILTERS}
    for name in config.order:
        if name == "components" and config.components:
            masks = filter_components(masks, config.connectivity, config.component_ratio,
                                      inclusive=config.component_rule == "paper")
        elif name == "size" and config.size:
            failed["size"] = size_fails(masks, config.max_foreground, config.min_foreground)
        elif name == "histogram" and config.histogram:
            failed["histogram"] = histogram_fails(shifted, config.histogram_bins, config.histogram_window,
                                                  config.histogram_rule)

    keep = np.ones(n, dtype=bool)
    rejected = {}
    for name in (name for name in config.order if name in REJECTING_FILTERS):
        rejected[name] = keep & failed[name]
        keep &= ~failed[name]
    rejected_by = {name: int(np.count_nonzero(first)) for name, first in rejected.items()}
    return FilterResult(masks=masks, keep=keep, rejected_by=rejected_by, failed=failed, rejected=rejected,
                        foreground_fraction=foreground_fraction(masks))


def foreground_fraction(masks: np.ndarray) -> np.ndarray:
    """Share of foreground pixels of each mask (N x H x W -> N)."""
    n, h, w = masks.shape
    return np.count_nonzero(masks.reshape(n, h * w), axis=1) / float(h * w)


def size_fails(masks: np.ndarray, max_foreground: float = 0.5, min_foreground: float = 0.0) -> np.ndarray:
    """Size filter: True where the foreground fraction is above max (or below min)."""
    fraction = foreground_fraction(masks)
    return (fraction > max_foreground) | (fraction < min_foreground)


# --- histogram ----------------------------------------------------------------------------------

def batch_histograms(values: np.ndarray, bins: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """Per-row histograms (N x ... -> N x bins int64) with np.histogram's bin edges and rules.

    Values outside [low, high] are not counted; the last bin includes `high`, as np.histogram does.
    """
    n = values.shape[0]
    # Edges in the values' precision, as np.histogram makes them.
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.dtype(np.float64)
    flat = values.reshape(n, int(np.prod(values.shape[1:]))).astype(dtype, copy=False)
    edges = np.linspace(low, high, bins + 1, dtype=dtype)
    scaled = (flat - dtype.type(low)) * dtype.type(bins / (high - low))
    index = scaled.astype(np.int32)
    np.clip(index, 0, bins - 1, out=index)
    # Rounding can put a value within a hair of an edge into the neighbouring bin: settle those
    # few by comparing with the edges themselves, as np.histogram does.
    suspect = np.flatnonzero(np.abs(scaled - np.rint(scaled)) < 1e-3)
    if suspect.size:
        value, bin_ = flat.ravel()[suspect], index.ravel()[suspect]
        bin_ -= value < edges[bin_]
        bin_ += (value >= edges[bin_ + 1]) & (bin_ != bins - 1)
        index.ravel()[suspect] = bin_
    lowest, highest = flat.min(initial=low), flat.max(initial=high)
    if not (lowest >= low and highest <= high):           # also true when there is a NaN
        index[~((flat >= low) & (flat <= high))] = bins  # an overflow bin, dropped below
    index += (np.arange(n, dtype=np.int32) * (bins + 1))[:, None]
    counts = np.bincount(index.ravel(), minlength=n * (bins + 1))
    return counts.reshape(n, bins + 1)[:, :bins]


def smooth_histograms(counts: np.ndarray, window: int = 3, zero_padded: bool = False) -> np.ndarray:
    """Moving average along the bins (N x B).

    zero_padded=False: each bin averages the neighbours that exist (the ends average fewer bins);
    zero_padded=True: missing neighbours count as zeros (np.convolve(..., mode="same")).
    """
    half = window // 2
    counts = counts.astype(np.float64)
    padded = np.pad(counts, ((0, 0), (half, half)))
    cumulative = np.concatenate([np.zeros((counts.shape[0], 1)), np.cumsum(padded, axis=1)], axis=1)
    sums = cumulative[:, window:] - cumulative[:, :-window]
    if zero_padded:
        return sums / window
    bins = counts.shape[1]
    position = np.arange(bins)
    present = np.minimum(position + half, bins - 1) - np.maximum(position - half, 0) + 1
    return sums / present


def has_interior_maximum(smoothed: np.ndarray) -> np.ndarray:
    """True where a local maximum lies strictly inside (not at the first or last bin).

    A maximum is a run of equal bins whose nearest different bins on both sides are lower; a run
    that reaches an end is that end's maximum.
    """
    n, bins = smoothed.shape
    left = np.full((n, bins), np.nan)    # nearest different value to the left
    right = np.full((n, bins), np.nan)   # nearest different value to the right
    for i in range(1, bins):
        previous = smoothed[:, i - 1]
        left[:, i] = np.where(previous != smoothed[:, i], previous, left[:, i - 1])
    for i in range(bins - 2, -1, -1):
        following = smoothed[:, i + 1]
        right[:, i] = np.where(following != smoothed[:, i], following, right[:, i + 1])
    with np.errstate(invalid="ignore"):
        interior_peak = (left < smoothed) & (right < smoothed)   # NaN (no neighbour) compares False
    return interior_peak.any(axis=1)


def count_local_maxima(smoothed: np.ndarray) -> np.ndarray:
    """The reference code's count: bins >= both neighbours, the ends compared on one side only."""
    previous = np.pad(smoothed, ((0, 0), (1, 0)), constant_values=-np.inf)[:, :-1]
    following = np.pad(smoothed, ((0, 0), (0, 1)), constant_values=-np.inf)[:, 1:]
    return np.count_nonzero((smoothed >= previous) & (smoothed >= following), axis=1)


def gray_array(images: np.ndarray) -> np.ndarray:
    """`masks.gray` for numpy arrays, with the same operations in the same order."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def histogram_fails(shifted: np.ndarray, bins: int = 12, window: int = 3, rule: str = "paper") -> np.ndarray:
    """Histogram filter on the shifted images N x 3 x H x W in [-1, 1]: True where it rejects."""
    if rule == "paper":
        intensity = gray_array(shifted)
        smoothed = smooth_histograms(batch_histograms(intensity, bins), window)
        return has_interior_maximum(smoothed)
    if rule == "reference":
        smoothed = smooth_histograms(batch_histograms(shifted, bins), window, zero_padded=True)
        return count_local_maxima(smoothed) < 2
    raise ValueError(f"unknown histogram rule {rule!r} (expected one of {', '.join(RULES)})")


# --- connected components -----------------------------------------------------------------------

#: Images are labelled in groups of about this many runs: few enough that a group's arrays stay in
#: cache and its temporaries reuse memory rather than ask the system for fresh pages, enough that
#: the fixed cost of each labelling call is shared by many images.
LABELLING_RUNS = 1 << 16


def component_structure(connectivity: int) -> np.ndarray:
    """2-D neighbourhood for 4- or 8-connectivity."""
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    if connectivity == 8:
        return ndimage.generate_binary_structure(2, 2)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def packed_rows(masks: np.ndarray) -> np.ndarray:
    """Mask rows as bits in 64-bit words: N x H x ceil(W / 64), pixel c at bit c % 64 of word c // 64.

    The padding bits at the end of a row are background.  Rows that fill whole words pack in one
    flat pass over the pixels (several times faster than packing row by row).
    """
    n, h, w = masks.shape
    masks = masks.astype(bool, copy=False)
    words = -(-w // 64)
    if w % 64 == 0:
        packed = np.packbits(masks.reshape(-1), bitorder="little")
    else:
        packed = np.zeros((n, h, 8 * words), dtype=np.uint8)
        packed[:, :, :-(-w // 8)] = np.packbits(masks, axis=-1, bitorder="little")
    return packed.view("<u8").reshape(n, h, words)


def neighbour_bits(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of `packed_rows` output, its left and its right neighbour (background off the row)."""
    left, right = bits << 1, bits >> 1
    if bits.shape[-1] > 1:   # carry across the words of a row
        left[..., 1:] |= bits[..., :-1] >> 63
        right[..., :-1] |= bits[..., 1:] << 63
    return left, right


def summed_bit_counts(words: np.ndarray) -> np.ndarray:
    """Set bits of each 64-bit word (uint8), summed in pairs, nibbles, then bytes."""
    pairs, nibbles, low_bits = (np.uint64(0x5555555555555555), np.uint64(0x3333333333333333),
                                np.uint64(0x0F0F0F0F0F0F0F0F))
    words = words.astype(np.uint64, copy=False)
    words = words - ((words >> np.uint64(1)) & pairs)
    words = (words & nibbles) + ((words >> np.uint64(2)) & nibbles)
    words = (words + (words >> np.uint64(4))) & low_bits
    return ((words * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


#: Set bits of each 64-bit word: numpy's own from numpy 2.0 on, the same by sums before it.
bit_counts = getattr(np, "bitwise_count", summed_bit_counts)


def row_total(values: np.ndarray, combine: np.ufunc = np.add, dtype: type = np.int64) -> np.ndarray:
    """Combine the words of each row (N x H x K -> N x H).

    A loop over the K words: numpy's reductions along a short last axis are many times slower.
    """
    total = values[..., 0].astype(dtype)
    for k in range(1, values.shape[-1]):
        combine(total, values[..., k], out=total)
    return total


def set_bit_positions(words: np.ndarray) -> np.ndarray:
    """Flat bit index (64 * word + bit) of every set bit of `words`, ascending.

    Each round takes the lowest set bit of every word that still has one, so the rounds number the
    most bits any word holds; each bit goes to its slot in the ascending order directly.
    """
    flat = words.reshape(-1)
    index = np.flatnonzero(flat)
    values = flat[index]
    counts = bit_counts(values).astype(np.int64)
    slots = np.cumsum(counts) - counts
    positions = np.empty(int(counts.sum()), dtype=np.int64)
    base = 64 * index
    while values.size:
        lowest = values & (~values + np.uint64(1))
        positions[slots] = base + (np.frexp(lowest.astype(np.float64))[1] - 1)   # exact for 2^k
        values ^= lowest
        more = np.flatnonzero(values)
        values, base, slots = values[more], base[more], slots[more] + 1
    return positions


def bits_before(words: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """How many bits of `words` are set before each flat bit position (up to one row past the end)."""
    flat = np.concatenate([words.reshape(-1), np.zeros(words.shape[-1] + 1, dtype=np.uint64)])
    before_word = np.zeros(flat.size, dtype=np.int64)
    np.cumsum(bit_counts(flat[:-1]), out=before_word[1:], dtype=np.int64)
    word = positions >> 6
    lower_bits = (np.uint64(1) << (positions & 63).astype(np.uint64)) - np.uint64(1)
    return before_word[word] + bit_counts(flat[word] & lower_bits)


def runs_from_edges(firsts: np.ndarray, lasts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global row, start column, end column) of the runs whose first and last pixels are set bits.

    The global row of row r of image i is i * H + r; runs come sorted by row, then column, and
    `end` is exclusive.  A run starts where a pixel is set and its left neighbour is not, and ends
    after a set pixel whose right neighbour is not (`neighbour_bits`).
    """
    row_bits = 64 * firsts.shape[-1]
    starts = set_bit_positions(firsts)
    ends = set_bit_positions(lasts) + 1
    rows = starts // row_bits
    return rows, starts - rows * row_bits, ends - rows * row_bits


def kept_components(sizes: np.ndarray, largest: np.ndarray, ratio: float, inclusive: bool) -> np.ndarray:
    """The component filter's rule: keep |M_i| >= ratio |M_1| (inclusive) or > (not inclusive)."""
    threshold = ratio * largest
    return sizes >= threshold if inclusive else sizes > threshold


def chained_components(firsts: np.ndarray, bits: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Int N: the number of components of each image whose rows hold at most one run each, else -1.

    With at most one run per row a run can only link to the run above and the run below, so the
    components number the filled rows less the pairs of adjacent rows whose runs touch.  `reach`
    is what a run touches in its own row: the bits themselves for 4-connectivity, widened by one
    pixel each side for 8.
    """
    runs_per_row = row_total(bit_counts(firsts))
    touching = row_total(bits[:, :-1] & reach[:, 1:], np.bitwise_or, np.uint64)
    components = np.count_nonzero(runs_per_row, axis=1) - np.count_nonzero(touching, axis=1)
    return np.where(runs_per_row.max(axis=1) <= 1, components, -1)


def dropped_runs(firsts: np.ndarray, lasts: np.ndarray, w: int, connectivity: int, ratio: float,
                 inclusive: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row i * H + r, start, length) of the runs of the components the filter drops in these images.

    Run a (row g) touches run b (row g + 1, same image) when their column spans overlap, or also
    meet at a corner with 8-connectivity.  The runs a run touches are consecutive, [first, last)
    in run order, and counting set bits up to a column of row g + 1 gives both ends: `first`
    counts the runs that end left of a's start (a pixel further left with corners), `last` those
    that start left of a's end (or at it with corners), each with all the runs of earlier rows.
    """
    n, h, words = firsts.shape
    rows, starts, ends = runs_from_edges(firsts, lasts)
    count = len(rows)
    corner = int(connectivity == 8)
    below = (rows + 1) * (64 * words)          # flat bit index of the row below's first pixel
    first = bits_before(lasts, below + np.maximum(starts - corner, 0))
    last = bits_before(firsts, below + np.minimum(ends + corner, w))
    links = np.where(rows % h == h - 1, 0, np.maximum(last - first, 0))   # no link across images
    # The links, run by run, are the rows of a sparse adjacency matrix (CSR, built directly in the
    # index and value types csgraph works in, so it converts nothing).
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(links, out=offsets[1:], dtype=np.int32)
    total = int(offsets[-1])
    target = (np.repeat(first - offsets[:-1], links) + np.arange(total)).astype(np.int32)
    graph = sparse.csr_matrix((np.ones(total), target, offsets), shape=(count, count))
    _, component = csgraph.connected_components(graph, directed=True, connection="weak")

    lengths = ends - starts
    sizes = np.bincount(component, weights=lengths)
    image_of_component = np.empty(len(sizes), dtype=np.int64)
    image_of_component[component] = rows // h
    largest = np.zeros(n)
    np.maximum.at(largest, image_of_component, sizes)
    keep = kept_components(sizes, largest[image_of_component], ratio, inclusive)
    dropped = np.flatnonzero(~keep[component])
    return rows[dropped], starts[dropped], lengths[dropped]


def clear_runs(masks: np.ndarray, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Set the runs' pixels to background, in place (rows are global rows, i * H + r)."""
    w = masks.shape[2]
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    masks.reshape(-1)[np.repeat(rows * w + starts, lengths) + offsets] = False


def run_groups(runs: np.ndarray, budget: int) -> np.ndarray:
    """Where to split consecutive images with these run counts into groups of about `budget` runs.

    An image joins the group in which its first run falls, so a group holds at most `budget` runs
    plus those of its last image.
    """
    first_run = np.cumsum(runs) - runs
    return np.flatnonzero(np.diff(first_run // budget)) + 1


def filter_components(masks: np.ndarray, connectivity: int = 4, ratio: float = 0.2,
                      inclusive: bool = True) -> np.ndarray:
    """Drop, in every mask, the components smaller than `ratio` times that mask's largest.

    inclusive=True keeps |M_i| >= ratio |M_1| (the paper's text); False keeps only > (the code's).
    Vectorised over the batch on bits and runs rather than pixels: the pixels are read once, to
    pack each row into 64-bit words.  A mask whose foreground is one component (told from counts
    of runs per row and of touching rows, see `chained_components`) keeps it or loses it whole.
    The other masks are labelled a group at a time: runs in adjacent rows of the same image that
    touch are linked, and the components of that graph are found in one call.  Only the pixels
    of dropped components are written.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    n, h, w = masks.shape
    out = masks.copy()
    if out.size == 0:
        return out
    bits = packed_rows(masks)
    left, right = neighbour_bits(bits)
    firsts, lasts = bits & ~left, bits & ~right     # the first and the last pixel of each run
    reach = bits if connectivity == 4 else bits | left | right
    del left, right                                 # fewer large arrays alive: less fresh memory
    chained = chained_components(firsts, bits, reach)
    del reach

    # A single component is kept or dropped whole (it can only be dropped when ratio >= 1).
    sizes = bit_counts(bits).reshape(n, -1).sum(axis=1, dtype=np.int64)
    out[(chained == 1) & ~kept_components(sizes, sizes, ratio, inclusive)] = False
    to_label = np.flatnonzero((chained < 0) | (chained > 1))
    if to_label.size == 0:
        return out
    runs = bit_counts(firsts[to_label]).reshape(len(to_label), -1).sum(axis=1, dtype=np.int64)
    for images in np.split(to_label, run_groups(runs, LABELLING_RUNS)):
        rows, starts, lengths = dropped_runs(firsts[images], lasts[images], w, connectivity, ratio, inclusive)
        if rows.size:
            clear_runs(out, images[rows // h] * h + rows % h, starts, lengths)
    return out


def filter_components_loop(masks: np.ndarray, connectivity: int = 4, ratio: float = 0.2,
                           inclusive: bool = True) -> np.ndarray:
    """The same rule image by image and component by component (reference for tests, benchmark)."""
    structure = component_structure(connectivity)
    out = np.zeros_like(masks, dtype=bool)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=structure)
        sizes = [int(np.count_nonzero(labels == k)) for k in range(1, count + 1)]
        if not sizes:
            continue
        largest = max(sizes)
        for k, size in enumerate(sizes, start=1):
            if (size >= ratio * largest) if inclusive else (size > ratio * largest):
                out[i] |= labels == k
    return out
