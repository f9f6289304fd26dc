// The slice kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for up to 16 tokens, on
// tensor cores, over the slice format (pack/slices.py). The weight is the B operand of mma.m16n8k16
// (8 rows x 16 columns per step), X the A operand (16 tokens): a lane's two B registers are two
// pairs of weight elements, each a stored word or zero, found from the step's head (a mask of the
// half warp's 32 pairs and the position of its first stored word) by one popcount.
//
// Work: block b takes the n-tiles (8 rows) [ranges[b], ranges[b + 1]); warp w takes the columns of
// its `pieces` pieces of SP steps (a K-slice), holds X's A registers for a piece (4 SP registers;
// X is never in shared memory), and walks the block's n-tiles over them: a step's head is loaded
// two n-tiles ahead (one load per lane for all its steps), its words D steps ahead of its mma,
// and L2 is asked for the piece's streams ahead (heads 4 n-tiles, words PREFETCH bytes). Each warp
// adds its n-tile partial sums into its own region of shared memory; at the end of a round (at most
// rt n-tiles) the block sums the regions in warp order (deterministic) and writes the rows.
//
// Non-finite inputs: every weight element of a step is multiplied, zeros included (0 x Inf = NaN),
// so the result is the dense product's: nan_policy "propagate".
//
// Compile-time parameters (NVRTC -D): IS_BF16, WARPS, SP (steps per piece), D (steps of words in
// flight, a divisor of SP), WORDS (where the words in flight wait: 0 registers, the build measured;
// 1 and 2 built, not yet run on a GPU), PREFETCH. Requirements checked by the launcher: K % 8 == 0, x
// 8-byte aligned with an even row stride, 1 <= n_tok <= 16, dynamic shared memory
// pack/slices.smem_bytes (the partial sums of rt n-tiles per warp; WORDS 1: each warp's ring).

#ifndef WARPS
#define WARPS 16
#endif
#ifndef SP
#define SP 16
#endif
#ifndef D
#define D 8
#endif
#ifndef WORDS
#define WORDS 0  // where a step's words wait from D steps ahead: 0 registers, 1 shared memory (cp.async), 2 L1
#endif
#if WORDS < 0 || WORDS > 2
#error "WORDS must be 0, 1 or 2"
#endif
#ifndef PREFETCH
#define PREFETCH 8192  // bytes past an n-tile's first word that its start asks L2 for (0: none)
#endif
#if PREFETCH > 12288
#error "PREFETCH must be at most 12 KB (the format's padding: pack/slices.PAD_WORDS)"
#endif
#if SP != 8 && SP != 16
#error "SP must be 8 or 16 (an n-tile's heads: one 8-byte load per lane of SP * 2 lanes)"
#endif
#if D < 1 || SP % D != 0
#error "D must divide SP (the ring of words ahead lines up with every n-tile)"
#endif
#define THREADS (WARPS * 32)

#include "dtype.cuh"
#include "mma.cuh"
#include "async.cuh"

