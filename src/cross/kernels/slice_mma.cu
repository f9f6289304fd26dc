// The slice kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for up to 16 tokens, on
// tensor cores, over the slice format (pack/slices.py). The weight is the B operand of mma.m16n8k16
// (8 rows x 16 columns per step), X the A operand (16 tokens): a lane's two B registers are two
// pairs of weight elements, each a stored word or zero, found from the step's head (a mask of the
// half warp's 32 pairs and the position of its first stored word) by one popcount.
//
// Work: block b takes the n-tiles (8 rows) [ranges[b], ranges[b + 1]) in rounds of at most rt; each of
// its WARPS consumer warps takes the columns of its `pieces` pieces of 8 steps (a K-slice each) and
// walks a round's n-tiles over them, piece after piece: a stream of positions (piece, n-tile). For a
// piece it holds X's A registers (32; X is never in shared memory). One more warp, the producer (or P
// of them: the block's warps past WARPS), issues every copy of the weight for the consumers: lane l of
// producer k serves consumer warp k + P l, so that a consumer only waits, multiplies and adds. Per
// consumer warp, by the bulk-copy engine into shared memory, counted on mbarriers:
// - a piece's heads for the round (2 halves x 8 steps x {mask, start} per n-tile, contiguous) in one
//   copy into one of two buffers (copy q into buffer q % 2, on mbarrier hfull[q % 2]), at most one
//   piece ahead, into a buffer whose piece the consumer has finished (it arrives on hempty[q % 2]);
// - a position's words (from its first step's start to its last step's start plus that step's
//   popcount, widened to 16 bytes) in one copy into the warp's ring of RING words, at the next free
//   place or the ring's start, in slot p % NB of the warp's p-th position (on mbarrier full[p % NB]):
//   at most NB positions in flight, never over words the consumer has not multiplied (it arrives on
//   empty[p % NB] when it has). The producer writes the slot's base (ring place minus the copy's first
//   word) before it arms the mbarrier; the consumer reads it after its wait.
// The producer never blocks: it tests the mbarriers, issues what it can and sleeps when no lane could.
// A lane reads its two words from the ring at its popcount by two shared loads. A consumer multiplies
// one position at a time, or (TOGETHER 2) two, their steps interleaved, when the second has landed too;
// it never waits for a second while it holds the first (two dense positions of 520 words may not fit
// the ring side by side). Each consumer warp adds its n-tile partial sums into its own region of
// shared memory; at the end of a round the consumers sum the regions in warp order (deterministic)
// and write the rows.
//
// The element format (ELEMS 1, pack/slices.py elements=True): each nonzero stored alone, a step's heads
// per quarter warp (8 lanes); lane jj of a quarter finds its first element at the quarter's start plus
// the popcount of its mask below bit 4 jj, loads the three words around it, shifts them to that
// element (a funnel shift by 16 bits where it is odd) and places its 0-4 values at its 4 bits by two
// byte permutes whose selectors (and a mask that zeroes the fourth value where it is not the lane's)
// come from a 16-entry table in shared memory indexed by those bits. A slot's base is then a byte
// offset in shared memory (element e at byte 2 e + base), and a position's words run from its first
// element's word to its last element's, widened to 16 bytes.
//
// Non-finite inputs: every weight element of a step is multiplied, zeros included (0 x Inf = NaN),
// so the result is the dense product's: nan_policy "propagate".
//
// Compile-time parameters (NVRTC -D): IS_BF16, WARPS (consumer warps; the block has WARPS + P, P = 1
// to MAX_PRODUCERS producer warps, the launch's choice), ELEMS (0 pairs, 1 elements: the format's);
// variants to measure against the defaults (CROSS_CUDA_DEFINES): TOGETHER=2, XPREFETCH=1; profiling
// builds whose results are wrong: SLICE_ABLATE=1 or 2.
// Requirements checked by the launcher: the format's 8 steps per piece, K % 8 == 0, x 8-byte aligned
// with an even row stride, 1 <= n_tok <= 16, dynamic shared memory pack/slices.smem_bytes.

