"""The plan kernel for Hopper GPUs (sm_90), in Gluon: the work-list walk of ``plan_matmul`` with
every layout chosen and the memory traffic software-pipelined.

Why Gluon: in plain Triton the layout of a gather is picked from the pointer's contiguity, and a
gather's contiguity is unknown; the compiler spreads a warp's lanes over 32 rows of a tile, so
one load instruction touches many cache lines and each thread needs its own bitmap word per
element. Here a thread owns 8 consecutive columns of one row (one byte of the bitmap).

Per run of tiles (one tile-row, one kind), STAGES shared-memory stages hold each tile's raw bytes,
filled by cp.async (no registers held while loads are in flight): while tile p is decoded and
multiplied, tiles p+1 .. p+STAGES-1 are on their way, and the table entry of the next tile to
fetch is already in registers.

Bitmap decode of a tile (TILE_M x TILE_K, words w = 0..n_words-1 of 32 bits, row-major):

    rank(w, b) = prefix[w] + popc(word[w] & ((1 << b) - 1))
    W[32w + b] = packed[rank(w, b)] if bit b of word[w] else 0    (gl.gather, shared memory)

The decoded tile is the register A operand of a wgmma whose B operand (X^T) sits in shared memory;
a DENSE tile is copied to shared memory and is the A operand from there.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma
from triton.language.extra.cuda import libdevice

NUM_WARPS = gl.constexpr(4)


@gluon.jit
def _stage_table(t_smem, tiles_ptr, c0, c1, TABLE: gl.constexpr, LT: gl.constexpr):
    """Copy the table entries of tiles c0..c1-1 (at most TABLE) into shared memory, so the pipeline
    reads each entry with one shared-memory load instead of a dependent global load."""
    ti = gl.arange(0, TABLE, layout=gl.SliceLayout(1, LT))
    f = gl.arange(0, 4, layout=gl.SliceLayout(0, LT))
    ents = gl.load(tiles_ptr + 4 * (c0 + ti)[:, None] + f[None, :], mask=(c0 + ti < c1)[:, None], other=0)
    gl.thread_barrier()
    t_smem.store(ents)
    gl.thread_barrier()


@gluon.jit
def _tile_entry(t_rows, i, LE: gl.constexpr):
    """(column, value offset, meta offset, nnz) of the i-th staged tile entry."""
    ent = t_rows.index(i).load(LE)
    f = gl.arange(0, 4, layout=LE)
    col = gl.sum(gl.where(f == 0, ent, 0), axis=0)
    # offsets are stored aligned (8 values, 4 words); the arithmetic tells the compiler so
    voff = gl.sum(gl.where(f == 1, ent, 0), axis=0) // 8 * 8
    moff = gl.sum(gl.where(f == 2, ent, 0), axis=0) // 4 * 4
    nnz = gl.sum(gl.where(f == 3, ent, 0), axis=0)
    return col, voff, moff, nnz


@gluon.jit
def _issue_x(x_smem, x_ptr, stride_xn, col, K, xk, nx_idx, nx_mask, valid, TILE_K: gl.constexpr):
    """cp.async of X[n, col*TILE_K + k] into a [TILE_K, BLOCK_N] stage (k contiguous; zeros outside)."""
    k_idx = col * TILE_K + xk
    ptrs = x_ptr + nx_idx[None, :].to(gl.int64) * stride_xn + k_idx[:, None]
    async_copy.async_copy_global_to_shared(x_smem, ptrs, mask=(k_idx[:, None] < K) & nx_mask[None, :] & valid)


@gluon.jit
def _load_bitmap(values_ptr, meta_ptr, meta16_ptr, voff, moff, nnz, e, N_WORDS: gl.constexpr):
    """A BITMAP tile's raw pieces in registers, per element of the decode layout: its word, the
    word's prefix (both one load per 8 elements) and the packed values (16-byte vectors)."""
    w_idx = e // 32
    word = gl.load(meta_ptr + moff + w_idx)
    prefix = gl.load(meta16_ptr + 2 * (moff + N_WORDS) + w_idx)
    packed = gl.load(values_ptr + voff + e, mask=e < (nnz + 7) // 8 * 8, other=0.0)
    return word, prefix, packed


@gluon.jit
def _decode_regs(word, prefix, packed, bit, lowmask, TILE_M: gl.constexpr, TILE_K: gl.constexpr, L2: gl.constexpr):
    rank = prefix.to(gl.int32) + libdevice.popc(word & lowmask)
    dec = gl.where(((word >> bit) & 1) != 0, gl.gather(packed, rank, 0), 0.0)
    return gl.convert_layout(gl.reshape(dec, [TILE_M, TILE_K]), L2, assert_trivial=True)


@gluon.jit
def _issue_bitmap(v_smem, m_smem, values_ptr, meta_ptr, voff, moff, nnz, e, mi, valid, META: gl.constexpr):
    n_pad = (nnz + 7) // 8 * 8
    async_copy.async_copy_global_to_shared(v_smem, values_ptr + voff + e, mask=(e < n_pad) & valid)
    async_copy.async_copy_global_to_shared(m_smem, meta_ptr + moff + mi, mask=(mi < META) & valid)


@gluon.jit
def _decode_bitmap(v_smem, m_smem, TILE_M: gl.constexpr, TILE_K: gl.constexpr, N_WORDS: gl.constexpr,
                   L1: gl.constexpr, LB: gl.constexpr, L2: gl.constexpr, FLAT: gl.constexpr):
    words = m_smem.slice(0, N_WORDS).load(gl.SliceLayout(1, LB))
    prefix = m_smem.slice(N_WORDS, N_WORDS // 2)._reinterpret(gl.int16, [N_WORDS], FLAT).load(gl.SliceLayout(1, LB))
    packed = v_smem.load(L1)
    b = gl.arange(0, 32, layout=gl.SliceLayout(0, LB))[None, :]
    w2 = words[:, None]
    rank = prefix.to(gl.int32)[:, None] + libdevice.popc(w2 & ((1 << b) - 1))
    present = ((w2 >> b) & 1) != 0
    rank1 = gl.convert_layout(gl.reshape(rank, [TILE_M * TILE_K]), L1, assert_trivial=True)
    present1 = gl.convert_layout(gl.reshape(present, [TILE_M * TILE_K]), L1, assert_trivial=True)
    dec = gl.where(present1, gl.gather(packed, rank1, 0), 0.0)
    return gl.convert_layout(gl.reshape(dec, [TILE_M, TILE_K]), L2, assert_trivial=True)


@gluon.jit
def _store_out(y_ptr, bias_ptr, out, m_idx, n_idx, M, stride_yn, n_mask, HAS_BIAS: gl.constexpr):
    if HAS_BIAS:
        out += gl.load(bias_ptr + m_idx, mask=m_idx < M, other=0.0).to(gl.float32)[:, None]
    ptrs = y_ptr + n_idx[None, :].to(gl.int64) * stride_yn + m_idx[:, None]
    gl.store(ptrs, out.to(y_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & n_mask[None, :])


@gluon.jit
def plan_matmul_hopper(
    x_ptr, y_ptr, bias_ptr,
    values_ptr, meta_ptr, meta16_ptr, tiles_ptr, sections_ptr,
    items_ptr, row_parts_ptr, unit_ptr_ptr, unit_order_ptr,
    ws_ptr, counters_ptr,
    M, K, N, stride_xn, stride_yn, n_units, n_token_tiles, counter_stride,
    TILE_M: gl.constexpr, TILE_K: gl.constexpr, BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr, META_COPY: gl.constexpr, TABLE: gl.constexpr,
):
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    CAP: gl.constexpr = TILE_M * TILE_K
    N_WORDS: gl.constexpr = CAP // 32
    META: gl.constexpr = N_WORDS + N_WORDS // 2  # int32 words of a bitmap tile's meta (words + int16 prefixes)
    L1: gl.constexpr = gl.BlockedLayout([8], [32], [NUM_WARPS], [0])
    LB: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [NUM_WARPS, 1], [1, 0])
    L2: gl.constexpr = gl.BlockedLayout([1, 8], [256 // TILE_K, TILE_K // 8], [NUM_WARPS, 1], [1, 0])
    LM: gl.constexpr = gl.BlockedLayout([1], [32], [NUM_WARPS], [0])
    LX: gl.constexpr = gl.BlockedLayout([8, 1], [TILE_K // 8, 256 // TILE_K], [1, NUM_WARPS], [0, 1])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1], instr_shape=[16, BLOCK_N, 16])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    OUT: gl.constexpr = gl.BlockedLayout([2, 1], [32, 1], [1, NUM_WARPS], [0, 1])
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    LT: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [NUM_WARPS, 1], [1, 0])
    LE: gl.constexpr = gl.BlockedLayout([4], [32], [NUM_WARPS], [0])
    XS: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if TILE_K >= 64 else TILE_K * 2, element_bitwidth=16, rank=2, transposed=True)
    DS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([TILE_M, TILE_K], dtype)

    # a stage holds a DENSE tile (swizzled for wgmma) or, viewed flat, a BITMAP tile's packed values
    d_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_M, TILE_K], DS)
    v_smem = d_smem._reinterpret(dtype, [STAGES, CAP], FLAT)
    m_smem = gl.allocate_shared_memory(gl.int32, [STAGES, META_COPY], FLAT)
    x_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_K, BLOCK_N], XS)
    t_smem = gl.allocate_shared_memory(gl.int32, [TABLE, 4], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    t_rows = t_smem._reinterpret(gl.int32, [TABLE, 4], FLAT)  # the same bytes, indexable by entry

    pid = gl.program_id(0)
    e = gl.arange(0, CAP, layout=L1)
    bit = e % 32
    lowmask = (1 << bit) - 1
    mi = gl.arange(0, META_COPY, layout=LM)
    dr = gl.arange(0, TILE_M, layout=gl.SliceLayout(1, L2))[:, None] * TILE_K + gl.arange(0, TILE_K, layout=gl.SliceLayout(0, L2))[None, :]
    xk = gl.arange(0, TILE_K, layout=gl.SliceLayout(1, LX))
    offs_m = gl.arange(0, TILE_M, layout=gl.SliceLayout(1, OUT))
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, OUT))
    offs_nx = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, LX))
    ws_tile = offs_m[:, None] * BLOCK_N + offs_n[None, :]

    for t in range(0, n_token_tiles):
        unit = gl.load(unit_order_ptr + (t % 2) * n_units + pid)
        first_item = gl.load(unit_ptr_ptr + unit)
        last_item = gl.load(unit_ptr_ptr + unit + 1)
        nx_idx = t * BLOCK_N + offs_nx
        nx_mask = nx_idx < N
        n_idx = t * BLOCK_N + offs_n
        n_mask = n_idx < N
        for w in range(first_item, last_item):
            row = gl.load(items_ptr + 4 * w)
            start = gl.load(items_ptr + 4 * w + 1)
            stop = gl.load(items_ptr + 4 * w + 2)
            slot = gl.load(items_ptr + 4 * w + 3)
            sec_bitmap = gl.load(sections_ptr + 5 * row + 1)
            sec_index = gl.load(sections_ptr + 5 * row + 2)
            sec_empty = gl.load(sections_ptr + 5 * row + 3)
            acc = gl.zeros((TILE_M, BLOCK_N), gl.float32, layout=MMA)

            # DENSE then BITMAP runs, each in chunks of at most TABLE tiles: the chunk's table entries
            # are staged in shared memory, then tiles stream through STAGES shared-memory stages by
            # cp.async while the previous ones are decoded and multiplied.
            for c0 in range(start, gl.minimum(stop, sec_bitmap), TABLE):  # DENSE
                c1 = gl.minimum(c0 + TABLE, gl.minimum(stop, sec_bitmap))
                _stage_table(t_smem, tiles_ptr, c0, c1, TABLE, LT)
                col, voff, moff, nnz = _tile_entry(t_rows, 0, LE)
                for j in gl.static_range(STAGES - 1):
                    valid = c0 + j < c1
                    async_copy.async_copy_global_to_shared(d_smem.index(j), values_ptr + voff + dr, mask=(dr >= 0) & valid)
                    _issue_x(x_smem.index(j), x_ptr, stride_xn, col, K, xk, nx_idx, nx_mask, valid, TILE_K)
                    async_copy.commit_group()
                    col, voff, moff, nnz = _tile_entry(t_rows, gl.minimum(j + 1, c1 - c0 - 1), LE)
                for k in range(0, c1 - c0):
                    async_copy.wait_group(STAGES - 2)
                    gl.thread_barrier()
                    fence_async_shared()
                    s_fill = (k + STAGES - 1) % STAGES
                    valid = k + STAGES - 1 < c1 - c0
                    async_copy.async_copy_global_to_shared(d_smem.index(s_fill), values_ptr + voff + dr, mask=(dr >= 0) & valid)
                    _issue_x(x_smem.index(s_fill), x_ptr, stride_xn, col, K, xk, nx_idx, nx_mask, valid, TILE_K)
                    async_copy.commit_group()
                    col, voff, moff, nnz = _tile_entry(t_rows, gl.minimum(k + STAGES, c1 - c0 - 1), LE)
                    s = k % STAGES
                    acc = warpgroup_mma(d_smem.index(s), x_smem.index(s), acc)
                async_copy.wait_group(0)
                gl.thread_barrier()

            for c0 in range(gl.maximum(start, sec_bitmap), gl.minimum(stop, sec_index), TABLE):  # BITMAP
                # X streams through shared memory (it is wgmma's B operand); the tile's words,
                # prefixes and packed values go straight to registers, one tile ahead
                c1 = gl.minimum(c0 + TABLE, gl.minimum(stop, sec_index))
                _stage_table(t_smem, tiles_ptr, c0, c1, TABLE, LT)
                col, voff, moff, nnz = _tile_entry(t_rows, 0, LE)
                word, prefix, packed = _load_bitmap(values_ptr, meta_ptr, meta16_ptr, voff, moff, nnz, e, N_WORDS)
                for j in gl.static_range(STAGES - 1):
                    _issue_x(x_smem.index(j), x_ptr, stride_xn, col, K, xk, nx_idx, nx_mask, c0 + j < c1, TILE_K)
                    async_copy.commit_group()
                    col, voff, moff, nnz = _tile_entry(t_rows, gl.minimum(j + 1, c1 - c0 - 1), LE)
                    if j == 0:
                        voff_n = voff
                        moff_n = moff
                        nnz_n = nnz
                for k in range(0, c1 - c0):
                    word_n, prefix_n, packed_n = _load_bitmap(values_ptr, meta_ptr, meta16_ptr, voff_n, moff_n, nnz_n, e, N_WORDS)
                    async_copy.wait_group(STAGES - 2)
                    gl.thread_barrier()
                    fence_async_shared()
                    _issue_x(x_smem.index((k + STAGES - 1) % STAGES), x_ptr, stride_xn, col, K, xk, nx_idx, nx_mask,
                             k + STAGES - 1 < c1 - c0, TILE_K)
                    async_copy.commit_group()
                    col, voff, moff, nnz = _tile_entry(t_rows, gl.minimum(k + STAGES, c1 - c0 - 1), LE)
                    _, voff_n, moff_n, nnz_n = _tile_entry(t_rows, gl.minimum(k + 2, c1 - c0 - 1), LE)
                    w_tile = _decode_regs(word, prefix, packed, bit, lowmask, TILE_M, TILE_K, L2)
                    acc = warpgroup_mma(gl.convert_layout(w_tile, A_L), x_smem.index(k % STAGES), acc)
                    word = word_n
                    prefix = prefix_n
                    packed = packed_n
                async_copy.wait_group(0)
                gl.thread_barrier()

            for p in range(gl.maximum(start, sec_empty), stop):  # EMPTY: non-finite inputs only
                col = gl.load(tiles_ptr + 4 * p)
                k_idx = col * TILE_K + xk
                x_tile = gl.load(x_ptr + nx_idx[None, :].to(gl.int64) * stride_xn + k_idx[:, None],
                                 mask=(k_idx[:, None] < K) & nx_mask[None, :], other=0.0)
                zero = gl.sum(x_tile.to(gl.float32) * 0.0, axis=0)
                acc += gl.convert_layout(zero, gl.SliceLayout(0, MMA))[None, :]

            out = gl.convert_layout(acc, OUT)
            m_idx = row * TILE_M + offs_m
            if slot < 0:
                _store_out(y_ptr, bias_ptr, out, m_idx, n_idx, M, stride_yn, n_mask, HAS_BIAS)
            else:
                gl.store(ws_ptr + (slot * n_token_tiles + t).to(gl.int64) * (TILE_M * BLOCK_N) + ws_tile, out)
                gl.thread_barrier()
                first_slot = gl.load(row_parts_ptr + 2 * row)
                n_parts = gl.load(row_parts_ptr + 2 * row + 1)
                counter = counters_ptr + row * counter_stride + t
                arrived = gl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if arrived == n_parts - 1:
                    total = gl.zeros((TILE_M, BLOCK_N), gl.float32, layout=OUT)
                    for s in range(first_slot, first_slot + n_parts):
                        total += gl.load(ws_ptr + (s * n_token_tiles + t).to(gl.int64) * (TILE_M * BLOCK_N) + ws_tile,
                                         cache_modifier=".cg")
                    _store_out(y_ptr, bias_ptr, total, m_idx, n_idx, M, stride_yn, n_mask, HAS_BIAS)
                    gl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
