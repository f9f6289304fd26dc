// The row kernel: y[t, r] = sum over the nonzeros w[r, c] of row r of w[r, c] * x[t, c] (+ bias[r])
// for NT tokens t at a time, on CUDA cores, over the row format (pack/rows.py): 3 bytes per entry,
// the 16-bit value and a share of a 64-bit column word per 8 entries (the first column, then 6-bit
// steps of the unit's scale), each row's run a multiple of 8 entries. A lane's unit is 8 entries of
// one run: a 16-byte load of values and an 8-byte load of the column word. So every lane of a warp
// does useful work on every step (no bitmap word to walk, no lane waiting on a fuller one): at one
// token ~7 instructions per nonzero (loads, the column's step: shift, mask, multiply-add; one
// shared-memory load of X, the value's unpack and one FMA), at NT tokens ~2 NT + 5 (one shared-memory
// load of the NT inputs of the column, NT unpacks, NT FMAs). Most units hold one class of columns
// (column mod 16), and a run's unit i the class i mod 16, so the 8 lanes of a quarter warp load X from
// 8 different classes at every step, no two in one bank (at random columns ~2.5 times the wavefronts).
//
// Per block (THREADS threads, persistent over the rows r0 .. r1 of its heads, balanced by entries and
// rows on the host: launch.row_heads): X is read once into shared memory: as fp32 [K] at NT = 1, as
// the 16-bit inputs [K][NT] (the NT tokens of a column side by side) above. Warp w takes rows
// r0 + w, r0 + w + WARPS, ...; its head (one 16-byte load) holds r0, r1 and its first row's run, so
// its first chunk waits on one round trip; lane j of the warp holds the run bounds of the warp's
// j-th row (read 32 rows at a time), so moving to the next row costs two shuffles, not a dependent
// load. The next chunk's loads (32 lanes x UNROLL units) are issued before the current chunk's FMAs,
// and the first chunk's before X is read, so each warp keeps a chunk in flight while it computes. A
// row's sum is a fixed butterfly over the lanes' partial sums: deterministic, whatever the timing.
//
// Non-finite inputs: entries of value 0 (padding, and bridges over steps longer than 63) point at
// real columns, where 0 x Inf would be NaN, so a block whose X has a non-finite input (one
// block-wide vote; nothing is paid when X is finite) runs the checking loop, which skips them. With
// propagate != 0 the dense product gives NaN in y[t, r] where a zero of row r meets an Inf or NaN of
// token t: when token t has n_bad[t] non-finite entries, y[t, r] is NaN unless row r's nonzeros
// cover all n_bad[t] columns (then its own products carry the Inf or NaN, as in the dense sum).
//
// Compile-time parameters (NVRTC -D): IS_BF16 (1: bfloat16, 0: float16), NT (tokens per pass: 1,
// 2, 4 or 8), THREADS (a multiple of 32), UNROLL (units per lane per chunk). Requirements checked by
// the launcher: K % 8 == 0, K <= 65536, x 16-byte aligned with a row stride a multiple of 8,
// 1 <= n_tok <= NT, dynamic shared memory row_smem(K, NT) bytes.

#ifndef THREADS
#define THREADS 512
#endif
#ifndef NT
#define NT 1
#endif
#ifndef ROW_ABLATE
#define ROW_ABLATE 0  // profiling builds only (results wrong): 1 exit at once, 2 exit once X is staged
#endif
#ifndef ROW_X_FIRST
// X's first piece read before the head arrives, and the row bounds kept in entries until used, so
// that nothing waits on them before X is staged: 0.1-0.6 us faster at 1-2 tokens, 0.3-1.5 us slower
// at 8 (docs/perf-notes.md, "X before the head"), so only the 1- and 2-token builds
#define ROW_X_FIRST (NT <= 2)
#endif
#define BOUNDS_SHIFT_LOAD (ROW_X_FIRST ? 0 : 3)  // row_ptr (entries) >> 3: units
#define BOUNDS_SHIFT_USE (ROW_X_FIRST ? 3 : 0)
#ifndef UNROLL
#define UNROLL (NT >= 8 ? 1 : 2)  // 8 tokens: more work per entry, registers for the sums
#endif
#define WARPS (THREADS / 32)
#if NT != 1 && NT != 2 && NT != 4 && NT != 8
#error "NT must be 1, 2, 4 or 8"
#endif

#include "dtype.cuh"