#ifndef WARPS
#define WARPS 16
#endif
#define SP 8       // steps per piece
#define RING 1440  // words of a consumer warp's ring (~5 positions at 70%), and 4 more read past it
#define NB 8       // slots: positions in flight per consumer warp (a power of two)
#define NBAR (2 * NB + 4)  // mbarriers per consumer warp: full[NB], empty[NB], hfull[2], hempty[2]
#define MAX_PRODUCERS 4
// the launch bounds: for WARPS % 4 == 0 no fewer registers than WARPS + 1 warps get; at most 1,024 threads
#define MAX_THREADS ((WARPS + MAX_PRODUCERS) * 32 < 1024 ? (WARPS + MAX_PRODUCERS) * 32 : 1024)
static_assert(WARPS >= 1 && WARPS <= 32, "a producer lane per consumer warp");
#ifndef SLICE_ABLATE
#define SLICE_ABLATE 0  // profiling builds only (results wrong): 1 the consumers skip the steps (the copies'
#endif                  // pace alone), 2 no words are copied (the consumers' and the heads' pace alone)
#ifndef XPREFETCH
#define XPREFETCH 0  // 1: the consumers ask L2 for X's rows of their later pieces at the start
#endif
#ifndef TOGETHER
#define TOGETHER 1  // positions a consumer may multiply per pass: 1, or 2 (for fewer warps: 17 spill)
#endif
#ifndef ELEMS
#define ELEMS 0  // the format: 0 pairs, 1 elements
#endif
#define HW ((2 + 2 * ELEMS) * SP)  // a position's heads ({mask, start} each): per half and step, or per
                                   // half, step and quarter

#include "dtype.cuh"
#include "mma.cuh"
#include "async.cuh"