__device__ __forceinline__ uint2 load_head(const u32* p) {
    uint2 v;
    asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 load_word(const u32* p) {
    u32 v;
    asm volatile("ld.global.nc.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ void prefetch_l2(const u32* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ void prefetch_l1(const u32* p) {
    asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ void copy_word(u32 dst, const u32* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void copy_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint2 load_shared2(u32 addr) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
    return v;
}

// a step D ahead, for this lane: the half warp's mask and, by WORDS, its two candidate words (0), nothing
// more (1: the words are on their way to the lane's slot of the warp's ring in shared memory, one
// cp.async group per step), or their address (2: the line asked of L1, the words loaded when the step
// is multiplied). ptxas issues a load whose result is not needed yet where it likes, late (the second
// build's SASS, docs/perf-notes.md); a copy to shared memory or a prefetch has no result to wait for.
struct Words {
    u32 mask;
#if WORDS == 0
    u32 w0, w1;
#elif WORDS == 2
    const u32* p;
#endif
};

extern "C" __global__ void __launch_bounds__(THREADS, 1) slice_mma(
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const u32* __restrict__ heads,
    const u32* __restrict__ words, const int* __restrict__ ranges, int m, int k, int n_tok, int ldx, int ldy,
    int tiles, int pieces, int rt) {
    extern __shared__ __align__(16) unsigned char smem[];
    float4* part = reinterpret_cast<float4*>(smem);  // [WARPS][rt][32]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q = lane & 3, j = lane & 15, half = lane >> 4;
    const u32 below = (1u << (2 * j)) - 1u, bit0 = 1u << (2 * j), bit1 = 2u << (2 * j);
    const int t0 = ranges[blockIdx.x], t1 = ranges[blockIdx.x + 1];
    float4* mine = part + (size_t)warp * rt * 32 + lane;
    // WORDS 1: the warp's ring of step slots after all the partial sums, lane's 8 bytes in each
    const u32 ring = smem_u32(smem + (size_t)WARPS * rt * 512) + warp * (D * 256) + lane * 8;

    for (int r0 = t0; r0 < t1; r0 += rt) {
        const int r1 = min(r0 + rt, t1), nr = r1 - r0;
        for (int i = 0; i < nr; ++i) mine[i * 32] = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int pc = warp * pieces; pc < (warp + 1) * pieces; ++pc) {
            const int step0 = pc * SP;
            // X's A registers for the piece: a0 a2 = X[g][c .. c + 3], a1 a3 = X[g + 8][c .. c + 3] with
            // c = 16 (step0 + u) + 4 q (the format gives lane q the columns 4q .. 4q + 3 of a step); 32-bit
            // loads, so that each register is loaded where the mma wants it (an aligned quad)
            u32 xa[SP][4];
#pragma unroll
            for (int u = 0; u < SP; ++u) {
                const int c = (step0 + u) * 16 + 4 * q;
                const u32* lo = reinterpret_cast<const u32*>(x + (size_t)g * ldx + c);
                const u32* hi = reinterpret_cast<const u32*>(x + (size_t)(g + 8) * ldx + c);
                const bool in = c < k, in_lo = in && g < n_tok, in_hi = in && g + 8 < n_tok;
                xa[u][0] = in_lo ? lo[0] : 0u;
                xa[u][1] = in_hi ? hi[0] : 0u;
                xa[u][2] = in_lo ? lo[1] : 0u;
                xa[u][3] = in_hi ? hi[1] : 0u;
            }
            // an n-tile's heads (2 halves x SP steps x {mask, start}) are one coalesced load, lane 16 h + u
            // holding half h's step u (u < SP), loaded two n-tiles ahead; a step's head reaches its half
            // warp by two shuffles within 16 lanes (the step an immediate). Words are loaded D steps ahead.
            // Reads past the round's end stay inside the format (HEAD_PAD n-tiles of heads past the last
            // piece, words of padding)
            const u32* hbase = heads + ((size_t)pc * tiles + r0) * (SP * 4) + 2 * (half * SP + (lane & 15) % SP);
            auto block_at = [&](int i) { return load_head(hbase + i * (SP * 4)); };
            // WORDS 1: lane's slot of step u in the warp's ring (D slots of 32 lanes x 2 words)
            auto slot = [&](int u) { return ring + (u32)((u % D) * 256); };
            auto words_for = [&](const uint2& blk, int u, int slot_u) {
                const u32 mask = __shfl_sync(0xffffffffu, blk.x, u, 16);
                const u32 start = __shfl_sync(0xffffffffu, blk.y, u, 16);
                const u32* p = words + (start + (u32)__popc(mask & below));  // one 32-bit add, one wide multiply-add
                Words w;
                w.mask = mask;
#if WORDS == 0
                w.w0 = load_word(p);
                w.w1 = load_word(p + 1);
#elif WORDS == 1
                copy_word(slot(slot_u), p);
                copy_word(slot(slot_u) + 4, p + 1);
                copy_commit();
#else
                w.p = p;
                prefetch_l1(p);
#endif
                return w;
            };
            uint2 b0 = block_at(0), b1 = block_at(1);
            Words wd[D];
#pragma unroll
            for (int u = 0; u < D; ++u) wd[u] = words_for(b0, u, u);
            for (int i = 0; i < nr; ++i) {
                const uint2 b2 = block_at(i + 2);
#if PREFETCH
                // the piece's heads and words are streams over the n-tiles: L2 is asked for the heads 4 n-tiles
                // ahead and for the 4 KB of words that start PREFETCH bytes past this n-tile's first word
                if (lane < SP / 8) prefetch_l2(hbase - 2 * (half * SP + (lane & 15) % SP) + (i + 4) * (SP * 4) + 32 * lane);
                prefetch_l2(words + __shfl_sync(0xffffffffu, b0.y, 0) + (PREFETCH / 4) + 32 * lane);
#endif
                float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                for (int u = 0; u < SP; ++u) {
                    const Words cur = wd[u % D];
#if WORDS == 0
                    const u32 w0 = cur.w0, w1 = cur.w1;
#elif WORDS == 1
                    copy_wait<D - 1>();  // this step's group is complete; the D - 1 after it may not be
                    const uint2 sw = load_shared2(slot(u));
                    const u32 w0 = sw.x, w1 = sw.y;
#else
                    const u32 w0 = load_word(cur.p), w1 = load_word(cur.p + 1);
#endif
                    const bool p0 = cur.mask & bit0, p1 = cur.mask & bit1;
                    const u32 bw0 = p0 ? w0 : 0u;
                    const u32 bw1 = p1 ? (p0 ? w1 : w0) : 0u;
                    // step u + D (its slot is step u's, read above)
                    wd[u % D] = u + D < SP ? words_for(b0, u + D, u) : words_for(b1, u + D - SP, u);
                    mma16816(acc[u & 1], xa[u], bw0, bw1);
                }
                b0 = b1;
                b1 = b2;
                float4 s = mine[i * 32];
                s.x += acc[0][0] + acc[1][0];
                s.y += acc[0][1] + acc[1][1];
                s.z += acc[0][2] + acc[1][2];
                s.w += acc[0][3] + acc[1][3];
                mine[i * 32] = s;
            }
#if WORDS == 1
            copy_wait<0>();  // the copies for steps past the piece's last land before the ring is reused
#endif
        }
        __syncthreads();
        // the warps' regions summed in warp order; fragment f = (n-tile f / 32, lane f % 32): rows
        // 8 n + 2 q' and 8 n + 2 q' + 1 for tokens g' and g' + 8
        for (int f = tid; f < nr * 32; f += THREADS) {
            float4 s = part[f];
#pragma unroll 4
            for (int w = 1; w < WARPS; ++w) {
                const float4 v = part[(size_t)w * rt * 32 + f];
                s.x += v.x;
                s.y += v.y;
                s.z += v.z;
                s.w += v.w;
            }
            const int fl = f & 31, fg = fl >> 2, row = (r0 + (f >> 5)) * 8 + 2 * (fl & 3);
            const float v[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = fg + 8 * (e >> 1), r = row + (e & 1);
                if (t < n_tok && r < m)
                    y[(size_t)t * ldy + r] = from_float(v[e] + (bias ? to_float(bias[r]) : 0.f));
            }
        }
        __syncthreads();
    }
}
