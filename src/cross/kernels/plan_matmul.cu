// The plan kernel in CUDA: the same work-list walk as the Triton kernels, with what they cannot
// express: indexed shared-memory stores and per-lane control of the mma operands. A bitmap tile's
// tile is either decoded by each lane straight into its mma A fragment registers (dense enough
// tiles), or scattered into a zeroed, swizzled shared-memory tile (one load and one store per
// nonzero, no work per zero element) which mma.sync then reads with ldmatrix.
//
// Per CTA (4 warps, persistent over the plan's units), per work item (one tile-row, a run of its
// tiles), per tile p:
//   stage (p + STAGES - 1) % STAGES <- cp.async: packed values, bitmap words + prefixes, X tile
//   warp w, rows 16w..16w+15 of the tile (no block barrier needed for A):
//     BITMAP tile with >= REGS_MIN_NNZ nonzeros: A fragments from the stage (mma_tile_regs)
//     otherwise: zero its rows of the A tile; lane l scatters the nonzeros of word l (row 16w + l/2,
//     columns 32*(l%2)+b) (DENSE: copy its rows from the stage; EMPTY: zeros only, so 0 * non-finite
//     X gives NaN), then A by ldmatrix
//   acc[16 rows x BLOCK_N tokens] += A x X^T (ldmatrix), mma.m16n8k16, fp32
// Outputs: a work item alone on its tile-row writes Y; otherwise its fp32 partial goes to workspace
// slot `slot` and the last item of the tile-row to arrive (atomic counter) sums the row's slots in
// slot order and writes Y: deterministic whatever the order in which items finish.
//
// Compile-time parameters (NVRTC -D): TILE_M (64), TILE_K (64 or 128), BLOCK_N (16, 32, 64),
// IS_BF16 (1: bfloat16, 0: float16), STAGES (pipeline depth, >= 2), VALS_BYTES (room for one tile's
// values in a stage: the whole tile where the plan has DENSE tiles, else its largest bitmap tile, so
// sparser weights leave more shared memory for more resident CTAs). Requirements checked by the launcher: K % 8 == 0, 16-byte
// aligned buffers, row strides multiples of 8 elements.

// Profiling switches (NVRTC -DABLATE=bits, through CROSS_CUDA_DEFINES; 0 in normal builds): each
// removes one part of the work so its share of the time can be measured; results are then wrong.
//   1: every item writes Y directly (no split-row reduction)   2: no decode (A tile left as it is)
//   4: no copies of tile data or X (implies 2)                   8: every block exits at once
//   16: no tiles (table walk and epilogue only)                  32: no mma
//   64: split items write their partials but nobody sums them (no fence, counter or final pass)
#ifndef ABLATE
#define ABLATE 0
#endif

// BITMAP decode, chosen per tile: in a tile of at least REGS_MIN_NNZ nonzeros each warp decodes
// its 16 rows straight into its mma A fragments (mma_tile_regs: no A tile, no stores, no ldmatrix
// for A, the same cost at any density); sparser tiles are scattered into the A tile (build_rows,
// whose cost follows the nonzeros). Measured on H100, 11008x4096, N <= 16: the register decode wins
// above 11% density and loses below (docs/perf-notes.md, "The register decode, measured").
// DECODE_REGS=0 compiles the scatter only. That is the default for token tiles above 16, where the
// decode is shared by more tokens and the register path's registers would cost resident blocks,
// and for 128-column tiles, where it spills under the 6-block register bound.
#ifndef DECODE_REGS
#define DECODE_REGS (BLOCK_N <= 16 && TILE_K == 64)
#endif
#ifndef REGS_MIN_NNZ
#define REGS_MIN_NNZ (TILE_M * TILE_K * 11 / 100)  // density 0.11 of the tile
#endif
// One token (N = 1): BITMAP tiles with fewer than CORES_MAX_NNZ nonzeros multiplied on CUDA cores,
// per nonzero (cores_tile), with no A operand at all; the zeros cost nothing, which the mma paths
// cannot offer. The launcher builds it (DECODE_CORES=1, CORES_MAX_NNZ from cuda_backend
// .CORES_MAX_DENSITY) for one-token launches of weights whose median BITMAP tile is under the
// threshold, and only for them: in this build the other tiles run ~6% slower than without it
// (docs/perf-notes.md, "The CUDA-core path, measured").
#ifndef DECODE_CORES
#define DECODE_CORES 0
#endif
#if DECODE_CORES && !(BLOCK_N <= 16 && TILE_K == 64)  // one bitmap word per lane: 64-column tiles
#undef DECODE_CORES
#define DECODE_CORES 0
#endif
#ifndef CORES_MAX_NNZ
#define CORES_MAX_NNZ (TILE_M * TILE_K * 17 / 100)  // density 0.17 of the tile (as the launcher's)
#endif
// 6 blocks per SM must fit in registers where the launch counts on them (costmodel.roofline
// .resident_programs counts shared memory only): unbounded, the register decode takes 95 and the
// scatter with 128-column tiles 92 (5 blocks); bounded, both fit in 80 without spills.
#if BLOCK_N <= 16 && !defined(MIN_BLOCKS)
#define MIN_BLOCKS 6
#endif
// A tile's packed values and its bitmap words + prefixes are each contiguous in global memory: on
// sm_90 one thread copies them into the stage as two bulk copies (cp.async.bulk, completed on the
// stage's mbarrier, which counts the bytes), instead of every thread issuing 16-byte cp.async for
// its share. The X tile keeps the per-thread cp.async: its swizzled layout is not a bulk copy.
// BULK_COPY=0 compiles the per-thread copies for every part.
#ifndef BULK_COPY
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BULK_COPY 1
#else
#define BULK_COPY 0
#endif
#endif

