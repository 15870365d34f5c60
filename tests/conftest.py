"""Shared test fixtures: the real data sets beside the checkout, and small generators."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """The real ECSSD and MSRA1000 folders; tests that need them skip when they are absent."""
    if not (SHARED_DATASETS / "ECSSD" / "images").is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture
def one_torch_thread():
    """One torch thread for small models: a second thread gains nothing and, on a shared busy CPU,
    costs much; the previous setting is restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def testing_generator():
    """The analytic test generator at a small resolution (64 x 64, latent size 16)."""
    from generator.backends.testing import ShapesGenerator
    return ShapesGenerator(latent_dim=16, resolution=64)
