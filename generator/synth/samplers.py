"""Latent samplers (the reader): where the z of every candidate comes from.

Randomness is counter-based (DESIGN.md section 3): candidate j of shard k draws from a Philox
stream keyed on (seed, k) and started at counter j, so its latent is a pure function of
(seed, k, j), whatever the batch size, the worker count or the order shards are made in.

- `GaussianSampler`: z ~ N(0, I).
- `NeighbourhoodSampler`: z = E(I_i) + alpha * xi with i ~ U{0..N-1} over a latent bank of encoded
  real images and xi ~ N(0, I) (the paper's encoder-neighbourhood sampling; alpha = 0 uses the
  bank's latents as they are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generator.embed.bank import BankError, index_path_for, read_bank_index


class LatentBankError(ValueError):
    """A latent bank that cannot be used, with a message saying why."""


@dataclass
class LatentBatch:
    """Latents of a run of candidates and the bank row each came from (-1: none)."""

    z: np.ndarray              # float32 n x latent_dim
    source_index: np.ndarray   # int64 n


def candidate_key(seed: int, shard: int) -> np.ndarray:
    """The 128-bit Philox key of a shard: a hash of (seed, shard)."""
    if seed < 0 or shard < 0:
        raise ValueError(f"seed and shard must be non-negative, got {seed} and {shard}")
    return np.random.SeedSequence(int(seed), spawn_key=(int(shard),)).generate_state(2, np.uint64)


def _check_bank_index(path: Path, rows: int, generator_identity: str | None) -> None:
    """The embed stage's checks of the index beside the bank (a bare .npy from elsewhere has none:
    only its shape can be checked), and its generator against `generator_identity`."""
    index_path = index_path_for(path)
    if not index_path.is_file():
        return
    try:
        recorded = read_bank_index(index_path, path, rows).get("generator")
    except BankError as error:
        raise LatentBankError(str(error)) from error
    if generator_identity is not None and recorded is not None and recorded != generator_identity:
        raise LatentBankError(f"latent bank {path} was encoded by {recorded}, not by {generator_identity}; "
                              f"run the embed stage for this generator (dvc repro embed)")


def resolve_bank_path(sampler: str, bank: str | Path, bundled: str | Path | None,
                      bank_given: bool = False) -> Path | None:
    """The bank the neighbourhood sampler draws from: `bank` (the embed stage's output, or one the
    user named), else the generator's bundled bank; None for the Gaussian sampler."""
    if sampler == "gaussian":
        return None
    path = Path(bank)
    if path.is_file() or bank_given:
        return path
    if bundled is not None:
        return Path(bundled)
    raise LatentBankError(f"no latent bank: {path} does not exist and the generator ships none; run the embed "
                          f"stage (dvc repro embed), pass --bank, or use --sampler gaussian (synth.sampler)")


def candidate_rng(key: np.ndarray, counter: int) -> np.random.Generator:
    """The random stream of one candidate: the shard's key, counter block j (2**64 draws apart)."""
    return np.random.Generator(np.random.Philox(key=key, counter=[0, int(counter), 0, 0]))


class CandidateStreams:
    """`candidate_rng(key, j)` for one shard's candidates in turn, without building a generator for
    each: `at(j)` puts one Philox generator back into the state a fresh one starts in (counter
    block j, nothing buffered), so it draws the same numbers, in under half the time.  Sampling
    runs in the process that feeds the GPU, batch after batch, where every microsecond per
    candidate counts."""

    def __init__(self, key: np.ndarray) -> None:
        self._bits = np.random.Philox(key=key)
        self._generator = np.random.Generator(self._bits)
        self._key = np.asarray(self._bits.state["state"]["key"], dtype=np.uint64).copy()

    def at(self, counter: int) -> np.random.Generator:
        self._bits.state = {"bit_generator": "Philox",
                            "state": {"counter": np.array([0, int(counter), 0, 0], dtype=np.uint64), "key": self._key},
                            "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4,
                            "has_uint32": 0, "uinteger": 0}
        return self._generator


def load_latent_bank(path: str | Path, latent_dim: int, generator_identity: str | None = None) -> np.ndarray:
    """Read an N x latent_dim float32 `.npy` bank (memory-mapped, never unpickled) and check it.

    With `generator_identity`, a bank whose index names another generator is refused: its codes
    live in that generator's latent space, even when the sizes match.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentBankError(f"latent bank {path} not found (run the embed stage: dvc repro embed)")
    try:
        bank = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:   # EOFError: an empty or cut file
        raise LatentBankError(f"{path} is not a .npy array of latents: {error}") from error
    if bank.ndim != 2 or not np.issubdtype(bank.dtype, np.floating):
        raise LatentBankError(f"{path} must hold a 2-D float array N x {latent_dim}, got "
                              f"{bank.dtype} with shape {bank.shape}")
    _check_bank_index(path, bank.shape[0], generator_identity)
    if bank.shape[0] == 0:
        raise LatentBankError(f"latent bank {path} is empty (0 latents)")
    if bank.shape[1] != latent_dim:
        raise LatentBankError(f"latent bank {path} holds latents of size {bank.shape[1]}, but the "
                              f"generator's latent size is {latent_dim}")
    if not np.isfinite(bank).all():
        raise LatentBankError(f"latent bank {path} holds NaN or infinite values")
    return bank


class GaussianSampler:
    """z ~ N(0, I)."""

    kind = "gaussian"

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = int(latent_dim)

    def sample(self, seed: int, shard: int, counters: np.ndarray) -> LatentBatch:
        streams = CandidateStreams(candidate_key(seed, shard))
        z = np.empty((len(counters), self.latent_dim), dtype=np.float32)
        for row, counter in enumerate(counters):
            streams.at(counter).standard_normal(self.latent_dim, dtype=np.float32, out=z[row])
        return LatentBatch(z, np.full(len(counters), -1, dtype=np.int64))


class NeighbourhoodSampler:
    """z = bank[i] + alpha * xi, i uniform over the bank's rows, xi ~ N(0, I)."""

    kind = "neighbourhood"

    def __init__(self, bank: np.ndarray, alpha: float) -> None:
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise LatentBankError(f"a latent bank must be a non-empty N x latent_dim array, got {bank.shape}")
        self.bank = bank
        self.alpha = float(alpha)
        self.latent_dim = int(bank.shape[1])

    def sample(self, seed: int, shard: int, counters: np.ndarray) -> LatentBatch:
        streams = CandidateStreams(candidate_key(seed, shard))
        n = len(counters)
        source = np.empty(n, dtype=np.int64)
        noise = np.empty((n, self.latent_dim), dtype=np.float32)
        for row, counter in enumerate(counters):
            rng = streams.at(counter)
            source[row] = rng.integers(self.bank.shape[0])
            rng.standard_normal(self.latent_dim, dtype=np.float32, out=noise[row])
        z = np.asarray(self.bank[source], dtype=np.float32).reshape(n, self.latent_dim)
        return LatentBatch(z + np.float32(self.alpha) * noise, source)