// the two 16-bit inputs of a 32-bit word as fp32: low half, high half
__device__ __forceinline__ float low_half(u32 w) {
#if IS_BF16
    return __uint_as_float(w << 16);
#else
    return to_float((u16)(w & 0xffffu));
#endif
}

__device__ __forceinline__ float high_half(u32 w) {
#if IS_BF16
    return __uint_as_float(w & 0xffff0000u);
#else
    return to_float((u16)(w >> 16));
#endif
}

__device__ __forceinline__ bool non_finite(float f) { return (__float_as_uint(f) & 0x7f800000u) == 0x7f800000u; }

// a lane's unit: 8 consecutive entries of a run, their values (16 bytes) and their column word
struct Unit {
    uint4 v;
    uint2 c;
};

// the format is read once: streamed past L1
__device__ __forceinline__ Unit load_unit(const uint4* values, const uint2* meta, int i) {
    Unit u;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(u.v.x), "=r"(u.v.y), "=r"(u.v.z), "=r"(u.v.w) : "l"(values + i));
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n" : "=r"(u.c.x), "=r"(u.c.y) : "l"(meta + i));
    return u;
}

// one chunk: lane j's UNROLL units at start + j + 32 u; past `end` units of value 0 at column j mod 8
// (the class lane j's units have in a run's turns: no bank conflict with them; K >= 8)
__device__ __forceinline__ void load_chunk(Unit (&c)[UNROLL], const uint4* values, const uint2* meta, int start,
                                           int end, int lane) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        int i = start + lane + 32 * u;
        if (i < end) {
            c[u] = load_unit(values, meta, i);
        } else {
            c[u].v = make_uint4(0u, 0u, 0u, 0u);
            c[u].c = make_uint2((u32)(lane & 7), 0u);
        }
    }
}

// the 8 columns of a unit: the first, then 6-bit steps in multiples of the unit's scale, 2 to the
// power in bits 28-30 (pack/rows.py)
__device__ __forceinline__ void unit_columns(u32 (&col)[8], uint2 c) {
    const u32 scale = 1u << ((c.x >> 28) & 7u);
    col[0] = c.x & 0xffffu;
    col[1] = col[0] + ((c.x >> 16) & 63u) * scale;
    col[2] = col[1] + ((c.x >> 22) & 63u) * scale;
#pragma unroll
    for (int q = 3; q < 8; ++q) col[q] = col[q - 1] + ((c.y >> (6 * (q - 3))) & 63u) * scale;
}

// the NT inputs of column c as 32-bit words, two tokens per word (NT > 1)
__device__ __forceinline__ void load_column(u32 (&w)[NT / 2 > 0 ? NT / 2 : 1], const u16* xs, u32 c) {
#if NT == 2
    w[0] = *reinterpret_cast<const u32*>(xs + c * NT);
#elif NT == 4
    const uint2 v = *reinterpret_cast<const uint2*>(xs + c * NT);
    w[0] = v.x;
    w[1] = v.y;
#elif NT == 8
    const uint4 v = *reinterpret_cast<const uint4*>(xs + c * NT);
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
#endif
}

// CHECK: the rare path (some input is non-finite): entries of value 0 (padding, bridges) are
// skipped, as they are no stored weight, and each sum counts the non-finite inputs it met
template <bool CHECK>
__device__ __forceinline__ void fma_chunk(const Unit (&c)[UNROLL], const void* xs, float (&acc)[NT], int (&hits)[NT]) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        u32 col[8];
        unit_columns(col, c[u].c);
        const u32 vw[4] = {c[u].v.x, c[u].v.y, c[u].v.z, c[u].v.w};
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            const float v = q & 1 ? high_half(vw[q / 2]) : low_half(vw[q / 2]);
            const bool stored = !CHECK || v != 0.f;  // NaN != 0: stored
#if NT == 1
            const float xv = static_cast<const float*>(xs)[col[q]];
            if (stored) acc[0] = fmaf(v, xv, acc[0]);
            if (CHECK && stored) hits[0] += non_finite(xv);
#else
            u32 w[NT / 2];
            load_column(w, static_cast<const u16*>(xs), col[q]);
#pragma unroll
            for (int h = 0; h < NT / 2; ++h) {
                const float x0 = low_half(w[h]), x1 = high_half(w[h]);
                if (stored) {
                    acc[2 * h] = fmaf(v, x0, acc[2 * h]);
                    acc[2 * h + 1] = fmaf(v, x1, acc[2 * h + 1]);
                }
                if (CHECK && stored) {
                    hits[2 * h] += non_finite(x0);
                    hits[2 * h + 1] += non_finite(x1);
                }
            }
