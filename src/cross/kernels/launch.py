"""Launchers: check, allocate, launch the plan kernels. ``plan_matmul`` is the public entry.

Backends:
    "cuda"    CUDA kernel compiled at run time (kernels/plan_matmul.cu): sm_80+, bf16/fp16, 64x64 or
              64x128 tiles, K a multiple of 8; bitmap tiles expanded by scattering their nonzeros
    "triton"  portable Triton kernel (kernels/triton_plan.py): any CUDA GPU and Triton's
              interpreter (CPU tensors with TRITON_INTERPRET=1)
The row kernel (kernels/row_gemv.cu, ``row_launch``, up to 8 tokens per pass) runs buckets whose plan says
``kernel="rows"``, over the weight's row format; it is compiled and launched like the "cuda" backend.
The slice kernel (kernels/slice_mma.cu, ``slice_run``, up to 16 tokens per pass, sm_90+) runs buckets
whose plan says ``kernel="slices"``, over the weight's slice format; the warpgroup 2:4 kernel
(kernels/wgmma24.cu, ``wgmma24_run``, sm_90a) those that say ``kernel="wgmma24"``. The strip and
2:4 kernels (``strip_matmul``, ``sparse24_matmul``) and the gather kernel (``gather_matmul``,
kernels/gather_mma.cu: X gathered by ldmatrix at each nonzero's column) are not used by the runtime.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import NamedTuple

import torch

from .._checks import dtype_name
from ..pack.packed import MAX_LAUNCH_TOKENS, PackedBucket, PackedWeight
from ..pack.rows import RowWeight

BACKENDS = ("cuda", "triton")
CUDA_TILE_M = 64
#: INDEX-tile entries per tl.dot in the Triton kernel (the dot's K: at least 16)
INDEX_CHUNK = 32



def _rows_16_byte_aligned(x: torch.Tensor) -> torch.Tensor:
    """X as the kernels that copy its rows in 16-byte pieces read it: unit column stride, rows a
    multiple of 8 elements apart, the first 16-byte aligned; a copy where it is not (``contiguous``
    alone keeps a contiguous view at an odd offset)."""
    if x.stride(0) % 8 or x.data_ptr() % 16 or x.stride(1) != 1:
        return x.clone(memory_format=torch.contiguous_format)
    return x

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_eligible(packed: PackedWeight, device: torch.device) -> bool:
    if device.type != "cuda" or _interpreting():
        return False
    from . import cuda_backend

    return (cuda_backend.available() and packed.dtype in (torch.bfloat16, torch.float16)
            and packed.plan.tile_shape[0] == CUDA_TILE_M and packed.plan.tile_shape[1] in (64, 128)
            and packed.shape[1] % 8 == 0 and not packed.has_index)


def row_eligible(packed: PackedWeight, device: torch.device) -> bool:
    """The row kernel (kernels/row_gemv.cu) can run this weight's row format here."""
    return packed.rows is not None and row_kernel_eligible(packed.shape, packed.dtype, device)


def row_kernel_eligible(shape, dtype: torch.dtype, device: torch.device) -> bool:
    """The row kernel can run the row format of a weight of this shape and dtype on ``device``."""
    if device.type != "cuda" or _interpreting():
        return False
    from ..costmodel.roofline import row_kernel_fits
    from . import cuda_backend

    return cuda_backend.available() and row_kernel_fits(*shape, dtype_name(dtype))


def triton_eligible(packed: PackedWeight, device: torch.device) -> bool:
    return device.type == "cuda" or _interpreting()


def default_backend(packed: PackedWeight, device: torch.device) -> str | None:
    """The fastest backend that can run this packed weight on this device, or None."""
    if cuda_eligible(packed, device):
        return "cuda"
    if triton_eligible(packed, device):
        return "triton"
    return None


class KernelArgs(NamedTuple):
    """Everything one bucket's launches need, resolved once: device tensors, sizes and the backend.

    Built by ``kernel_args`` (which checks eligibility), then reused for every call, so a call does
    no host work beyond allocating its output and workspace and launching. For the "cuda" backend
    ``unit_order`` holds the blocks' heads (``cuda_heads``) instead of the plain unit order.
    """

    values: torch.Tensor
    meta: torch.Tensor
    tiles: torch.Tensor
    sections: torch.Tensor
    items: torch.Tensor
    row_parts: torch.Tensor
    unit_ptr: torch.Tensor
    unit_order: torch.Tensor
    counters: torch.Tensor
    out_features: int
    in_features: int
    tile_m: int
    tile_k: int
    block_n: int
    n_units: int
    n_slots: int
    max_token_tiles: int
    n_max: int
    vals_bytes: int  # cuda backend: room for one tile's values per pipeline stage
    cores: int  # cuda backend: 1 if one-token launches take the CUDA-core build (cuda_backend.cores_build)
    backend: str


class RowArgs(NamedTuple):
    """A row-kernel bucket's launch, resolved once: the row format, the heads every warp reads first
    (``heads``: row_heads for each launch shape, cuda_backend.row_layout) and sizes."""

    values: torch.Tensor
    meta: torch.Tensor
    row_ptr: torch.Tensor
    heads: torch.Tensor
    out_features: int
    in_features: int
    propagate: int  # 1: non-finite inputs reach the rows as in the dense product (nan_policy "propagate")