extern "C" __global__ void __launch_bounds__(MAX_THREADS, 1) slice_mma(
    const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias, const u32* __restrict__ heads,
    const u32* __restrict__ words, const int* __restrict__ ranges, int m, int k, int n_tok, int ldx, int ldy,
    int tiles, int pieces, int rt) {
    extern __shared__ __align__(16) unsigned char smem[];
    // the consumers' partial sums [WARPS][rt][32] float4, then per consumer warp: its ring (RING + 4
    // words), two buffers of a piece's heads for rt n-tiles, its slots' bases and ring places (NB words
    // each), its NBAR mbarriers; for ELEMS the block's table of byte selectors (16 x 8 bytes). Written
    // by the bulk-copy engine at their shared addresses, read by plain shared loads after an mbarrier's
    // wait (acquire)
    float4* part = reinterpret_cast<float4*>(smem);
    u32* rings = reinterpret_cast<u32*>(smem + (size_t)WARPS * rt * 512);
    uint2* hbufs = reinterpret_cast<uint2*>(rings + WARPS * (RING + 4));
    u32* sbase = reinterpret_cast<u32*>(hbufs + (size_t)WARPS * 2 * rt * HW);
    u32* splace = sbase + WARPS * NB;
    const u32 bar0 = smem_u32(splace + WARPS * NB);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t0 = ranges[blockIdx.x], t1 = ranges[blockIdx.x + 1];
    const int nq = (t1 - t0 + rt - 1) / rt * pieces;  // a consumer's pieces x rounds
    for (int i = tid; i < WARPS * NBAR; i += blockDim.x) mbar_init(bar0 + 8 * i);
#if ELEMS
    // entry b (a lane's 4 bits): the byte selectors of its two B registers (the low 16 bits of each word;
    // prmt reads no more) from bytes 0-7 = values v0 .. v3 at its first element: column c takes
    // v[popcount of b below c] if bit c is set, else v3's bytes, which are zeroed unless b = 15: the high
    // 16 bits of the first word, ORed with 0xFFFF, are the mask of v3
    uint2* table = reinterpret_cast<uint2*>(splace + WARPS * NB + 2 * WARPS * NBAR);
    if (tid < 16) {
        u32 sel = 0, r = 0;
        for (int c = 0; c < 4; ++c) {
            const u32 v = (tid >> c) & 1 ? r++ : 3u;
            sel |= (2 * v | (2 * v + 1) << 4) << (8 * c);
        }
        table[tid] = make_uint2((sel & 0xFFFFu) | (tid == 15 ? 0xFFFF0000u : 0u), sel >> 16);
    }
#endif
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncthreads();
#define FULL(s) (8 * (s))
#define EMPTY(s) (8 * (NB + (s)))
#define HFULL(b) (8 * (2 * NB + (b)))
#define HEMPTY(b) (8 * (2 * NB + 2 + (b)))

    if (warp >= WARPS) {  // producer k = warp - WARPS of P: its lane l serves consumer warp k + P l
        const int producers = (int)(blockDim.x >> 5) - WARPS, served = warp - WARPS + producers * lane;
        const int w = served < WARPS ? served : 0;
        u32 ring0 = w * (RING + 4), wb = bar0 + 8 * NBAR * w, ring_at = smem_u32(rings + ring0);
        const uint2* hb = hbufs + (size_t)w * 2 * rt * HW;
        u32* base = sbase + w * NB;
        u32* place = splace + w * NB;
        const size_t pc0 = (size_t)w * pieces;
        asm volatile("" : "+r"(ring0), "+r"(wb), "+r"(ring_at));  // kept in registers, not recomputed
        // heads copies issued (hq), for the piece-round (hr0, hpl); the piece-round whose words are being
        // copied (qw: round wr0, piece wpl), its next n-tile i, whether its heads have landed; positions
        // copied (p) and retired (old: multiplied); the ring's next free word wh
        int hq = 0, hr0 = t0, hpl = 0, qw = 0, wr0 = t0, wpl = 0, i = 0;
        bool hready = false;
        u32 p = 0, old = 0, wh = 0;
        bool live = served < WARPS && nq > 0;
        for (;;) {
            bool moved = false;
            if (live) {
                if (hq < nq && hq <= qw + 1 && (hq < 2 || mbar_test(wb + HEMPTY(hq & 1), ((hq >> 1) - 1) & 1))) {
                    const u32 bytes = (u32)min(rt, t1 - hr0) * (HW * 8), bar = wb + HFULL(hq & 1);
                    mbar_arrive_expect(bar, bytes);
                    bulk_copy(smem_u32(hb + (hq & 1) * rt * HW), heads + ((pc0 + hpl) * tiles + hr0) * (HW * 2), bytes,
                              bar);
                    ++hq;
                    if (++hpl == pieces) hpl = 0, hr0 += rt;
                    moved = true;
                }
                // words: as many positions as the ring and the slots take, each in one copy
                while (qw < nq && (hready || (hready = mbar_test(wb + HFULL(qw & 1), (qw >> 1) & 1)))) {
                    const uint2* h = hb + ((qw & 1) * rt + i) * HW;
                    const uint2 last = h[HW - 1];  // step SP - 1, half 1 (quarter 1)
#if ELEMS
                    const u32 a = (h[0].y >> 1) & ~3u;
                    const u32 n = ((((last.y + (u32)__popc(last.x) + 1u) >> 1) + 3u) & ~3u) - a;
#else
                    const u32 a = h[0].y & ~3u, n = ((last.y + (u32)__popc(last.x) + 3u) & ~3u) - a;
#endif
                    // the place of n words: after the last position's, or at the ring's start; positions
                    // retired (oldest first, as the consumer arrived on their slots) until it is free
                    u32 at = 0;
                    bool fits = false;
                    for (;;) {
                        if (p - old < NB) {
                            const u32 tail = place[old % NB];  // the oldest position's first word
                            if (old == p) at = wh + n <= RING ? wh : 0u, fits = true;
                            else if (wh >= tail) {
                                if (wh + n <= RING) at = wh, fits = true;
                                else if (n < tail) at = 0, fits = true;
                            } else if (wh + n < tail) at = wh, fits = true;
                        }
                        if (fits || old == p || !mbar_test(wb + EMPTY(old % NB), (old / NB) & 1)) break;
                        ++old;
                    }
                    if (!fits) break;
                    const u32 s = p % NB, bar = wb + FULL(s);
                    place[s] = at;
#if ELEMS
                    base[s] = ring_at - smem_u32(smem) + 4 * (at - a);  // element e: byte 2 e + base of smem
#else
                    base[s] = ring0 + at - a;  // the consumer's word c is at rings[c + base]
#endif
                    mbar_arrive_expect(bar, SLICE_ABLATE == 2 ? 0u : n * 4);
                    if (n && SLICE_ABLATE != 2) bulk_copy(ring_at + at * 4, words + a, n * 4, bar);
                    wh = at + n;
                    ++p;
                    if (++i == min(rt, t1 - wr0)) {
                        i = 0, ++qw, hready = false;
                        if (++wpl == pieces) wpl = 0, wr0 += rt;
                    }
                    moved = true;
                }
                live = qw < nq;
            }
            if (!__any_sync(0xffffffffu, live)) break;
            if (!__any_sync(0xffffffffu, moved)) __nanosleep(200);  // ~400 cycles: well inside a copy's latency
        }
        return;
    }

    // a consumer warp
    const int g = lane >> 2, q = lane & 3, half = lane >> 4;
#if ELEMS
    // the mask's bits below the lane's 4 (bits 4 jj ..), and the right rotation that puts them at bits 3-6
    // (8 times the table's index)
    u32 below = (1u << (4 * (lane & 7))) - 1u, bit0 = (4u * (lane & 7) - 3u) & 31u, bit1 = smem_u32(table);
#else
    const int j = lane & 15;
    u32 below = (1u << (2 * j)) - 1u, bit0 = 1u << (2 * j), bit1 = 2u << (2 * j);
#endif
    u32 leader = lane == 0;
    asm volatile("" : "+r"(below), "+r"(bit0), "+r"(bit1), "+r"(leader));  // kept in registers, not recomputed
    const u32 wb = bar0 + 8 * NBAR * warp;
    const uint2* hb = hbufs + (size_t)warp * 2 * rt * HW + (ELEMS ? half * 2 * SP + ((lane >> 3) & 1) : half * SP);
    const u32* base = sbase + warp * NB;
    float4* mine = part + (size_t)warp * rt * 32 + lane;
    const int pc0 = warp * pieces;
    u32 p = 0, qc = 0;  // positions and piece-rounds, counted across rounds
    u32 xa[SP][4];
#if XPREFETCH
    // X's rows of the warp's later pieces asked of L2 now (lane: row lane % 16, the piece's 64-column
    // half lane / 16), so that a piece's start does not wait on DRAM
    for (int pl = 1; pl < pieces && t0 < t1; ++pl) {
        const int row = lane & 15, c = (pc0 + pl) * (SP * 16) + (lane >> 4) * 64;
        if (row < n_tok && c < k) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(x + (size_t)row * ldx + c));
    }
