"""Test weights shared by the format, partition and pack tests: uniform random masks at a density,
and weights with structure (empty rows, all zero, one dense tile, non-finite entries); a seeded pruned
weight for the runtime tests of the opt-in kernels."""

import torch

STRUCTURES = ["empty_rows", "all_zero", "one_dense_tile", "nan_inf"]


def random_weight(shape, density, rng, dtype=torch.float32):
    """Uniform-random mask at `density`; kept values in +-[0.5, 1.5) (never rounding to zero);
    zeros are +0.0, so bit patterns survive a round trip."""
    values = (torch.rand(shape, generator=rng) + 0.5) * torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0)
    keep = torch.rand(shape, generator=rng) < density
    return torch.where(keep, values, torch.zeros(())).to(dtype)


def structured_weight(name, rng, dtype=torch.float32):
    if name == "empty_rows":
        w = random_weight((100, 300), 0.5, rng)
        w[[0, 1, 2, 37, 99]] = 0
    elif name == "all_zero":
        w = torch.zeros(130, 70)
    elif name == "one_dense_tile":
        w = torch.zeros(130, 70)
        w[64:128, :64] = random_weight((64, 64), 1.0, rng)
    elif name == "nan_inf":
        w = random_weight((100, 300), 0.3, rng)
        w[0, 0], w[5, 20], w[99, 299], w[50, 150] = float("nan"), float("inf"), float("-inf"), float("nan")
        w[64:96, 128:192] = 0  # a zero tile (for 32x64 tiles) next to tiles holding non-finite values
        w[70, 200] = float("inf")
    else:
        raise ValueError(name)
    return w.to(dtype)


def pruned(m, k, sparsity, dtype=torch.bfloat16, seed=3):
    """A seeded normal weight with a uniform fraction ``sparsity`` of zeros (+0.0: zeros are not stored)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) >= sparsity)
    return torch.where(w == 0, 0.0, w).to(dtype)