#include "dtype.cuh"
#include "async.cuh"

#define NUM_THREADS 128
#define N_WORDS (TILE_M * TILE_K / 32)
#define ROW_BYTES (TILE_K * 2)
#define TILE_BYTES (TILE_M * TILE_K * 2)
#define META_BYTES (N_WORDS * 4 + N_WORDS * 2)
#define X_BYTES (BLOCK_N * TILE_K * 2)
#define META_ROOM (((META_BYTES + 127) / 128) * 128)
#define STAGE_BYTES (VALS_BYTES + META_ROOM + X_BYTES)
#define SMEM_BYTES (TILE_BYTES + STAGES * STAGE_BYTES)
#define KIND_DENSE 0
#define KIND_BITMAP 1
#define KIND_EMPTY 3

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_stages() { asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2)); }

// byte offset of element (r, c) in a tile whose rows are ROW_BYTES long: 16-byte chunks XOR-swizzled
// by the row, so ldmatrix's eight row reads fall in eight different bank groups
__device__ __forceinline__ u32 swz(int r, int c) {
    return r * ROW_BYTES + ((((c >> 3) ^ (r & 7))) << 4) + ((c & 7) << 1);
}

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if IS_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

struct Args {
    const u16* x; u16* y; const u16* bias;
    const u16* values; const int* meta; const int* tiles; const int* sections;
    const int* items; const int* row_parts; const int* unit_ptr; const int* unit_heads;
    float* ws; int* counters;
    int M, K, N, stride_xn, stride_yn, n_units, n_token_tiles, counter_stride, has_bias;
};

// The X tile of a token tile: BLOCK_N rows (tokens) of TILE_K elements, copied in 16-byte chunks,
// X_CHUNKS per thread. Where each thread's chunks come from (up to the tile column) and go to does
// not change from tile to tile, so it is computed once per token tile.
#define X_CHUNKS (BLOCK_N * (TILE_K / 8) / NUM_THREADS)
struct XCopy {
    u64 src[X_CHUNKS];  // element offset of the chunk in x, tile column 0
    u32 dst[X_CHUNKS];  // byte offset in the stage's X tile (swizzled)
    int k[X_CHUNKS];    // column of the chunk within a tile
    bool row_ok[X_CHUNKS];
};

__device__ __forceinline__ XCopy x_copy_plan(const Args& a, int n0, int tid) {
    XCopy c;
#pragma unroll
    for (int j = 0; j < X_CHUNKS; ++j) {
        const int i = tid + j * NUM_THREADS;
        const int n = i / (TILE_K / 8), ch = i % (TILE_K / 8);
        c.row_ok[j] = n0 + n < a.N;
        c.src[j] = c.row_ok[j] ? (u64)(n0 + n) * a.stride_xn + ch * 8 : 0;
        c.dst[j] = swz(n, ch * 8);
        c.k[j] = ch * 8;
    }
    return c;
}

