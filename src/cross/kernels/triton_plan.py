"""One persistent launch that executes a Plan's work list: Y[N, M] = X[N, K] @ W^T (+ bias).

Blocked algorithm (program p of U, token tile t of BLOCK_N tokens):

    unit = unit_order[t % 2, p]                # alternated between adjacent token tiles
    for item (row, start, stop, slot) of unit:   # a run of tiles of one tile-row
        acc[TILE_M, BLOCK_N] = 0 (fp32)
        DENSE tiles:   acc += W_tile @ X_tile^T           (tensor cores)
        BITMAP tiles:  W_tile decoded in registers from its words and packed values, then tl.dot
        INDEX tiles:   acc += A @ X[:, entry columns]^T   (A: the entries' values placed in their rows,
                                                           INDEX_CHUNK entries per tl.dot); where the
                                                           X tile holds Inf or NaN, the dense tile
                                                           built from the entries instead (its zeros
                                                           and entries meet X as the dense product's)
        EMPTY tiles:   acc += sum(0 * X_tile)             (non-finite inputs reach the output as
                                                           in the dense product; nan_policy)
        slot < 0: write acc (+ bias) to Y
        else:     write acc to workspace[slot, t]; the last item of the tile-row to finish
                  (atomic counter) sums the row's slots in slot order and writes Y: the result
                  does not depend on the finishing order (deterministic).

Bitmap decode, per element (r, c) of a tile: word = words[r, c // 32], bit b = c % 32,
rank = prefix[r, c // 32] + popc(word & ((1 << b) - 1)), value = packed[rank] if bit set else 0.
The prefix over the tile's words is a scan in registers; nothing is written to shared memory
except what tl.dot's operand layout needs.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice


@triton.jit
def _popc(x, HW_POPC: tl.constexpr):
    """Population count of int32 lanes (libdevice on GPUs, bit tricks under the interpreter)."""
    if HW_POPC:
        return libdevice.popc(x)
    else:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _decode_bitmap(values_ptr, meta_ptr, voff, moff, nnz,
                   TILE_M: tl.constexpr, TILE_K: tl.constexpr, HW_POPC: tl.constexpr, GATHER: tl.constexpr):
    """A BITMAP tile decoded to a dense [TILE_M, TILE_K] register tile."""
    WORDS: tl.constexpr = TILE_K // 32
    offs_r = tl.arange(0, TILE_M)
    offs_w = tl.arange(0, WORDS)
    offs_b = tl.arange(0, 32)
    words = tl.load(meta_ptr + moff + offs_r[:, None] * WORDS + offs_w[None, :])  # [TILE_M, WORDS]
    counts = _popc(words, HW_POPC)
    flat = tl.reshape(counts, [TILE_M * WORDS])
    prefix = tl.reshape(tl.cumsum(flat, axis=0) - flat, [TILE_M, WORDS])
    word3 = words[:, :, None]
    b3 = offs_b[None, None, :]
    below = word3 & ((1 << b3) - 1)
    rank = prefix[:, :, None] + _popc(below, HW_POPC)
    present = ((word3 >> b3) & 1) != 0
    if GATHER:
        CAP: tl.constexpr = TILE_M * TILE_K
        offs_v = tl.arange(0, CAP)
        packed = tl.load(values_ptr + voff + offs_v, mask=offs_v < nnz, other=0.0)
        got = tl.gather(packed, tl.reshape(rank, [CAP]), 0)
        vals = tl.where(present, tl.reshape(got, [TILE_M, WORDS, 32]), 0.0)
    else:
        vals = tl.load(values_ptr + voff + rank, mask=present, other=0.0)
    return tl.reshape(vals, [TILE_M, TILE_K])


@triton.jit
def _index_entries(values_ptr, meta_ptr, voff, moff, nnz, e0, CHUNK: tl.constexpr, TILE_K: tl.constexpr):
    """Entries e0 .. e0 + CHUNK - 1 of an INDEX tile (int16 in-tile positions r * TILE_K + c from
    meta word ``moff`` on, values from ``voff`` on): (valid, r, c, value), value 0 past nnz."""
    e = e0 + tl.arange(0, CHUNK)
    valid = e < nnz
    pos = tl.load(meta_ptr.to(tl.pointer_type(tl.int16)) + 2 * moff + e, mask=valid, other=0).to(tl.int32)
    v = tl.load(values_ptr + voff + e, mask=valid, other=0.0)
    return valid, pos // TILE_K, pos % TILE_K, v


@triton.jit
def _index_product(acc, values_ptr, meta_ptr, x_ptr, stride_xn, voff, moff, nnz, col, offs_m, n_idx, n_mask,
                   TILE_K: tl.constexpr, CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + W_tile @ X_tile^T for an INDEX tile, its entries (value, in-tile position r * TILE_K + c)
    CHUNK at a time: A[m, e] = entry e's value where its row is m (else 0), B[e, n] = X[n, its
    column], one tl.dot per chunk. Entries past nnz read as 0 in both A and B."""
    for e0 in range(0, nnz, CHUNK):
        valid, r, c, v = _index_entries(values_ptr, meta_ptr, voff, moff, nnz, e0, CHUNK, TILE_K)
        a = tl.where(offs_m[:, None] == r[None, :], v[None, :], 0.0).to(v.dtype)
        k_idx = col * TILE_K + c
        b = tl.load(x_ptr + n_idx[None, :].to(tl.int64) * stride_xn + k_idx[:, None],
                    mask=valid[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _index_tile(values_ptr, meta_ptr, voff, moff, nnz, offs_m, offs_k,
                TILE_M: tl.constexpr, TILE_K: tl.constexpr, CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """An INDEX tile as a dense [TILE_M, TILE_K] fp32 tile: per chunk of entries, A[m, e] = value e
    where its row is m, C[e, c] = 1 where its column is c, W += A @ C (one entry per element: exact)."""
    w = tl.zeros((TILE_M, TILE_K), dtype=tl.float32)
    for e0 in range(0, nnz, CHUNK):
        valid, r, c, v = _index_entries(values_ptr, meta_ptr, voff, moff, nnz, e0, CHUNK, TILE_K)
        a = tl.where(offs_m[:, None] == r[None, :], v[None, :], 0.0).to(v.dtype)
        one = tl.where(valid[:, None] & (c[:, None] == offs_k[None, :]), 1.0, 0.0).to(v.dtype)
        w = tl.dot(a, one, w, input_precision=DOT_PRECISION)
    return w


@triton.jit
def _load_x_tile(x_ptr, stride_xn, col, K, offs_k, n_idx, n_mask, TILE_K: tl.constexpr):
    """X[n_idx, col*TILE_K + offs_k] as a [TILE_K, BLOCK_N] tile (zeros outside K and N)."""
    k_idx = col * TILE_K + offs_k
    ptrs = x_ptr + n_idx[None, :].to(tl.int64) * stride_xn + k_idx[:, None]
    return tl.load(ptrs, mask=(k_idx[:, None] < K) & n_mask[None, :], other=0.0)


@triton.jit
def plan_matmul_kernel(
    x_ptr, y_ptr, bias_ptr,
    values_ptr, meta_ptr, tiles_ptr, sections_ptr,
    items_ptr, row_parts_ptr, unit_ptr_ptr, unit_order_ptr,
    ws_ptr, counters_ptr,
    M, K, N, stride_xn, stride_yn, n_units, n_token_tiles, counter_stride,
    TILE_M: tl.constexpr, TILE_K: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, HW_POPC: tl.constexpr, DOT_PRECISION: tl.constexpr, GATHER: tl.constexpr,
    INDEX_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, TILE_M)
    offs_k = tl.arange(0, TILE_K)
    offs_n = tl.arange(0, BLOCK_N)
    for t in range(0, n_token_tiles):
        unit = tl.load(unit_order_ptr + (t % 2) * n_units + pid)
        first_item = tl.load(unit_ptr_ptr + unit)
        last_item = tl.load(unit_ptr_ptr + unit + 1)
        n_idx = t * BLOCK_N + offs_n
        n_mask = n_idx < N
        for w in range(first_item, last_item):
            row = tl.load(items_ptr + 4 * w)
            start = tl.load(items_ptr + 4 * w + 1)
            stop = tl.load(items_ptr + 4 * w + 2)
            slot = tl.load(items_ptr + 4 * w + 3)
            sec_bitmap = tl.load(sections_ptr + 5 * row + 1)
            sec_index = tl.load(sections_ptr + 5 * row + 2)
            sec_empty = tl.load(sections_ptr + 5 * row + 3)
            acc = tl.zeros((TILE_M, BLOCK_N), dtype=tl.float32)

            for p in range(start, tl.minimum(stop, sec_bitmap)):  # DENSE
                col = tl.load(tiles_ptr + 4 * p)
                voff = tl.multiple_of(tl.load(tiles_ptr + 4 * p + 1), 8)
                w_tile = tl.load(values_ptr + voff + offs_m[:, None] * TILE_K + offs_k[None, :])
                x_tile = _load_x_tile(x_ptr, stride_xn, col, K, offs_k, n_idx, n_mask, TILE_K)
                acc = tl.dot(w_tile, x_tile, acc, input_precision=DOT_PRECISION)

            for p in range(tl.maximum(start, sec_bitmap), tl.minimum(stop, sec_index)):  # BITMAP
                col = tl.load(tiles_ptr + 4 * p)
                voff = tl.multiple_of(tl.load(tiles_ptr + 4 * p + 1), 8)
                moff = tl.multiple_of(tl.load(tiles_ptr + 4 * p + 2), 4)
                nnz = tl.load(tiles_ptr + 4 * p + 3)
                w_tile = _decode_bitmap(values_ptr, meta_ptr, voff, moff, nnz, TILE_M, TILE_K, HW_POPC, GATHER)
                x_tile = _load_x_tile(x_ptr, stride_xn, col, K, offs_k, n_idx, n_mask, TILE_K)
                acc = tl.dot(w_tile, x_tile, acc, input_precision=DOT_PRECISION)

            for p in range(tl.maximum(start, sec_index), tl.minimum(stop, sec_empty)):  # INDEX
                col = tl.load(tiles_ptr + 4 * p)
                voff = tl.load(tiles_ptr + 4 * p + 1)
                moff = tl.load(tiles_ptr + 4 * p + 2)
                nnz = tl.load(tiles_ptr + 4 * p + 3)
                x_tile = _load_x_tile(x_ptr, stride_xn, col, K, offs_k, n_idx, n_mask, TILE_K)
                xf = x_tile.to(tl.float32)
                # X finite here (x - x is NaN for Inf and NaN): the entries alone are the product
                if tl.sum(tl.where(xf - xf == 0, 0, 1)) == 0:
                    acc = _index_product(acc, values_ptr, meta_ptr, x_ptr, stride_xn, voff, moff, nnz, col,
                                         offs_m, n_idx, n_mask, TILE_K, INDEX_CHUNK, DOT_PRECISION)
                else:  # Inf or NaN in X: the dense tile, so its zeros and entries meet it as the dense product's
                    w_tile = _index_tile(values_ptr, meta_ptr, voff, moff, nnz, offs_m, offs_k, TILE_M, TILE_K,
                                         INDEX_CHUNK, DOT_PRECISION)
                    acc = tl.dot(w_tile.to(x_tile.dtype), x_tile, acc, input_precision=DOT_PRECISION)

            for p in range(tl.maximum(start, sec_empty), stop):  # EMPTY: non-finite inputs only
                col = tl.load(tiles_ptr + 4 * p)
                x_tile = _load_x_tile(x_ptr, stride_xn, col, K, offs_k, n_idx, n_mask, TILE_K)
                acc += tl.sum(x_tile.to(tl.float32) * 0.0, axis=0)[None, :]

            m_idx = row * TILE_M + offs_m
            if slot < 0:
                out = acc
                if HAS_BIAS:
                    out += tl.load(bias_ptr + m_idx, mask=m_idx < M, other=0.0).to(tl.float32)[:, None]
                y_ptrs = y_ptr + n_idx[None, :].to(tl.int64) * stride_yn + m_idx[:, None]
                tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & n_mask[None, :])
            else:
                ws_tile = (offs_m[:, None] * BLOCK_N + offs_n[None, :])
                tl.store(ws_ptr + (slot * n_token_tiles + t).to(tl.int64) * (TILE_M * BLOCK_N) + ws_tile, acc)
                tl.debug_barrier()
                first_slot = tl.load(row_parts_ptr + 2 * row)
                n_parts = tl.load(row_parts_ptr + 2 * row + 1)
                counter = counters_ptr + row * counter_stride + t
                arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if arrived == n_parts - 1:
                    out = tl.zeros((TILE_M, BLOCK_N), dtype=tl.float32)
                    for s in range(first_slot, first_slot + n_parts):
                        out += tl.load(ws_ptr + (s * n_token_tiles + t).to(tl.int64) * (TILE_M * BLOCK_N) + ws_tile,
                                       cache_modifier=".cg")
                    if HAS_BIAS:
                        out += tl.load(bias_ptr + m_idx, mask=m_idx < M, other=0.0).to(tl.float32)[:, None]
                    y_ptrs = y_ptr + n_idx[None, :].to(tl.int64) * stride_yn + m_idx[:, None]
                    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & n_mask[None, :])
                    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
