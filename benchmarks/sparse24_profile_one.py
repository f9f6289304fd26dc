"""Run the 2:4 kernel on one uniform random weight a few times, for a profiler (ncu) to attach to.

    PYTHONPATH=src ncu -k regex:sparse24_mma --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables \\
        python benchmarks/sparse24_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse

import torch

from cross.bench.weights import make_weight
from cross.kernels.launch import sparse24_matmul
from cross.pack.sparse24 import Sparse24Weight

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--setting", default="16:2", help="warps:m-tiles")
ap.add_argument("--launches", type=int, default=1)
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
warps, mt = (int(v) for v in args.setting.split(":"))
w = make_weight(m, k, args.sparsity, "uniform", torch.Generator().manual_seed(0)).cuda()
x = torch.randn(args.n, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()
sw = Sparse24Weight.from_dense(w, mt=mt)
for _ in range(args.launches):
    y = sparse24_matmul(x, sw, nt=8 if args.n <= 8 else 16, warps=warps)
torch.cuda.synchronize()
err = float((y.float() - x.float() @ w.float().T).norm() / (x.float() @ w.float().T).norm())
print(f"ok rel err {err:.2e}, {sw.entries.numel()} entries")
