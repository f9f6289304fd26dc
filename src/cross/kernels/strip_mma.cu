// The strip kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for NT = 8 or 16 tokens,
// on tensor cores, over the strip format (pack/strips.py): a bit per pair of weight elements and the
// pairs that hold a nonzero stored whole, so that each of a lane's mma.m16n8k16 A registers is a
// stored word or zero: per step and m-tile a lane loads four words from its position in its stream
// and picks its registers among them by its four pair bits (selects, no decode of the elements),
// shared by the NT tokens.
//
// Per block (WARPS warps, one block per SM): X is read once into shared memory ([NT][SX] 16-bit,
// rows 32 bytes apart modulo 128 so that a warp's B loads take two wavefronts), each warp its own
// columns, with its first chunk's copies. The block walks its strips (MT m-tiles of 16 rows); warp w
// computes its columns of each strip (its chunks) into fp32 mma accumulators; the block sums the
// warps' partial sums in warp order and writes the strip (deterministic). Each warp's lane 0 copies
// the warp's region of the format into its ring in shared memory with the bulk-copy engine, DEPTH
// chunks ahead, and each lane reads its own column of the ring.
//
// Non-finite inputs: every element is multiplied, zeros included, so the result is the dense
// product's (0 x Inf = NaN where a zero of row r meets a non-finite input): nan_policy "propagate".
//
// Compile-time parameters (NVRTC -D): IS_BF16, NT (8 or 16), WARPS, RING (rows, a power of two),
// DEPTH (chunks in flight), MT (1 or 2). Requirements checked by the launcher: K % 8 == 0, x 16-byte
// aligned with a row stride a multiple of 8, 1 <= n_tok <= NT, dynamic shared memory
// strips.smem_bytes.

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
#define MT 1  // m-tiles (16 rows each) per warp and step: each picks its own A, all share X's B
#endif
#define ACC_SETS (MT == 1 ? 2 : 1)  // accumulators per m-tile and mma: independent chains of mmas
#define MIRROR 3  // ring rows copied again past its end: a lane's four words never wrap
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
#include "mma.cuh"
#include "async.cuh"
#include "strip_sum.cuh"

