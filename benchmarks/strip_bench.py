"""The strip kernel (kernels/strip_mma.cu, tensor cores over pack/strips.py) against cuBLAS and the
row kernel, at 8-16 tokens.

Each weight (uniform random sparsity, bf16) is packed for this GPU (a block per SM) in each launch
setting asked (warps:ring:depth), checked against the fp32 product (output poisoned with NaN, fresh
inputs), then timed: CUDA-graph replay, L2 flushed by a 256 MB read, cuBLAS (F.linear on the dense
weight) and the row kernel (the runtime's passes of up to 8 tokens) in the same run.

    PYTHONPATH=src python benchmarks/strip_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.9 --ns 8,16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from kernels import SHAPES  # noqa: E402

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import check, graph_us  # noqa: E402
from cross.kernels.launch import row_args, row_launch, strip_matmul  # noqa: E402
from cross.pack.rows import RowWeight  # noqa: E402
from cross.pack.strips import StripWeight, smem_bytes  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-qkvo,llama-up")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--ns", default="8,16")
    ap.add_argument("--settings", default="8:64:3:2",
                    help="launch settings warps:ring:depth:m-tiles (m-tiles 1 if left out), comma-separated")
    ap.add_argument("--no-rows", action="store_true", help="skip the row kernel")
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("strip_bench: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    blocks = props.multi_processor_count
    out_rows = []
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us; strips on {blocks} blocks")
    print(f"{'shape':>11} {'N':>3} {'sp':>4} {'setting':>10} {'MB':>6} {'dense':>7} {'rows':>7} {'strips':>7} "
          f"{'x dense':>7} {'x rows':>6}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp in (float(v) for v in args.sparsities.split(",")):
            vals = torch.randn(m, k, generator=gen, device="cuda")
            keep = torch.rand(m, k, generator=gen, device="cuda") >= sp
            w = torch.where(keep, vals, 0.0).to(torch.bfloat16)
            rw = None if args.no_rows else row_args(RowWeight.from_dense(w))
            packed = {}
            for setting in args.settings.split(","):
                warps, ring, depth, mt = ([int(v) for v in setting.split(":")] + [1])[:4]
                try:
                    packed[setting] = StripWeight.from_dense(w, blocks=blocks, warps=warps, ring=ring, depth=depth,
                                                             mt=mt)
                except ValueError as e:  # a ring too small for this weight's denser chunks
                    print(f"{shape:>11}     {sp:>4} {setting:>10}  ({e})")
            for n in (int(v) for v in args.ns.split(",")):
                nt = 8 if n <= 8 else 16
                x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
                dense_us = graph_us(lambda: F.linear(x, w))
                rows_us = float("nan") if rw is None else graph_us(lambda: row_launch(x, rw, out=y))
                for setting, sw in packed.items():
                    if smem_bytes(k, nt, sw.warps, sw.ring, sw.depth, sw.mt) > 227 * 1024:
                        print(f"{shape:>11} {n:>3} {sp:>4} {setting:>10}  (X and rings over the shared memory)")
                        continue
                    xc = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                    yc = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                    strip_matmul(xc, sw, out=yc, nt=nt)
                    bad = check(yc, xc.float() @ w.float().T)
                    if bad:
                        raise SystemExit(f"{shape} N={n} {sp} {setting}: {bad}")
                    us = graph_us(lambda: strip_matmul(x, sw, out=y, nt=nt))
                    rec = dict(shape=shape, M=m, K=k, N=n, sparsity=sp, setting=setting,
                               mb=round(sw.nbytes() / 1e6, 2), dense_us=round(dense_us, 2),
                               rows_us=round(rows_us, 2), strips_us=round(us, 2),
                               speedup_vs_dense=round(dense_us / us, 3), speedup_vs_rows=round(rows_us / us, 3))
                    out_rows.append(rec)
                    print(f"{shape:>11} {n:>3} {sp:>4} {setting:>10} {rec['mb']:>6} {dense_us:>7.2f} {rows_us:>7.2f} "
                          f"{us:>7.2f} {dense_us / us:>7.2f} {rows_us / us:>6.2f}", flush=True)
    if args.out and out_rows:
        start_csv(Path(args.out), list(out_rows[0]), out_rows)


if __name__ == "__main__":
    main()
