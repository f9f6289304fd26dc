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

from ..costmodel.roofline import (ROW_LAUNCH, ROW_MAX_K, SM_SHARED_BYTES, plan_kernel_smem, plan_kernel_stages,
                                  plan_kernel_vals_bytes, row_smem)
from ..costmodel.roofline import row_passes as _row_passes

NUM_THREADS = 128
#: CROSS_CUDA_STAGES=n builds every variant with n pipeline stages (tiles in flight per CTA + 1),
#: for tuning; unset, each build takes costmodel.roofline.plan_kernel_stages
STAGES_ENV = "CROSS_CUDA_STAGES"
#: extra NVRTC options for profiling builds (e.g. "-DABLATE=2"; see plan_matmul.cu), read at compile time
DEFINES_ENV = "CROSS_CUDA_DEFINES"
#: CROSS_CUBIN_CACHE=0 keeps no built cubin between processes (``cache_dir``)
CUBIN_CACHE_ENV = "CROSS_CUBIN_CACHE"
#: The 2:4 kernel's STREAM launches are cooperative (cuLaunchCooperativeKernel: every block resident at
#: once, as STREAM's end needs, or an error instead of a hang where other kernels hold SMs); measured at
#: no cost and captured in CUDA graphs (docs/perf-notes.md, "What the sums step is, and END_RED,
#: measured"); CROSS_STREAM_COOPERATIVE=0 launches them by cuLaunchKernel
COOPERATIVE_ENV = "CROSS_STREAM_COOPERATIVE"
#: The 2:4 kernel's STREAM launches of up to 64 tokens sum an output split across blocks by fp32
#: reductions at L2, its last block writing it (wgmma24.cu's END_RED: the compiled decoder's 2:4 launches
#: 7% faster; docs/perf-notes.md, "END_RED in the runtime, the default: the compiled decoder, measured"):
#: not bitwise reproducible (the sums' order is the blocks' arrivals'),
#: and the launches of one GPU share one zeroed area (``reduce_area``), so they must not run on two
#: streams at once. Off where torch.use_deterministic_algorithms is on, or with CROSS_STREAM_REDUCE=0:
#: the blocks then wait for each other and sum in block order, the same bits every run
REDUCE_ENV = "CROSS_STREAM_REDUCE"
_SOURCE = "plan_matmul.cu"
_HEADERS = ("dtype.cuh", "async.cuh", "strip_sum.cuh", "mma.cuh", "wgmma.cuh")  # what the sources #include, handed to NVRTC by name
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


def _launch(func, grid: int, threads: int, smem: int, ptrs, ints, grid_y: int = 1, cooperative: bool = False,
            objects: tuple = ()) -> None:
    """cuLaunchKernel of ``func`` on PyTorch's current stream: ``grid`` x ``grid_y`` blocks of
    ``threads``, ``smem`` bytes of dynamic shared memory, the arguments ``ptrs`` (Pointers: device
    pointers), then ``ints`` (C ints), then ``objects`` (cuda-python objects passed by value, a
    CUtensorMap say), in kernel order; ``cooperative``: cuLaunchCooperativeKernel (all blocks resident
    at once, or the launch fails)."""
    driver, _ = _bindings()
    stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
    args = tuple(ptrs.values) + tuple(int(v) for v in ints) + tuple(objects)
    types = (ctypes.c_void_p,) * len(ptrs.values) + (ctypes.c_int,) * len(ints) + (None,) * len(objects)
    if cooperative:
        _check(driver.cuLaunchCooperativeKernel(func, grid, grid_y, 1, threads, 1, 1, smem, stream, (args, types)),
               "cuLaunchCooperativeKernel")
        return
    _check(driver.cuLaunchKernel(func, grid, grid_y, 1, threads, 1, 1, smem, stream, (args, types), 0),
           "cuLaunchKernel")


