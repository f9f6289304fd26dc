// The one-token kernel: y[r] = sum over the nonzeros w[r, c] of row r of w[r, c] * x[c] (+ bias[r]),
// on CUDA cores, over the row format (pack/rows.py). Each nonzero is one 32-bit entry, the value's
// 16 bits above its column, and each row's run is padded to a multiple of 4 entries with entries
// of value 0 and column K. So every lane of a warp does useful work on every step (no bitmap word
// to walk, no lane waiting on a fuller one) at ~5 instructions per nonzero: a quarter of a 16-byte
// load, the column's mask, one shared-memory load of X, the value's mask (bf16) and one FMA.
//
// Per block (THREADS threads, persistent over the rows block_rows[b] .. block_rows[b + 1], balanced
// by entries on the host): X is read once into shared memory as fp32, with a zero at column K for
// the padding entries. Warp w takes rows r0 + w, r0 + w + WARPS, ...; lane j of the warp holds the
// run bounds of the warp's j-th row (read 32 rows at a time), so moving to the next row costs two
// shuffles, not a dependent load. The next chunk's loads (32 lanes x UNROLL x 16 bytes) are issued
// before the current chunk's FMAs, and the first chunk's before X is read, so each warp keeps a
// chunk in flight while it computes. A row's sum is a fixed butterfly over the lanes' partial sums:
// deterministic, whatever the timing.
//
// Non-finite inputs (propagate != 0): the dense product gives NaN in row r where a zero of row r
// meets an Inf or NaN of X. When X has n_bad non-finite entries, a row is NaN unless its nonzeros
// cover all n_bad columns (then its own products carry the Inf or NaN, as in the dense sum). The
// check costs nothing when X is finite (one block-wide vote).
//
// Compile-time parameters (NVRTC -D): IS_BF16 (1: bfloat16, 0: float16), THREADS (a multiple of
// 32), UNROLL (16-byte loads per lane per chunk). Requirements checked by the launcher: K % 8 == 0,
// K <= 65535, x 16-byte aligned, one token, dynamic shared memory (K + 4) * 4 bytes.

#ifndef THREADS
#define THREADS 512
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#define WARPS (THREADS / 32)

#include "dtype.cuh"

// the value of an entry (its upper 16 bits) as fp32
__device__ __forceinline__ float entry_value(u32 e) {
#if IS_BF16
    return __uint_as_float(e & 0xffff0000u);
#else
    return to_float((u16)(e >> 16));
#endif
}

__device__ __forceinline__ bool non_finite(float f) { return (__float_as_uint(f) & 0x7f800000u) == 0x7f800000u; }

// entries are read once: streamed past L1
__device__ __forceinline__ uint4 load_entries(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// one chunk: lane j's UNROLL loads at start + j + 32 u, padding (value 0, column K) past `end`
__device__ __forceinline__ void load_chunk(uint4 (&c)[UNROLL], const uint4* entries, int start, int end, int lane, u32 pad) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        int i = start + lane + 32 * u;
        c[u] = i < end ? load_entries(entries + i) : make_uint4(pad, pad, pad, pad);
    }
}

template <bool CHECK>
__device__ __forceinline__ void fma_chunk(const uint4 (&c)[UNROLL], const float* xs, float& acc, int& hits) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        const u32 w[4] = {c[u].x, c[u].y, c[u].z, c[u].w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            float xv = xs[w[q] & 0xffffu];
            acc = fmaf(entry_value(w[q]), xv, acc);
            if (CHECK) hits += non_finite(xv);
        }
    }
}

template <bool CHECK>
__device__ __forceinline__ void run_rows(const uint4* __restrict__ entries, const int* __restrict__ row_ptr,
                                         const u16* __restrict__ bias, u16* __restrict__ y, const float* xs,
                                         int first, int r1, int k, int n_bad, uint4 (&cur)[UNROLL],
                                         int bound_s, int bound_e) {
    const int lane = threadIdx.x & 31;
    const u32 pad = (u32)k;
    int row = first, j = 0;  // the warp's j-th row (j counts within the 32 rows whose bounds the lanes hold)
    int start = __shfl_sync(0xffffffffu, bound_s, 0), end = __shfl_sync(0xffffffffu, bound_e, 0);
    float acc = 0.f;
    int hits = 0;
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
                bound_s = r < r1 ? row_ptr[r] >> 2 : 0;
                bound_e = r < r1 ? row_ptr[r + 1] >> 2 : 0;
            }
            nstart = __shfl_sync(0xffffffffu, bound_s, nj & 31);
            nend = __shfl_sync(0xffffffffu, bound_e, nj & 31);
        }
        uint4 nxt[UNROLL];
        const bool more = nrow < r1;
        if (more) load_chunk(nxt, entries, nstart, nend, lane, pad);
        fma_chunk<CHECK>(cur, xs, acc, hits);
        if (row_done) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                acc += __shfl_xor_sync(0xffffffffu, acc, o);
                if (CHECK) hits += __shfl_xor_sync(0xffffffffu, hits, o);
            }
            if (lane == 0) {
                float out = acc;
                if (bias) out += to_float(bias[row]);
                if (CHECK && hits < n_bad) out = __uint_as_float(0x7fc00000u);
                y[row] = from_float(out);
            }
            acc = 0.f;
            hits = 0;
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
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const uint4* __restrict__ entries,
    const int* __restrict__ row_ptr, const int* __restrict__ block_rows, int k, int propagate) {
    extern __shared__ float xs[];  // X as fp32, then a zero at column K
    __shared__ int n_bad_shared;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int r0 = block_rows[blockIdx.x], r1 = block_rows[blockIdx.x + 1];
    const int first = r0 + warp;

    // the warp's first 32 rows' bounds (in 16-byte units: runs start on multiples of 4 entries),
    // then its first chunk in flight before X is read
    int bound_s = 0, bound_e = 0;
    {
        int r = first + WARPS * lane;
        if (r < r1) {
            bound_s = row_ptr[r] >> 2;
            bound_e = row_ptr[r + 1] >> 2;
        }
    }
    uint4 cur[UNROLL];
    if (first < r1)
        load_chunk(cur, entries, __shfl_sync(0xffffffffu, bound_s, 0), __shfl_sync(0xffffffffu, bound_e, 0), lane, (u32)k);

    int bad = 0;
    for (int i = tid * 8; i < k; i += THREADS * 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(x + i);
        const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float lo = to_float((u16)(w[q] & 0xffffu)), hi = to_float((u16)(w[q] >> 16));
            xs[i + 2 * q] = lo;
            xs[i + 2 * q + 1] = hi;
            bad += non_finite(lo) + non_finite(hi);
        }
    }
    if (tid == 0) {
        xs[k] = 0.f;
        n_bad_shared = 0;
    }
    if (__syncthreads_or(propagate && bad)) {  // rare: count the non-finite entries of X exactly
        if (bad) atomicAdd(&n_bad_shared, bad);
        __syncthreads();
        if (first < r1) run_rows<true>(entries, row_ptr, bias, y, xs, first, r1, k, n_bad_shared, cur, bound_s, bound_e);
    } else if (first < r1) {
        run_rows<false>(entries, row_ptr, bias, y, xs, first, r1, k, 0, cur, bound_s, bound_e);
    }
}