// copies of a tile's raw bytes (by kind) and its X tile into one stage; e = (col, voff, moff, nnz).
// With BULK_COPY thread 0 arrives on the stage's mbarrier `bar` once per tile, announcing the bytes
// of its bulk copies (none for EMPTY tiles), so every issued tile completes one phase.
__device__ __forceinline__ void issue_tile(const Args& a, const XCopy& xc, unsigned char* stage, u32 bar, int4 e,
                                           int kind, int tid) {
    const int col = e.x, voff = e.y, moff = e.z, nnz = e.w;
    const u32 s_vals = smem_u32(stage);
    const u32 s_meta = s_vals + VALS_BYTES;
    const u32 s_x = s_meta + META_ROOM;
#if BULK_COPY
    if (tid == 0) {
        const bool copy = !(ABLATE & 4) && kind != KIND_EMPTY;
        const u32 vbytes = !copy ? 0 : (kind == KIND_DENSE ? TILE_BYTES : 16 * ((nnz + 7) / 8));
        const u32 mbytes = copy && kind == KIND_BITMAP ? META_BYTES : 0;
        mbar_arrive_expect(bar, vbytes + mbytes);
        if (vbytes) bulk_copy(s_vals, a.values + voff, vbytes, bar);
        if (mbytes) bulk_copy(s_meta, a.meta + moff, mbytes, bar);
    }
    if (ABLATE & 4) return;
#else
    if (ABLATE & 4) return;
    if (kind != KIND_EMPTY) {
        const int n_chunks = kind == KIND_DENSE ? TILE_BYTES / 16 : (nnz + 7) / 8;
        const char* src = (const char*)(a.values + voff);
#pragma unroll
        for (int j = 0; j < (VALS_BYTES / 16 + NUM_THREADS - 1) / NUM_THREADS; ++j) {
            const int i = tid + j * NUM_THREADS;
            if (i < n_chunks) cp_async16(s_vals + 16 * i, src + 16 * i, 16);
        }
        if (kind == KIND_BITMAP && tid < META_BYTES / 16)
            cp_async16(s_meta + 16 * tid, (const char*)(a.meta + moff) + 16 * tid, 16);
    }
#endif
    const int k0 = col * TILE_K;
    const u16* xcol = a.x + k0;
#pragma unroll
    for (int j = 0; j < X_CHUNKS; ++j) {
        const bool ok = xc.row_ok[j] && k0 + xc.k[j] < a.K;
        cp_async16(s_x + xc.dst[j], ok ? xcol + xc.src[j] : a.x, ok ? 16 : 0);
    }
}

