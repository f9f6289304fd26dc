"""Run one plan-kernel configuration a few times, for a profiler (ncu) to attach to.

    PYTHONPATH=src ncu --clock-control none -k regex:plan_matmul -c 1 --section SpeedOfLight \\
        python benchmarks/profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16 --kinds bitmap
"""

import argparse

import torch

from cross.kernels import plan_matmul
from cross.pack import pack
from cross.partition import make_plan
from cross.tiling import TileKind

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--kinds", default="bitmap", choices=["bitmap", "dense"])
ap.add_argument("--backend", default="cuda")
ap.add_argument("--tile", default="64x64")
ap.add_argument("--programs-per-sm", type=int, default=2)
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
gen = torch.Generator().manual_seed(0)
w = (torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) >= args.sparsity)).to(torch.bfloat16).cuda()
kinds = (TileKind.BITMAP,) if args.kinds == "bitmap" else (TileKind.DENSE,)
n_sm = torch.cuda.get_device_properties(0).multi_processor_count
plan = make_plan(w, tile_shape=tuple(int(v) for v in args.tile.split("x")), allowed_kinds=kinds,
                 n_programs=n_sm * args.programs_per_sm)
packed = pack(w, plan)
x = torch.randn(args.n, k, generator=gen).to(torch.bfloat16).cuda()
bucket = packed.bucket_for(args.n)
for _ in range(3):
    y = plan_matmul(x, packed, bucket, backend=args.backend)
torch.cuda.synchronize()
err = ((y.float() - x.float() @ w.float().T).norm() / (x.float() @ w.float().T).norm()).item()
print(f"rel err {err:.2e}")
