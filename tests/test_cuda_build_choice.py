"""Which CUDA build a launch takes, decided on the host: the one-token CUDA-core build only for
weights whose median BITMAP tile is under its threshold, and profiling defines replacing the
launcher's."""

import numpy as np
import pytest
import torch

from cross.kernels import cuda_backend
from cross.pack import pack
from cross.partition import make_plan
from cross.tiling import TileKind


def packed_bitmap(row_densities, rng, k=512):
    """A BITMAP-only packed weight with one 64-row band per density."""
    density = torch.tensor(row_densities).repeat_interleave(64)[:, None]
    w = torch.randn(density.shape[0], k, generator=rng) * (torch.rand(density.shape[0], k, generator=rng) < density)
    return pack(w, make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=8))


def test_median_bitmap_nnz(rng):
    packed = packed_bitmap([0.05, 0.5, 0.05], rng)
    nnz = packed.tiled.nnz.cpu().numpy()[packed.plan.kinds == TileKind.BITMAP]
    assert packed.median_bitmap_nnz == int(np.median(nnz)) and packed.median_bitmap_nnz < 0.1 * 64 * 64
    dense = torch.randn(128, 128, generator=rng)
    assert pack(dense, make_plan(dense, allowed_kinds=(TileKind.DENSE,), n_programs=4)).median_bitmap_nnz == -1


@pytest.mark.parametrize("bands, expected", [([0.05], True), ([0.05, 0.5, 0.05], True), ([0.5, 0.05, 0.5], False),
                                             ([0.5], False)])
def test_cores_build_where_most_tiles_are_sparse_enough(bands, expected, rng):
    packed = packed_bitmap(bands, rng)
    tm, tk = packed.plan.tile_shape
    assert cuda_backend.cores_build(tm, tk, 16, packed.median_bitmap_nnz) is expected
    # never for 128-column tiles, token tiles above 16, or weights without BITMAP tiles
    assert not cuda_backend.cores_build(tm, 128, 16, packed.median_bitmap_nnz)
    assert not cuda_backend.cores_build(tm, tk, 32, packed.median_bitmap_nnz)
    assert not cuda_backend.cores_build(tm, tk, 16, -1)


def test_threshold_is_strict():
    limit = cuda_backend.cores_max_nnz(64, 64)
    assert limit == int(64 * 64 * cuda_backend.CORES_MAX_DENSITY)
    assert cuda_backend.cores_build(64, 64, 16, limit - 1) and not cuda_backend.cores_build(64, 64, 16, limit)
    assert cuda_backend.cores_build(64, 64, 16, 0)  # a median of empty BITMAP tiles


def test_profiling_defines_replace_the_launchers(monkeypatch):
    monkeypatch.delenv(cuda_backend.DEFINES_ENV, raising=False)
    plain = cuda_backend._defines(64, 64, 16, True, 3072, cores=False)
    cores = cuda_backend._defines(64, 64, 16, True, 3072, cores=True)
    assert not any("DECODE_CORES" in d for d in plain)
    assert "-DDECODE_CORES=1" in cores and f"-DCORES_MAX_NNZ={cuda_backend.cores_max_nnz(64, 64)}" in cores
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, "-DDECODE_CORES=0 -DABLATE=2")
    forced = cuda_backend._defines(64, 64, 16, True, 3072, cores=True)
    assert [d for d in forced if "DECODE_CORES" in d] == ["-DDECODE_CORES=0"]
    assert forced[-2:] == ["-DDECODE_CORES=0", "-DABLATE=2"] and "-DTILE_K=64" in forced
