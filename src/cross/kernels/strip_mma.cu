// The strip kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for NT = 8 or 16 tokens,
// on tensor cores, over the strip format (pack/strips.py): each lane decodes its mask byte and its
// values straight into its mma.m16n8k16 A registers, so the decode is a few integer instructions per
// lane and step, shared by the NT tokens, with no load per element and no A tile in shared memory.
//
// Per block (WARPS warps, one block per SM): X is read once into shared memory ([NT][SX] 16-bit,
// rows 32 bytes apart modulo 128 so that a warp's B loads take two wavefronts), each warp its own
// columns, with its first chunk's copies. The block walks its
// strips; warp w computes its columns of each strip (its chunks) into fp32 mma accumulators; the
// block sums the warps' partial sums in warp order and writes the strip (deterministic). Each warp
// copies its region of the format into its ring in shared memory (cp.async, DEPTH chunks ahead), and
// each lane reads its own column of the ring: three 32-bit words from its position, which hold the 4
// values a nibble of mask may need at any half-word offset.
//
// A nibble (4 bits: one row, 4 columns) becomes two registers of the A operand: elements 0-1 from
// the window's first two values, elements 2-3 from the next two after the values elements 0-1 took
// (a funnel shift by their count), each by a byte permutation that fills unset elements with zero.
//
// Non-finite inputs: every element is multiplied, zeros included, so the result is the dense
// product's (0 x Inf = NaN where a zero of row r meets a non-finite input): nan_policy "propagate".
//
// Compile-time parameters (NVRTC -D): IS_BF16, NT (8 or 16), WARPS, RING (rows, a power of two),
// DEPTH (chunks in flight). Requirements checked by the launcher: K % 8 == 0, x 16-byte aligned
// with a row stride a multiple of 8, 1 <= n_tok <= NT, dynamic shared memory strips.smem_bytes.

#ifndef NT
#define NT 16
#endif
#ifndef WARPS
#define WARPS 8
#endif
#ifndef RING
#define RING 64
#endif
#ifndef DEPTH
#define DEPTH 3
#endif
#ifndef MT
#define MT 1  // m-tiles (16 rows each) per warp and step: each decodes its own A, all share X's B
#endif
#define ACC_SETS (MT == 1 ? 2 : 1)  // accumulators per m-tile and mma: independent chains of mmas
#if DEPTH > 32
#error "DEPTH must be at most 32 (the lanes hold 64 chunks' table entries)"
#endif
#define THREADS (WARPS * 32)
#define NH (NT / 8)       // mmas per step (8 tokens each)
// mask ring: one row (32 words) per chunk in flight, a power of two
#define MSLOTS (DEPTH < 2 ? 2 : DEPTH < 4 ? 4 : DEPTH < 8 ? 8 : DEPTH < 16 ? 16 : 32)
#if NT != 8 && NT != 16
#error "NT must be 8 or 16"
#endif

#include "dtype.cuh"
#include "async.cuh"

