// The row kernel: y[t, r] = sum over the nonzeros w[r, c] of row r of w[r, c] * x[t, c] (+ bias[r])
// for NT tokens t at a time, on CUDA cores, over the row format (pack/rows.py). Each nonzero is one
// 32-bit entry, the value's 16 bits above its column, and each row's run is padded to a multiple
// of 4 entries with entries of value 0 and column K. So every lane of a warp does useful work on
// every step (no bitmap word to walk, no lane waiting on a fuller one): at one token ~5
// instructions per nonzero (a quarter of a 16-byte load, the column's mask, one shared-memory load
// of X, the value's mask (bf16) and one FMA), at NT tokens ~2 NT + 3 (one shared-memory load of
// the NT inputs of the column, NT unpacks, NT FMAs).
//
// Per block (THREADS threads, persistent over the rows block_rows[b] .. block_rows[b + 1], balanced
// by entries on the host): X is read once into shared memory, with zeros at column K for the
// padding entries: as fp32 [K + 1] at NT = 1, as the 16-bit inputs [K + 1][NT] (the NT tokens of a
// column side by side) above. Warp w takes rows r0 + w, r0 + w + WARPS, ...; lane j of the warp
// holds the run bounds of the warp's j-th row (read 32 rows at a time), so moving to the next row
// costs two shuffles, not a dependent load. The next chunk's loads (32 lanes x UNROLL x 16 bytes)
// are issued before the current chunk's FMAs, and the first chunk's before X is read, so each warp
// keeps a chunk in flight while it computes. A row's sum is a fixed butterfly over the lanes'
// partial sums: deterministic, whatever the timing.
//
// Non-finite inputs (propagate != 0): the dense product gives NaN in y[t, r] where a zero of row r
// meets an Inf or NaN of token t. When token t has n_bad[t] non-finite entries, y[t, r] is NaN
// unless row r's nonzeros cover all n_bad[t] columns (then its own products carry the Inf or NaN,
// as in the dense sum). The check costs nothing when X is finite (one block-wide vote).
//
// Compile-time parameters (NVRTC -D): IS_BF16 (1: bfloat16, 0: float16), NT (tokens per pass: 1,
// 2, 4 or 8), THREADS (a multiple of 32), UNROLL (16-byte loads per lane per chunk). Requirements
// checked by the launcher: K % 8 == 0, K <= 65535, x 16-byte aligned with a row stride a multiple
// of 8, 1 <= n_tok <= NT, dynamic shared memory row_smem(K, NT) bytes.

#ifndef THREADS
#define THREADS 512
#endif
#ifndef NT
#define NT 1
#endif
#ifndef UNROLL
#define UNROLL (NT >= 8 ? 2 : 4)  // 8 tokens: more work per entry, registers for the sums
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

// the value of an entry (its upper 16 bits) as fp32
__device__ __forceinline__ float entry_value(u32 e) { return high_half(e); }

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

template <bool CHECK>
__device__ __forceinline__ void fma_chunk(const uint4 (&c)[UNROLL], const void* xs, float (&acc)[NT], int (&hits)[NT]) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        const u32 e[4] = {c[u].x, c[u].y, c[u].z, c[u].w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float v = entry_value(e[q]);
#if NT == 1
            const float xv = static_cast<const float*>(xs)[e[q] & 0xffffu];
            acc[0] = fmaf(v, xv, acc[0]);
            if (CHECK) hits[0] += non_finite(xv);
#else
            u32 w[NT / 2];
            load_column(w, static_cast<const u16*>(xs), e[q] & 0xffffu);
#pragma unroll
            for (int h = 0; h < NT / 2; ++h) {
                const float x0 = low_half(w[h]), x1 = high_half(w[h]);
                acc[2 * h] = fmaf(v, x0, acc[2 * h]);
                acc[2 * h + 1] = fmaf(v, x1, acc[2 * h + 1]);
                if (CHECK) {
                    hits[2 * h] += non_finite(x0);
                    hits[2 * h + 1] += non_finite(x1);
                }
            }
#endif
        }
    }
}

template <bool CHECK>
__device__ __forceinline__ void run_rows(const uint4* __restrict__ entries, const int* __restrict__ row_ptr,
                                         const u16* __restrict__ bias, u16* __restrict__ y, int ldy, int n_tok,
                                         const void* xs, int first, int r1, int k, const int* n_bad,
                                         uint4 (&cur)[UNROLL], int bound_s, int bound_e) {
    const int lane = threadIdx.x & 31;
    const u32 pad = (u32)k;
    int row = first, j = 0;  // the warp's j-th row (j counts within the 32 rows whose bounds the lanes hold)
    int start = __shfl_sync(0xffffffffu, bound_s, 0), end = __shfl_sync(0xffffffffu, bound_e, 0);
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
                    if (CHECK && hits[t] < n_bad[t]) out = __uint_as_float(0x7fc00000u);
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
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const uint4* __restrict__ entries,
    const int* __restrict__ row_ptr, const int* __restrict__ block_rows, int k, int propagate, int n_tok, int ldx,
    int ldy) {
    extern __shared__ __align__(16) unsigned char smem[];  // X (see the top), then zeros at column K
    __shared__ int n_bad[NT];
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

    int bad[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) bad[t] = 0;
#if NT == 1
    float* xs = reinterpret_cast<float*>(smem);
    for (int i = tid * 8; i < k; i += THREADS * 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(x + i);
        const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float lo = low_half(w[q]), hi = high_half(w[q]);
            xs[i + 2 * q] = lo;
            xs[i + 2 * q + 1] = hi;
            bad[0] += non_finite(lo) + non_finite(hi);
        }
    }
    if (tid == 0) xs[k] = 0.f;
#else
    u16* xs = reinterpret_cast<u16*>(smem);
    // column pair p: each token's two inputs as one 32-bit load, stored NT apart (tokens past n_tok: zeros)
    for (int p = tid; p < k / 2; p += THREADS) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const u32 w = t < n_tok ? *reinterpret_cast<const u32*>(x + (size_t)t * ldx + 2 * p) : 0u;
            xs[(2 * p) * NT + t] = (u16)(w & 0xffffu);
            xs[(2 * p + 1) * NT + t] = (u16)(w >> 16);
            bad[t] += non_finite(low_half(w)) + non_finite(high_half(w));
        }
    }
    if (tid < NT) xs[k * NT + tid] = 0;
#endif
    if (tid < NT) n_bad[tid] = 0;
    int any = 0;
#pragma unroll
    for (int t = 0; t < NT; ++t) any |= bad[t];
    if (__syncthreads_or(propagate && any)) {  // rare: count each token's non-finite inputs exactly
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (bad[t]) atomicAdd(&n_bad[t], bad[t]);
        __syncthreads();
        if (first < r1) run_rows<true>(entries, row_ptr, bias, y, ldy, n_tok, xs, first, r1, k, n_bad, cur, bound_s, bound_e);
    } else if (first < r1) {
        run_rows<false>(entries, row_ptr, bias, y, ldy, n_tok, xs, first, r1, k, n_bad, cur, bound_s, bound_e);
    }
}
