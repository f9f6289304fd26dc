"""Run the warpgroup 2:4 kernel on one weight a few times, for a profiler (ncu) to attach to: a
uniform random sparse weight (its overflow as a second mma) or its 2:4 part (``--weight 2:4``), in the
slots layout or the compressed one (``--compressed``).

    PYTHONPATH=src ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables \\
        --section WarpStateStats python benchmarks/wgmma24_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from sparse24_bench import two_of_four  # noqa: E402

from cross.bench.weights import make_weight  # noqa: E402
from cross.kernels.launch import wgmma24_matmul  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--weight", default="uniform", choices=("uniform", "2:4"))
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--setting", default="2:2", help="warpgroups:m-tiles[:split] (0: the units in equal parts)")
ap.add_argument("--launches", type=int, default=1)
ap.add_argument("--compressed", action="store_true", help="the compressed layout")
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
parts = [int(v) for v in args.setting.split(":")]
w = make_weight(m, k, args.sparsity, "uniform", torch.Generator().manual_seed(0))
if args.weight == "2:4":
    w = two_of_four(w)  # groups of 4 consecutive columns, as the format's
w = w.cuda()
x = torch.randn(args.n, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()
sw = Wgmma24Weight.from_dense(w, parts[0], parts[1], compressed=args.compressed)
split = parts[2] if len(parts) > 2 else None  # None: wgmma24_split's; 0: the units in equal parts over the SMs
for _ in range(args.launches):
    y = wgmma24_matmul(x, sw, split=split)
torch.cuda.synchronize()
ref = x.float() @ w.float().T
err = float((y.float() - ref).norm() / ref.norm())
print(f"ok rel err {err:.2e}, split {split}, {sw.n_entries} overflow entries, {sw.nbytes / 1e6:.1f} MB")