__device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if IS_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {  // PTX prmt: no masking of the selector
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

// the byte selectors of a step's four register pairs (mask byte mb: bits 2i, 2i + 1 are pair i):
// a pair's two mask bits b pick (e0, e1) from values (v0, v1) of a word and zeros (bytes 4-7 of a
// zero word): 00 -> (0, 0) 0x5454, 01 -> (v0, 0) 0x5410, 10 -> (0, v0) 0x1054, 11 -> (v0, v1)
// 0x3210. The four are 16-bit fields of two constants; spreading the pairs into bytes (b -> 0x22 b
// + 0x10: the field's two byte indices) makes one permutation pick two of them.
// sel[0]: pairs 0 (low 16 bits) and 1 (high), sel[1]: pairs 2 and 3
__device__ __forceinline__ void step_selectors(u32 (&sel)[2], u32 mb) {
    const u32 y = (mb * 0x1001u) & 0x000f000fu;           // nibbles to bits 0-3 and 16-19
    const u32 z = (y * 0x41u) & 0x03030303u;              // pairs to bytes
    const u32 ss = z * 0x22u + 0x10101010u;
    sel[0] = prmt(0x54105454u, 0x32101054u, ss);
    sel[1] = prmt(0x54105454u, 0x32101054u, ss >> 16);
}

// a nibble's three words from half-word position p of the lane's stream (they hold its 4 values at
// any half-word offset)
struct Window {
    u32 w0, w1, w2, s;
};
__device__ __forceinline__ Window load_window(u32 p, const u32* ring) {
    const u32* w = ring + ((p >> 1) & (RING - 1)) * 32;
    return Window{w[0], w[32], w[64], (p & 1u) << 4};
}

// one nibble of mask m (selectors sel: low 16 bits columns 0-1, high 16 bits columns 2-3) from its
// window: A registers r01 (columns 0-1) and r23 (columns 2-3)
__device__ __forceinline__ void decode_nibble(u32& r01, u32& r23, u32 m, u32 sel, const Window& w) {
    const u32 lo = __funnelshift_r(w.w0, w.w1, w.s), hi = __funnelshift_r(w.w1, w.w2, w.s);
    const u32 x = __funnelshift_rc(lo, hi, __popc(m & 3u) << 4);
    r01 = prmt(lo, 0u, sel);
    r23 = prmt(x, 0u, sel >> 16);
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) strip_mma(
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const u32* __restrict__ values,
    const u32* __restrict__ masks, const int2* __restrict__ chunks, const int4* __restrict__ heads, int m, int k,
    int n_tok, int ldx, int ldy) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kc = (k + 63) & ~63;  // columns in whole chunks
    const int sx = kc + 16;          // X's row stride (half-words)
    u16* xs = reinterpret_cast<u16*>(smem);
    unsigned char* after_x = smem + (size_t)NT * sx * 2;
    u32* ring = reinterpret_cast<u32*>(after_x) + warp * ((RING + 2) * 32);
    u32* mring = reinterpret_cast<u32*>(after_x) + WARPS * ((RING + 2) * 32) + warp * (MSLOTS * MT * 32);
    float4* part = reinterpret_cast<float4*>(after_x + (size_t)WARPS * (RING + 2 + MSLOTS * MT) * 128);
    u64* bars = reinterpret_cast<u64*>(after_x + (size_t)WARPS * (RING + 2 + MSLOTS * MT) * 128 +
                                       (size_t)WARPS * MT * NH * 32 * 16) + warp * MSLOTS;

    const int4 h0 = heads[(blockIdx.x * WARPS + warp) * 2];
    const int4 h1 = heads[(blockIdx.x * WARPS + warp) * 2 + 1];
    const int s0 = h0.x, s1 = h0.y, cfirst = h0.z, cn = h0.w;
    const u32* region = values + (size_t)h1.x * 32;
    const u32* wmask = masks + (size_t)h1.y * MT * 32;
    const int2* table = chunks + h1.y;
    const int n_chunks = (s1 - s0) * cn;
    if (s1 <= s0) return;  // no strip for this block (the same for all its warps)
    if (lane < MSLOTS) mbar_init(smem_u32(bars + lane));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncwarp();

    // the chunk table held by the lanes, 64 chunks at a time (lane i: chunks tb + i and tb + 32 + i),
    // loaded 32 chunks before it is needed: no chunk waits on a load of its table entry
    int tb = 0;
    int2 t_cur = lane < n_chunks ? table[lane] : make_int2(0, 0);
    int2 t_nxt = 32 + lane < n_chunks ? table[32 + lane] : make_int2(0, 0);
    auto entry = [&](int e, bool hi) -> int {  // e in [tb, tb + 64), the same for every lane
        const int2 t = e >= tb + 32 ? t_nxt : t_cur;
        return __shfl_sync(0xffffffffu, hi ? t.y : t.x, e & 31);
    };

    // warp chunk c's copies, issued by lane 0 on the mbarrier of its mask slot: its new rows
    // [hi_{c-1}, hi_c) into the ring (at most 16 rows: at most one wrap), rows of slots 0-1 again past
    // the ring's end (so that a lane's three words never wrap), and its mask row
    int staged = 0;  // hi of the last chunk staged
    auto stage = [&](int c) {
        if (c >= n_chunks) return;
        const int r_lo = staged, r_hi = entry(c, true);
        staged = r_hi;
        if (lane == 0) {
            const u32 bar = smem_u32(bars + (c & (MSLOTS - 1)));
            const int lap = (r_hi - 1) & ~(RING - 1);   // the last multiple of RING below r_hi
            const int m_lo = max(r_lo, lap), m_hi = min(r_hi, lap + 2);  // rows of slots 0-1
            const int n_rows = r_hi - r_lo, n_mirror = max(0, m_hi - m_lo);
            mbar_arrive_expect(bar, (u32)(n_rows + n_mirror + MT) * 128u);
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the lanes' reads of these rows are done
            if (n_rows > 0) {
                const int first = lap > r_lo ? lap - r_lo : n_rows;  // rows up to the ring's end
                bulk_copy(smem_u32(ring + (r_lo & (RING - 1)) * 32), region + (size_t)r_lo * 32, first * 128u, bar);
                if (first < n_rows)
                    bulk_copy(smem_u32(ring), region + (size_t)lap * 32, (n_rows - first) * 128u, bar);
                if (n_mirror > 0)
                    bulk_copy(smem_u32(ring + (RING + (m_lo & (RING - 1))) * 32), region + (size_t)m_lo * 32,
                              n_mirror * 128u, bar);
            }
            bulk_copy(smem_u32(mring + (c & (MSLOTS - 1)) * MT * 32), wmask + (size_t)c * MT * 32, MT * 128u, bar);
        }
    };
    // the warp's columns of X into shared memory: a bulk copy per token, on chunk 0's mbarrier, by
    // lane 0 (with chunk 0's copies); tokens past n_tok and columns past K are zeros
    {
        const int c_lo = cfirst * 64, c_hi = min(cfirst + cn, kc / 64) * 64, c_in = max(0, min(c_hi, k) - c_lo);
        for (int t = 0; t < NT; ++t)
            for (int c = c_lo + lane * 8; c < c_hi; c += 256)
                if (t >= n_tok || c >= k) *reinterpret_cast<uint4*>(xs + t * sx + c) = make_uint4(0u, 0u, 0u, 0u);
        if (lane == 0 && c_in > 0 && n_chunks > 0) {
            const u32 bar = smem_u32(bars);
            // X's bytes join chunk 0's phase (no arrival: chunk 0's arrive.expect_tx makes it)
            asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"((u32)(c_in * 2 * n_tok)) : "memory");
            for (int t = 0; t < n_tok; ++t)
                bulk_copy(smem_u32(xs + t * sx + c_lo), x + (size_t)t * ldx + c_lo, (u32)c_in * 2u, bar);
        }
    }
#pragma unroll
    for (int c = 0; c < DEPTH; ++c) stage(c);

    const int g = lane >> 2, q = lane & 3;
    const u16* xg = xs + g * sx + 4 * q;  // the lane's B operand: token g (+ 8 h), columns 4q..4q+3 of a step
    const u32* lring = ring + lane;
    u32 p = 0;  // the lane's position in its stream (half-words)
    int c = 0;  // warp chunk
    for (int s = s0; s < s1; ++s) {
        float acc[ACC_SETS][MT][NH][4];
#pragma unroll
        for (int a = 0; a < ACC_SETS; ++a)
#pragma unroll
            for (int t = 0; t < MT; ++t)
#pragma unroll
                for (int h = 0; h < NH; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[a][t][h][e] = 0.f;
        for (int cc = 0; cc < cn; ++cc, ++c) {
            if (c == tb + 32) {  // the next 32 chunks' entries move down; the 32 after them are loaded
                tb += 32;
                t_cur = t_nxt;
                t_nxt = tb + 32 + lane < n_chunks ? table[tb + 32 + lane] : make_int2(0, 0);
            }
            __syncwarp();  // every lane is past chunk c - 1 before its rows are overwritten
            stage(c + DEPTH);
            p = max(p, (u32)entry(c, false) * 2u);
            mbar_wait(smem_u32(bars + (c & (MSLOTS - 1))), (u32)(c / MSLOTS) & 1u);
            u32 mword[MT];
#pragma unroll
            for (int t = 0; t < MT; ++t) mword[t] = mring[((c & (MSLOTS - 1)) * MT + t) * 32 + lane];
            const u16* xc = xg + (cfirst + cc) * 64;
            // the chunk's nibbles (step by step, m-tile by m-tile, row g then g + 8): every window's
            // loads and X's before any decode, so that the loads of all 4 steps are in flight together
            Window win[4][MT][2];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int t = 0; t < MT; ++t)
#pragma unroll
                    for (int n = 0; n < 2; ++n) {
                        win[j][t][n] = load_window(p, lring);
                        p += __popc((mword[t] >> (8 * j + 4 * n)) & 15u);
                    }
            uint2 b[4][NH];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int h = 0; h < NH; ++h) b[j][h] = *reinterpret_cast<const uint2*>(xc + h * 8 * sx + 16 * j);
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    const u32 mb = (mword[t] >> (8 * j)) & 0xffu;
                    u32 a[4], sel[2];
                    step_selectors(sel, mb);
                    decode_nibble(a[0], a[2], mb & 15u, sel[0], win[j][t][0]);
                    decode_nibble(a[1], a[3], mb >> 4, sel[1], win[j][t][1]);
#pragma unroll
                    for (int h = 0; h < NH; ++h) mma16816(acc[j % ACC_SETS][t][h], a, b[j][h].x, b[j][h].y);
                }
        }
        // the strip's partial sums: [warp][t][h][lane] float4, summed in warp order
        float4* mine = part + (size_t)warp * MT * NH * 32;
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int h = 0; h < NH; ++h) {
                float4 v = make_float4(acc[0][t][h][0], acc[0][t][h][1], acc[0][t][h][2], acc[0][t][h][3]);
#pragma unroll
                for (int a = 1; a < ACC_SETS; ++a) {
                    v.x += acc[a][t][h][0];
                    v.y += acc[a][t][h][1];
                    v.z += acc[a][t][h][2];
                    v.w += acc[a][t][h][3];
                }
                mine[(t * NH + h) * 32 + lane] = v;
            }
        __syncthreads();
        for (int i = tid; i < MT * NH * 32; i += THREADS) {
            const int t = i / (NH * 32), h = (i >> 5) % NH, l = i & 31, gg = l >> 2, qq = l & 3;
            const float4* col = part + i;
            float4 sum = col[0];
            for (int w = 1; w < WARPS; ++w) {
                const float4 v = col[(size_t)w * MT * NH * 32];
                sum.x += v.x;
                sum.y += v.y;
                sum.z += v.z;
                sum.w += v.w;
            }
            const int r0 = (s * MT + t) * 16 + gg, r1 = r0 + 8, t0 = h * 8 + 2 * qq, t1 = t0 + 1;
            const float b0 = bias && r0 < m ? to_float(bias[r0]) : 0.f, b1 = bias && r1 < m ? to_float(bias[r1]) : 0.f;
            if (r0 < m) {
                if (t0 < n_tok) y[(size_t)t0 * ldy + r0] = from_float(sum.x + b0);
                if (t1 < n_tok) y[(size_t)t1 * ldy + r0] = from_float(sum.y + b0);
            }
            if (r1 < m) {
                if (t0 < n_tok) y[(size_t)t0 * ldy + r1] = from_float(sum.z + b1);
                if (t1 < n_tok) y[(size_t)t1 * ldy + r1] = from_float(sum.w + b1);
            }
        }
        __syncthreads();  // the partial sums are read before the next strip writes them
    }
}