// warp `warp` builds rows 16*warp .. 16*warp+15 of the A tile from a stage
__device__ __forceinline__ void build_rows(unsigned char* a_s, const unsigned char* stage, int kind, int warp, int lane) {
    const int r0 = warp * 16;
    // zero (or, for DENSE, copy) the warp's 16 rows: 16 * ROW_BYTES bytes, 16 bytes per lane per step
    for (int i = lane; i < 16 * (TILE_K / 8); i += 32) {
        const int r = r0 + i / (TILE_K / 8), ch = i % (TILE_K / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (kind == KIND_DENSE) v = *(const uint4*)(stage + r * ROW_BYTES + ch * 16);
        *(uint4*)(a_s + swz(r, ch * 8)) = v;
    }
    if (kind != KIND_BITMAP) return;
    __syncwarp();
    const u16* vals = (const u16*)stage;
    const u32* words = (const u32*)(stage + VALS_BYTES);
    const u16* prefix = (const u16*)(stage + VALS_BYTES + N_WORDS * 4);
    // the warp's 16 rows hold 16 * TILE_K / 32 words; lane l takes words l, l + 32, ...
    for (int w = r0 * (TILE_K / 32) + lane; w < (r0 + 16) * (TILE_K / 32); w += 32) {
        u32 bits = words[w];
        const int r = w / (TILE_K / 32), cbase = (w % (TILE_K / 32)) * 32;
        // column c = cbase + b sits in chunk ((cbase >> 3) | (b >> 3)) ^ (r & 7): the two parts share
        // no bits, so the swizzled byte offset inside the row is ((cx8 ^ b) << 1)
        const int cx8 = ((cbase >> 3) ^ (r & 7)) << 3;
        unsigned char* a_row = a_s + r * ROW_BYTES;
        const u16* v = vals + prefix[w] + __popc(bits);  // one past the word's last value
        // highest set bit first, values from the end; two bits per step so their load-store chains
        // overlap (31 - clz(0) = -1 marks a missing second bit)
        while (bits) {
            const int b0 = 31 - __clz(bits);
            bits ^= 1u << b0;
            const int b1 = 31 - __clz(bits);
            bits ^= b1 >= 0 ? 1u << b1 : 0u;
            const u16 v0 = v[-1];
            const u16 v1 = b1 >= 0 ? v[-2] : 0;  // no read before the word's values: other warps write there
            v -= b1 >= 0 ? 2 : 1;
            *(u16*)(a_row + ((cx8 ^ b0) << 1)) = v0;
            if (b1 >= 0) *(u16*)(a_row + ((cx8 ^ b1) << 1)) = v1;
        }
    }
}

// acc[nt][0..3] += A rows (16*warp..) x X^T, for BLOCK_N/8 token sub-tiles nt
// acc[nt] += A fragment (a0..a3: 16 rows x k kk..kk+15) x X^T for every token sub-tile nt
__device__ __forceinline__ void mma_k_step(float (*acc)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 x_base, int kk,
                                           int lane) {
#pragma unroll
    for (int nt = 0; nt < BLOCK_N / 8; nt += 2) {
        u32 b0, b1, b2, b3;
        // lanes 0-7: tokens nt*8.., k kk; 8-15: k kk+8; 16-23: tokens (nt+1)*8.., k kk; 24-31: k kk+8
        const int n = nt * 8 + (lane & 7) + ((lane >> 4) << 3);
        ldmatrix_x4(x_base + swz(n, kk + ((lane >> 3) & 1) * 8), b0, b1, b2, b3);
        mma16816(acc[nt], a0, a1, a2, a3, b0, b1);
        mma16816(acc[nt + 1], a0, a1, a2, a3, b2, b3);
    }
}

__device__ __forceinline__ void mma_tile(float (*acc)[4], const unsigned char* a_s, const unsigned char* x_s, int warp, int lane) {
    const u32 a_base = smem_u32(a_s), x_base = smem_u32(x_s);
#pragma unroll
    for (int kk = 0; kk < TILE_K; kk += 16) {
        u32 a0, a1, a2, a3;
        ldmatrix_x4(a_base + swz(warp * 16 + (lane & 15), kk + (lane >> 4) * 8), a0, a1, a2, a3);
        mma_k_step(acc, a0, a1, a2, a3, x_base, kk, lane);
    }
}

// A lane's elements of one bitmap word (32 columns of a row): the pairs at columns 2t + 8j, +1
// (j = 0..3, t = lane % 4). x = word >> 2t puts pair j's two bits at 8j and 8j + 1, so every mask
// below is a constant; rank is the index in vals of the word's first set bit at or after column 2t.
// Pair j as one mma operand register (low half first); only values of set bits are read.
__device__ __forceinline__ u32 bitmap_pair(const u16* vals, int rank, u32 x, int j) {
    const u16* p = vals + rank + (j ? __popc(x & ((1u << (8 * j)) - 1u)) : 0);
    const bool lo = x & (1u << (8 * j)), hi = x & (2u << (8 * j));
    u32 a = 0, b = 0;
    if (lo) a = p[0];
    if (hi) b = p[lo ? 1 : 0];
    return __byte_perm(a, b, 0x5410);
}

// mma_tile for a BITMAP tile without the A tile: each lane decodes its own A fragment elements from
// the stage (m16n8k16: a0 = row g, columns 2t, 2t+1; a1 = row g+8; a2, a3 the same at columns + 8;
// g = lane / 4, t = lane % 4). A lane loads its two rows' words and prefixes once per tile; per
// word it shifts the word by 2t and finds its first value (one popcount), then per pair one more
// popcount and up to two 2-byte loads. A warp's 32 loads of values fall in 8 rows' short runs of
// values: no stores, no zero fill, no ldmatrix for A.
__device__ __forceinline__ void mma_tile_regs(float (*acc)[4], const unsigned char* stage, const unsigned char* x_s,
                                              int warp, int lane) {
    constexpr int W = TILE_K / 32;  // bitmap words per row
    const u16* vals = (const u16*)stage;
    const u32* words = (const u32*)(stage + VALS_BYTES);
    const u16* prefix = (const u16*)(stage + VALS_BYTES + N_WORDS * 4);
    const int g = lane >> 2, t = lane & 3;
    const u32 below_t = (1u << (2 * t)) - 1u;
    const int w0 = (warp * 16 + g) * W, w1 = w0 + 8 * W;  // first words of rows g and g + 8
    u32 x0[W], x1[W];
    int r0[W], r1[W];
#pragma unroll
    for (int h = 0; h < W; ++h) {
        const u32 b0 = words[w0 + h], b1 = words[w1 + h];
        x0[h] = b0 >> (2 * t), x1[h] = b1 >> (2 * t);
        r0[h] = prefix[w0 + h] + __popc(b0 & below_t);
        r1[h] = prefix[w1 + h] + __popc(b1 & below_t);
    }
    const u32 x_base = smem_u32(x_s);
#pragma unroll
    for (int kk = 0; kk < TILE_K; kk += 16) {
        const int h = kk >> 5, j = (kk & 31) >> 3;  // columns kk + 2t (pair j) and kk + 8 + 2t (pair j + 1) of word h
        const u32 a0 = bitmap_pair(vals, r0[h], x0[h], j), a1 = bitmap_pair(vals, r1[h], x1[h], j);
        const u32 a2 = bitmap_pair(vals, r0[h], x0[h], j + 1), a3 = bitmap_pair(vals, r1[h], x1[h], j + 1);
        mma_k_step(acc, a0, a1, a2, a3, x_base, kk, lane);
    }
}

// True if either element of a pair of X values is Inf or NaN (exponent bits all set)
__device__ __forceinline__ bool pair_nonfinite(u32 pair) {
#if IS_BF16
    const u32 e = 0x7f807f80u;
#else
    const u32 e = 0x7c007c00u;
#endif
    const u32 m = pair & e;
    return (m & 0xffffu) == (e & 0xffffu) || (m >> 16) == (e >> 16);
}

// One token, one BITMAP tile on CUDA cores: lane l of warp w takes bitmap word l of the warp's 16
// rows (row 16w + l/2, columns 32(l%2) .. +31) and adds value x X[column] for each set bit, highest
// first (a word's values are stored in column order from its prefix, so from the last one down).
// Token 0's row of the X tile is not swizzled; lane l holds its columns l and l + 32 as floats (x0,
// x1), so the lane that holds a bit's column is the bit's position b, and which of the two a lane
// wants is fixed by its word: two shuffles and a select, no index arithmetic (docs/perf-notes.md,
// "Fewer instructions per nonzero"). The loop runs as many steps as the warp's fullest word, every
// lane in every step. Per nonzero: one 2-byte load of its value and two shuffles, no stores and no
// mma. Returns the lane's running sum for its word's row half (cores_fold adds it to the mma
// accumulators).
__device__ __forceinline__ float cores_tile(float sum, const unsigned char* stage, float x0, float x1, int warp, int lane) {
    const u16* vals = (const u16*)stage;
    const u32* words = (const u32*)(stage + VALS_BYTES);
    const u16* prefix = (const u16*)(stage + VALS_BYTES + N_WORDS * 4);
    const int w = warp * 32 + lane;
    u32 bits = words[w];
    const int n = __popc(bits);
    int vi = prefix[w] + n - 1;  // index in vals of the value of the word's highest remaining bit
    const int steps = __reduce_max_sync(0xffffffffu, n);
    const bool upper = lane & 1;  // this lane's word covers columns 32 .. 63
    // no branch in the loop: a lane whose word has no bits left goes on stepping its index down and
    // drops the product (reading no lower than the tile's first value: below it other warps write)
#pragma unroll 2
    for (int i = 0; i < steps; ++i, --vi) {
        const int b = (31 - __clz(bits)) & 31;
        const float lo = __shfl_sync(0xffffffffu, x0, b), hi = __shfl_sync(0xffffffffu, x1, b);
        const float xv = upper ? hi : lo;
        const float next = fmaf(to_float(vals[max(vi, 0)]), xv, sum);
        sum = bits ? next : sum;
        bits &= ~(1u << b);
    }
    return sum;
}

// Adds the lanes' CUDA-core sums to the mma accumulators of token 0: row 16w + r's two word sums
// (lanes 2r, 2r + 1) go to lane 4(r % 8), acc[0][0] for rows 0-7 and acc[0][2] for rows 8-15
// (m16n8k16's C layout: lane 4g + t holds rows g, g + 8 at tokens 2t, 2t + 1)
__device__ __forceinline__ void cores_fold(float (*acc)[4], float sum, int lane) {
    const float row = sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    const float lo = __shfl_sync(0xffffffffu, row, 2 * (lane >> 2));
    const float hi = __shfl_sync(0xffffffffu, row, 2 * (lane >> 2) + 16);
    if ((lane & 3) == 0) acc[0][0] += lo, acc[0][2] += hi;
}

// The table entries of one item, read ahead in batches: lane i of every warp holds the entry of tile
// base + i (cur) and of tile base + 32 + i (nxt); a tile's entry reaches every lane by shuffles. The
// batch after nxt is loaded when cur is used up, 32 tiles before it is needed, so walking the table
// costs no dependent global load per tile.
struct Entries {
    int4 cur, nxt;
    int base, stop;
};

__device__ __forceinline__ int4 entry_or_zero(const int4* entries, int q, int stop) {
    return q < stop ? entries[q] : make_int4(0, 0, 0, 0);
}

__device__ __forceinline__ void entries_start(Entries& e, const int4* entries, int start, int stop, int lane) {
    e.base = start;
    e.stop = stop;
    e.cur = entry_or_zero(entries, start + lane, stop);
    e.nxt = entry_or_zero(entries, start + 32 + lane, stop);
}

// entry of tile q; calls come in order q = base, base + 1, ... from every thread of the block
__device__ __forceinline__ int4 entries_get(Entries& e, const int4* entries, int q, int lane) {
    if (q - e.base >= 32) {
        e.base += 32;
        e.cur = e.nxt;
        e.nxt = entry_or_zero(entries, e.base + 32 + lane, e.stop);
    }
    const int i = q - e.base;
    return make_int4(__shfl_sync(0xffffffffu, e.cur.x, i), __shfl_sync(0xffffffffu, e.cur.y, i),
                     __shfl_sync(0xffffffffu, e.cur.z, i), __shfl_sync(0xffffffffu, e.cur.w, i));
}

__device__ __forceinline__ int kind_of(int p, int s_bitmap, int s_index, int s_empty) {
    return p < s_bitmap ? KIND_DENSE : (p < s_index ? KIND_BITMAP : (p < s_empty ? 2 : KIND_EMPTY));
}

__device__ __forceinline__ void store_out(const Args& a, float (*acc)[4], int row, int n0, int warp, int lane) {
#pragma unroll
    for (int nt = 0; nt < BLOCK_N / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = row * TILE_M + warp * 16 + (lane >> 2) + (i >> 1) * 8;
            const int n = n0 + nt * 8 + (lane & 3) * 2 + (i & 1);
            if (m < a.M && n < a.N) {
                float v = acc[nt][i];
                if (a.has_bias) v += to_float(a.bias[m]);
                a.y[(u64)n * a.stride_yn + m] = from_float(v);
            }
        }
}

// offset (floats) in a split item's fp32 partial of a thread's accumulators acc[nt][0..3]: the partial
// is [BLOCK_N / 8][NUM_THREADS][4], so each thread stores and loads 16 contiguous bytes per token
// sub-tile, and the sub-tiles past the last token (nt >= n_sub) are neither written nor read
__device__ __forceinline__ int part_index(int nt, int tid) { return (nt * NUM_THREADS + tid) * 4; }

// How the last part of a split tile-row reads the other parts' partials. SUM_SMEM=1: every thread
// copies its own 16-byte pieces of as many partials as the block's shared memory holds (cp.async
// from L2, all in flight together: one L2 round trip per round, most rows need one), then adds
// them in slot order from shared memory. SUM_SMEM=0: SUM_BATCH partials at a time into registers
// (one round trip per batch). Either way the sum does not depend on which part came last.
#ifndef SUM_SMEM
#define SUM_SMEM (BLOCK_N <= 32)  // 64-token builds: the copies' registers would cost a resident block
#endif
#ifndef SUM_BATCH
#define SUM_BATCH (BLOCK_N > 16 ? 1 : TILE_K == 64 ? 4 : 2)  // the most that fits the register bound
#endif
#define PART_FLOATS (TILE_M * BLOCK_N)

// a 16-byte shared-memory load by its 32-bit shared address (through a generic pointer the
// 32-token build spills)
__device__ __forceinline__ float4 lds_f4(u32 addr) {
    float4 v;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
    return v;
}

__device__ __forceinline__ void add4(float* acc, float4 v) {
    acc[0] += v.x, acc[1] += v.y, acc[2] += v.z, acc[3] += v.w;
}

// acc = the sum of the partials of slots first .. first + n_parts - 1 (token tile t), in slot order
__device__ __forceinline__ void sum_partials(const Args& a, float (*acc)[4], const unsigned char* smem, int first,
                                             int n_parts, int t, int n_sub, int tid) {
#pragma unroll
    for (int nt = 0; nt < BLOCK_N / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#if SUM_SMEM
    // each thread reads back only what it copied itself, so no block barrier is needed
    const u32 piece = n_sub * NUM_THREADS * 16;  // bytes of one partial in shared memory
    const int per_round = SMEM_BYTES / piece;
    const u64 slot_floats = (u64)a.n_token_tiles * PART_FLOATS;
    const float* q = a.ws + ((u64)first * a.n_token_tiles + t) * PART_FLOATS + part_index(0, tid);
    const u32 base = smem_u32(smem) + tid * 16;
#pragma unroll 1
    for (int left = n_parts; left > 0; left -= per_round) {
        const int cnt = min(per_round, left);
        u32 dst = base;
#pragma unroll 1
        for (int j = 0; j < cnt; ++j, q += slot_floats, dst += piece)
#pragma unroll 1
            for (int nt = 0; nt < n_sub; ++nt)
                cp_async16(dst + nt * (NUM_THREADS * 16), q + nt * (NUM_THREADS * 4), 16);
        cp_async_commit();
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        u32 src = base;
#pragma unroll 1
        for (int j = 0; j < cnt; ++j, src += piece)
#pragma unroll
            for (int nt = 0; nt < BLOCK_N / 8; ++nt)
                if (nt < n_sub) add4(acc[nt], lds_f4(src + nt * (NUM_THREADS * 16)));
    }
#else
#pragma unroll 1
    for (int s0 = first; s0 < first + n_parts; s0 += SUM_BATCH) {
        float2 v[SUM_BATCH][BLOCK_N / 8][2];
#pragma unroll
        for (int j = 0; j < SUM_BATCH; ++j) {
            const float* q = a.ws + ((u64)(s0 + j) * a.n_token_tiles + t) * PART_FLOATS;
#pragma unroll
            for (int nt = 0; nt < BLOCK_N / 8; ++nt)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    v[j][nt][h] = s0 + j < first + n_parts && nt < n_sub ? __ldcg((const float2*)(q + part_index(nt, tid) + 2 * h))
                                                                         : make_float2(0.f, 0.f);
        }
#pragma unroll
        for (int j = 0; j < SUM_BATCH; ++j)
#pragma unroll
            for (int nt = 0; nt < BLOCK_N / 8; ++nt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    acc[nt][2 * h] += v[j][nt][h].x;
                    acc[nt][2 * h + 1] += v[j][nt][h].y;
                }
    }
#endif
}

// MIN_BLOCKS=n asks the compiler to fit n blocks per SM in registers (set above with the register
// decode; -DMIN_BLOCKS=n sets it for any build)
#ifdef MIN_BLOCKS
extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS) plan_matmul_cuda(
#else
extern "C" __global__ void __launch_bounds__(NUM_THREADS) plan_matmul_cuda(
#endif
    const u16* x, u16* y, const u16* bias, const u16* values, const int* meta, const int* tiles, const int* sections,
    const int* items, const int* row_parts, const int* unit_ptr, const int* unit_heads, float* ws, int* counters,
    int M, int K, int N, int stride_xn, int stride_yn, int n_units, int n_token_tiles, int counter_stride, int has_bias) {
    const Args a = {x, y, bias, values, meta, tiles, sections, items, row_parts, unit_ptr, unit_heads, ws, counters,
                    M, K, N, stride_xn, stride_yn, n_units, n_token_tiles, counter_stride, has_bias};
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* a_s = smem;
    unsigned char* stages = smem + TILE_BYTES;
    __shared__ int last_flag;
    __shared__ __align__(8) u64 stage_bars[STAGES];  // used with BULK_COPY
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (ABLATE & 8) return;
    const u32 bars = smem_u32(stage_bars);
#if BULK_COPY
    if (tid == 0)
        for (int s = 0; s < STAGES; ++s) mbar_init(bars + 8 * s);
    __syncthreads();
#endif
    u32 phases = 0;  // bit s: the parity of stage s's next phase to wait for

    const int4* entries = (const int4*)a.tiles;
    const int4* item_recs = (const int4*)a.items;
    for (int t = 0; t < a.n_token_tiles; ++t) {
        // the block's head for this token tile's unit (see launch.cuda_heads): its item range, first
        // item's record (row, start, stop, slot) and that row's sections, in one dependent load
        const int4* head = (const int4*)a.unit_heads + 3 * ((t & 1) * a.n_units + blockIdx.x);
        const int4 h0 = head[0], h1 = head[1], h2 = head[2];
        const int n0 = t * BLOCK_N;
        const XCopy xc = x_copy_plan(a, n0, tid);
        int wi = h0.x;
        const int wi_end = h0.y;
        // later items' records, sections and first entries are loaded before the previous item's
        // epilogue, so their latency overlaps it
        int4 rec = make_int4(h0.z, h0.w, h1.x, h1.y);
        int s_bitmap = h1.z, s_index = h1.w, s_empty = h2.x;
        Entries ent;
        if (wi < wi_end) entries_start(ent, entries, rec.y, rec.z, lane);
        for (; wi < wi_end; ++wi) {
            const int row = rec.x, start = rec.y, stop = rec.z, slot = rec.w;
            const int4 rec_next = wi + 1 < wi_end ? item_recs[wi + 1] : rec;
            float acc[BLOCK_N / 8][4];
#pragma unroll
            for (int nt = 0; nt < BLOCK_N / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
            float cores_sum = 0.f;  // DECODE_CORES: this lane's sum over the item's CUDA-core tiles

            if (!(ABLATE & 16) && stop > start) {
                // STAGES - 1 tiles in flight; nnz[j] is the nonzero count of tile p + j (its entry's w),
                // kept in registers (unrolled shifts) for the decode choice
                int nnz[STAGES - 1];
#pragma unroll
                for (int j = 0; j < STAGES - 1; ++j) {
                    nnz[j] = 0;
                    if (start + j < stop) {
                        const int4 e = entries_get(ent, entries, start + j, lane);
                        issue_tile(a, xc, stages + j * STAGE_BYTES, bars + 8 * j, e,
                                   kind_of(start + j, s_bitmap, s_index, s_empty), tid);
                        if (DECODE_REGS || DECODE_CORES) nnz[j] = e.w;
                    }
                    cp_async_commit();
                }
                for (int p = start; p < stop; ++p) {
                    const int k = p - start;
                    const int tile_nnz = nnz[0];
#pragma unroll
                    for (int j = 0; j + 1 < STAGES - 1; ++j) nnz[j] = nnz[j + 1];
                    nnz[STAGES - 2] = 0;
                    cp_async_wait_stages();
#if BULK_COPY
                    mbar_wait(bars + 8 * (k % STAGES), (phases >> (k % STAGES)) & 1u);
                    phases ^= 1u << (k % STAGES);
#endif
                    __syncthreads();  // tile p landed; every warp is done with tile p - 1's stage
                    if (p + STAGES - 1 < stop) {
                        const int4 e = entries_get(ent, entries, p + STAGES - 1, lane);
                        const int s = (k + STAGES - 1) % STAGES;
                        issue_tile(a, xc, stages + s * STAGE_BYTES, bars + 8 * s, e,
                                   kind_of(p + STAGES - 1, s_bitmap, s_index, s_empty), tid);
                        if (DECODE_REGS || DECODE_CORES) nnz[STAGES - 2] = e.w;
                    }
                    cp_async_commit();
                    const unsigned char* stage = stages + (k % STAGES) * STAGE_BYTES;
                    const int kind = kind_of(p, s_bitmap, s_index, s_empty);
                    bool on_cores = false;
                    float x0 = 0.f, x1 = 0.f;  // token 0's X columns lane, lane + 32 for the CUDA-core path
                    if (DECODE_CORES && a.N == 1 && !(ABLATE & 6) && kind == KIND_BITMAP && tile_nnz < CORES_MAX_NNZ) {
                        // skipped zeros would not turn an Inf or NaN of X into NaN: such tiles take the mma path
                        const unsigned char* x_row = stage + VALS_BYTES + META_ROOM;
                        const u16 c0 = ((const u16*)x_row)[lane], c1 = ((const u16*)x_row)[lane + 32];
                        x0 = to_float(c0), x1 = to_float(c1);
                        on_cores = !__any_sync(0xffffffffu, pair_nonfinite(c0 | ((u32)c1 << 16)));
                    }
                    if (on_cores) {
                        cores_sum = cores_tile(cores_sum, stage, x0, x1, warp, lane);
                    } else if (DECODE_REGS && !(ABLATE & 6) && kind == KIND_BITMAP && tile_nnz >= REGS_MIN_NNZ) {
                        if (!(ABLATE & 32)) mma_tile_regs(acc, stage, stage + VALS_BYTES + META_ROOM, warp, lane);
                    } else {
                        if (!(ABLATE & 6)) build_rows(a_s, stage, kind, warp, lane);
                        __syncwarp();
                        if (!(ABLATE & 32)) mma_tile(acc, a_s, stage + VALS_BYTES + META_ROOM, warp, lane);
                    }
                    __syncwarp();  // the warp's A rows are rebuilt by the next tile
                }
                __syncthreads();  // the stages are reused by the next item
                if (DECODE_CORES) cores_fold(acc, cores_sum, lane);
            }
            if (wi + 1 < wi_end) {  // next item's tables, in flight during this item's epilogue
                rec = rec_next;
                s_bitmap = a.sections[5 * rec.x + 1], s_index = a.sections[5 * rec.x + 2], s_empty = a.sections[5 * rec.x + 3];
                entries_start(ent, entries, rec.y, rec.z, lane);
            }

            if (slot < 0 || (ABLATE & 1)) {
                store_out(a, acc, row, n0, warp, lane);
            } else {
                // fp32 partial per slot and token tile (part_index), the token sub-tiles that hold tokens
                const int n_sub = min(BLOCK_N / 8, (a.N - n0 + 7) / 8);
                float* part = a.ws + ((u64)slot * a.n_token_tiles + t) * PART_FLOATS;
#pragma unroll
                for (int nt = 0; nt < BLOCK_N / 8; ++nt)
                    if (nt < n_sub)
#pragma unroll
                        for (int h = 0; h < 2; ++h)
                            *(float2*)(part + part_index(nt, tid) + 2 * h) = make_float2(acc[nt][2 * h], acc[nt][2 * h + 1]);
                if (ABLATE & 64) continue;
                // the block's stores happen before thread 0's release (bar.sync, then a cumulative
                // fence at GPU scope); the last arrival's acquire makes every part's stores visible
                __syncthreads();
                if (tid == 0) {
                    const int n_parts = a.row_parts[2 * row + 1];
                    const int arrived = arrive_gpu(a.counters + row * a.counter_stride + t);
                    last_flag = arrived == n_parts - 1;
                }
                __syncthreads();
                if (last_flag) {
                    // the stages are free: the item's tiles are done (block barrier after its last tile)
                    sum_partials(a, acc, smem, a.row_parts[2 * row], a.row_parts[2 * row + 1], t, n_sub, tid);
                    store_out(a, acc, row, n0, warp, lane);
                    if (tid == 0) a.counters[row * a.counter_stride + t] = 0;
                }
                __syncthreads();
            }
        }
    }
}