#endif
    for (int r0 = t0; r0 < t1; r0 += rt) {
        const int nr = min(rt, t1 - r0);
        for (int i = 0; i < nr; ++i) mine[i * 32] = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int pl = 0; pl < pieces; ++pl, ++qc) {
            // X's A registers for the piece: a0 a2 = X[g][c .. c + 3], a1 a3 = X[g + 8][c .. c + 3] with
            // c = 16 (step0 + u) + 4 q (the format gives lane q the columns 4q .. 4q + 3 of a step); 32-bit
            // loads, so that each register is loaded where the mma wants it (an aligned quad)
            const int step0 = (pc0 + pl) * SP;
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
            mbar_wait(wb + HFULL(qc & 1), (qc >> 1) & 1);
#if ELEMS
            // step u of the n-tile whose heads are h and whose element e is at byte 2 e + b of shared memory
            // (modulo 2^32): the three words from the lane's first element's, shifted to it (v0 v1, v2 v3),
            // placed at the lane's bits by the table's byte permutes (bit0: the rotation that gives 8 times
            // the lane's 4 bits, bit1: the table's shared address)
            auto step = [&](const uint2* h, u32 b, float (&acc)[2][4], int u) {
                if (SLICE_ABLATE == 1) return;
                const uint2 hu = h[2 * u];  // {mask, start} of the lane's quarter at step u
                const u32 eb = 2 * (hu.y + (u32)__popc(hu.x & below)) + b;
                const u32* w = reinterpret_cast<const u32*>(smem + (int)(eb & ~3u));
                const u32 w0 = w[0], w1 = w[1], w2 = w[2];
                u32 t0, t1, b0, b1;
                asm("ld.shared.v2.u32 {%0, %1}, [%2];\n"
                    : "=r"(t0), "=r"(t1) : "r"(bit1 + (__funnelshift_r(hu.x, hu.x, bit0) & 0x78u)));
                const u32 lo = __funnelshift_r(w0, w1, eb << 3), hi = __funnelshift_r(w1, w2, eb << 3) & (t0 | 0xFFFFu);
                asm("prmt.b32 %0, %2, %3, %4;\n\tprmt.b32 %1, %2, %3, %5;\n"
                    : "=r"(b0), "=r"(b1) : "r"(lo), "r"(hi), "r"(t0), "r"(t1));
                mma16816(acc[u & 1], xa[u], b0, b1);
            };
#else
            // step u of the n-tile whose heads are h and whose word c is at rings[c + b] (the sum modulo
            // 2^32): a lane's two words at its popcount, each B register that word, the next or zero
            auto step = [&](const uint2* h, u32 b, float (&acc)[2][4], int u) {
                if (SLICE_ABLATE == 1) return;
                const uint2 hu = h[u];  // {mask, start} of the lane's half at step u
                const u32* w = rings + (int)(hu.y + b + (u32)__popc(hu.x & below));
                const u32 w0 = w[0], w1 = w[1];
                const bool p0 = hu.x & bit0, p1 = hu.x & bit1;
                mma16816(acc[u & 1], xa[u], p0 ? w0 : 0u, p1 ? (p0 ? w1 : w0) : 0u);
            };
#endif
            auto add = [&](float4* at, const float (&acc)[2][4]) {
                float4 t = *at;
                t.x += acc[0][0] + acc[1][0];
                t.y += acc[0][1] + acc[1][1];
                t.z += acc[0][2] + acc[1][2];
                t.w += acc[0][3] + acc[1][3];
                *at = t;
            };
            // positions one by one, or two at a time (their steps interleaved) when the second has landed
            // too: a consumer never waits for a second while it holds the first (the ring may hold only one
            // dense position next to another's place). The slot of position p and its phase's parity, the
            // n-tile's heads and partial sums are carried from position to position (recomputed from p and i
            // they cost ~15 instructions per position)
            u32 s0 = p % NB, par = (p / NB) & 1;
            const uint2* h0 = hb + (qc & 1) * rt * HW;  // the piece's heads buffer
            float4* mp = mine;
            for (int i = 0; i < nr;) {
                mbar_wait(wb + FULL(s0), par);
                const u32 b0 = base[s0];
                float acc0[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
                const u32 s1 = (s0 + 1) % NB, par1 = par ^ (s1 == 0);
                if (TOGETHER == 2 && i + 1 < nr && mbar_test(wb + FULL(s1), par1)) {
                    const u32 b1 = base[s1];
                    const uint2* h1 = h0 + HW;
                    float acc1[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                    for (int u = 0; u < SP; ++u) step(h0, b0, acc0, u), step(h1, b1, acc1, u);
                    add(mp, acc0);
                    add(mp + 32, acc1);
                    __syncwarp();  // every lane is past the slots' words (and, at the last n-tile, the heads)
                    if (leader) mbar_arrive(wb + EMPTY(s0)), mbar_arrive(wb + EMPTY(s1));
                    i += 2, p += 2, h0 += 2 * HW, mp += 64;
                    s0 = (s1 + 1) % NB, par = par1 ^ (s0 == 0);
                } else {
#pragma unroll
                    for (int u = 0; u < SP; ++u) step(h0, b0, acc0, u);
                    add(mp, acc0);
                    __syncwarp();
                    if (leader) mbar_arrive(wb + EMPTY(s0));
                    i += 1, p += 1, h0 += HW, mp += 32;
                    s0 = s1, par = par1;
                }
            }
            if (leader) mbar_arrive(wb + HEMPTY(qc & 1));
        }
        asm volatile("bar.sync 1, %0;\n" ::"r"(WARPS * 32) : "memory");  // the consumers' partial sums are in
        // the warps' regions summed in warp order; fragment f = (n-tile f / 32, lane f % 32): rows
        // 8 n + 2 q' and 8 n + 2 q' + 1 for tokens g' and g' + 8
        for (int f = tid; f < nr * 32; f += WARPS * 32) {
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
        asm volatile("bar.sync 1, %0;\n" ::"r"(WARPS * 32) : "memory");  // read before the next round's zeros
    }
}
