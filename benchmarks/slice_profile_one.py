"""Run the slice kernel on one uniform random weight a few times, for a profiler (ncu) to attach to;
with --sass DIR, also write the SASS of the build NVRTC made on this machine.

    PYTHONPATH=src ncu -k regex:slice_mma --launch-count 1 --set full \\
        python benchmarks/slice_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse

import torch

from cross.bench.weights import make_weight
from cross.kernels.launch import slice_matmul
from cross.pack.slices import SliceWeight

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--launches", type=int, default=1)
ap.add_argument("--warps", type=int, default=None, help="consumer warps per block of the format (default: default_warps)")
ap.add_argument("--producers", type=int, default=1, help="producer warps per block (1-4)")
ap.add_argument("--elements", action="store_true", help="the element format (default: pairs)")
ap.add_argument("--sass", default=None, help="a folder for the build's cubin and SASS")
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
w = make_weight(m, k, args.sparsity, "uniform", torch.Generator().manual_seed(0)).cuda()
x = torch.randn(args.n, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()
sw = SliceWeight.from_dense(w, warps=args.warps, elements=args.elements)
for _ in range(args.launches):
    y = slice_matmul(x, sw, producers=args.producers)
torch.cuda.synchronize()
ref = x.float() @ w.float().T
print(f"ok rel err {float((y.float() - ref).norm() / ref.norm()):.2e}, {sw.warps} warps, {args.producers} producers, "
      f"{sw.sp} steps per piece, {'elements' if sw.elements else 'pairs'}")
if args.sass:
    from cross.kernels import cuda_backend

    print(cuda_backend.write_sass(args.sass, "slice_mma.cu", cuda_backend.slice_defines(True, sw.warps, sw.elements)))