// a lane's four A registers of one step and m-tile from the four words w at its position and its
// pair bits, bits sh .. sh + 3 of the chunk word mw (register r holds a nonzero iff bit sh + r):
// register r is the stored word number popcount of the bits sh .. sh + r - 1, or zero. In PTX, so that
// each bit's test is one instruction (C++'s tests become a shift, a mask and a compare each)
__device__ __forceinline__ void select_pairs(u32 (&a)[4], u32 mw, int sh, const u32 (&w)[4]) {
    asm("{\n"
        ".reg .pred p0, p1, p2, p3;\n"
        ".reg .b32 b0, b1, b2, b3, s1, s2, s3, m1, m2;\n"
        "and.b32 b0, %4, %9;\n"
        "and.b32 b1, %4, %10;\n"
        "and.b32 b2, %4, %11;\n"
        "and.b32 b3, %4, %12;\n"
        "setp.ne.u32 p0, b0, 0;\n"
        "setp.ne.u32 p1, b1, 0;\n"
        "setp.ne.u32 p2, b2, 0;\n"
        "setp.ne.u32 p3, b3, 0;\n"
        "selp.b32 s1, %6, %5, p0;\n"   // s_i: word p0 + i
        "selp.b32 s2, %7, %6, p0;\n"
        "selp.b32 s3, %8, %7, p0;\n"
        "selp.b32 m1, s2, s1, p1;\n"   // m_i: word p0 + p1 + i - 1 (register 2's if p2)
        "selp.b32 m2, s3, s2, p1;\n"
        "selp.b32 %0, %5, 0, p0;\n"
        "selp.b32 %1, s1, 0, p1;\n"
        "selp.b32 %2, m1, 0, p2;\n"
        "selp.b32 m2, m2, m1, p2;\n"
        "selp.b32 %3, m2, 0, p3;\n"
        "}\n"
        : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
        : "r"(mw), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]), "r"(1u << sh), "r"(2u << sh), "r"(4u << sh),
          "r"(8u << sh));
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
    u32* ring = reinterpret_cast<u32*>(after_x) + warp * ((RING + MIRROR) * 32);
    u32* mring = reinterpret_cast<u32*>(after_x) + WARPS * ((RING + MIRROR) * 32) + warp * (MSLOTS * 32);
    float4* part = reinterpret_cast<float4*>(after_x + (size_t)WARPS * (RING + MIRROR + MSLOTS) * 128);
    u64* bars = reinterpret_cast<u64*>(after_x + (size_t)WARPS * (RING + MIRROR + MSLOTS) * 128 +
                                       (size_t)WARPS * MT * NH * 32 * 16) + warp * MSLOTS;

    const int4 h0 = heads[(blockIdx.x * WARPS + warp) * 2];
    const int4 h1 = heads[(blockIdx.x * WARPS + warp) * 2 + 1];
    const int s0 = h0.x, s1 = h0.y, cfirst = h0.z, cn = h0.w;
    const u32* region = values + (size_t)h1.x * 32;
    const u32* wmask = masks + (size_t)h1.y * 32;
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
    // [hi_{c-1}, hi_c) into the ring (at most 16 MT rows: at most one wrap), rows of slots 0-2 again past
    // the ring's end (so that a lane's four words never wrap), and its mask row
    int staged = 0;  // hi of the last chunk staged
    auto stage = [&](int c) {
        if (c >= n_chunks) return;
        const int r_lo = staged, r_hi = entry(c, true);
        staged = r_hi;
        if (lane == 0) {
            const u32 bar = smem_u32(bars + (c & (MSLOTS - 1)));
            const int lap = (r_hi - 1) & ~(RING - 1);   // the last multiple of RING below r_hi
            const int m_lo = max(r_lo, lap), m_hi = min(r_hi, lap + MIRROR);  // rows of slots 0-2
            const int n_rows = r_hi - r_lo, n_mirror = max(0, m_hi - m_lo);
            mbar_arrive_expect(bar, (u32)(n_rows + n_mirror + 1) * 128u);
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
            bulk_copy(smem_u32(mring + (c & (MSLOTS - 1)) * 32), wmask + (size_t)c * 32, 128u, bar);
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
    u32 p = 0;  // the lane's position in its stream (words)
    int c = 0;  // warp chunk
    for (int s = s0; s < s1; ++s) {
        float acc[ACC_SETS][MT][NH][4];
        zero_acc(acc);
        for (int cc = 0; cc < cn; ++cc, ++c) {
            if (c == tb + 32) {  // the next 32 chunks' entries move down; the 32 after them are loaded
                tb += 32;
                t_cur = t_nxt;
                t_nxt = tb + 32 + lane < n_chunks ? table[tb + 32 + lane] : make_int2(0, 0);
            }
            __syncwarp();  // every lane is past chunk c - 1 before its rows are overwritten
            stage(c + DEPTH);
            p = max(p, (u32)entry(c, false));  // the lane's position at the chunk's start
            mbar_wait(smem_u32(bars + (c & (MSLOTS - 1))), (u32)(c / MSLOTS) & 1u);
            const u32 mword = mring[(c & (MSLOTS - 1)) * 32 + lane];  // bit 4 (MT j + t) + r
            const u16* xc = xg + (cfirst + cc) * 64;
            // every step's four words and X's loads before any select, so that the loads of all 4
            // steps are in flight together; step j and m-tile t start at the chunk's start plus the
            // pairs stored before them, the bits below 4 (MT j + t)
            u32 w[4][MT][4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    const u32 at = p + __popc(mword & ((1u << (4 * (MT * j + t))) - 1u));
                    const u32* r = lring + (at & (RING - 1)) * 32;
#pragma unroll
                    for (int i = 0; i < 4; ++i) w[j][t][i] = r[32 * i];
                }
            p += __popc(mword);
            uint2 b[4][NH];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int h = 0; h < NH; ++h) b[j][h] = *reinterpret_cast<const uint2*>(xc + h * 8 * sx + 16 * j);
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    u32 a[4];
                    select_pairs(a, mword, 4 * (MT * j + t), w[j][t]);
#pragma unroll
                    for (int h = 0; h < NH; ++h) mma16816(acc[j % ACC_SETS][t][h], a, b[j][h].x, b[j][h].y);
                }
        }
        store_part(part, warp, lane, acc);  // summed in warp order by write_strip
        write_strip(part, s, bias, y, m, n_tok, ldy);
    }
}