def stream_cooperative() -> bool:
    """Whether STREAM launches are cooperative (``COOPERATIVE_ENV``: '1' or unset on, '0' off)."""
    value = os.environ.get(COOPERATIVE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{COOPERATIVE_ENV}: expected 0 or 1, got {value!r}")
    return value == "1"


def stream_reduce() -> bool:
    """Whether STREAM launches of up to ``REDUCE_MAX_TOKENS`` tokens sum split outputs by fp32 reductions
    (``REDUCE_ENV``: '1' on, '0' off; unset: on unless torch's deterministic algorithms are)."""
    value = os.environ.get(REDUCE_ENV)
    if value is None:
        return not torch.are_deterministic_algorithms_enabled()
    if value not in ("0", "1"):
        raise ValueError(f"{REDUCE_ENV}: expected 0 or 1, got {value!r}")
    return value == "1"


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


def nvrtc_cubin(device_index: int, source: str, defines: tuple[str, ...], arch_specific: bool = False) -> bytes:
    """The cubin NVRTC builds of ``source`` (a file of this package, with its headers) for the device
    with ``defines`` (also what profiling scripts disassemble); ``arch_specific`` as in
    ``nvrtc_cubin_of``."""
    files = resources.files(__package__)
    headers = {h: files.joinpath(h).read_bytes() for h in _HEADERS}
    return nvrtc_cubin_of(device_index, files.joinpath(source).read_bytes(), source, defines, headers, arch_specific)


def nvrtc_cubin_of(device_index: int, src: bytes, source: str, defines: tuple[str, ...],
                   headers: dict[str, bytes] | None = None, arch_specific: bool = False) -> bytes:
    """The cubin NVRTC builds of the CUDA source text ``src`` (named ``source`` in its messages, with
    ``headers`` by name) for the device with ``defines``; ``arch_specific``: for that architecture
    only (sm_90a: what wgmma needs). Kept in the cubin cache (``cache_dir``) between processes."""
    major, minor = torch.cuda.get_device_capability(device_index)
    arch = f"sm_{major}{minor}{'a' if arch_specific else ''}"
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "-default-device", *defines]
    headers = dict(headers or {})
    folder = cache_dir()
    path = None if folder is None else folder / f"{_build_digest(src, headers, opts)}.cubin"
    if path is not None and path.is_file():
        cubin = path.read_bytes()
        if cubin.startswith(_ELF):  # else a damaged file: built again and replaced
            return cubin
    cubin = _nvrtc_build(src, source, headers, opts)
    if path is not None:
        _cache_write(path, cubin)
    return cubin


_ELF = b"\x7fELF"


def cache_dir():
    """Where built cubins are kept between processes (a pathlib.Path): the ``cubin`` folder of
    cross's cache folder (``CROSS_CACHE_DIR``, else ``~/.cache/cross``: costmodel.profile.cache_dir),
    or None with CROSS_CUBIN_CACHE=0. A file's name is a digest of everything its build depends on
    (source and headers, options and architecture, NVRTC's version), so an edit or an upgrade builds
    anew; delete the folder to clear it."""
    from ..costmodel.profile import cache_dir as cache_root

    return None if os.environ.get(CUBIN_CACHE_ENV, "1") == "0" else cache_root() / "cubin"


def _build_digest(src: bytes, headers: dict[str, bytes], opts: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in (_nvrtc_version().encode(), src, *(n.encode() + b"\0" + t for n, t in sorted(headers.items())),
                 "\0".join(opts).encode()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def _cache_write(path, cubin: bytes) -> None:
    """Write ``cubin`` to ``path`` whole (a temporary file renamed: concurrent processes never read a
    part); a folder that cannot be written leaves the build uncached."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(cubin)
        os.replace(tmp, path)
    except OSError:
        pass


def _nvrtc_version() -> str:
    _, nvrtc = _bindings()
    major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return f"nvrtc {major}.{minor}"


def _nvrtc_build(src: bytes, source: str, headers: dict[str, bytes], opts: list[str]) -> bytes:
    """NVRTC's cubin of ``src`` with ``headers`` and the options ``opts``."""
    _, nvrtc = _bindings()
    names, texts = list(headers), list(headers.values())
    prog = _check(nvrtc.nvrtcCreateProgram(src, source.encode(), len(texts), texts, [h.encode() for h in names]),
                  "nvrtcCreateProgram")
    err, = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
    if int(err) != 0:
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"NVRTC could not compile {source}:\n{log.decode(errors='replace')}")
    size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
    cubin = b" " * size
    _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    return cubin


@functools.lru_cache(maxsize=None)
def _compile(device_index: int, source: str, name: str, defines: tuple[str, ...], smem: int,
             arch_specific: bool = False):
    """(module, function) of kernel ``name`` in ``source``, compiled by NVRTC for the device with
    ``defines``, allowed ``smem`` bytes of dynamic shared memory."""
    return load_kernel(device_index, nvrtc_cubin(device_index, source, defines, arch_specific), name, smem)


def load_kernel(device_index: int, cubin: bytes, name: str, smem: int):
    """(module, function) of kernel ``name`` in ``cubin``, loaded on the device in PyTorch's context,
    allowed ``smem`` bytes of dynamic shared memory."""
    driver, _ = _bindings()
    with torch.cuda.device(device_index):
        torch.cuda.current_stream()  # makes PyTorch's primary context current for the driver API
        module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        func = _check(driver.cuModuleGetFunction(module, name.encode()), "cuModuleGetFunction")
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        _check(driver.cuFuncSetAttribute(func, attr, smem), "cuFuncSetAttribute")
    return module, func


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, tile_m: int, tile_k: int, block_n: int, is_bf16: bool, vals: int, cores: bool = False):
    smem = smem_bytes(tile_m, tile_k, block_n, vals)
    defines = tuple(_defines(tile_m, tile_k, block_n, is_bf16, vals, cores))
    module, func = _compile(device_index, _SOURCE, "plan_matmul_cuda", defines, smem)
    return module, func, smem


