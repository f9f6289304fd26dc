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

#define ACC_OUT(d)                                                                                                   \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),       \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),       \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),      \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),      \
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),      \
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),      \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),      \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define ACC_LIST                                                                                                     \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
    "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

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
