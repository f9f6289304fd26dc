// Shared by the CUDA kernels that copy with the Hopper bulk-copy engine (plan_matmul.cu, strip_mma.cu,
// slice_mma.cu) or sum partial sums across blocks (plan_matmul.cu, wgmma24.cu): shared-memory
// addresses, mbarriers, cp.async.bulk and the arrival counter of a split output.
#pragma once

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// an mbarrier initialised with one arrival (the issuing thread's expect_tx), its phase
// completes when that arrival and all the bytes it announced have landed
__device__ __forceinline__ void mbar_init(u32 bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
// whether the phase of parity `parity` has completed, without waiting (acquire: what it covers is visible)
__device__ __forceinline__ bool mbar_test(u32 bar, u32 parity) {
    u32 done;
    asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    return done != 0;
}
// one arrival (release: the arriving thread's earlier accesses happen before the phase completes)
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared, counted on bar
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// one arrival on a split output's counter, by one thread after a block barrier: the fence releases
// the block's partial (cumulative over the barrier) and, for the last arrival, acquires the other
// parts' partials. Returns the count before this arrival.
__device__ __forceinline__ int arrive_gpu(int* counter) {
    int old;
    asm volatile("fence.acq_rel.gpu;\n"
                 "atom.relaxed.gpu.global.add.s32 %0, [%1], 1;\n"
                 "fence.acq_rel.gpu;\n" : "=r"(old) : "l"(counter) : "memory");
    return old;
}

// one arrival of `bound + 1` on a counter that wraps back to zero at the last of them (atom.inc: the
// counter counts 0, 1, .., bound, 0), so that the counter is zero again after every launch with no
// reset: a release at GPU scope, cumulative over the block barrier before it. The waiting arrivals:
// arrive_inc_acq_rel_gpu returns the count before (bound: the last arrival, no wait), then
// wait_zero_gpu until the last arrival wraps it (the counter is zero only before the first arrival
// and after the last, and a launch's arrivals all happen in it)
__device__ __forceinline__ void arrive_inc_release_gpu(int* counter, u32 bound) {
    asm volatile("red.release.gpu.global.inc.u32 [%0], %1;\n" ::"l"(counter), "r"(bound) : "memory");
}
__device__ __forceinline__ u32 arrive_inc_acq_rel_gpu(int* counter, u32 bound) {
    u32 old;
    asm volatile("atom.acq_rel.gpu.global.inc.u32 %0, [%1], %2;\n" : "=r"(old) : "l"(counter), "r"(bound) : "memory");
    return old;
}
__device__ __forceinline__ void wait_zero_gpu(const int* counter) {
    for (;;) {
        int v;
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
        if (v == 0) return;
        __nanosleep(32);
    }
}