def launch(grid: int, tile_m: int, tile_k: int, block_n: int, vals: int, ptrs, ints, cores: bool = False):
    """One launch of plan_matmul_cuda: 13 device pointers and 9 ints, in kernel order; ``cores``
    picks the one-token CUDA-core build (``cores_build``)."""
    _, func, smem = _kernel(torch.cuda.current_device(), tile_m, tile_k, block_n, ptrs.is_bf16, vals, cores)
    _launch(func, grid, NUM_THREADS, smem, ptrs, ints)


class Pointers:
    """Device addresses of a kernel's pointer arguments, in kernel order (None: a null pointer)."""

    def __init__(self, tensors, is_bf16: bool):
        self.values = tuple(0 if t is None else t.data_ptr() for t in tensors)
        self.is_bf16 = is_bf16

    @classmethod
    def of(cls, *addresses: int, is_bf16: bool) -> "Pointers":
        """Pointers of device addresses already taken."""
        p = cls((), is_bf16)
        p.values = addresses
        return p


# ---------------------------------------------------------------------- the row kernel
_ROW_SOURCE = "row_gemv.cu"
#: CROSS_ROW_GRID replaces the row kernel's launches, for tuning (read at import): "threads,blocks_per_sm"
#: for every build, or per build (tokens per pass) "8=1024,1;4=512,2"
ROW_GRID_ENV = "CROSS_ROW_GRID"


def _row_launch_table(spec: str) -> dict[int, tuple[int, int]]:
    table = dict(ROW_LAUNCH)
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        nt, _, shape = part.rpartition("=")
        threads, blocks = (int(v) for v in shape.split(","))
        for key in ([int(nt)] if nt else table):
            table[key] = (threads, blocks)
    return table


#: threads per block and blocks per SM of each build (tokens per pass); each block reads X into its
#: shared memory once
ROW_LAUNCHES = _row_launch_table(os.environ.get(ROW_GRID_ENV, ""))


@functools.lru_cache(maxsize=1024)
def row_passes(n_tokens: int, k: int) -> tuple[tuple[int, int, int], ...]:
    """(first token, tokens, build's tokens per pass) of each launch over n_tokens (roofline.row_passes)."""
    return tuple(_row_passes(n_tokens, k, ROW_LAUNCHES))