#endif
        }
    }
}

template <bool CHECK>
__device__ __forceinline__ void run_rows(const uint4* __restrict__ values, const uint2* __restrict__ meta,
                                         const int* __restrict__ row_ptr, const u16* __restrict__ bias,
                                         u16* __restrict__ y, int ldy, int n_tok, const void* xs, int first, int r1,
                                         bool propagate, const int* n_bad, Unit (&cur)[UNROLL], int bound_s,
                                         int bound_e) {
    const int lane = threadIdx.x & 31;
    int row = first, j = 0;  // the warp's j-th row (j counts within the 32 rows whose bounds the lanes hold)
    int start = __shfl_sync(0xffffffffu, bound_s, 0) >> BOUNDS_SHIFT_USE,
        end = __shfl_sync(0xffffffffu, bound_e, 0) >> BOUNDS_SHIFT_USE;
    float acc[NT];
    int hits[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        acc[t] = 0.f;
        hits[t] = 0;
    }
    while (true) {
        // where the next chunk is: further along this row, or the start of the warp's next row
        int nstart = start + 32 * UNROLL, nend = end, nrow = row, nj = j;
        const bool row_done = nstart >= end;
        if (row_done) {
            nrow = row + WARPS;
            nj = j + 1;
            if (nj == 32 && nrow < r1) {  // the next 32 rows' bounds
                nj = 0;
                int r = nrow + WARPS * lane;
                bound_s = r < r1 ? row_ptr[r] >> BOUNDS_SHIFT_LOAD : 0;
                bound_e = r < r1 ? row_ptr[r + 1] >> BOUNDS_SHIFT_LOAD : 0;
            }
            nstart = __shfl_sync(0xffffffffu, bound_s, nj & 31) >> BOUNDS_SHIFT_USE;
            nend = __shfl_sync(0xffffffffu, bound_e, nj & 31) >> BOUNDS_SHIFT_USE;
        }
        Unit nxt[UNROLL];
        const bool more = nrow < r1;
        if (more) load_chunk(nxt, values, meta, nstart, nend, lane);
        fma_chunk<CHECK>(cur, xs, acc, hits);
        if (row_done) {
            const float b = bias ? to_float(bias[row]) : 0.f;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) {
                    acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
                    if (CHECK) hits[t] += __shfl_xor_sync(0xffffffffu, hits[t], o);
                }
                if (lane == t && t < n_tok) {  // lane t writes token t
                    float out = acc[t] + b;
                    if (CHECK && propagate && hits[t] < n_bad[t]) out = __uint_as_float(0x7fc00000u);
                    y[(size_t)t * ldy + row] = from_float(out);
                }
                acc[t] = 0.f;
                hits[t] = 0;
            }
        }
        if (!more) break;
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) cur[u] = nxt[u];
        start = nstart;
        end = nend;
        row = nrow;
        j = nj;
    }
}

extern "C" __global__ void __launch_bounds__(THREADS) row_gemv(
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const uint4* __restrict__ values,
    const uint2* __restrict__ meta, const int* __restrict__ row_ptr, const int4* __restrict__ heads, int k,
    int propagate, int n_tok, int ldx, int ldy) {
    extern __shared__ __align__(16) unsigned char smem[];  // X (see the top)
    __shared__ int n_bad[NT];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#if ROW_ABLATE == 1
    return;
#endif
    // one load: the block's rows [r0, r1) and the run of the warp's first row (in units: runs start on
    // multiples of 8 entries), so the first chunk waits on one round trip, not two
    const int4 head = heads[blockIdx.x * WARPS + warp];
    const int r1 = head.y, first = head.x + warp;

#if ROW_X_FIRST
    // each thread's first piece of X in flight before anything waits on the head: X and the head
    // take one round trip together, then the first chunk and the row bounds one more
#if NT == 1
    const uint4 x_first = tid * 8 < k ? *reinterpret_cast<const uint4*>(x + tid * 8) : make_uint4(0u, 0u, 0u, 0u);
#else
    u32 x_first[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t)
        x_first[t] = t < n_tok && tid < k / 2 ? *reinterpret_cast<const u32*>(x + (size_t)t * ldx + 2 * tid) : 0u;
#endif
#endif

    // the first chunk in flight before X is staged, then the warp's first 32 rows' bounds
    Unit cur[UNROLL];
    if (first < r1) load_chunk(cur, values, meta, head.z, head.w, lane);
    int bound_s = 0, bound_e = 0;
    {
        int r = first + WARPS * lane;
        if (r < r1) {
            bound_s = row_ptr[r] >> BOUNDS_SHIFT_LOAD;
            bound_e = row_ptr[r + 1] >> BOUNDS_SHIFT_LOAD;
        }
    }

    int bad[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) bad[t] = 0;
#if NT == 1
    float* xs = reinterpret_cast<float*>(smem);
    for (int i = tid * 8; i < k; i += THREADS * 8) {
#if ROW_X_FIRST
        const uint4 v = i == tid * 8 ? x_first : *reinterpret_cast<const uint4*>(x + i);
#else
        const uint4 v = *reinterpret_cast<const uint4*>(x + i);
#endif
        const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float lo = low_half(w[q]), hi = high_half(w[q]);
            xs[i + 2 * q] = lo;
            xs[i + 2 * q + 1] = hi;
            bad[0] += non_finite(lo) + non_finite(hi);
        }
    }
