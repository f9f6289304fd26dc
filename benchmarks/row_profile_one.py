"""Run the row kernel on one weight a few times, for a profiler (ncu) to attach to.

    PYTHONPATH=src ncu -k regex:row_gemv --metrics l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,\\
smsp__inst_executed_op_shared_ld.sum,gpu__time_duration.sum \\
        python benchmarks/row_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 8 --classes 1,16
"""

import argparse

import torch

from cross.kernels.launch import row_args, row_launch
from cross.pack.rows import CLASSES, RowWeight

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="11008x4096")
ap.add_argument("--sparsity", type=float, default=0.7)
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--classes", default=str(CLASSES), help="row-format layouts, one after the other")
ap.add_argument("--launches", type=int, default=1)
args = ap.parse_args()
m, k = (int(v) for v in args.shape.split("x"))
gen = torch.Generator(device="cuda").manual_seed(0)
w = torch.randn(m, k, generator=gen, device="cuda")
w = torch.where(torch.rand(m, k, generator=gen, device="cuda") >= args.sparsity, w, 0.0).to(torch.bfloat16)
x = torch.randn(args.n, k, generator=gen, device="cuda").to(torch.bfloat16)
for classes in (int(v) for v in args.classes.split(",")):
    ra = row_args(RowWeight.from_dense(w, classes))
    for _ in range(args.launches):
        y = row_launch(x, ra)
    torch.cuda.synchronize()
    err = (y.float() - x.float() @ w.float().T).abs().max().item()
    print(f"classes {classes}: {args.launches} launches, max abs error {err:.3g}")