@functools.lru_cache(maxsize=256)
def row_layout(device_index: int, k: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Per launch shape (threads, blocks per SM): (its first entry in the heads table, its grid).
    The grid is blocks per SM on every SM, fewer where X's shared memory would not let them all
    run at once (row_passes runs only builds whose blocks fit)."""
    props = torch.cuda.get_device_properties(device_index)
    per_sm = getattr(props, "shared_memory_per_multiprocessor", SM_SHARED_BYTES)
    out, offset = {}, 0
    for nt, (threads, blocks) in sorted(ROW_LAUNCHES.items()):
        if (threads, blocks) in out:
            continue
        fit = per_sm // (row_smem(k, nt) + 1024)  # 1 KB per block reserved by the driver
        grid = props.multi_processor_count * max(1, min(blocks, fit))
        out[(threads, blocks)] = (offset, grid)
        offset += grid * (threads // 32)
    return out


@functools.lru_cache(maxsize=None)
def _row_kernel(device_index: int, is_bf16: bool, nt: int):
    defines = [f"-DIS_BF16={int(is_bf16)}", f"-DTHREADS={ROW_LAUNCHES[nt][0]}", f"-DNT={nt}"]
    extra = os.environ.get(DEFINES_ENV, "").split()  # profiling builds (e.g. -DUNROLL=2)
    # the largest X this build takes (row_passes keeps each pass within it); 227 KB is sm_90's
    # limit per block, static shared memory included
    smem = min(227 * 1024 - 256, max(row_smem(ROW_MAX_K, nt), row_smem(ROW_MAX_K, 1)))
    _, func = _compile(device_index, _ROW_SOURCE, "row_gemv", tuple(defines + extra), smem)
    return func


def row_launch(grid: int, k: int, nt: int, ptrs, propagate: bool, n_tok: int, ldx: int, ldy: int):
    """One launch of row_gemv built for nt tokens per pass: pointers (x, y, bias or 0, values, meta,
    row_ptr, heads of this launch shape), K, and the pass's n_tok <= nt tokens with X's and Y's row strides."""
    func = _row_kernel(torch.cuda.current_device(), ptrs.is_bf16, nt)
    _launch(func, grid, ROW_LAUNCHES[nt][0], row_smem(k, nt), ptrs, (k, propagate, n_tok, ldx, ldy))


# ---------------------------------------------------------------------- the row format's decode
_DECODE_SOURCE = "row_decode.cu"
_DECODE_THREADS = 256  # row_decode.cu's THREADS


@functools.lru_cache(maxsize=None)
def _decode_kernel(device_index: int):
    from ..pack.rows import MAX_COLS

    _, func = _compile(device_index, _DECODE_SOURCE, "row_decode", (), 2 * MAX_COLS)
    return func


def row_decode(rows: int, k: int, ptrs) -> None:
    """One launch of row_decode: pointers (values, meta, row_ptr, out), a block per row."""
    func = _decode_kernel(torch.cuda.current_device())
    _launch(func, rows, _DECODE_THREADS, -(-k // 8) * 16, ptrs, (k,))


# ---------------------------------------------------------------------- the strip kernel
_STRIP_SOURCE = "strip_mma.cu"


@functools.lru_cache(maxsize=None)
def _strip_kernel(device_index: int, is_bf16: bool, nt: int, warps: int, ring: int, depth: int, mt: int, smem: int):
    defines = [f"-DIS_BF16={int(is_bf16)}", f"-DNT={nt}", f"-DWARPS={warps}", f"-DRING={ring}", f"-DDEPTH={depth}",
               f"-DMT={mt}"]
    extra = os.environ.get(DEFINES_ENV, "").split()
    _, func = _compile(device_index, _STRIP_SOURCE, "strip_mma", tuple(defines + extra), smem)
    return func


def strip_launch(blocks: int, nt: int, warps: int, ring: int, depth: int, mt: int, smem: int, ptrs, m: int, k: int,
                 n_tok: int, ldx: int, ldy: int) -> None:
    """One launch of strip_mma: pointers (x, y, bias or 0, values, masks, chunks, heads), M, K and
    the pass's n_tok <= nt tokens with X's and Y's row strides."""
    func = _strip_kernel(torch.cuda.current_device(), ptrs.is_bf16, nt, warps, ring, depth, mt, smem)
    _launch(func, blocks, warps * 32, smem, ptrs, (m, k, n_tok, ldx, ldy))


# ---------------------------------------------------------------------- the 2:4 kernel
_SPARSE24_SOURCE = "sparse24_mma.cu"


@functools.lru_cache(maxsize=None)
def _sparse24_kernel(device_index: int, is_bf16: bool, nt: int, warps: int, mt: int, overflow: bool, smem: int):
    defines = [f"-DIS_BF16={int(is_bf16)}", f"-DNT={nt}", f"-DWARPS={warps}", f"-DMT={mt}", f"-DOVERFLOW={int(overflow)}"]
    extra = os.environ.get(DEFINES_ENV, "").split()
    _, func = _compile(device_index, _SPARSE24_SOURCE, "sparse24_mma", tuple(defines + extra), smem)
    return func


def sparse24_launch(blocks: int, nt: int, warps: int, mt: int, overflow: bool, smem: int, ptrs, m: int, k: int,
                    n_tok: int, ldx: int, ldy: int, strips: int, steps: int) -> None:
    """One launch of sparse24_mma: pointers (x, y, bias or 0, values, entries), M, K, the pass's
    n_tok <= nt tokens with X's and Y's row strides, and the weight's strips and steps (64 columns);
    ``overflow``: the weight has overflow entries (the build with head words and the CUDA-core loop)."""
    func = _sparse24_kernel(torch.cuda.current_device(), ptrs.is_bf16, nt, warps, mt, overflow, smem)
    _launch(func, blocks, warps * 32, smem, ptrs, (m, k, n_tok, ldx, ldy, strips, steps))


# ---------------------------------------------------------------------- the warpgroup 2:4 kernel
_WGMMA24_SOURCE = "wgmma24.cu"


def wgmma24_defines(is_bf16: bool, wgs: int, mt: int, split: int, slots: int, ntok: int = 128,
                    compressed: bool = False, over: bool = False, sized: bool = False,
                    lone: bool = False) -> tuple[str, ...]:
    """NVRTC defines of a wgmma24 build of ``ntok`` tokens per block over a weight of ``slots`` overflow
    word slots per chunk (0: no overflow; ``compressed``: the compressed layout's value word slots,
    ``over``: its weight has overflow, ``sized``: its sized records, ``lone``: its lone halves; its pipeline's stages:
    pack/wgmma24.stages), K split by
    ``split`` (0: the launch's units in equal parts, STREAM; 1..8: clusters of that many blocks), with
    CROSS_CUDA_DEFINES' extras last."""
    from ..pack.wgmma24 import stages

    reserve = _a_smem_reserve(wgs, mt, slots, compressed)
    defines = [f"-DIS_BF16={int(is_bf16)}", f"-DWGS={wgs}", f"-DMT={mt}", f"-DSTREAM={int(split == 0)}",
               f"-DSPLIT={max(split, 1)}", f"-DSLOTS={slots}", f"-DNTOK={ntok}",
               f"-DSTAGES={stages(wgs, mt, slots, ntok, compressed, reserve, wgmma24_xtma(), lone)}",
               f"-DXTMA={int(wgmma24_xtma())}"]
    if compressed:
        defines += ["-DCOMPRESSED=1", f"-DOVER={int(over)}"] + (["-DLONE=1"] if lone else [])
    if sized:
        defines.append("-DSIZED=1")
    return tuple(defines + os.environ.get(DEFINES_ENV, "").split())


def _define(defines, name: str) -> str | None:
    """The value of the last ``-D<name>=`` among ``defines`` (a build's CROSS_CUDA_DEFINES come last
    and win), None where there is none."""
    values = [d.split("=", 1)[1] for d in defines if d.startswith(f"-D{name}=")]
    return values[-1] if values else None


def defined_stages(defines: tuple[str, ...]) -> int:
    """The pipeline's stages a wgmma24 build's defines give it (a tuning build's -DSTAGES wins)."""
    return int(_define(defines, "STAGES"))


@functools.lru_cache(maxsize=None)
def _wgmma24_kernel(device_index: int, is_bf16: bool, wgs: int, mt: int, split: int, slots: int, ntok: int,
                    compressed: bool = False, over: bool = False, sized: bool = False, reduce: bool = False,
                    propagate: bool = False, lone: bool = False):
    """(function, dynamic shared memory, blocks per SM) of a wgmma24 build (``reduce``: STREAM's end by
    fp32 reductions, END_RED; ``propagate``: non-finite inputs as in the dense product, PROPAGATE;
    ``lone``: the compressed layout's lone halves, LONE)."""
    from ..pack.wgmma24 import smem_bytes

    defines = wgmma24_defines(is_bf16, wgs, mt, split, slots, ntok, compressed, over, sized, lone) + (
        ("-DEND_RED=1",) if reduce else ()) + (("-DPROPAGATE=1",) if propagate else ())
    reserve = _a_smem_reserve(wgs, mt, slots, compressed)
    smem = smem_bytes(wgs, mt, slots, ntok, defined_stages(defines), compressed, reserve, wgmma24_xtma(), lone)
    _, func = _compile(device_index, _WGMMA24_SOURCE, "wgmma24", defines, smem, arch_specific=True)
    return func, smem, resident_blocks(func, wgs * 128, smem)


@functools.lru_cache(maxsize=None)  # read once, as the builds' defines are (_wgmma24_kernel): not per launch
def wgmma24_xpre() -> bool:
    """Whether CROSS_CUDA_DEFINES makes the wgmma24 builds XPRE ones (-DXPRE=1: X handed to the kernel
    laid out as its stages hold it, pack/wgmma24.x_stages, a unit's part by one bulk copy)."""
    return _define(os.environ.get(DEFINES_ENV, "").split(), "XPRE") == "1"


@functools.lru_cache(maxsize=None)  # read once, as wgmma24_xpre
def wgmma24_xtma() -> bool:
    """Whether the wgmma24 builds are XTMA ones (-DXTMA=1: X copied from its rows by the tensor copy
    engine through X's tensor map, ``x_tensor_map``, a launch's last argument): the default, unless
    CROSS_CUDA_DEFINES says -DXTMA=0 (X by 16-byte copies of every thread) or asks for another way to
    copy X (-DXPRE=1) or for A_SMEM (-DA_SMEM=1), whose builds keep the 16-byte copies. -DXTMA=1 with
    -DXPRE=1 is refused (two ways to copy X)."""
    defines = os.environ.get(DEFINES_ENV, "").split()
    xtma, xpre = _define(defines, "XTMA"), _define(defines, "XPRE") == "1"
    if xtma == "1" and xpre:
        raise ValueError(f"{DEFINES_ENV}: -DXTMA=1 and -DXPRE=1 are two ways to copy X; choose one")
    if xtma is not None:
        return xtma == "1"
    return not xpre and _define(defines, "A_SMEM") != "1"


def wgmma24_defines_changed() -> None:
    """Forget the wgmma24 builds and the build flags read from CROSS_CUDA_DEFINES (XPRE, XTMA, A_SMEM):
    after the tuning scripts and tests change it."""
    for cache in (_wgmma24_kernel, wgmma24_xpre, wgmma24_xtma, wgmma24_a_smem):
        cache.cache_clear()


def x_map_geometry(n_tok: int, k: int, ldx: int, ntok: int) -> tuple[tuple[int, int], tuple[int], tuple[int, int]]:
    """X's tensor map for an XTMA build (cuTensorMapEncodeTiled; dimensions innermost first): the
    tensor's dimensions (K columns, N tokens), its row stride in bytes, and the box a copy brings (64
    columns, a chunk, by ``ntok`` tokens, a token tile). Past the tensor a copy writes zeros."""
    if ldx % 8 or ldx < k:
        raise ValueError(f"X's tensor map: expected a row stride >= K and a multiple of 8 elements, got {ldx} (K {k})")
    return (k, n_tok), (2 * ldx,), (64, ntok)


@functools.lru_cache(maxsize=256)
def x_tensor_map(x_ptr: int, is_bf16: bool, n_tok: int, k: int, ldx: int, ntok: int):
    """The CUtensorMap of X (``x_map_geometry``; 16-bit elements, 128-byte swizzle, zeros past the tensor),
    encoded by the driver once per address and geometry (the map holds no reference to the memory: the
    same bytes describe whatever tensor lies there later; a CUDA graph keeps its launch's copy)."""
    driver, _ = _bindings()
    dims, strides, box = x_map_geometry(n_tok, k, ldx, ntok)
    kind = driver.CUtensorMapDataType
    return _check(driver.cuTensorMapEncodeTiled(
        kind.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if is_bf16 else kind.CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, x_ptr,
        [driver.cuuint64_t(v) for v in dims], [driver.cuuint64_t(v) for v in strides],
        [driver.cuuint32_t(v) for v in box], [driver.cuuint32_t(1)] * 2,
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        driver.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), "cuTensorMapEncodeTiled")


@functools.lru_cache(maxsize=None)  # read once, as wgmma24_xpre
def wgmma24_a_smem() -> bool:
    """Whether CROSS_CUDA_DEFINES makes the wgmma24 builds A_SMEM ones (-DA_SMEM=1: the mmas read A from
    shared memory by descriptors, the slots layout's records in pack/wgmma24.a_smem_order; a tuning build)."""
    return _define(os.environ.get(DEFINES_ENV, "").split(), "A_SMEM") == "1"


def _a_smem_reserve(wgs: int, mt: int, slots: int, compressed: bool) -> int:
    """Shared memory past the stages of an A_SMEM build (pack/wgmma24.a_smem_reserve), 0 in other builds."""
    from ..pack.wgmma24 import a_smem_reserve

    if not wgmma24_a_smem():
        return 0
    if compressed:
        raise ValueError("-DA_SMEM=1 reads the slots layout: not a build of the compressed layout")
    return a_smem_reserve(wgs, mt, slots)


def resident_blocks(func, threads: int, smem: int) -> int:
    """Blocks of ``threads`` threads and ``smem`` bytes of dynamic shared memory that an SM holds at once
    (the driver's occupancy: registers, shared memory, the build's launch bounds)."""
    driver, _ = _bindings()
    return int(_check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(func, threads, smem),
                      "cuOccupancyMaxActiveBlocksPerMultiprocessor"))


def wgmma24_stream_blocks(units: int, sms: int, per_sm: int) -> int:
    """Blocks of a STREAM launch of wgmma24 over ``units`` units (chunks of an output): every SM's
    resident blocks (``per_sm``, at most WGMMA24_MAX_PER_SM), each with at least WGMMA24_MIN_UNITS units
    (where there are that many), and (units + 1) x blocks under 2^32 (the kernel's 32-bit unit arithmetic)."""
    return max(1, min(sms * min(per_sm, WGMMA24_MAX_PER_SM), units // WGMMA24_MIN_UNITS, (2**32 - 1) // (units + 1)))


#: A STREAM launch's blocks per SM, at most (its counters: that many per SM), and units per block, at
#: least (a block's pipeline fill and its outputs' ends cost about as much as a unit's work each)
WGMMA24_MAX_PER_SM, WGMMA24_MIN_UNITS = 4, 4


#: STREAM launches of up to this many tokens per block take END_RED builds. 128 builds too (wgmma24.cu
#: reads the output back in pieces there) but is a tuning setting: on the H100 it takes 6-7 us off a 128-token
#: STREAM launch, which still loses to cuBLAS (46.9 against 37.9 us on 11008x4096 at 90%; docs/perf-notes.md,
#: "Lone halves and 128 tokens, measured (H100)"), and the runtime offers the kernel up to 16 tokens.
#: benchmarks/wgmma24_floor.py --reduce-tokens 128 raises it before the area is allocated
REDUCE_MAX_TOKENS = 64


_REDUCE_AREAS: dict[int, torch.Tensor] = {}


def stream_reduces(split: int, ntok: int) -> bool:
    """Whether a launch of ``split`` (0: STREAM) at ``ntok`` tokens a block takes the END_RED build: STREAM
    launches of up to REDUCE_MAX_TOKENS tokens where ``stream_reduce``."""
    return not split and ntok <= REDUCE_MAX_TOKENS and stream_reduce()


def reduce_area(device_index: int) -> torch.Tensor:
    """The zeroed fp32 area of a GPU's END_RED launches: a slot of R x NTOK floats per block, for the
    largest launch (every SM's WGMMA24_MAX_PER_SM blocks of 256 rows and REDUCE_MAX_TOKENS tokens; 35 MB
    on 132 SMs); each launch leaves it zero. Allocated once and kept, so CUDA graphs that captured its
    address stay valid; not inside a capture (its zeros would only be written at the graph's replay):
    ``wgmma24_args`` allocates it when the weight's launches are resolved."""
    area = _REDUCE_AREAS.get(device_index)
    if area is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"STREAM's fp32 reductions: their area of cuda:{device_index} must be allocated "
                               "before a CUDA graph capture (build the weights' launch arguments first)")
        sms = torch.cuda.get_device_properties(device_index).multi_processor_count
        area = _REDUCE_AREAS[device_index] = torch.zeros(sms * WGMMA24_MAX_PER_SM * 256 * REDUCE_MAX_TOKENS,
                                                         dtype=torch.float32, device=torch.device("cuda", device_index))
    return area


def workspace(floats: int) -> torch.Tensor:
    """fp32 scratch of a launch on the current GPU, from PyTorch's caching allocator (kept for the
    stream's later work once the launch's tensor is dropped)."""
    return torch.empty(floats, dtype=torch.float32, device=torch.cuda.current_device())


def wgmma24_launch(row_blocks: int, ntok: int, wgs: int, mt: int, split: int, slots: int, ptrs, m: int, k: int,
                   n_tok: int, ldx: int, ldy: int, chunks: int, sms: int, compressed: bool = False,
                   over: bool = False, sized: bool = False, propagate: bool = False, lone: bool = False) -> None:
    """One launch of wgmma24 (sm_90a) of ``ntok`` tokens per block over a weight of ``slots`` overflow
    word slots per chunk (``compressed``: the compressed layout's, ``over``: with overflow, ``sized``:
    sized records, ``values`` starting with their sizes): pointers
    (x, y, bias or 0, values, counters), M, K, N, X's and Y's row strides and the weight's chunks (64
    columns). ``split`` 0: the launch's units in equal parts over the resident blocks of ``sms`` SMs
    (STREAM; a workspace of two slots of partial sums per block, allocated here, or with
    ``stream_reduce`` up to REDUCE_MAX_TOKENS tokens the GPU's ``reduce_area``, and the weight's
    ``counters``); 1..8: a cluster of ``split`` blocks (the parts of K) per row block and token tile of
    N, a row block's token tiles adjacent (wgmma24.cu). ``propagate``: the PROPAGATE build (Inf and NaN
    inputs reach the outputs as in the dense product); ``lone``: the compressed layout's lone halves."""
    device = torch.cuda.current_device()
    reduce = stream_reduces(split, ntok)
    func, smem, per_sm = _wgmma24_kernel(device, ptrs.is_bf16, wgs, mt, split, slots, ntok, compressed, over,
                                         sized, reduce, propagate, lone)
    x, y, bias, values, counters = ptrs.values
    outputs = row_blocks * -(-n_tok // ntok)
    ws = None
    if split:
        grid = outputs * split
    else:
        grid = wgmma24_stream_blocks(outputs * chunks, sms, per_sm)
        ws = reduce_area(device) if reduce else workspace(2 * grid * 64 * wgs * mt * ntok)
        if reduce and grid * 64 * wgs * mt * ntok > ws.numel():  # an area allocated for fewer tokens
            raise RuntimeError(f"STREAM's fp32 reductions: {grid} blocks of {64 * wgs * mt} rows x {ntok} tokens "
                               f"need {grid * 64 * wgs * mt * ntok} floats, the area of cuda:{device} holds "
                               f"{ws.numel()} (REDUCE_MAX_TOKENS raised after it was allocated)")
    xmap = (x_tensor_map(x, ptrs.is_bf16, n_tok, k, ldx, ntok),) if wgmma24_xtma() else ()
    _launch(func, grid, wgs * 128, smem,
            Pointers.of(x, y, bias, values, 0 if ws is None else ws.data_ptr(), counters, is_bf16=ptrs.is_bf16),
            (m, k, n_tok, ldx, ldy, chunks), cooperative=not split and stream_cooperative(), objects=xmap)


# ---------------------------------------------------------------------- the slice kernel
_SLICE_SOURCE = "slice_mma.cu"


def slice_defines(is_bf16: bool, warps: int, elements: bool = False) -> tuple[str, ...]:
    """NVRTC defines of a slice_mma build (``elements``: the element format's), with
    CROSS_CUDA_DEFINES' extras."""
    defines = [f"-DIS_BF16={int(is_bf16)}", f"-DWARPS={warps}", f"-DELEMS={int(elements)}"]
    return tuple(defines + os.environ.get(DEFINES_ENV, "").split())


@functools.lru_cache(maxsize=None)
def _slice_kernel(device_index: int, is_bf16: bool, warps: int, elements: bool = False):
    """One build per dtype, warps and format, allowed the device's shared memory per block (slice_mma
    has no static shared memory): a launch's n-tiles per round, and so its shared memory, vary with
    the weight's shape."""
    defines = slice_defines(is_bf16, warps, elements)
    props = torch.cuda.get_device_properties(device_index)
    _, func = _compile(device_index, _SLICE_SOURCE, "slice_mma", defines,
                       getattr(props, "shared_memory_per_block_optin", 227 * 1024))
    return func


SLICE_MAX_PRODUCERS = 4  # slice_mma.cu's MAX_PRODUCERS


def slice_launch(blocks: int, warps: int, smem: int, ptrs, m: int, k: int, n_tok: int, ldx: int, ldy: int,
                 tiles: int, pieces: int, rt: int, producers: int = 1, elements: bool = False) -> None:
    """One launch of slice_mma: pointers (x, y, bias or 0, heads, values, ranges), M, K, the pass's
    n_tok <= 16 tokens with X's and Y's row strides, the weight's n-tiles and pieces per warp, and
    the n-tiles per round ``rt``; blocks of ``warps`` consumer warps and ``producers`` producer warps;
    ``elements``: the weight is in the element format (the ELEMS build)."""
    func = _slice_kernel(torch.cuda.current_device(), ptrs.is_bf16, warps, bool(elements))
    _launch(func, blocks, (warps + producers) * 32, smem, ptrs, (m, k, n_tok, ldx, ldy, tiles, pieces, rt))


# ---------------------------------------------------------------------- the gather kernel
_GATHER_SOURCE = "gather_mma.cu"
#: gather_mma.cu's default WARPS: one block of 1,024 threads per SM (X at 16 tokens is 32 bytes a column)
GATHER_WARPS = 32


def gather_defines(is_bf16: bool, warps: int, nt: int) -> tuple[str, ...]:
    """NVRTC defines of a gather_mma build (tokens per pass nt: 8 or 16), with CROSS_CUDA_DEFINES' extras."""
    return tuple([f"-DIS_BF16={int(is_bf16)}", f"-DWARPS={warps}", f"-DNT={nt}"] + os.environ.get(DEFINES_ENV, "").split())


@functools.lru_cache(maxsize=None)
def _gather_kernel(device_index: int, is_bf16: bool, warps: int, nt: int):
    """One build per dtype, warps and tokens per pass (8 or 16), allowed the device's shared memory per
    block (X's 2 nt bytes a column and 512 per group of the block: the launch's)."""
    defines = gather_defines(is_bf16, warps, nt)
    props = torch.cuda.get_device_properties(device_index)
    _, func = _compile(device_index, _GATHER_SOURCE, "gather_mma", defines,
                       getattr(props, "shared_memory_per_block_optin", 227 * 1024))
    return func


def gather_launch(blocks: int, warps: int, nt: int, smem: int, ptrs, m: int, k: int, n_tok: int, ldx: int,
                  ldy: int) -> None:
    """One launch of gather_mma's nt-token build (8 or 16): pointers (x, y, bias or 0, records, segs,
    the block table), M, K, the pass's n_tok <= nt tokens with X's and Y's row strides."""
    func = _gather_kernel(torch.cuda.current_device(), ptrs.is_bf16, warps, nt)
    _launch(func, blocks, warps * 32, smem, ptrs, (m, k, n_tok, ldx, ldy))


def write_sass(folder, source: str, defines: tuple[str, ...]) -> str:
    """Profiling aid: the cubin NVRTC builds of ``source`` with ``defines`` on the current device, and its
    SASS (cuobjdump from Triton's NVIDIA backend), written to ``folder`` as <stem>.cubin and <stem>.sass;
    returns cuobjdump's resource usage (registers, shared memory) of the build."""
    import subprocess
    from pathlib import Path

    import triton

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(source).stem
    cubin = out / f"{stem}.cubin"
    cubin.write_bytes(nvrtc_cubin(torch.cuda.current_device(), source, defines))
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    (out / f"{stem}.sass").write_text(subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True,
                                                     text=True).stdout)
    return subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True).stdout.strip()
