import torch
from cuda.bindings import driver, nvrtc
src = b'''
extern "C" __global__ void __launch_bounds__(128, 6) k(float* p) { extern __shared__ float s[]; s[threadIdx.x] = 1.f; __syncthreads(); if (p) p[blockIdx.x] = s[threadIdx.x ^ 1]; }
'''
def chk(r):
    assert int(r[0]) == 0, r[0]
    return r[1] if len(r) == 2 else r[1:]
prog = chk(nvrtc.nvrtcCreateProgram(src, b"k.cu", 0, [], []))
err, = nvrtc.nvrtcCompileProgram(prog, 2, [b"--gpu-architecture=sm_90", b"-default-device"])
assert int(err) == 0
n = chk(nvrtc.nvrtcGetCUBINSize(prog)); cub = b" " * n; chk(nvrtc.nvrtcGetCUBIN(prog, cub))
torch.cuda.current_stream()
mod = chk(driver.cuModuleLoadData(cub)); f = chk(driver.cuModuleGetFunction(mod, b"k"))
A = driver.CUfunction_attribute
chk(driver.cuFuncSetAttribute(f, A.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1))
for smem in (24 * 1024, 30 * 1024, 35 * 1024, 37 * 1024, 45 * 1024):
    chk(driver.cuFuncSetAttribute(f, A.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem))
    row = []
    for c in (1, 2, 4, 6, 8, 12, 16):
        cfg = driver.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = c * 64, 1, 1
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = 128, 1, 1
        cfg.sharedMemBytes = smem
        at = driver.CUlaunchAttribute()
        at.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        at.value.clusterDim.x, at.value.clusterDim.y, at.value.clusterDim.z = c, 1, 1
        cfg.attrs = [at]; cfg.numAttrs = 1
        r = driver.cuOccupancyMaxActiveClusters(f, cfg)
        row.append((c, int(r[1]) if int(r[0]) == 0 else str(r[0]), (int(r[1]) * c if int(r[0]) == 0 else 0)))
    print(smem // 1024, "KB:", row)
