"""Edge-aware refinement of a saliency map against its photo: the fast bilateral solver.

Barron and Poole, "The Fast Bilateral Solver" (ECCV 2016), as TokenCut, SelfMask and FOUND use
it for their "+BS" rows.  The map is smoothed in a bilateral grid (pixel position, luma and
chroma), so values spread freely between pixels of similar colour and hardly across colour edges,
while staying close to the input.  Concretely:

- every pixel goes to the grid vertex at (x / sigma_spatial, y / sigma_spatial, Y / sigma_luma,
  U / sigma_chroma, V / sigma_chroma) (YUV of the 8-bit photo, floored); only occupied vertices
  are kept (a sparse "splat" matrix S, pixels -> vertices);
- the grid's blur B sums each vertex's neighbours along every axis ([1 2 1] per dimension);
  it is made bistochastic (diagonals Dn, Dm) so the smoothness term does not favour dense regions;
- the refined map is the slice S^T y of the grid values y solving
  (lam (Dm - Dn B Dn) + diag(S c)) y = S (c t), with t the input map and c a per-pixel confidence
  (constant here), by preconditioned conjugate gradients.

Parameters default to TokenCut's (sigma_spatial 16, sigma_luma 16, sigma_chroma 8, lam 128,
confidence 0.999, 25 CG steps), used on full-size benchmark photos. Everything is
deterministic: no random number is drawn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

# ITU-R BT.601 RGB -> YUV (JPEG's), chroma offset to 128 so every coordinate is >= 0.
_RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]])
_YUV_OFFSET = np.array([0.0, 128.0, 128.0])

SIGMA_SPATIAL = 16.0
SIGMA_LUMA = 16.0
SIGMA_CHROMA = 8.0
LAM = 128.0
CONFIDENCE = 0.999
CG_STEPS = 25
CG_TOLERANCE = 1e-5
BISTOCHASTIC_STEPS = 10


def refine(photo: np.ndarray, probability: np.ndarray, *, sigma_spatial: float = SIGMA_SPATIAL,
           sigma_luma: float = SIGMA_LUMA, sigma_chroma: float = SIGMA_CHROMA, lam: float = LAM) -> np.ndarray:
    """Refine a saliency map so its edges follow the photo's colour edges.

    photo: H x W x 3 uint8 RGB. probability: a float map in [0, 1], H x W or any other size
    (it is resized bilinearly to the photo's size first). Returns an H x W float32 map in [0, 1].
    Deterministic. Cost: see benchmarks/bench_refinement.py (tens of ms for a 300 x 400 photo).
    """
    return refine_maps(photo, [probability], sigma_spatial=sigma_spatial, sigma_luma=sigma_luma,
                       sigma_chroma=sigma_chroma, lam=lam)[0]


def refine_maps(photo: np.ndarray, probabilities: Sequence[np.ndarray], *, sigma_spatial: float = SIGMA_SPATIAL,
                sigma_luma: float = SIGMA_LUMA, sigma_chroma: float = SIGMA_CHROMA,
                lam: float = LAM) -> list[np.ndarray]:
    """`refine` for several maps of one photo (several models' predictions), building its grid once."""
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be an H x W x 3 uint8 array, got {photo.dtype} {photo.shape}")
    height, width = photo.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"photo has no pixels: {photo.shape}")
    targets = [_at_size(np.asarray(probability, dtype=np.float64), height, width).ravel()
               for probability in probabilities]
    vertex_of_pixel, vertices, (source, neighbour) = _bilateral_grid(photo, sigma_spatial, sigma_luma, sigma_chroma)
    dimensions = 5

    def splat(values: np.ndarray) -> np.ndarray:
        return np.bincount(vertex_of_pixel, weights=values, minlength=vertices)

    def blur(values: np.ndarray) -> np.ndarray:  # [1 2 1] along each of the 5 axes
        return 2 * dimensions * values + np.bincount(source, weights=values[neighbour], minlength=vertices)

    # Bistochastisation (Barron and Poole, section 3): find n with n * blur(n) = pixel counts, so the
    # smoothness term lam (diag(m) - Dn B Dn) does not favour vertices that hold many pixels.
    pixel_counts = splat(np.ones(height * width))
    n = np.ones(vertices)
    for _ in range(BISTOCHASTIC_STEPS):
        n = np.sqrt(n * pixel_counts / blur(n))
    m = n * blur(n)
    splat_confidence = CONFIDENCE * pixel_counts
    diagonal = lam * (m - 2 * dimensions * n * n) + splat_confidence
    everything = np.arange(vertices)
    system = sparse.csr_matrix(
        (np.concatenate([diagonal, -lam * n[source] * n[neighbour]]),
         (np.concatenate([everything, source]), np.concatenate([everything, neighbour]))),
        shape=(vertices, vertices))
    preconditioner = sparse.diags(1.0 / np.maximum(diagonal, 1e-5))
    refined = []
    for target in targets:
        right_side = splat(CONFIDENCE * target)
        grid_values, _ = cg(system, right_side, x0=right_side / splat_confidence, M=preconditioner,
                            maxiter=CG_STEPS, rtol=CG_TOLERANCE)
        refined.append(np.clip(grid_values[vertex_of_pixel].reshape(height, width), 0.0, 1.0).astype(np.float32))
    return refined


def _at_size(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map at height x width (bilinear, pixel centres aligned as torch's align_corners=False)."""
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"probability must be a non-empty H x W map, got shape {values.shape}")
    if values.shape != (height, width):
        rows = _bilinear_weights(values.shape[0], height)
        columns = _bilinear_weights(values.shape[1], width)
        values = rows @ values @ columns.T
    return np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)


def _bilinear_weights(source: int, target: int) -> np.ndarray:
    """target x source interpolation matrix along one axis."""
    positions = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = positions - low
    matrix = np.zeros((target, source))
    matrix[np.arange(target), low] += 1 - weight
    matrix[np.arange(target), high] += weight
    return matrix


def _bilateral_grid(photo: np.ndarray, sigma_spatial: float, sigma_luma: float,
                    sigma_chroma: float) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray]]:
    """Each pixel's vertex index, the vertex count, and the (vertex, neighbour) pairs one step apart
    along any of the five axes."""
    height, width = photo.shape[:2]
    yuv = photo.reshape(-1, 3).astype(np.float32) @ _RGB_TO_YUV.T.astype(np.float32) + \
        _YUV_OFFSET.astype(np.float32)
    columns = (np.arange(width) / sigma_spatial).astype(np.int64)
    rows = (np.arange(height) / sigma_spatial).astype(np.int64)
    coordinates = [np.tile(columns, height), np.repeat(rows, width),
                   (yuv[:, 0] / sigma_luma).astype(np.int64),
                   (yuv[:, 1] / sigma_chroma).astype(np.int64), (yuv[:, 2] / sigma_chroma).astype(np.int64)]
    # A mixed-radix key per vertex, with a spare slot on each side so a neighbour never aliases.
    spans = [int(axis.max()) + 3 for axis in coordinates]
    strides = np.cumprod([1] + spans[:-1])
    keys = sum((axis + 1) * int(stride) for axis, stride in zip(coordinates, strides))
    if strides[-1] * spans[-1] < 2 ** 31:
        keys = keys.astype(np.int32)  # sorts faster
    vertex_keys, vertex_of_pixel = np.unique(keys, return_inverse=True)
    vertex_of_pixel = vertex_of_pixel.ravel()
    vertices = len(vertex_keys)
    sources, neighbours = [], []
    for stride in strides:
        for step in (-int(stride), int(stride)):
            wanted = vertex_keys + step
            found = np.minimum(np.searchsorted(vertex_keys, wanted), vertices - 1)
            present = np.flatnonzero(vertex_keys[found] == wanted)
            sources.append(present)
            neighbours.append(found[present])
    return vertex_of_pixel, vertices, (np.concatenate(sources), np.concatenate(neighbours))
