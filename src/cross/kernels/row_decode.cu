// The row format (pack/rows.py) decoded to the dense [M][K] weight, for keep_dense="decode" layers
// that hold no tiles. One block per row: the row zeroed in shared memory, the run's units scattered
// into it (entries of value 0, padding and bridges, skipped: a repeated column never overwrites a
// stored weight, and stored columns are distinct), then the row written whole, 16 bytes at a time
// where K allows. So the output is written once, in order, where a scatter into global memory wrote
// 2-byte pieces at scattered columns (kernels/decode.py, decode_rows: 3.5-5x the tile decode's time).
// Dynamic shared memory: 2 K bytes rounded up to 16 (K <= 65536).

#include "dtype.cuh"

#define THREADS 256

extern "C" __global__ void __launch_bounds__(THREADS) row_decode(const uint4* __restrict__ values,
                                                                 const uint2* __restrict__ meta,
                                                                 const int* __restrict__ row_ptr, u16* __restrict__ out,
                                                                 int k) {
    extern __shared__ __align__(16) unsigned char smem[];
    u16* row = reinterpret_cast<u16*>(smem);
    const int r = blockIdx.x, tid = threadIdx.x;
    const int k16 = (k + 7) / 8;  // 16-byte pieces of the row in shared memory
    for (int i = tid; i < k16; i += THREADS) reinterpret_cast<uint4*>(row)[i] = make_uint4(0u, 0u, 0u, 0u);
    __syncthreads();
    const int s = row_ptr[r] >> 3, e = row_ptr[r + 1] >> 3;
    for (int u = s + tid; u < e; u += THREADS) {
        const uint4 v = values[u];
        const uint2 c = meta[u];
        const u32 scale = 1u << ((c.x >> 28) & 7u);  // the unit's step scale (pack/rows.py)
        u32 col = c.x & 0xffffu;
        const u32 vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            if (q == 1) col += ((c.x >> 16) & 63u) * scale;
            if (q == 2) col += ((c.x >> 22) & 63u) * scale;
            if (q >= 3) col += ((c.y >> (6 * (q - 3))) & 63u) * scale;
            const u16 bits = (u16)(q & 1 ? vw[q / 2] >> 16 : vw[q / 2] & 0xffffu);
            if (bits != 0) row[col] = bits;
        }
    }
    __syncthreads();
    u16* dst = out + (size_t)r * k;
    if ((k & 7) == 0) {  // rows 16-byte aligned (out is)
        for (int i = tid; i < k / 8; i += THREADS) reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(row)[i];
    } else {
        for (int i = tid; i < k; i += THREADS) dst[i] = row[i];
    }
}
