// A rate probe for Hopper's warpgroup mma with the A operand in registers, the way a 128-token kernel
// would feed it a weight decoded on the fly (docs/perf-notes.md, "128 tokens: the weight as the sparse
// A operand of wgmma.sp"): per k-step a warpgroup runs DECODE dependent ALU instructions on the A
// registers of its next step (two sets, alternating: the mma in flight reads the other) and then one
// mma over 128 tokens, B in shared memory: SPARSE 1 is wgmma.mma_async.sp m64n128k32 (2:4 A, 4
// registers, metadata register), SPARSE 0 the dense m64n128k16. WGS warpgroups per block. The values
// are meaningless (B is zeros): only the time is measured; the accumulators' sum is written so that
// nothing is removed.

#ifndef SPARSE
#define SPARSE 1
#endif
#ifndef DECODE
#define DECODE 0  // ALU instructions per k-step on the next A registers
#endif
#ifndef WGS
#define WGS 2  // warpgroups (of 4 warps) per block
#endif
#define B_BYTES 16384  // the B tile's shared memory (the descriptor below reads within 4.4 KB of it)

typedef unsigned int u32;
typedef unsigned long long u64;

// a shared-memory matrix descriptor without swizzling: start address, leading and stride byte offsets
// (each >> 4)
__device__ __forceinline__ u64 b_desc(u32 addr) {
    return (u64)((addr >> 4) & 0x3FFF) | (u64)(128 >> 4) << 16 | (u64)(256 >> 4) << 32;
}

#include "wgmma.cuh"

__device__ __forceinline__ void mma(float (&d)[64], const u32 (&a)[4], u64 db, u32 meta) {
#if SPARSE
    asm volatile("wgmma.mma_async.sp.sync.aligned.m64n128k32.f32.bf16.bf16 " ACC_LIST
                 ", {%64, %65, %66, %67}, %68, %69, 0, 1, 1, 1, 0;\n"
                 : ACC_OUT(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(meta));
#else
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " ACC_LIST
                 ", {%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
                 : ACC_OUT(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
    (void)meta;
#endif
}

extern "C" __global__ void __launch_bounds__(WGS * 128, 1) wgmma_probe(float* out, int iters) {
    extern __shared__ __align__(128) unsigned char smem[];
    for (int i = threadIdx.x; i < B_BYTES / 4; i += blockDim.x) reinterpret_cast<u32*>(smem)[i] = 0u;
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the zeros, seen by the mma's reads
    __syncthreads();
    const u64 db = b_desc((u32)__cvta_generic_to_shared(smem));
    const u32 meta = 0x44444444u;  // every group of 4: its columns 0 and 1
    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    u32 a[2][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[0][i] = threadIdx.x * (2 * i + 1), a[1][i] = threadIdx.x * (2 * i + 3);
    for (int it = 0; it < iters; it += 2) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            // the decode of this step's A: dependent instructions on its registers (the other set is
            // being read by the mma in flight)
#pragma unroll
            for (int j = 0; j < DECODE; ++j)
                asm volatile("lop3.b32 %0, %0, %1, %2, 0x96;\n" : "+r"(a[s][j & 3]) : "r"(a[s][(j + 1) & 3]), "r"(it));
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            mma(d, a[s], db, meta);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // the other set's mma is done
        }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 64; ++i) s += d[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
