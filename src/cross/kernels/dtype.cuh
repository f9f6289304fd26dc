// Shared by the CUDA kernels (plan_matmul.cu, row_gemv.cu): integer types and the conversions
// between the 16-bit storage dtype (IS_BF16: 1 bfloat16, 0 float16) and fp32 (round to nearest).
#pragma once

// the storage dtype's operand types in an mma's PTX name
#if IS_BF16
#define SP_TYPES "bf16.bf16"
#else
#define SP_TYPES "f16.f16"
#endif

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float to_float(u16 v) {
#if IS_BF16
    return __uint_as_float(((u32)v) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(v));
    return f;
#endif
}

__device__ __forceinline__ u16 from_float(float f) {
    u16 v;
#if IS_BF16
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(v) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(v) : "f"(f));
#endif
    return v;
}
