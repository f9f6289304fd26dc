// The slice kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for up to 16 tokens, on
// tensor cores, over the slice format (pack/slices.py). The weight is the B operand of mma.m16n8k16
// (8 rows x 16 columns per step), X the A operand (16 tokens): a lane's two B registers are two
// pairs of weight elements, each a stored word or zero, found from the step's head (a mask of the
// half warp's 32 pairs and the position of its first stored word) by one popcount.
//
// Work: block b takes the n-tiles (8 rows) [ranges[b], ranges[b + 1]); warp w takes the columns of
// its `pieces` pieces of 8 steps (a K-slice each) and walks the block's n-tiles over them, piece
// after piece: a stream of positions (piece, n-tile). For a piece it holds X's A registers (32; X is
// never in shared memory). Nothing of the weight is loaded from global memory into registers: the
// bulk-copy engine brings it into shared memory, counted on mbarriers, so no step waits on a load
// that ptxas issued late:
// - a piece's heads for the round (2 halves x 8 steps x {mask, start} per n-tile, contiguous) in one
//   copy, into one of two buffers, issued when the piece before it starts;
// - its words, which are contiguous over the round's n-tiles (from the first n-tile's first start to
//   the last n-tile's last start plus that step's popcount), streamed into the warp's ring of RING
//   words in blocks of at most BLK words, as far ahead as the ring has room (words of positions
//   already multiplied), into the next piece when this one's are all on their way.
// A lane reads its two words at its popcount by two shared loads. Each warp adds its n-tile partial
// sums into its own region of shared memory; at the end of a round (at most rt n-tiles) the block sums
// the regions in warp order (deterministic) and writes the rows.
//
// Non-finite inputs: every weight element of a step is multiplied, zeros included (0 x Inf = NaN),
// so the result is the dense product's: nan_policy "propagate".
//
// Compile-time parameters (NVRTC -D): IS_BF16, WARPS. Requirements checked by the launcher: the
// format's 8 steps per piece, K % 8 == 0, x 8-byte aligned with an even row stride, 1 <= n_tok <= 16,
// dynamic shared memory pack/slices.smem_bytes.

#ifndef WARPS
#define WARPS 16
#endif
#define SP 8       // steps per piece
#define RING 2048  // words of a warp's ring (8 KB; a power of two), and 4 more: a copy of its first 4
#define BLK 512    // words per copy at most
#define NB 8       // mbarriers per warp for the ring's copies (then 2 for the heads' buffers)
#define THREADS (WARPS * 32)

