"""Run the strip kernel on one weight a few times, for a profiler (ncu) to attach to.

    PYTHONPATH=src ncu -k regex:strip_mma --launch-count 1 --section SpeedOfLight --section WarpStateStats \\
        --section SchedulerStats python benchmarks/strip_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse

import torch

from cross.kernels.launch import strip_matmul
from cross.pack.strips import StripWeight

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--setting", default="8:64:3:2", help="warps:ring:depth:m-tiles")
ap.add_argument("--launches", type=int, default=1)
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
warps, ring, depth, mt = ([int(v) for v in args.setting.split(":")] + [1])[:4]
gen = torch.Generator(device="cuda").manual_seed(0)
w = torch.randn(m, k, generator=gen, device="cuda")
w = torch.where(torch.rand(m, k, generator=gen, device="cuda") >= args.sparsity, w, 0.0).to(torch.bfloat16)
x = torch.randn(args.n, k, generator=gen, device="cuda").to(torch.bfloat16)
sw = StripWeight.from_dense(w, blocks=torch.cuda.get_device_properties(0).multi_processor_count, warps=warps,
                            ring=ring, depth=depth, mt=mt)
for _ in range(args.launches):
    y = strip_matmul(x, sw, nt=8 if args.n <= 8 else 16)
torch.cuda.synchronize()
err = float((y.float() - x.float() @ w.float().T).norm() / (x.float() @ w.float().T).norm())
print(f"ok rel err {err:.2e}")
