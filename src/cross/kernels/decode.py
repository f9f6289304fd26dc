"""The packed weight decoded back to a dense M x K matrix on the GPU.

Used by layers sparsified with ``keep_dense="decode"``: they keep no dense copy, and the token-count
buckets that fall back to cuBLAS decode the weight into a temporary first (the allocator reuses
that memory from layer to layer). From the tile formats (``decode_dense``, one program per tile):
DENSE tiles are copied, BITMAP tiles decoded as in the plan kernel (``_decode_bitmap``), EMPTY
tiles written as zeros, INDEX tiles written as zeros and then their entries scattered. From the
row format (``decode_rows``, for a layer that dropped its tiles): on a GPU with the CUDA backend
``row_decode.cu`` (a block per row builds it in shared memory and writes it whole: 30-42 us for a
11008x4096 weight on the H200, against 42-53 us from the tiles); elsewhere the Triton kernel here,
one program per row scattering each unit's stored values into a zeroed row (4.5-6x slower).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..pack.formats import TiledWeight
from ..pack.rows import RowWeight
from .triton_plan import _decode_bitmap, _index_entries


@triton.jit
def decode_dense_kernel(values_ptr, meta_ptr, kinds_ptr, voff_ptr, moff_ptr, nnz_ptr, out_ptr, M, K, stride_om, TJ,
                        TILE_M: tl.constexpr, TILE_K: tl.constexpr, HW_POPC: tl.constexpr,
                        INDEX_CHUNK: tl.constexpr):
    t = tl.program_id(0)
    ti = t // TJ
    tj = t % TJ
    kind = tl.load(kinds_ptr + t)
    offs_r = tl.arange(0, TILE_M)
    offs_c = tl.arange(0, TILE_K)
    rows = ti * TILE_M + offs_r
    cols = tj * TILE_K + offs_c
    ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    if kind == 1:  # DENSE (TileKind): the whole tile, row-major, zero-padded at the matrix edge
        voff = tl.load(voff_ptr + t)
        tile = tl.load(values_ptr + voff + offs_r[:, None] * TILE_K + offs_c[None, :])
        tl.store(ptrs, tile, mask=mask)
    elif kind == 2:  # BITMAP
        voff = tl.load(voff_ptr + t)
        moff = tl.load(moff_ptr + t)
        nnz = tl.load(nnz_ptr + t)
        tile = _decode_bitmap(values_ptr, meta_ptr, voff, moff, nnz, TILE_M, TILE_K, HW_POPC, False)
        tl.store(ptrs, tile.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # EMPTY, INDEX
        tl.store(ptrs, tl.zeros((TILE_M, TILE_K), dtype=out_ptr.dtype.element_ty), mask=mask)
        if kind == 3:  # INDEX: each entry (value, in-tile position r * TILE_K + c) over the zeros
            tl.debug_barrier()  # the zeros are written before any entry
            voff = tl.load(voff_ptr + t)
            moff = tl.load(moff_ptr + t)
            nnz = tl.load(nnz_ptr + t)
            for e0 in range(0, nnz, INDEX_CHUNK):
                valid, r, c, v = _index_entries(values_ptr, meta_ptr, voff, moff, nnz, e0, INDEX_CHUNK, TILE_K)
                r = ti * TILE_M + r
                tl.store(out_ptr + r.to(tl.int64) * stride_om + tj * TILE_K + c, v, mask=valid)


def decode_dense(tiled: TiledWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """The M x K weight of ``tiled`` (on a CUDA device, or on the CPU under Triton's interpreter),
    written into ``out`` if given (contiguous, M x K, the weight's dtype and device)."""
    g = tiled.grid
    return decode_tensors(tiled.values, tiled.meta, tiled.kinds, tiled.value_offset, tiled.meta_offset, tiled.nnz,
                          (g.rows, g.cols, *g.tile_shape), out)


def decode_tensors(values, meta, kinds, value_offset, meta_offset, nnz, sizes, out=None) -> torch.Tensor:
    """decode_dense on the buffers of a TiledWeight; sizes = (M, K, tile_m, tile_k). No checks of the
    buffers (no device sync): the caller passes a valid weight's."""
    from .launch import _interpreting

    m, k, tm, tk = (int(v) for v in sizes)
    if values.device.type != "cuda" and not _interpreting():
        raise ValueError(f"decode_dense: expected a CUDA weight (or TRITON_INTERPRET=1), got one on {values.device}")
    if out is None:
        out = torch.empty((m, k), dtype=values.dtype, device=values.device)
    elif out.shape != (m, k) or out.dtype != values.dtype or out.device != values.device or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous {values.dtype} ({m}, {k}) tensor on {values.device}")
    ti, tj = -(-m // tm), -(-k // tk)
    if ti * tj == 0:
        return out
    if values.numel() == 0:  # the kernel takes a valid address even where nothing is read
        values = torch.zeros(8, dtype=out.dtype, device=out.device)
    if meta.numel() == 0:
        meta = torch.zeros(4, dtype=torch.int32, device=out.device)
    decode_dense_kernel[(ti * tj,)](values, meta, kinds.reshape(-1), value_offset.reshape(-1), meta_offset.reshape(-1),
                                    nnz.reshape(-1), out, m, k, out.stride(0), tj,
                                    TILE_M=tm, TILE_K=tk, HW_POPC=not _interpreting(), INDEX_CHUNK=64, num_warps=4)
    return out


@triton.jit
def decode_rows_kernel(values_ptr, meta_ptr, row_ptr_ptr, out_ptr, stride_om, BLOCK_U: tl.constexpr):
    """Row r of the row format (pack/rows.py) into out[r] (int16 bits, zeroed before): per unit of 8
    entries the first column, then the 6-bit steps times the unit's scale; entries of value 0
    (padding, bridges) are not written, so a repeated column never overwrites a stored weight."""
    r = tl.program_id(0)
    start = tl.load(row_ptr_ptr + r) // 8
    end = tl.load(row_ptr_ptr + r + 1) // 8
    q = tl.arange(0, 8)
    bit = tl.where(q <= 2, 16 + 6 * (q - 1), 32 + 6 * (q - 3)).to(tl.int64)  # entry q's step (q >= 1)
    offs = tl.arange(0, BLOCK_U)
    row_out = out_ptr + r.to(tl.int64) * stride_om
    for u0 in range(start, end, BLOCK_U):
        u = u0 + offs
        live = u < end
        lo = tl.load(meta_ptr + 2 * u, mask=live, other=0).to(tl.int64) & 0xFFFFFFFF
        hi = tl.load(meta_ptr + 2 * u + 1, mask=live, other=0).to(tl.int64) & 0xFFFFFFFF
        word = lo | (hi << 32)
        scale = (lo >> 28) & 7
        step = ((word[:, None] >> bit[None, :]) & 63) << scale[:, None]
        step = tl.where(q[None, :] == 0, 0, step)
        cols = (lo & 0xFFFF)[:, None] + tl.cumsum(step, axis=1)
        vals = tl.load(values_ptr + u[:, None].to(tl.int64) * 8 + q[None, :], mask=live[:, None], other=0)
        tl.store(row_out + cols, vals, mask=live[:, None] & (vals != 0))


def decode_rows(rows: RowWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """The M x K weight of the row format ``rows`` (on a CUDA device, or on the CPU under Triton's
    interpreter), written into ``out`` if given (contiguous, M x K, the weight's dtype and device)."""
    return decode_row_tensors(rows.values, rows.meta, rows.row_ptr, [*rows.shape], rows.dtype, out)


def decode_row_tensors(values, meta, row_ptr, sizes, dtype, out=None) -> torch.Tensor:
    """decode_rows on the buffers of a RowWeight; sizes = (M, K). No checks of the buffers (no device
    sync): the caller passes a valid weight's. On a GPU with the CUDA backend, row_decode.cu (each
    row built in shared memory and written whole); else the Triton kernel above."""
    from . import cuda_backend
    from .launch import _interpreting

    m, k = (int(v) for v in sizes)
    if values.device.type != "cuda" and not _interpreting():
        raise ValueError(f"decode_rows: expected a CUDA weight (or TRITON_INTERPRET=1), got one on {values.device}")
    if out is not None and (out.shape != (m, k) or out.dtype != dtype or out.device != values.device
                            or not out.is_contiguous()):
        raise ValueError(f"out: expected a contiguous {dtype} ({m}, {k}) tensor on {values.device}")
    if out is None:
        out = torch.empty((m, k), dtype=dtype, device=values.device)
    if m * k == 0:
        return out
    if values.device.type == "cuda" and not _interpreting() and cuda_backend.available() and values.numel():
        # writes every element
        cuda_backend.row_decode(m, k, cuda_backend.Pointers((values, meta, row_ptr, out), dtype == torch.bfloat16))
        return out
    out.zero_()
    if values.numel() == 0:
        return out
    decode_rows_kernel[(m,)](values, meta, row_ptr, out.view(torch.int16), out.stride(0), BLOCK_U=32, num_warps=4)
    return out
