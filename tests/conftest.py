"""Test tiers: pure CPU for the planning stages, Triton's interpreter for kernels at tiny shapes
when no GPU is present, and `-m gpu` tests on a real GPU.

TRITON_INTERPRET is read when @triton.jit decorates, so it is set here, before any kernel module
is imported.
"""

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh generator per test: inputs are new random draws every run. The seed is printed, so a
    failing draw can be replayed with CROSS_TEST_SEED."""
    seed = int(os.environ.get("CROSS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"CROSS_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)
