"""Where the row kernel's fixed time goes: the same shape timed over weights that remove one part each.

Weights (M x K, bf16), each run through the row kernel (kernels/row_gemv.cu) as the runtime launches it:
    uniform   nonzeros at random, sparsity s (row lengths binomial: the benchmarks' weights)
    equal     every row exactly round(K (1 - s)) nonzeros at random columns (no row longer than another)
    unit      every row one unit: 8 nonzeros in consecutive columns (the per-row work, almost no bytes)
    single    one nonzero in the whole weight (the launch, X into shared memory, the empty rows' walk)
and, for scale, in the same run: cuBLAS on the dense weight, and ``fill``: one tiny kernel (an
M-element fill) under the same timing, the floor every launch pays here (CUDA-graph replay, L2
flushed by a 256 MB read). Each row-kernel result is checked against the fp32 product first
(output poisoned with NaN, fresh inputs).

    PYTHONPATH=src python benchmarks/row_ablation.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.5,0.7,0.9 --ns 1

``--classes 1,16`` times each weight in each layout of the row format (pack/rows.py: the column
classes its units take in turns; 1 is every run by column), one after the other in the same run.
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
from cross.kernels.launch import row_args, row_launch  # noqa: E402
from cross.pack.rows import CLASSES, RowWeight  # noqa: E402

WEIGHTS = ("uniform", "equal", "unit", "single")


def make(kind: str, m: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    dev = gen.device
    values = torch.randn(m, k, generator=gen, device=dev)
    if kind == "uniform":
        mask = torch.rand(m, k, generator=gen, device=dev) >= sparsity
    elif kind == "equal":
        d = max(1, round(k * (1 - sparsity)))
        cols = torch.rand(m, k, generator=gen, device=dev).argsort(dim=1)[:, :d]
        mask = torch.zeros(m, k, dtype=torch.bool, device=dev).scatter_(1, cols, True)
    elif kind == "unit":
        first = torch.randint(0, k - 8, (m, 1), generator=gen, device=dev)
        mask = torch.zeros(m, k, dtype=torch.bool, device=dev).scatter_(1, first + torch.arange(8, device=dev), True)
    elif kind == "single":
        mask = torch.zeros(m, k, dtype=torch.bool, device=dev)
        mask[0, 0] = True
    else:
        raise ValueError(f"weight: expected one of {WEIGHTS}, got {kind!r}")
    return torch.where(mask & (values != 0), values, 0.0).to(torch.bfloat16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-up,llama-qkvo,llama-down")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--ns", default="1")
    ap.add_argument("--weights", default=",".join(WEIGHTS))
    ap.add_argument("--classes", default=str(CLASSES), help="row-format layouts to time, e.g. 1,16")
    ap.add_argument("--out", default=None, help="CSV file")
    ap.add_argument("--unchecked", action="store_true",
                    help="skip the check against the fp32 product: for profiling builds whose results are wrong "
                         "(CROSS_CUDA_DEFINES=-DROW_ABLATE=1: exit at once, =2: exit once X is staged)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("row_ablation: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows_out = []
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us")
    print(f"{'shape':>11} {'N':>3} {'sp':>5} {'weight':>8} {'classes':>7} {'entries':>10} {'MB':>7} {'us':>8} "
          f"{'dense':>8} {'fill':>6}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for n in (int(v) for v in args.ns.split(",")):
            x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
            y_fill = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
            fill_us = graph_us(lambda: y_fill.fill_(0))
            for sp in (float(v) for v in args.sparsities.split(",")):
                dense_us = None
                for kind in args.weights.split(","):
                    if kind in ("unit", "single") and sp != float(args.sparsities.split(",")[0]):
                        continue  # no sparsity: once per shape and N
                    w = make(kind, m, k, sp, gen)
                    if dense_us is None:
                        dense_us = graph_us(lambda: F.linear(x, w))
                    for classes in (int(v) for v in args.classes.split(",")):
                        rw = RowWeight.from_dense(w, classes)
                        ra = row_args(rw)
                        xc = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                        out = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                        row_launch(xc, ra, out=out)
                        bad = None if args.unchecked else check(out, xc.float() @ w.float().T)
                        if bad:
                            raise SystemExit(f"{shape} {kind} {sp} classes {classes}: {bad}")
                        us = graph_us(lambda: row_launch(x, ra, out=out))
                        rec = dict(shape=shape, M=m, K=k, N=n, sparsity=sp if kind in ("uniform", "equal") else "",
                                   weight=kind, classes=classes, entries=rw.n_entries, mb=round(rw.nbytes / 1e6, 2),
                                   us=round(us, 2), dense_us=round(dense_us, 2), fill_us=round(fill_us, 2))
                        rows_out.append(rec)
                        print(f"{shape:>11} {n:>3} {rec['sparsity']!s:>5} {kind:>8} {classes:>7} {rw.n_entries:>10} "
                              f"{rec['mb']:>7} {us:>8.2f} {dense_us:>8.2f} {fill_us:>6.2f}", flush=True)
    if args.out:
        start_csv(Path(args.out), list(rows_out[0]), rows_out)


if __name__ == "__main__":
    main()
