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


@pytest.fixture
def fake_nvrtc(monkeypatch):
    """NVRTC replaced by a counter of builds (a cubin named by its options), on a CC 9.0 device."""
    builds = []

    def build(src, source, headers, opts):
        builds.append(tuple(opts))
        return b"\x7fELF" + " ".join(opts).encode()

    monkeypatch.setattr(cuda_backend, "_nvrtc_build", build)
    monkeypatch.setattr(cuda_backend, "_nvrtc_version", lambda: "nvrtc 13.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    return builds


def test_cubins_are_kept_between_processes(fake_nvrtc, tmp_path, monkeypatch):
    """A build is kept in the cache folder under a digest of what it depends on: the same source,
    headers, defines and NVRTC version read it back (no build); any of them changed builds anew; a
    damaged file is built again and replaced."""
    monkeypatch.setenv("CROSS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cuda_backend.CUBIN_CACHE_ENV, raising=False)
    assert cuda_backend.cache_dir() == tmp_path / "cubin"
    args = (0, b"__global__ void k() {}", "k.cu", ("-DA=1",), {"h.cuh": b"// h"})
    first = cuda_backend.nvrtc_cubin_of(*args)
    assert cuda_backend.nvrtc_cubin_of(*args) == first and len(fake_nvrtc) == 1
    files = list((tmp_path / "cubin").glob("*.cubin"))
    assert len(files) == 1 and files[0].read_bytes() == first
    for changed in ((0, b"__global__ void k() { }", *args[2:]), (*args[:3], ("-DA=2",), args[4]),
                    (*args[:4], {"h.cuh": b"// h2"}), (*args, True)):
        cuda_backend.nvrtc_cubin_of(*changed)
    assert len(fake_nvrtc) == 5 and len(list((tmp_path / "cubin").glob("*.cubin"))) == 5
    assert "--gpu-architecture=sm_90a" in fake_nvrtc[-1]
    monkeypatch.setattr(cuda_backend, "_nvrtc_version", lambda: "nvrtc 13.1")  # an upgrade builds anew
    cuda_backend.nvrtc_cubin_of(*args)
    assert len(fake_nvrtc) == 6
    monkeypatch.setattr(cuda_backend, "_nvrtc_version", lambda: "nvrtc 13.0")
    files[0].write_bytes(b"half a cub")  # damaged: built again, replaced
    assert cuda_backend.nvrtc_cubin_of(*args) == first and len(fake_nvrtc) == 7 and files[0].read_bytes() == first
    assert not list((tmp_path / "cubin").glob("*.tmp"))


def test_cubin_cache_can_be_turned_off(fake_nvrtc, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(cuda_backend.CUBIN_CACHE_ENV, "0")
    assert cuda_backend.cache_dir() is None
    args = (0, b"__global__ void k() {}", "k.cu", ())
    cuda_backend.nvrtc_cubin_of(*args)
    cuda_backend.nvrtc_cubin_of(*args)
    assert len(fake_nvrtc) == 2 and not (tmp_path / "cubin").exists()
    monkeypatch.delenv(cuda_backend.CUBIN_CACHE_ENV)
    monkeypatch.delenv("CROSS_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cuda_backend.cache_dir() == tmp_path / ".cache" / "cross" / "cubin"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("CROSS_CACHE_DIR", str(blocked))  # cannot be written: builds, uncached
    assert cuda_backend.nvrtc_cubin_of(*args).startswith(b"\x7fELF") and len(fake_nvrtc) == 3
