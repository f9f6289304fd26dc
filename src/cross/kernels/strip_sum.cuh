// Shared by the kernels whose warps each compute a part of a strip (16 MT rows, NT tokens) in mma
// accumulators and sum the parts in the block (strip_mma.cu, sparse24_mma.cu). Uses the including
// kernel's MT, NH, WARPS and THREADS.
#pragma once

// a warp's accumulators of a strip, A sets of [MT m-tiles][NH n-tiles][4], to zero
template <int A>
__device__ __forceinline__ void zero_acc(float (&acc)[A][MT][NH][4]) {
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int h = 0; h < NH; ++h)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[a][t][h][e] = 0.f;
}

// The warp's part of a strip into part[warp][t][h][lane]: its A accumulator sets added in set order
template <int A>
__device__ __forceinline__ void store_part(float4* part, int warp, int lane, const float (&acc)[A][MT][NH][4]) {
    float4* mine = part + (size_t)warp * MT * NH * 32;
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int h = 0; h < NH; ++h) {
            float4 v = make_float4(acc[0][t][h][0], acc[0][t][h][1], acc[0][t][h][2], acc[0][t][h][3]);
#pragma unroll
            for (int a = 1; a < A; ++a) {
                v.x += acc[a][t][h][0];
                v.y += acc[a][t][h][1];
                v.z += acc[a][t][h][2];
                v.w += acc[a][t][h][3];
            }
            mine[(t * NH + h) * 32 + lane] = v;
        }
}

// The strip s from the warps' partial sums part[warp][t][h][lane] (a lane's float4 accumulator of
// m-tile t and n-tile h: rows g and g + 8, tokens 8 h + 2 q and + 1), summed in warp order (the same
// bits whatever the timing), with the bias, into y. Barriers before (every warp's part written) and
// after (part read before the next strip writes it).
__device__ __forceinline__ void write_strip(const float4* part, int s, const u16* bias, u16* y, int m, int n_tok,
                                            int ldy) {
    __syncthreads();
    for (int i = threadIdx.x; i < MT * NH * 32; i += THREADS) {
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
    __syncthreads();
}
