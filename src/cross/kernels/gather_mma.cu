// The gather kernel: y[t, r] = sum over the nonzeros w[r, c] of w[r, c] * x[t, c] (+ bias[r]) for up
// to 16 tokens, on tensor cores, over the gather format (pack/gather.py), at a cost per stored slot:
// a step multiplies 16 slots of a group of 8 rows by the 16 tokens with one mma.m16n8k16, whose A
// operand (16 tokens x 16 slots) is X gathered at the slots' columns by one ldmatrix.x4.trans from
// shared memory, and whose B operand (16 slots x 8 rows) is the slots' pair words, each held by the
// lane of its row (lane 4 g + q holds one word a record: pair class q's position (g - q) mod 8) and
// zero in the others.
//
// X in shared memory: column c's 16 tokens as two 16-byte halves (tokens 0-7, 8-15), the half h at
// byte 32 c + 16 (h ^ bit 2 of c): an ldmatrix matrix reads 8 slots of 8 different classes (column
// mod 8), which this swizzle puts in 8 different bank groups (one wavefront a matrix). A slot's class
// is fixed, so its address is the lane's constant plus 8 columns' bytes (256; 128 at 8 tokens) per unit
// of its stored column (the column / 8), and the swizzle is the lane's constant.
//
// Work: one block per SM, persistent over its groups and their segments (blocks[b]: g0, g1, s_lo, s_hi;
// host balanced by segments); its warps take the groups' segments in turn (warp w: w, w + WARPS, ...); a
// segment's partial sums (a lane's 4 accumulators) are added into the block's fp32 sums of its
// groups in shared memory (atomic adds: the order of a row's segments is the warps' timing, so the
// last bits are not reproducible run to run), which the block writes once its warps are done. A
// warp loads its next segment's entry a segment ahead and (PREFETCH) asks L2 for that segment's
// records as it starts the one before, and holds DEPTH records ahead in registers (3 words a lane each).
// Before any step every block stages all of X (every SM reads it from L2: ~5 us of a launch at 16 tokens
// and K = 4096 on an H200, docs/perf-notes.md, "The gather kernel's fixed part, measured"), X_BATCH units
// a thread at a time.
//
// Compile-time parameters (NVRTC -D): IS_BF16, WARPS, NT (16, or 8: X's columns half as wide, one
// ldmatrix.x2 a step), DEPTH, PREFETCH, X_BATCH, X_SWAP; GATHER_ABLATE for profiling builds. Requirements checked by the launcher: K % 8 == 0, 1 <= n_tok <=
// NT, x 4-byte aligned with an even row stride, dynamic shared memory 2 NT K + 512 G bytes (G: the most
// groups a block takes).

#ifndef WARPS
#define WARPS 32
#endif
#ifndef NT
#define NT 16  // tokens per pass: 16, or 8 (X's column is one 16-byte half; ldmatrix.x2, half the wavefronts)
#endif
#if NT != 8 && NT != 16
#error "NT must be 8 or 16"
#endif
#define COL_BYTES (2 * NT)
#define THREADS (WARPS * 32)
#define REC_WORDS 64
#ifndef DEPTH
#define DEPTH 3  // records a warp holds in registers ahead of the one it multiplies
#endif
#ifndef PREFETCH
#define PREFETCH 1  // the next segment's records into L2 a segment ahead (0: not)
#endif
#ifndef X_BATCH
#define X_BATCH 4  // X's staging units a thread loads before it stores them (one round trip each batch)
#endif
#ifndef X_SWAP
#define X_SWAP 1  // 1: half the threads store their second column first (X's staging stores without 2-way conflicts)
#endif
#ifndef GATHER_ABLATE
// profiling builds only (results wrong): 1 every block exits once X is staged; 2 each warp runs at most
// its first segment (the time without the warps' second rounds)
#define GATHER_ABLATE 0
#endif

#include "dtype.cuh"
#include "async.cuh"
#include "mma.cuh"

// a bulk prefetch of bytes (a multiple of 16, from a 16-byte aligned address) into L2
__device__ __forceinline__ void prefetch_l2(const void* p, u32 bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" :: "l"(p), "r"(bytes) : "memory");
}

// what a lane reads of a record: the one pair word it keeps, its slot's four columns (16 bits each)
struct Rec {
    u32 w;
    uint2 cw;
};

__device__ __forceinline__ Rec load_rec(const uint4* rp, int widx, int kk) {
    Rec r;
    r.w = reinterpret_cast<const u32*>(rp)[widx];
    r.cw = reinterpret_cast<const uint2*>(rp)[16 + kk];
    return r;
}

