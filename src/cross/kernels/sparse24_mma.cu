// The 2:4 kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for NT = 8 or 16 tokens, on
// the sparse tensor cores (mma.sp.sync.m16n8k32), over the 2:4 format (pack/sparse24.py): per warp
// step (16 MT rows x 64 columns) each lane loads its A words (16 bytes per m-tile and k-tile) and one
// metadata word, from addresses fixed by the layout, and the hardware picks the columns of X they
// multiply: no instruction per element. A group's third and fourth nonzeros (the overflow) are
// entries that each lane group multiplies on CUDA cores for its rows, found through the step's head
// words (loaded with the step) and asked of L1 a step ahead.
//
// Per block (WARPS warps, one block per SM): X is read once into shared memory by the bulk-copy
// engine (a copy per token row, rows 64 bytes apart modulo 128: a quarter warp's 16-byte loads in
// distinct banks) while the warps' first loads of the weight are in flight. The format's groups are
// permuted columns (pack/sparse24.py), so that a lane's B operand of a k-tile is 8 adjacent columns of
// X, one 16-byte load. The block walks its strips; warp w computes its share of each strip's steps
// into fp32 accumulators, loading AHEAD steps ahead (across strips) while it multiplies this one; the block sums the warps' partial sums in warp order (deterministic) and writes the strip.
//
// Non-finite inputs: only the stored slots are multiplied (a kept zero beside a lone nonzero is one),
// so where X holds Inf or NaN the result is not the dense product's; the caller checks X.
//
// Compile-time parameters (NVRTC -D): IS_BF16, NT (8 or 16), WARPS, MT (1 or 2), AHEAD (1 or 2),
// OVERFLOW (0 for a weight without overflow entries: no head words, no CUDA-core loop). Requirements checked
// by the launcher: K % 8 == 0, x 16-byte aligned with a row stride a multiple of 8, 1 <= n_tok <= NT,
// dynamic shared memory sparse24.smem_bytes.

#ifndef NT
#define NT 16
#endif
#ifndef WARPS
#define WARPS 16
#endif
#ifndef MT
#define MT 2
#endif
#ifndef AHEAD
#define AHEAD 2  // steps a warp loads ahead of the one it multiplies (1 or 2)
#endif
#define THREADS (WARPS * 32)
#define NH (NT / 8)          // n-tiles (8 tokens each)
#define TILE_U4 72           // uint4 per strip, step and m-tile: 64 of A words, 8 of metadata
#ifndef OVERFLOW
#define OVERFLOW 1  // the weight has overflow entries (and head words in each step)
#endif
#define STEP_U4 (MT * TILE_U4 + (OVERFLOW ? 8 : 0))  // uint4 per strip and step: its m-tiles, the head words
#define COUNT_SHIFT 25  // a head word: first entry (bits 0-24), entries (bits 25-31): pack/sparse24.START_BITS
#define START_MASK ((1u << COUNT_SHIFT) - 1u)
#if NT != 8 && NT != 16
#error "NT must be 8 or 16"
#endif

#include "dtype.cuh"
#include "async.cuh"
#include "strip_sum.cuh"

// d += A (2:4, a lane's four words, its metadata word e; positions in order) x B (32 x 8): the first k-tile of a step
// reads the metadata of lanes 4g and 4g + 1 (selector 0), the second that of 4g + 2 and 4g + 3
template <int SEL>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint4& a, const uint4& b, u32 e) {
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32." SP_TYPES ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "r"(b.z), "r"(b.w), "r"(e), "n"(SEL));
}

// a step of one m-tile: A words of both k-tiles and the metadata word, streamed past L1
struct Step {
    uint4 a[2];
    u32 e;
};

__device__ __forceinline__ void load_step(Step (&st)[MT], u32& head, const uint4* p, int lane) {
#if OVERFLOW
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n"
                 : "=r"(head) : "l"(reinterpret_cast<const u32*>(p + MT * TILE_U4) + lane));
