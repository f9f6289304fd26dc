"""Run-time compiled CUDA backend (``plan_matmul.cu``): NVRTC compiles one variant per
(tile shape, token tile, dtype) on first use; launches go through the CUDA driver API on the
current PyTorch stream (so they are captured by CUDA graphs like any other kernel).

Needs the ``cuda-python`` bindings (``cuda.bindings``, shipped with PyTorch's CUDA wheels) and an
sm_80+ GPU. Everything here is imported lazily: CPU-only installs never touch it.
"""

from __future__ import annotations

import ctypes
import functools
import os
from importlib import resources

import torch

from ..costmodel.roofline import plan_kernel_smem, plan_kernel_stages, plan_kernel_vals_bytes

NUM_THREADS = 128
#: CROSS_CUDA_STAGES=n builds every variant with n pipeline stages (tiles in flight per CTA + 1),
#: for tuning; unset, each build takes costmodel.roofline.plan_kernel_stages
STAGES_ENV = "CROSS_CUDA_STAGES"
#: extra NVRTC options for profiling builds (e.g. "-DABLATE=2"; see plan_matmul.cu), read at compile time
DEFINES_ENV = "CROSS_CUDA_DEFINES"
_SOURCE = "plan_matmul.cu"
#: one-token launches of weights whose median BITMAP tile is sparser than this (nonzeros per tile
#: element) run a build that multiplies the tiles under it on CUDA cores (plan_matmul.cu,
#: DECODE_CORES). Measured on H200 (docs/perf-notes.md, "The CUDA-core path, measured"): the build
#: beats the other at 12.5% density and ties at 15%; in it the CUDA cores beat the mma paths up to
#: ~19%, but it runs the tiles it leaves to them ~6% slower than the other build does.
CORES_MAX_DENSITY = 0.17


def cores_max_nnz(tile_m: int, tile_k: int) -> int:
    """BITMAP tiles with fewer nonzeros than this go to the CUDA cores in a one-token build."""
    return int(tile_m * tile_k * CORES_MAX_DENSITY)


def cores_build(tile_m: int, tile_k: int, block_n: int, median_bitmap_nnz: int) -> bool:
    """True if one-token launches of a weight whose median BITMAP tile has ``median_bitmap_nnz``
    nonzeros (-1: no BITMAP tile) take the CUDA-core build: it exists for 64-column tiles and
    token tiles of at most 16, and pays where most tiles run on the CUDA cores."""
    return tile_k == 64 and block_n <= 16 and 0 <= median_bitmap_nnz < cores_max_nnz(tile_m, tile_k)


def _bindings():
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:  # older cuda-python layout
        from cuda import cuda as driver  # type: ignore[no-redef]
        from cuda import nvrtc  # type: ignore[no-redef]
    return driver, nvrtc


def available() -> bool:
    """True where the CUDA backend can run: a CUDA GPU of compute capability 8.0+ and cuda-python."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        _bindings()
    except ImportError:
        return False
    return True


def _check(result, what: str):
    err = result[0]
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1] if len(result) == 2 else result[1:]


def stages(tile_m: int, tile_k: int, block_n: int, vals_bytes: int) -> int:
    forced = os.environ.get(STAGES_ENV)
    return int(forced) if forced else plan_kernel_stages((tile_m, tile_k), block_n, vals_bytes)


def smem_bytes(tile_m: int, tile_k: int, block_n: int, vals_bytes: int) -> int:
    return plan_kernel_smem((tile_m, tile_k), block_n, vals_bytes, stages(tile_m, tile_k, block_n, vals_bytes))


def vals_bytes(packed, block_n: int) -> int:
    """Room for one tile's values in a pipeline stage at token tile `block_n`
    (costmodel.roofline.plan_kernel_vals_bytes)."""
    return plan_kernel_vals_bytes(packed.plan.tile_shape, packed.has_dense or packed.tiles.shape[0] == 0,
                                  packed.max_sparse_nnz, block_n)


def _defines(tile_m: int, tile_k: int, block_n: int, is_bf16: bool, vals: int, cores: bool) -> list[str]:
    """The build's -D options; CROSS_CUDA_DEFINES comes last and replaces any macro it names."""
    ours = {"TILE_M": tile_m, "TILE_K": tile_k, "BLOCK_N": block_n, "IS_BF16": int(is_bf16),
            "STAGES": stages(tile_m, tile_k, block_n, vals), "VALS_BYTES": vals}
    if cores:
        ours.update(DECODE_CORES=1, CORES_MAX_NNZ=cores_max_nnz(tile_m, tile_k))
    extra = os.environ.get(DEFINES_ENV, "").split()
    named = {o[2:].split("=")[0] for o in extra if o.startswith("-D")}
    return [f"-D{k}={v}" for k, v in ours.items() if k not in named] + extra


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, tile_m: int, tile_k: int, block_n: int, is_bf16: bool, vals: int, cores: bool = False):
    driver, nvrtc = _bindings()
    src = resources.files(__package__).joinpath(_SOURCE).read_bytes()
    major, minor = torch.cuda.get_device_capability(device_index)
    prog = _check(nvrtc.nvrtcCreateProgram(src, _SOURCE.encode(), 0, [], []), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"-std=c++17", b"-default-device"]
    opts += [o.encode() for o in _defines(tile_m, tile_k, block_n, is_bf16, vals, cores)]
    err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if int(err) != 0:
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"NVRTC could not compile {_SOURCE}:\n{log.decode(errors='replace')}")
    size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
    cubin = b" " * size
    _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    with torch.cuda.device(device_index):
        torch.cuda.current_stream()  # makes PyTorch's primary context current for the driver API
        module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        func = _check(driver.cuModuleGetFunction(module, b"plan_matmul_cuda"), "cuModuleGetFunction")
        smem = smem_bytes(tile_m, tile_k, block_n, vals)
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        _check(driver.cuFuncSetAttribute(func, attr, smem), "cuFuncSetAttribute")
    return module, func, smem


_ARG_TYPES = (ctypes.c_void_p,) * 13 + (ctypes.c_int,) * 9


def launch(grid: int, tile_m: int, tile_k: int, block_n: int, vals: int, ptrs, ints, cores: bool = False):
    """One launch of plan_matmul_cuda: 13 device pointers and 9 ints, in kernel order; ``cores``
    picks the one-token CUDA-core build (``cores_build``)."""
    driver, _ = _bindings()
    dev = torch.cuda.current_device()
    _, func, smem = _kernel(dev, tile_m, tile_k, block_n, ptrs.is_bf16, vals, cores)
    stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
    args = tuple(ptrs.values) + tuple(int(v) for v in ints)
    _check(driver.cuLaunchKernel(func, grid, 1, 1, NUM_THREADS, 1, 1, smem, stream, (args, _ARG_TYPES), 0),
           "cuLaunchKernel")


class Pointers:
    """Device addresses of the 13 pointer arguments, in kernel order."""

    def __init__(self, tensors, is_bf16: bool):
        self.values = tuple(t.data_ptr() for t in tensors)
        self.is_bf16 = is_bf16
