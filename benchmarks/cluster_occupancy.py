"""How many thread-block clusters of C blocks fit on this GPU at once, against plain blocks.

A question for the split-row exchange through distributed shared memory (docs/perf-notes.md,
"Next for 4096x4096"): the plan kernel runs 128-thread blocks bounded to 6 per SM with 24-37 KB
of shared memory each. This compiles a stand-in kernel of that shape (NVRTC) and asks the driver
(cuOccupancyMaxActiveClusters) how many clusters of 1-16 blocks are resident at once for each
shared-memory size; clusters above 8 blocks are non-portable and allowed explicitly.

    python benchmarks/cluster_occupancy.py

Prints, per shared-memory size, (cluster size, clusters resident, blocks resident).
"""

from __future__ import annotations

import torch
from cuda.bindings import driver, nvrtc

SOURCE = b"""
extern "C" __global__ void __launch_bounds__(128, 6) k(float* p) {
    extern __shared__ float s[];
    s[threadIdx.x] = 1.f;
    __syncthreads();
    if (p) p[blockIdx.x] = s[threadIdx.x ^ 1];
}
"""
SMEM_KB = (24, 30, 35, 37, 45)
CLUSTERS = (1, 2, 4, 6, 8, 12, 16)


def check(result):
    if int(result[0]) != 0:
        raise RuntimeError(f"CUDA call failed: {result[0]}")
    return result[1] if len(result) == 2 else result[1:]


def compile_kernel():
    major, minor = torch.cuda.get_device_capability()
    prog = check(nvrtc.nvrtcCreateProgram(SOURCE, b"k.cu", 0, [], []))
    opts = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"-default-device"]
    err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if int(err) != 0:
        raise RuntimeError(f"NVRTC failed: {err}")
    cubin = b" " * check(nvrtc.nvrtcGetCUBINSize(prog))
    check(nvrtc.nvrtcGetCUBIN(prog, cubin))
    torch.cuda.current_stream()  # PyTorch's primary context current for the driver API
    module = check(driver.cuModuleLoadData(cubin))
    return module, check(driver.cuModuleGetFunction(module, b"k"))


def resident_clusters(func, cluster: int, smem: int) -> int:
    cfg = driver.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = cluster * 64, 1, 1
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = 128, 1, 1
    cfg.sharedMemBytes = smem
    attr = driver.CUlaunchAttribute()
    attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = cluster, 1, 1
    cfg.attrs, cfg.numAttrs = [attr], 1
    return int(check(driver.cuOccupancyMaxActiveClusters(func, cfg)))


def main() -> None:
    _module, func = compile_kernel()
    attrs = driver.CUfunction_attribute
    check(driver.cuFuncSetAttribute(func, attrs.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1))
    print(f"# {torch.cuda.get_device_name()}: (cluster size, clusters resident, blocks resident)")
    for kb in SMEM_KB:
        check(driver.cuFuncSetAttribute(func, attrs.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kb * 1024))
        row = []
        for c in CLUSTERS:
            n = resident_clusters(func, c, kb * 1024)
            row.append((c, n, n * c))
        print(f"{kb} KB: {row}")


if __name__ == "__main__":
    main()