#else
    u16* xs = reinterpret_cast<u16*>(smem);
    // column pair p: each token's two inputs as one 32-bit load (tokens past n_tok: zeros), regrouped
    // by column (two PRMTs per pair of tokens) into the pair's 4 NT contiguous bytes of X, stored
    // 8 or 16 bytes at a time: a warp's stores are contiguous (16-bit stores NT apart were 2-8-way
    // bank conflicted, a third of the shared-memory wavefronts at 8 tokens)
    for (int p = tid; p < k / 2; p += THREADS) {
        u32 w[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) {
#if ROW_X_FIRST
            w[t] = p == tid ? x_first[t] : t < n_tok ? *reinterpret_cast<const u32*>(x + (size_t)t * ldx + 2 * p) : 0u;
#else
            w[t] = t < n_tok ? *reinterpret_cast<const u32*>(x + (size_t)t * ldx + 2 * p) : 0u;
#endif
            bad[t] += non_finite(low_half(w[t])) + non_finite(high_half(w[t]));
        }
        u32 c0[NT / 2], c1[NT / 2];  // columns 2p and 2p + 1, tokens 2h and 2h + 1 per word
#pragma unroll
        for (int h = 0; h < NT / 2; ++h) {
            c0[h] = __byte_perm(w[2 * h], w[2 * h + 1], 0x5410);
            c1[h] = __byte_perm(w[2 * h], w[2 * h + 1], 0x7632);
        }
#if NT == 2
        *reinterpret_cast<uint2*>(xs + 2 * p * NT) = make_uint2(c0[0], c1[0]);
#elif NT == 4
        *reinterpret_cast<uint4*>(xs + 2 * p * NT) = make_uint4(c0[0], c0[1], c1[0], c1[1]);
#else
        *reinterpret_cast<uint4*>(xs + 2 * p * NT) = make_uint4(c0[0], c0[1], c0[2], c0[3]);
        *reinterpret_cast<uint4*>(xs + (2 * p + 1) * NT) = make_uint4(c1[0], c1[1], c1[2], c1[3]);
#endif
    }
#endif
    if (tid < NT) n_bad[tid] = 0;
    int any = 0;
#pragma unroll
    for (int t = 0; t < NT; ++t) any |= bad[t];
#if ROW_ABLATE == 2
    if (__syncthreads_or(any) && tid == 0) y[0] = (u16)(cur[0].v.x ^ cur[UNROLL - 1].c.y);  // keeps the loads
    return;
#endif
    // rare: some input is non-finite; count each token's exactly, and skip the entries of value 0
    // (0 x Inf is NaN, and they are no stored weight)
    if (__syncthreads_or(any)) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (bad[t]) atomicAdd(&n_bad[t], bad[t]);
        __syncthreads();
        if (first < r1)
            run_rows<true>(values, meta, row_ptr, bias, y, ldy, n_tok, xs, first, r1, propagate, n_bad, cur, bound_s,
                           bound_e);
    } else if (first < r1) {
        run_rows<false>(values, meta, row_ptr, bias, y, ldy, n_tok, xs, first, r1, propagate, n_bad, cur, bound_s,
                        bound_e);
    }
}