#endif
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const uint4* q = p + t * TILE_U4;
#pragma unroll
        for (int kt = 0; kt < 2; ++kt)
            asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(st[t].a[kt].x), "=r"(st[t].a[kt].y), "=r"(st[t].a[kt].z), "=r"(st[t].a[kt].w)
                         : "l"(q + kt * 32 + lane));
        asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n"
                     : "=r"(st[t].e) : "l"(reinterpret_cast<const u32*>(q + 64) + lane));
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) sparse24_mma(
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const uint4* __restrict__ values,
    const u32* __restrict__ entries, int m, int k, int n_tok, int ldx, int ldy, int strips, int kp) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kc = kp * 64;     // columns in whole steps
    const int sx = kc + 32;     // X's row stride (half-words): 64 bytes modulo 128
    u16* xs = reinterpret_cast<u16*>(smem);
    float4* part = reinterpret_cast<float4*>(smem + (size_t)NT * sx * 2);
    u64* xbar = reinterpret_cast<u64*>(part + (size_t)WARPS * MT * NH * 32);

    // X: zeros where no copy lands (tokens past n_tok, columns past K), then a bulk copy per token
    if (tid == 0) mbar_init(smem_u32(xbar));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (int i = tid; i < NT * (kc / 8); i += THREADS) {
        const int t = i / (kc / 8), c = (i % (kc / 8)) * 8;
        if (t >= n_tok || c >= k) *reinterpret_cast<uint4*>(xs + (size_t)t * sx + c) = make_uint4(0u, 0u, 0u, 0u);
    }
    __syncthreads();
    if (tid == 0) {
        mbar_arrive_expect(smem_u32(xbar), (u32)(n_tok * k * 2));
        for (int t = 0; t < n_tok; ++t)
            bulk_copy(smem_u32(xs + (size_t)t * sx), x + (size_t)t * ldx, (u32)k * 2u, smem_u32(xbar));
    }

    const int s0 = (int)((long long)blockIdx.x * strips / gridDim.x);
    const int s1 = (int)((long long)(blockIdx.x + 1) * strips / gridDim.x);
    const int per = (kp + WARPS - 1) / WARPS;
    const int kb = min(kp, warp * per), ke = min(kp, kb + per);
    const int g = lane >> 2, q = lane & 3;
    const u16* xg = xs + g * sx + 8 * q;  // the lane's B operand: token g (+ 8 h), columns 8q .. 8q + 7 of a k-tile
    auto at = [&](int s, int st) { return values + ((size_t)s * kp + st) * STEP_U4; };

    // the warp's steps, strip after strip (its part of each): loads AHEAD steps ahead in registers,
    // across a strip's end, so that a warp keeps AHEAD + 1 steps of the weight in flight; the first
    // ones before X has landed
    int ls = s0, lst = kb;  // the next step to load
    auto advance = [&]() {
        if (++lst == ke) {
            lst = kb;
            ++ls;
        }
    };
    const bool any = s0 < s1 && kb < ke;
    Step cur[MT], n1[MT], n2[MT];
    u32 hcur = 0, hn1 = 0, hn2 = 0;  // the lane's head word of each step loaded
    if (any) {
        load_step(cur, hcur, at(ls, lst), lane);
        advance();
#if AHEAD == 2
        if (ls < s1) {
            load_step(n1, hn1, at(ls, lst), lane);
            advance();
        }
#endif
    }
    mbar_wait(smem_u32(xbar), 0u);
    for (int s = s0; s < s1; ++s) {
        float acc[2][MT][NH][4];
        zero_acc(acc);
        for (int st = kb; st < ke; ++st) {
            if (ls < s1) {
#if AHEAD == 2
                load_step(n2, hn2, at(ls, lst), lane);
#else
                load_step(n1, hn1, at(ls, lst), lane);
#endif
                advance();
            }
            // the next step's overflow entries of the lane's segment toward L1 (its head word arrived
            // with that step's loads), read by its lane group while this step's products run
            if (OVERFLOW && AHEAD == 2 && (hn1 >> COUNT_SHIFT)) {
                const u32* e = entries + (hn1 & START_MASK);
                asm volatile("prefetch.global.L1 [%0];\n" ::"l"(e));
                asm volatile("prefetch.global.L1 [%0];\n" ::"l"(e + (hn1 >> COUNT_SHIFT) - 1));
            }
#pragma unroll
            for (int kt = 0; kt < 2; ++kt) {
                uint4 b[NH];
#pragma unroll
                for (int h = 0; h < NH; ++h)
                    b[h] = *reinterpret_cast<const uint4*>(xg + h * 8 * sx + st * 64 + kt * 32);
#pragma unroll
                for (int t = 0; t < MT; ++t)
#pragma unroll
                    for (int h = 0; h < NH; ++h) {
                        if (kt == 0)
                            mma_sp<0>(acc[0][t][h], cur[t].a[0], b[h], cur[t].e);
                        else
                            mma_sp<1>(acc[1][t][h], cur[t].a[1], b[h], cur[t].e);
                    }
            }
            // the overflow entries of the step on CUDA cores: segment sg (m-tile sg / 2, rows g + 8 (sg % 2))
            // is named by lane 4 g + sg's head word; each of the group's lanes adds its tokens' products.
            // The first entry of every segment is loaded before any is used (one wait, not four)
#if OVERFLOW
            {
                u32 hw[2 * MT], e0[2 * MT];
#pragma unroll
                for (int sg = 0; sg < 2 * MT; ++sg) {
                    hw[sg] = __shfl_sync(0xffffffffu, hcur, (lane & ~3) | sg);
                    e0[sg] = (hw[sg] >> COUNT_SHIFT) ? __ldg(entries + (hw[sg] & START_MASK)) : 0u;
                }
#pragma unroll
                for (int sg = 0; sg < 2 * MT; ++sg) {
                    const u32* e = entries + (hw[sg] & START_MASK);
                    const int n = (int)(hw[sg] >> COUNT_SHIFT);
                    for (int i = 0; i < n; ++i) {
                        const u32 ent = i == 0 ? e0[sg] : __ldg(e + i);
                        const float v = to_float((u16)(ent & 0xffffu));
                        const u16* xc = xs + (2 * q) * sx + st * 64 + (ent >> 16);
#pragma unroll
                        for (int h = 0; h < NH; ++h) {
                            acc[0][sg / 2][h][2 * (sg % 2)] += v * to_float(xc[h * 8 * sx]);
                            acc[0][sg / 2][h][2 * (sg % 2) + 1] += v * to_float(xc[h * 8 * sx + sx]);
                        }
                    }
                }
            }
#endif
#pragma unroll
            for (int t = 0; t < MT; ++t) {
                cur[t] = n1[t];
#if AHEAD == 2
                n1[t] = n2[t];
#endif
            }
            hcur = hn1;
#if AHEAD == 2
            hn1 = hn2;
#endif
        }
        store_part(part, warp, lane, acc);  // summed in warp order by write_strip
        write_strip(part, s, bias, y, m, n_tok, ldy);
    }
}