#: What a row costs the row kernel beyond its entries, in entries (a loop step, the sum's butterfly
#: and the write): blocks are balanced by entries plus this per row, so that rows without entries
#: (a weight with most rows empty) are spread over the blocks, not all given to the last one
ROW_COST_ENTRIES = 64


def row_blocks(row_ptr: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """int64 [n_blocks + 1]: block b runs rows [out[b], out[b + 1]), each block about the same
    entries plus ROW_COST_ENTRIES per row (whole rows)."""
    m = row_ptr.numel() - 1
    cost = row_ptr.to(torch.int64) + ROW_COST_ENTRIES * torch.arange(m + 1, device=row_ptr.device)
    targets = torch.arange(n_blocks + 1, device=cost.device, dtype=torch.int64) * int(cost[-1]) // n_blocks
    bounds = torch.searchsorted(cost, targets).clamp_(max=m)
    bounds[0], bounds[-1] = 0, m
    return bounds


def row_heads(row_ptr: torch.Tensor, n_blocks: int, warps: int) -> torch.Tensor:
    """int32 [n_blocks * warps, 4]: what warp w of block b reads first, in one 16-byte load: the
    block's rows [r0, r1) (row_blocks) and the run of its first row r0 + w, (start, end) in units of
    8 entries (0, 0 where the block has fewer rows than warps). So a warp's first chunk of entries
    waits on one load, not on the block's rows and then the row offsets."""
    bounds = row_blocks(row_ptr, n_blocks)
    r0, r1 = bounds[:-1, None], bounds[1:, None]
    first = r0 + torch.arange(warps, device=bounds.device)
    has = first < r1
    row = torch.where(has, first, 0)
    ptr = row_ptr.to(torch.int64)
    start = torch.where(has, ptr[row] >> 3, 0)
    end = torch.where(has, ptr[row + 1] >> 3, 0)
    heads = torch.stack([r0.expand_as(first), r1.expand_as(first), start, end], dim=-1)
    return heads.reshape(-1, 4).to(torch.int32).contiguous()


def row_kernel_args(packed: PackedWeight) -> RowArgs:
    """The row kernel's arguments for a packed weight with a row format, on its GPU."""
    if not row_eligible(packed, packed.device):
        raise ValueError("row kernel: expected a row format on an sm_80+ GPU with cuda-python, bf16/fp16, "
                         "K % 8 == 0 and K <= costmodel.roofline.ROW_MAX_K")
    return row_args(packed.rows, packed.plan.nan_policy == "propagate")


def row_args(rows: RowWeight, propagate: bool = True) -> RowArgs:
    """The row kernel's arguments for a row format on a GPU (eligibility is the caller's check)."""
    from .cuda_backend import row_layout

    layout = row_layout(rows.device.index or 0, rows.shape[1])
    heads = torch.cat([row_heads(rows.row_ptr, grid, threads // 32) for (threads, _), (_, grid) in layout.items()])
    return RowArgs(rows.values, rows.meta, rows.row_ptr, heads, rows.shape[0], rows.shape[1], int(propagate))


def row_launch(x: torch.Tensor, args: RowArgs, bias: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the row kernel, one launch per pass of up to 8 tokens
    (cuda_backend.row_passes). x: unit stride along K; out: optional [N, M], unit stride along M
    (written entirely)."""
    from . import cuda_backend

    n, k = x.shape
    y = torch.empty((n, args.out_features), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    x = _rows_16_byte_aligned(x)  # X is read as 16-byte vectors
    is_bf16 = x.dtype == torch.bfloat16
    layout = cuda_backend.row_layout(x.device.index or 0, k)
    for start, count, nt in cuda_backend.row_passes(n, k):
        first, grid = layout[cuda_backend.ROW_LAUNCHES[nt]]
        ptrs = cuda_backend.Pointers((x[start], y[start], bias, args.values, args.meta, args.row_ptr,
                                      args.heads[first]), is_bf16)
        cuda_backend.row_launch(grid, k, nt, ptrs, bool(args.propagate), count, x.stride(0), y.stride(0))
    return y


def cuda_heads(sections: torch.Tensor, items: torch.Tensor, unit_ptr: torch.Tensor,
               unit_order: torch.Tensor) -> torch.Tensor:
    """What block b of the CUDA kernel reads first for token tiles of parity p: int32 [2, U, 12] rows
    (first item, end item, row, start, stop, slot of the first item, its row's BITMAP / INDEX / EMPTY
    section starts, 0, 0, 0) of unit ``unit_order[p, b]``, so a block starts with one dependent load
    instead of four (unit order -> unit pointer -> item -> row sections)."""
    order = unit_order.long()
    ptr = unit_ptr.long()
    first, end = ptr[order], ptr[order + 1]
    heads = torch.zeros(*order.shape, 12, dtype=torch.int64, device=order.device)
    heads[..., 0], heads[..., 1] = first, end
    heads[..., 5] = -1
    has = first < end  # a unit without items has first == end, so nothing of `items` is read for it
    rec = items.long()[first[has]]
    heads[has, 2:6] = rec
    heads[has, 6:9] = sections.long()[rec[:, 0], 1:4]
    return heads.to(torch.int32).contiguous()


def kernel_args(packed: PackedWeight, bucket: PackedBucket, backend: str | None = None) -> KernelArgs:
    """Resolve and check a backend for one bucket of a packed weight (once, not per call)."""
    device = packed.device
    backend = backend or default_backend(packed, device)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} for {device}, got {backend!r}")
    if backend == "cuda" and not cuda_eligible(packed, device):
        raise ValueError("backend 'cuda': expected an sm_80+ GPU with cuda-python, bf16/fp16 weights, 64x64 or 64x128 tiles, K % 8 == 0 and no INDEX tiles")
    if backend == "triton" and not triton_eligible(packed, device):
        raise ValueError("backend 'triton': expected a CUDA device (or TRITON_INTERPRET=1)")
    values, meta = packed.tiled.values, packed.tiled.meta
    if meta.numel() == 0:  # kernels take a valid address even where nothing is read
        meta = torch.zeros(4, dtype=torch.int32, device=device)
    if values.numel() == 0:
        values = torch.zeros(8, dtype=packed.dtype, device=device)
    tm, tk = packed.plan.tile_shape
    vals = cores = 0
    unit_order = bucket.unit_order
    if backend == "cuda":
        from .cuda_backend import cores_build, vals_bytes

        vals = vals_bytes(packed, bucket.plan.block_n)
        cores = int(cores_build(tm, tk, bucket.plan.block_n, packed.median_bitmap_nnz))
        unit_order = cuda_heads(packed.row_sections, bucket.items, bucket.unit_ptr, bucket.unit_order)
    return KernelArgs(values, meta, packed.tiles, packed.row_sections, bucket.items, bucket.row_parts, bucket.unit_ptr,
                      unit_order, bucket.counters, packed.shape[0], packed.shape[1], tm, tk,
                      bucket.plan.block_n, bucket.plan.n_units, bucket.n_slots, bucket.max_token_tiles,
                      bucket.plan.n_max, vals, cores, backend)


def plan_matmul(x: torch.Tensor, packed: PackedWeight, bucket: PackedBucket, bias: torch.Tensor | None = None,
                out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the bucket's work list in one launch per 8192 tokens.

    x:    [N, K] with unit stride along K, the packed weight's dtype and device
    out:  optional [N, M] output with unit stride along M (written entirely)
    """
    n, k = x.shape
    m = packed.shape[0]
    if x.stride(1) != 1:
        raise ValueError(f"x: expected unit stride along K, got strides {tuple(x.stride())}")
    if x.dtype != packed.dtype:
        raise TypeError(f"x: expected {dtype_name(packed.dtype)}, got {dtype_name(x.dtype)}")
    if k != packed.shape[1]:
        raise ValueError(f"x: expected {packed.shape[1]} columns, got {k}")
    if out is not None and (out.shape != (n, m) or out.stride(1) != 1 or out.dtype != x.dtype):
        raise ValueError(f"out: expected {dtype_name(x.dtype)} [{n}, {m}] with unit stride along M, got {dtype_name(out.dtype)} {tuple(out.shape)}")
    if n > bucket.plan.n_max:
        raise ValueError(f"bucket: serves up to {bucket.plan.n_max} tokens, got {n} (use packed.bucket_for(n))")
    return launch(x, kernel_args(packed, bucket, backend), bias, out)


def launch(x: torch.Tensor, args: KernelArgs, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """The unchecked fast path of plan_matmul (the caller has validated x, bias and out)."""
    n = x.shape[0]
    if out is None:
        out = torch.empty((n, args.out_features), dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    if args.backend == "cuda":  # cp.async moves 16-byte chunks
        x = _rows_16_byte_aligned(x)
    for lo in range(0, n, MAX_LAUNCH_TOKENS):
        hi = min(n, lo + MAX_LAUNCH_TOKENS)
        _launch(x[lo:hi], out[lo:hi], args, bias)
    return out


def _launch(x, y, a: KernelArgs, bias):
    n, k = x.shape
    tm, tk, bn = a.tile_m, a.tile_k, a.block_n
    n_token_tiles = -(-n // bn)
    ws = torch.empty(max(1, a.n_slots * n_token_tiles * tm * bn), dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else a.values
    grid = (a.n_units,)
    common = (a.out_features, k, n, x.stride(0), y.stride(0), a.n_units, n_token_tiles, a.max_token_tiles)
    if a.backend == "cuda":
        from . import cuda_backend

        tensors = (x, y, bias_arg, a.values, a.meta, a.tiles, a.sections, a.items, a.row_parts,
                   a.unit_ptr, a.unit_order, ws, a.counters)
        ints = (*common, int(bias is not None))
        cuda_backend.launch(grid[0], tm, tk, bn, a.vals_bytes, cuda_backend.Pointers(tensors, x.dtype == torch.bfloat16), ints,
                            cores=bool(a.cores) and n == 1)
    else:
        from .triton_plan import plan_matmul_kernel

        plan_matmul_kernel[grid](
            x, y, bias_arg, a.values, a.meta, a.tiles, a.sections,
            a.items, a.row_parts, a.unit_ptr, a.unit_order, ws, a.counters,
            *common, TILE_M=tm, TILE_K=tk, BLOCK_N=bn, HAS_BIAS=bias is not None,
            HW_POPC=not _interpreting(), DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            GATHER=False, INDEX_CHUNK=INDEX_CHUNK, num_warps=4)


def _check_nt(name: str, nt) -> None:
    """strip_matmul's and sparse24_matmul's tokens per pass: 8 or 16."""
    if nt not in (8, 16):
        raise ValueError(f"{name}: nt (tokens per pass) must be 8 or 16, got {nt!r}")


def _check_pass_args(name: str, x: torch.Tensor, weight, bias, out) -> int:
    """The checks of x, bias, out and one CUDA device that the kernels' launchers share; returns N.
    Each error names the function and what it expected."""
    m, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k or x.dtype != weight.dtype:
        raise ValueError(f"{name}: expected x [N, {k}] {weight.dtype} (the {m}x{k} weight's), got "
                         f"{tuple(x.shape)} {x.dtype}")
    if k % 8:
        raise ValueError(f"{name}: K must be a multiple of 8 (16-byte copies of X), got {k}")
    if bias is not None and (bias.shape != (m,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        raise ValueError(f"{name}: expected a contiguous bias [{m}] {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    n = x.shape[0]
    if out is not None and (out.shape != (n, m) or out.dtype != x.dtype or out.stride(1) != 1):
        raise ValueError(f"{name}: expected out [{n}, {m}] {x.dtype} with unit stride along M, got "
                         f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    tensors = [t for t in (x, bias, out, weight.values, getattr(weight, "entries", None)) if t is not None]
    if not x.is_cuda or any(t.device != x.device for t in tensors):
        raise ValueError(f"{name}: x, bias, out and the weight must be on one CUDA device, got "
                         f"{[str(t.device) for t in tensors]}")
    return n


def strip_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                 nt: int = 16) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the strip kernel (kernels/strip_mma.cu) over a
    StripWeight (pack/strips.py), one launch per pass of up to ``nt`` (8 or 16) tokens. x: [N, K]
    in the weight's dtype, on a CUDA device; bias: [M] in the same dtype; out: optional [N, M] with
    unit stride along M (written entirely). Non-finite inputs give the dense product's result."""
    from ..pack.strips import smem_bytes
    from . import cuda_backend

    m, k = weight.shape
    _check_nt("strip_matmul", nt)
    n = _check_pass_args("strip_matmul", x, weight, bias, out)
    if not all(t.is_contiguous() for t in (weight.values, weight.masks, weight.chunks, weight.heads)):
        raise ValueError("strip_matmul: the StripWeight's tensors must be contiguous")
    smem = smem_bytes(k, nt, weight.warps, weight.ring, weight.depth, weight.mt)
    limit = getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_block_optin", 227 * 1024)
    if smem > limit:
        raise ValueError(f"strip_matmul: {nt} tokens of X ({k} columns) and {weight.warps} rings of {weight.ring} rows "
                         f"need {smem} bytes of shared memory per block, over this GPU's {limit}: pack with fewer "
                         f"warps or a smaller ring, or run 8 tokens per pass")
    y = torch.empty((n, m), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    x = _rows_16_byte_aligned(x)
    is_bf16 = x.dtype == torch.bfloat16
    for start in range(0, n, nt):
        count = min(nt, n - start)
        ptrs = cuda_backend.Pointers((x[start], y[start], bias, weight.values, weight.masks, weight.chunks,
                                      weight.heads), is_bf16)
        cuda_backend.strip_launch(weight.blocks, nt, weight.warps, weight.ring, weight.depth, weight.mt, smem, ptrs,
                                  m, k, count, x.stride(0), y.stride(0))
    return y


def sparse24_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                    nt: int = 16, warps: int = 16) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the 2:4 kernel (kernels/sparse24_mma.cu, the sparse tensor
    cores, and CUDA cores for the overflow) over a Sparse24Weight (pack/sparse24.py), one launch per
    pass of up to ``nt`` (8 or 16) tokens on a block of ``warps`` warps per SM. x: [N, K] in the
    weight's dtype, finite (only the stored slots are multiplied: see the kernel); bias: [M]; out:
    optional [N, M], unit stride along M."""
    from ..pack.sparse24 import smem_bytes
    from . import cuda_backend

    m, k = weight.shape
    if not isinstance(warps, int) or not 1 <= warps <= 32:
        raise ValueError(f"sparse24_matmul: warps must be an int in 1..32, got {warps!r}")
    _check_nt("sparse24_matmul", nt)
    n = _check_pass_args("sparse24_matmul", x, weight, bias, out)
    smem = smem_bytes(k, nt, warps, weight.mt)
    limit = getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_block_optin", 227 * 1024)
    if smem > limit:
        raise ValueError(f"sparse24_matmul: {nt} tokens of X ({k} columns) and {warps} warps' partial sums need "
                         f"{smem} bytes of shared memory per block, over this GPU's {limit}: run 8 tokens per pass "
                         "or fewer warps")
    y = torch.empty((n, m), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    x = _rows_16_byte_aligned(x)
    blocks = torch.cuda.get_device_properties(x.device).multi_processor_count
    strips, steps = weight.values.shape[:2]
    for start in range(0, n, nt):
        count = min(nt, n - start)
        ptrs = cuda_backend.Pointers((x[start], y[start], bias, weight.values, weight.entries),
                                     x.dtype == torch.bfloat16)
        cuda_backend.sparse24_launch(blocks, nt, warps, weight.mt, weight.overflow, smem, ptrs, m, k, count,
                                     x.stride(0), y.stride(0), strips, steps)
    return y


#: A block's fixed cost in the split's model (``wgmma24_split``), in chunks: its pipeline's fill and
#: the cluster's sum of partial sums (a model, not measured)
WGMMA_BLOCK_CHUNKS = 2
#: The splits the model chooses from: clusters of 3 fit 39 at once on the H100 (117 of 132 SMs, ncu's
#: max active clusters), so 43 of them take two waves (docs/perf-notes.md, "The warpgroup 2:4 kernel's
#: first run"); a split given to the launch may be any of 1..8, or 0: STREAM, slower at 16 tokens on
#: all three Llama shapes (docs/perf-notes.md, "STREAM measured")
WGMMA_SPLITS = (1, 2, 4, 8)
#: Splits above this one only where all their blocks start at once, one per SM: with the shallow
#: pipeline clusters of 8 are the fastest for 4096-row weights at 16 tokens (4096x11008 1.13 -> 1.27x
#: at 70%) and slower where they take more than one round (11008x4096: 34.46 us against 29.82 at 2)
#: (docs/perf-notes.md, "Clusters of 8 for 4096-row weights")
WGMMA_ONE_ROUND_SPLIT = 4


@functools.lru_cache(maxsize=4096)  # on every launch: no host work beyond a lookup
def wgmma24_split(row_blocks: int, chunks: int, sms: int, tiles: int = 1) -> int:
    """Parts of K per row block and token tile for the warpgroup 2:4 kernel (a cluster of that many
    blocks, one of WGMMA_SPLITS, each with at least 4 chunks; above WGMMA_ONE_ROUND_SPLIT only if its
    blocks are at most ``sms``): the split with the least time in a model of waves (one block per SM,
    as its shared memory allows): waves of ``row_blocks x tiles x split`` blocks on ``sms`` SMs times
    each block's chunks plus WGMMA_BLOCK_CHUNKS; ties go to the smaller split."""
    blocks = row_blocks * tiles
    options = [s for s in WGMMA_SPLITS
               if (s == 1 or chunks // s >= 4) and (s <= WGMMA_ONE_ROUND_SPLIT or blocks * s <= sms)]
    return min(options, key=lambda s: (-(-blocks * s // sms) * (chunks / s + WGMMA_BLOCK_CHUNKS), s))


class Wgmma24Args(NamedTuple):
    """A launch of the warpgroup 2:4 kernel, resolved once (``wgmma24_args``): the format's tensors and
    the launch's sizes, so that a call does no host work beyond its launch."""

    values: torch.Tensor
    counters: torch.Tensor  # split 0: int32, one per block a launch may have, zero between launches; else empty
    out_features: int
    in_features: int
    row_blocks: int
    chunks: int
    wgs: int
    mt: int
    split: int  # -1: clusters of wgmma24_split's per launch; 0: the launch's units in equal parts over the
    # SMs' resident blocks (STREAM); 1..8: clusters of that many blocks
    slots: int  # overflow word slots per chunk (0: no overflow); compressed: value word slots
    sms: int  # the GPU's SMs
    compressed: bool = False  # the compressed layout (pack/wgmma24._compressed)
    over: bool = False  # compressed: the weight has overflow (the second mma runs)
    sized: bool = False  # sized records (values start with the sizes; -DSIZED=1)
    propagate: bool = False  # Inf and NaN inputs as in the dense product (nan_policy "propagate"; -DPROPAGATE=1)
    lone: bool = False  # compressed: lone halves (pack/wgmma24.py lone=True; -DLONE=1)


def _runs_here(device: torch.device, capability_ok) -> bool:
    """A CUDA kernel of ours can run on this device: a GPU whose compute capability passes
    ``capability_ok``, with cuda-python, outside Triton's interpreter."""
    if device.type != "cuda" or _interpreting():
        return False
    from . import cuda_backend

    return cuda_backend.available() and capability_ok(torch.cuda.get_device_capability(device))


def wgmma24_capable(device: torch.device) -> bool:
    """The warpgroup 2:4 kernel can run on this device: a compute capability 9.0 GPU (wgmma.sp, sm_90a)."""
    return _runs_here(device, lambda cc: cc == (9, 0))


def wgmma24_eligible(packed: PackedWeight, device: torch.device) -> bool:
    """The warpgroup 2:4 kernel can run this weight's 2:4 format here."""
    return packed.wgmma24 is not None and wgmma24_capable(device)


def wgmma24_kernel_args(packed: PackedWeight) -> Wgmma24Args:
    """The warpgroup 2:4 kernel's arguments for a packed weight with that format, on its GPU."""
    if not wgmma24_eligible(packed, packed.device):
        raise ValueError("warpgroup 2:4 kernel: expected its format on a compute capability 9.0 GPU with cuda-python")
    return wgmma24_args(packed.wgmma24, propagate=packed.plan.nan_policy == "propagate")


def wgmma24_args(weight, split: int | None = None, propagate: bool = False) -> Wgmma24Args:
    """Check a Wgmma24Weight (pack/wgmma24.py) on its GPU and resolve its launch: ``split`` parts of K
    per row block and token tile, a cluster of that many blocks (1..8), or 0: each launch's units (the
    chunks of its row blocks and token tiles) in equal parts over the SMs' resident blocks (STREAM);
    None: STREAM for the compressed layout (faster than clusters in 3 of 4 cells measured at 16 tokens,
    docs/perf-notes.md), else ``wgmma24_split`` of each launch's token tiles. ``propagate``: Inf and NaN
    inputs reach the outputs as in the dense product (the PROPAGATE build; not with the XPRE or A_SMEM
    tuning builds); else only the stored slots' products do."""
    from ..pack.wgmma24 import NTOKS, a_smem_order, smem_bytes
    from .cuda_backend import WGMMA24_MAX_PER_SM, reduce_area, wgmma24_a_smem, wgmma24_xpre, wgmma24_xtma

    if weight.device.type != "cuda":
        raise ValueError(f"wgmma24_matmul: expected a Wgmma24Weight on a CUDA device, got one on {weight.device}")
    if torch.cuda.get_device_capability(weight.device) != (9, 0):
        raise ValueError("wgmma24_matmul: needs a compute capability 9.0 GPU (Hopper's wgmma.sp), got "
                         f"{torch.cuda.get_device_capability(weight.device)}")
    if weight.shape[1] % 8:
        raise ValueError(f"wgmma24_matmul: K must be a multiple of 8 (16-byte copies of X), got {weight.shape[1]}")
    if not weight.values.is_contiguous():
        raise ValueError("wgmma24_matmul: the Wgmma24Weight's values must be contiguous")
    row_blocks, chunks = weight.records.shape[:2]
    if split is not None and (isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= 8):
        raise ValueError(f"wgmma24_matmul: split must be an int in 0..8 (0: STREAM; or None: by launch), got {split!r}")
    if propagate and (wgmma24_xpre() or wgmma24_a_smem()):
        raise ValueError("wgmma24_matmul: Inf and NaN inputs as in the dense product (propagate) need the default "
                         "X copy; CROSS_CUDA_DEFINES asks for -DXPRE=1 or -DA_SMEM=1 (tuning builds)")
    limit = getattr(torch.cuda.get_device_properties(weight.device), "shared_memory_per_block_optin", 227 * 1024)
    most = max(smem_bytes(weight.wgs, weight.mt, weight.slots, t, compressed=weight.compressed,
                          x_align=wgmma24_xtma(), lone=weight.lone) for t in NTOKS)
    if most > limit:
        raise ValueError(f"wgmma24_matmul: a block needs up to {most} bytes of shared memory, the device has {limit}")
    sms = torch.cuda.get_device_properties(weight.device).multi_processor_count
    if split is None and weight.compressed:
        split = 0
    # only a STREAM launch arrives on counters (the clusters sum through shared memory)
    counters = torch.zeros(sms * WGMMA24_MAX_PER_SM if split == 0 else 0, dtype=torch.int32, device=weight.device)
    if split == 0:  # the reductions' zeroed area now (whichever end a launch takes), not inside a graph capture
        reduce_area(torch.cuda.current_device() if weight.device.index is None else weight.device.index)
    values = a_smem_order(weight) if wgmma24_a_smem() else weight.values  # an A_SMEM build's records
    return Wgmma24Args(values, counters, weight.shape[0], weight.shape[1], row_blocks, chunks, weight.wgs,
                       weight.mt, -1 if split is None else split, weight.slots, sms, weight.compressed,
                       weight.overflow, weight.sized, bool(propagate), weight.lone)


def wgmma24_run(x: torch.Tensor, args: Wgmma24Args, bias: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the warpgroup 2:4 kernel, one launch: blocks of 16, 32 or 64
    tokens where N is at most that (``token_tile``), else tiles of 128. x: [N, K] in the weight's dtype
    on its GPU; bias: contiguous [M]; out: optional [N, M], unit stride along M (written entirely). No
    checks beyond X's layout (``wgmma24_matmul`` checks)."""
    from ..pack.wgmma24 import token_tile, x_stages
    from . import cuda_backend

    n = x.shape[0]
    y = torch.empty((n, args.out_features), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    x = _rows_16_byte_aligned(x)
    ntok = token_tile(n)
    split = args.split if args.split >= 0 else wgmma24_split(args.row_blocks, args.chunks, args.sms, -(-n // ntok))
    xk = x_stages(x, ntok, args.chunks) if cuda_backend.wgmma24_xpre() else x  # an XPRE build's X
    ptrs = cuda_backend.Pointers((xk, y, bias, args.values, args.counters), x.dtype == torch.bfloat16)
    cuda_backend.wgmma24_launch(args.row_blocks, ntok, args.wgs, args.mt, split, args.slots, ptrs,
                                args.out_features, args.in_features, n, x.stride(0), y.stride(0), args.chunks,
                                args.sms, args.compressed, args.over, args.sized, args.propagate, args.lone)
    return y


def wgmma24_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                   split: int | None = None, propagate: bool = False) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the warpgroup 2:4 kernel (kernels/wgmma24.cu: Hopper's sparse
    warpgroup mma, a second one for the overflow) over a Wgmma24Weight (pack/wgmma24.py), 16-128 tokens
    per block. x: [N, K] in the weight's dtype; bias: [M];
    out: optional [N, M], unit stride along M; ``split``: parts of K per row block, a cluster of that
    many blocks (1..8), or 0: the launch's chunks in equal parts over the SMs; default: 0 for the
    compressed layout, else ``wgmma24_split`` of the launch's token tiles (wgmma24_args). Needs compute
    capability 9.0 (sm_90a). ``propagate``: Inf and NaN in X give the dense product's NaN and Inf (a build
    that checks X in every unit, and recomputes a part whose X has one); without it only the stored slots
    are multiplied, and an Inf or NaN input may give other non-finite outputs than the dense product's."""
    _check_pass_args("wgmma24_matmul", x, weight, bias, out)
    return wgmma24_run(x, wgmma24_args(weight, split, propagate), bias, out)


class SliceArgs(NamedTuple):
    """A slice-kernel launch, resolved once (``slice_args``): the format's tensors, each block's
    n-tiles (``ranges``) and the launch's sizes, so that a call does no host work beyond its launches."""

    heads: torch.Tensor
    values: torch.Tensor
    ranges: torch.Tensor
    out_features: int
    in_features: int
    tiles: int
    pieces: int
    warps: int
    blocks: int
    rt: int  # n-tiles per round of a block (its partial sums and heads in shared memory)
    smem: int
    producers: int
    elements: int = 0  # 1: the element format (pack/slices.py), the kernel's ELEMS build


def slice_capable(device: torch.device) -> bool:
    """The slice kernel can run on this device: an sm_90+ GPU (bulk copies, mbarrier waits)."""
    return _runs_here(device, lambda cc: cc[0] >= 9)


def slice_eligible(packed: PackedWeight, device: torch.device) -> bool:
    """The slice kernel can run this weight's slice format here."""
    return packed.slices is not None and slice_capable(device)


def slice_kernel_args(packed: PackedWeight) -> SliceArgs:
    """The slice kernel's arguments for a packed weight with a slice format, on its GPU."""
    if not slice_eligible(packed, packed.device):
        raise ValueError("slice kernel: expected a slice format on an sm_90+ GPU with cuda-python")
    return slice_args(packed.slices)


def _check_slice_weight(weight, producers: int) -> None:
    """The slice kernel's checks of a SliceWeight and the producer warps that need no device."""
    from . import cuda_backend

    if not isinstance(producers, int) or not 1 <= producers <= cuda_backend.SLICE_MAX_PRODUCERS:
        raise ValueError(f"slice kernel: producers must be an int in 1..{cuda_backend.SLICE_MAX_PRODUCERS}, "
                         f"got {producers!r}")
    if weight.warps + producers > 32:
        raise ValueError(f"slice kernel: a block of the weight's {weight.warps} warps and {producers} producer warps "
                         f"exceeds 1,024 threads: pack the weight for at most {32 - producers} warps")
    if weight.sp != 8:
        raise ValueError(f"slice kernel: the kernel takes 8 steps per piece (SliceWeight.from_dense(max_steps=8)), "
                         f"got a weight of {weight.sp}")
    if weight.shape[1] % 8:
        raise ValueError(f"slice kernel: K must be a multiple of 8 (8-byte loads of X), got {weight.shape[1]}")
    if not (weight.heads.is_contiguous() and weight.values.is_contiguous()):
        raise ValueError("slice kernel: the SliceWeight's tensors must be contiguous")


def slice_args(weight, producers: int = 1) -> SliceArgs:
    """Check a SliceWeight (pack/slices.py) on its GPU and resolve its launches: a block per SM of
    the weight's warps and ``producers`` (1-4) warps that copy the weight for them, each block's
    n-tiles (``SliceWeight.ranges``) and as many n-tiles per round as shared memory holds."""
    from ..pack.slices import smem_bytes

    _check_slice_weight(weight, producers)
    if weight.device.type != "cuda":
        raise ValueError(f"slice kernel: expected a SliceWeight on a CUDA device, got one on {weight.device}")
    props = torch.cuda.get_device_properties(weight.device)
    limit = getattr(props, "shared_memory_per_block_optin", 227 * 1024)

    def smem(rt):
        return smem_bytes(weight.warps, rt, weight.elements)

    if smem(1) > limit:
        raise ValueError(f"slice kernel: a block of {weight.warps} warps needs {smem(1)} bytes of "
                         f"shared memory, the device has {limit}: pack the weight for fewer warps")
    blocks = props.multi_processor_count
    ranges, most = weight.ranges(blocks)
    rt = max(1, min(most, (limit - smem(0)) // (smem(1) - smem(0))))
    return SliceArgs(weight.heads, weight.values, ranges, weight.shape[0], weight.shape[1], weight.tiles,
                     weight.pieces, weight.warps, blocks, rt, smem(rt), producers, int(weight.elements))


def slice_run(x: torch.Tensor, args: SliceArgs, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the slice kernel, one launch per pass of up to 16 tokens.
    x: [N, K] in the weight's dtype on its GPU; bias: contiguous [M]; out: optional [N, M], unit
    stride along M (written entirely). No checks beyond X's layout (``slice_matmul`` checks)."""
    from . import cuda_backend

    n = x.shape[0]
    y = torch.empty((n, args.out_features), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    x = _rows_16_byte_aligned(x)
    for start in range(0, n, 16):
        count = min(16, n - start)
        ptrs = cuda_backend.Pointers((x[start], y[start], bias, args.heads, args.values, args.ranges),
                                     x.dtype == torch.bfloat16)
        cuda_backend.slice_launch(args.blocks, args.warps, args.smem, ptrs, args.out_features, args.in_features,
                                  count, x.stride(0), y.stride(0), args.tiles, args.pieces, args.rt, args.producers,
                                  bool(args.elements))
    return y


def slice_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None,
                 out: torch.Tensor | None = None, producers: int = 1) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the slice kernel (kernels/slice_mma.cu) over a SliceWeight
    (pack/slices.py) of 8 steps per piece, one launch per pass of up to 16 tokens, a block per SM of
    the weight's warps and ``producers`` (1-4) warps that copy the weight for them. x: [N, K] in the
    weight's dtype; bias: [M]; out: optional [N, M], unit stride along M. Non-finite inputs give the
    dense product's result."""
    _check_slice_weight(weight, producers)
    _check_pass_args("slice_matmul", x, weight, bias, out)
    return slice_run(x, slice_args(weight, producers), bias, out)


# ---------------------------------------------------------------------- the gather kernel
def gather_blocks(group_seg: torch.Tensor, blocks: int) -> tuple[torch.Tensor, int]:
    """The groups of each of ``blocks`` blocks, contiguous and balanced by segments (a group counts a
    quarter segment more, so that empty groups spread): int32 [blocks + 1] boundaries on the CPU, and
    the most groups a block takes."""
    segs = (group_seg[1:] - group_seg[:-1]).cpu().to(torch.float64) + 0.25
    cum = torch.cumsum(segs, 0)
    bounds = torch.searchsorted(cum, cum[-1] * torch.arange(1, blocks) / blocks, right=True)
    edges = torch.cat([torch.zeros(1, dtype=torch.int64), bounds, torch.tensor([segs.numel()])])
    return edges.to(torch.int32), int((edges[1:] - edges[:-1]).max())


_GATHER_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _gather_table(weight, blocks: int) -> tuple[torch.Tensor, int]:
    """The kernel's block table on the weight's device: per block int4 (g0, g1, first segment, end
    segment); and the most groups a block takes. Made once per weight and block count (kept while the
    weight lives)."""
    tables = _GATHER_TABLES.setdefault(weight, {})
    if blocks not in tables:
        edges, most = gather_blocks(weight.group_seg, blocks)
        seg = weight.group_seg.cpu()[edges.to(torch.int64)]
        table = torch.stack([edges[:-1], edges[1:], seg[:-1], seg[1:]], 1).to(torch.int32).contiguous()
        tables[blocks] = (table.to(weight.device), most)
    return tables[blocks]


def gather_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                  warps: int | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the gather kernel (kernels/gather_mma.cu) over a GatherWeight
    (pack/gather.py), one launch per pass of up to 16 tokens (8 or fewer: the 8-token build), a block per
    SM. x: [N, K] in the weight's dtype on its GPU; bias: contiguous [M]; out: optional [N, M], unit
    stride along M (written entirely). For finite inputs (the format's note on Inf and NaN)."""
    from . import cuda_backend

    m, k = weight.shape
    n = _check_pass_args("gather_matmul", x, weight, bias, out)
    warps = cuda_backend.GATHER_WARPS if warps is None else warps
    if isinstance(warps, bool) or not isinstance(warps, int) or not 1 <= warps <= 32:
        raise ValueError(f"gather_matmul: warps must be an int in 1..32, got {warps!r}")
    props = torch.cuda.get_device_properties(x.device)
    blocks, limit = props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", 227 * 1024)
    table, most = _gather_table(weight, blocks)
    y = torch.empty((n, m), dtype=x.dtype, device=x.device) if out is None else out
    x = _rows_16_byte_aligned(x)  # the kernel reads X in 4-byte words
    for start in range(0, n, 16):
        count = min(16, n - start)
        nt = 8 if count <= 8 else 16
        smem = 2 * nt * k + 512 * most
        if smem > limit:
            raise ValueError(f"gather_matmul: {nt} tokens of X ({k} columns) and {most} groups' sums need {smem} bytes "
                             f"of shared memory per block, over this GPU's {limit}")
        ptrs = cuda_backend.Pointers((x[start], y[start], bias, weight.records, weight.segs, table),
                                     x.dtype == torch.bfloat16)
        cuda_backend.gather_launch(blocks, warps, nt, smem, ptrs, m, k, count, x.stride(0), y.stride(0))
    return y