// v, opaque to the compiler: a loop-invariant value it keeps in a register instead of recomputing
__device__ __forceinline__ u32 opaque(u32 v) {
    asm volatile("mov.b32 %0, %0;\n" : "+r"(v));
    return v;
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&a)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(addr));
}

// byte offset of column c's token half h in X's shared copy (at 8 tokens: 16 c, already 8 bank groups)
__device__ __forceinline__ u32 x_offset(u32 c, u32 h) {
    return NT == 16 ? 32u * c + ((h ^ ((c >> 2) & 1u)) << 4) : 16u * c;
}

__device__ __forceinline__ void ldmatrix_x2_trans(u32& a0, u32& a1, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(a0), "=r"(a1) : "r"(addr));
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
gather_mma(const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias,
           const uint4* __restrict__ records, const int4* __restrict__ segs, const int4* __restrict__ blocks, int m, int k, int n_tok, int ldx, int ldy) {
    extern __shared__ uint4 smem[];
    u16* xs = reinterpret_cast<u16*>(smem);
    float* acc = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + COL_BYTES * (size_t)k);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int4 bt = blocks[blockIdx.x];  // its groups [g0, g1) and their segments [s_lo, s_hi)
    const int g0 = bt.x, g1 = bt.y, s_lo = bt.z, s_hi = bt.w;
    // the segments a warp takes first, loaded before X is staged (their loads overlap X's)
    const int4 none = make_int4(0, 0, 0, 0);
    int4 sg_next = s_lo + warp < s_hi ? segs[s_lo + warp] : none;
    int4 sg_after = s_lo + warp + WARPS < s_hi ? segs[s_lo + warp + WARPS] : none;
    // the lane's slot (see below)
    const int kk = (lane & 7) + ((NT == 16 ? lane >> 4 : (lane >> 3) & 1) << 3), hh = NT == 16 ? (lane >> 3) & 1 : 0;
    for (int i = tid; i < (g1 - g0) * 128; i += THREADS) acc[i] = 0.f;

    // X staged: a thread takes columns (2 p, 2 p + 1) of token half h: 8 words of X, two 16-byte rows.
    // X_BATCH units a thread at a time, their loads issued before any store (one round trip a batch);
    // X_SWAP: threads with bit 2 set store column 2 p + 1 first, so that each store instruction of a warp
    // reaches 8 bank groups (4 wavefronts) instead of 4
    const int x_units = k * NT / 16;
    for (int u0 = tid; u0 < x_units; u0 += THREADS * X_BATCH) {
        u32 w[X_BATCH][8];
        // unit u0 + b THREADS: the same half (THREADS is even), its columns b THREADS (16 tokens) or 2 b THREADS
        // (8) further on
        const int h0 = NT == 16 ? u0 & 1 : 0;
        const u16* xp = x + (size_t)(8 * h0) * ldx + 2 * (NT == 16 ? u0 >> 1 : u0);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const bool tok = 8 * h0 + j < n_tok;
#pragma unroll
            for (int b = 0; b < X_BATCH; ++b)
                w[b][j] = tok && u0 + b * THREADS < x_units
                              ? *reinterpret_cast<const u32*>(xp + (NT == 16 ? 1 : 2) * b * THREADS) : 0u;
            xp += ldx;
        }
#pragma unroll
        for (int b = 0; b < X_BATCH; ++b) {
            const int u = u0 + b * THREADS;
            if (u >= x_units) break;
            const int p = NT == 16 ? u >> 1 : u, h = NT == 16 ? u & 1 : 0;
            uint4 lo, hi;
            lo.x = __byte_perm(w[b][0], w[b][1], 0x5410); hi.x = __byte_perm(w[b][0], w[b][1], 0x7632);
            lo.y = __byte_perm(w[b][2], w[b][3], 0x5410); hi.y = __byte_perm(w[b][2], w[b][3], 0x7632);
            lo.z = __byte_perm(w[b][4], w[b][5], 0x5410); hi.z = __byte_perm(w[b][4], w[b][5], 0x7632);
            lo.w = __byte_perm(w[b][6], w[b][7], 0x5410); hi.w = __byte_perm(w[b][6], w[b][7], 0x7632);
            const int sw = X_SWAP ? (tid >> 2) & 1 : 0;
            *reinterpret_cast<uint4*>(reinterpret_cast<char*>(xs) + x_offset(2 * p + sw, h)) = sw ? hi : lo;
            *reinterpret_cast<uint4*>(reinterpret_cast<char*>(xs) + x_offset(2 * p + 1 - sw, h)) = sw ? lo : hi;
        }
    }