#include "dtype.cuh"
#include "mma.cuh"
#include "async.cuh"

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
    // after all the partial sums, per warp: the ring (RING + 4 words), NB + 2 mbarriers, the ring's copies'
    // ends (NB words), then two buffers of a piece's heads for rt n-tiles (SP * 16 bytes each). Written by
    // the bulk-copy engine at their shared addresses (*_at), read by plain shared loads (the barrier waits
    // and __syncwarp before them are compiler barriers)
    unsigned char* area = smem + (size_t)WARPS * rt * 512;
    const u32* ring = reinterpret_cast<const u32*>(area) + warp * (RING + 4);
    area += WARPS * (RING + 4) * 4;
    const u32 bars = smem_u32(area) + warp * ((NB + 2) * 8);
    area += WARPS * (NB + 2) * 8;
    u32* ends = reinterpret_cast<u32*>(area) + warp * NB;
    area += WARPS * NB * 4;
    const uint2* hbuf = reinterpret_cast<const uint2*>(area) + (size_t)warp * 2 * rt * (SP * 2);
    const u32 ring_at = smem_u32(ring);
    if (lane < NB + 2) mbar_init(bars + lane * 8);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncwarp();
    const int pc0 = warp * pieces;
    // the warp's counters, across rounds (the same in every lane): words copied and landed (positions in
    // the ring's stream: word c at ring[c % RING]), copies issued and waited for, heads copies issued
    u32 copied = 0, landed = 0, issued = 0, waited = 0, hcopies = 0;
    auto heads_of = [&](int piece) { return hbuf + (size_t)(piece & 1) * rt * (SP * 2); };

    for (int r0 = t0; r0 < t1; r0 += rt) {
        const int r1 = min(r0 + rt, t1), nr = r1 - r0;
        for (int i = 0; i < nr; ++i) mine[i * 32] = make_float4(0.f, 0.f, 0.f, 0.f);
        const u32 hbytes = (u32)nr * (SP * 16);
        // a piece's heads for the round into its buffer (lane 0); heads copy n (counted from the warp's first,
        // across rounds) completes a phase of mbarrier NB + n % 2. (The count, not the piece: with an odd
        // number of pieces a round's first piece is an odd copy.)
        auto copy_heads = [&](int piece) {
            const u32 bar = bars + (NB + (hcopies & 1u)) * 8;
            if (lane == 0) {
                mbar_arrive_expect(bar, hbytes);
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the lanes' reads are done
                bulk_copy(smem_u32(heads_of(piece)), heads + ((size_t)(pc0 + piece) * tiles + r0) * (SP * 4), hbytes,
                          bar);
            }
            ++hcopies;
        };
        auto wait_heads = [&](u32 n) { mbar_wait(bars + (NB + (n & 1)) * 8, (n >> 1) & 1u); };
        // the copying cursor: piece cp, its words [next, stop) still to copy (16-byte aligned), and the offset
        // that turns a word's position in the weight into its place in the ring's stream (base_nx, set when
        // the cursor enters a piece); the reading side copies it into base_rd when it starts that piece
        int cp = 0;
        u32 next = 0, stop = 0, base_nx = 0;
        const u32 h0 = hcopies;  // piece p's heads are copy h0 + p
        auto enter = [&](int piece) {  // the cursor moves to a piece whose heads have landed
            const uint2* h = heads_of(piece);
            const uint2 last = h[nr * (SP * 2) - 1];  // the last n-tile's step SP - 1, half 1
            next = h[0].y & ~3u;
            stop = (last.y + (u32)__popc(last.x) + 3u) & ~3u;
            base_nx = copied - next;
        };
        // copies while the ring has room (a copy may overwrite words before `freed`: all multiplied), at most NB in
        // flight, into the next piece when this one's are all on their way and its heads were asked for
        int hlast = 0;  // the last piece whose heads were asked for
        auto fill = [&](u32 freed) {
            for (;;) {
                if (next >= stop) {
                    if (cp >= hlast) return;
                    ++cp;
                    wait_heads(h0 + cp);
                    enter(cp);
                    continue;
                }
                const u32 at = copied % RING;
                const u32 n = min(min(stop - next, (u32)BLK), (u32)RING - at);
                if (copied + n > freed + RING || issued - waited >= NB) return;
                const u32 bar = bars + (issued % NB) * 8;
                if (lane == 0) {
                    mbar_arrive_expect(bar, n * 4 + (at == 0 ? 16u : 0u));
                    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the lanes' reads are done
                    bulk_copy(ring_at + at * 4, words + next, n * 4, bar);
                    if (at == 0) bulk_copy(ring_at + RING * 4, words + next, 16, bar);  // the ring's tail copy
                }
                ends[issued % NB] = copied + n;  // every lane: each reads its own write
                copied += n;
                next += n;
                ++issued;
            }
        };
        copy_heads(0);
        wait_heads(h0);
        __syncwarp();
        enter(0);
        u32 freed = copied, base_rd = 0;
        u32 xa[SP][4];
        for (int pl = 0; pl < pieces; ++pl) {
            if (pl > 0) {
                wait_heads(h0 + pl);
                __syncwarp();
                if (cp < pl) cp = pl, enter(pl);  // (the cursor is at this piece or before it)
            }
            base_rd = base_nx;
            if (pl + 1 < pieces) copy_heads(pl + 1), hlast = pl + 1;  // into the buffer of piece pl - 1, done
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
            const uint2* hp = heads_of(pl);
            for (int i = 0; i < nr; ++i) {
                const uint2* h = hp + i * (SP * 2);
                const uint2 last = h[2 * SP - 1];
                const u32 end = last.y + (u32)__popc(last.x) + base_rd;  // the n-tile's words end here in the stream
                while (landed < end) {  // the ring's copies land in order of issue
                    if (waited == issued) fill(freed);  // none in flight: copy what the ring has room for
                    mbar_wait(bars + (waited % NB) * 8, (waited / NB) & 1u);
                    landed = ends[waited % NB];
                    ++waited;
                }
                __syncwarp();
                h += half * SP;
                float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                for (int u = 0; u < SP; ++u) {
                    const uint2 hu = h[u];  // {mask, start} of the lane's half at step u
                    const u32* p = ring + ((hu.y + base_rd + (u32)__popc(hu.x & below)) % RING);
                    const u32 w0 = p[0], w1 = p[1];
                    const bool p0 = hu.x & bit0, p1 = hu.x & bit1;
                    const u32 bw0 = p0 ? w0 : 0u;
                    const u32 bw1 = p1 ? (p0 ? w1 : w0) : 0u;
                    mma16816(acc[u & 1], xa[u], bw0, bw1);
                }
                float4 t = mine[i * 32];
                t.x += acc[0][0] + acc[1][0];
                t.y += acc[0][1] + acc[1][1];
                t.z += acc[0][2] + acc[1][2];
                t.w += acc[0][3] + acc[1][3];
                mine[i * 32] = t;
                __syncwarp();  // every lane is past this n-tile's words before the copies below overwrite them
                freed = end;
                fill(freed);
            }
        }
        while (waited < issued) {  // the round's copies past its last n-tile land before the next round
            mbar_wait(bars + (waited % NB) * 8, (waited / NB) & 1u);
            ++waited;
        }
        landed = copied;
        __syncwarp();
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
