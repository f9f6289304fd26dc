"""Run the gather kernel on one uniform random weight a few times, for a profiler (ncu) to attach to;
with --sass DIR, also write the SASS of the build NVRTC made on this machine.

    PYTHONPATH=src ncu -k regex:gather_mma --launch-count 1 --set full \\
        python benchmarks/gather_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse

import torch

from cross.bench.weights import make_weight
from cross.kernels.launch import gather_matmul
from cross.pack.gather import GatherWeight

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--launches", type=int, default=1)
ap.add_argument("--sass", default=None, help="a folder for the build's cubin and SASS")
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
w = make_weight(m, k, args.sparsity, "uniform", torch.Generator().manual_seed(0)).cuda()
x = torch.randn(args.n, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()
gw = GatherWeight.from_dense(w)
for _ in range(args.launches):
    y = gather_matmul(x, gw)
torch.cuda.synchronize()
ref = x.float() @ w.float().T
print(f"ok rel err {float((y.float() - ref).norm() / ref.norm()):.2e}, {gw.steps} steps, padding {gw.padding:.3f}")
if args.sass:
    from cross.kernels import cuda_backend

    defines = cuda_backend.gather_defines(True, cuda_backend.GATHER_WARPS, 8 if args.n <= 8 else 16)
    print(cuda_backend.write_sass(args.sass, "gather_mma.cu", defines))