#if PREFETCH
    if (lane == 0 && sg_next.z > 0) prefetch_l2(records + (size_t)sg_next.y * (REC_WORDS / 4), sg_next.z * REC_WORDS * 4);
#endif
    __syncthreads();
#if GATHER_ABLATE == 1
    return;
#endif

    // the lane's roles: ldmatrix row supplier of slot kk, half hh; B holder of row g4, pair class q
    // (at 8 tokens lanes 0-15 give the addresses: slot (lane & 7) + 8 ((lane >> 3) & 1), half 0)
    const int cls = kk & 7;
    const u32 lane_off = opaque(smem_u32(xs) + x_offset(cls, hh));
    const int g4 = lane >> 2, q = lane & 3;
    const int pos = (g4 - q) & 7, widx = 8 * q + pos;  // the word it keeps: step pos >> 1, register pos & 1
    // per step and B register, all ones where the lane's word goes there (registers, not recomputed)
    u32 keep[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) keep[i] = opaque(i == pos ? 0xFFFFFFFFu : 0u);
#if GATHER_ABLATE == 2
    const int s_end = min(s_hi, s_lo + WARPS);
#else
    const int s_end = s_hi;
#endif
    for (int s = s_lo + warp; s < s_end; s += WARPS) {
        const int4 sg = sg_next;
        sg_next = sg_after;
        sg_after = s + 2 * WARPS < s_hi ? segs[s + 2 * WARPS] : none;
#if PREFETCH
        // the warp's next segment's records, a segment of work ahead of their first load
        if (lane == 0 && sg_next.z > 0)
            prefetch_l2(records + (size_t)sg_next.y * (REC_WORDS / 4), sg_next.z * REC_WORDS * 4);
#endif
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        const uint4* rp = records + (size_t)sg.y * (REC_WORDS / 4);
        // records in registers DEPTH ahead: buf[j] holds record i + j of each round of DEPTH + 1 (static
        // indices, no copies between registers); the loads of record i + DEPTH + 1 go out as record i is used
        Rec buf[DEPTH + 1];
#pragma unroll
        for (int j = 0; j <= DEPTH; ++j)
            if (j < sg.z) buf[j] = load_rec(rp + j * (REC_WORDS / 4), widx, kk);
        const uint4* np = rp + (DEPTH + 1) * (REC_WORDS / 4);  // the next record to load
        for (int i = 0; i < sg.z; i += DEPTH + 1) {
#pragma unroll
            for (int j = 0; j <= DEPTH; ++j) {
                if (i + j < sg.z) {
                    const Rec r = buf[j];
                    if (i + j + DEPTH + 1 < sg.z) buf[j] = load_rec(np, widx, kk);
                    np += REC_WORDS / 4;
#pragma unroll
                    for (int cc = 0; cc < 4; ++cc) {
                        const u32 u = ((cc < 2 ? r.cw.x : r.cw.y) >> (16 * (cc & 1))) & 0xFFFFu;
                        const u32 addr = lane_off + u * (8u * COL_BYTES);
                        u32 a[4];
#if NT == 16
                        ldmatrix_x4_trans(a, addr);
#else
                        ldmatrix_x2_trans(a[0], a[2], addr);  // tokens 0-7 of slots 0-7 and 8-15
                        a[1] = a[3] = 0u;
#endif
                        mma16816(c, a, r.w & keep[2 * cc], r.w & keep[2 * cc + 1]);
                    }
                }
            }
        }
        // c0, c1: token g4, rows 2q, 2q + 1; c2, c3: token g4 + 8
        float* ga = acc + (sg.x - g0) * 128;
        atomicAdd(ga + g4 * 8 + 2 * q, c[0]);
        atomicAdd(ga + g4 * 8 + 2 * q + 1, c[1]);
        if (NT == 16) {
            atomicAdd(ga + (g4 + 8) * 8 + 2 * q, c[2]);
            atomicAdd(ga + (g4 + 8) * 8 + 2 * q + 1, c[3]);
        }
    }
    __syncthreads();

    // the block's groups' sums, token by token (8 consecutive rows a group)
    for (int i = tid; i < (g1 - g0) * 128; i += THREADS) {
        const int gl = i >> 7, t = (i >> 3) & 15, row = (g0 + gl) * 8 + (i & 7);
        if (t < n_tok && row < m) {
            float v = acc[i];
            if (bias != nullptr) v += to_float(bias[row]);
            y[(size_t)t * ldy + row] = from_float(v);
        }
    }
}
