"""The slice kernel (kernels/slice_mma.cu over pack/slices.py: X in registers, K split across a
block's warps) against cuBLAS at 1-16 tokens. Weights: uniform random sparse (bf16) at each
sparsity. Each is checked against the fp32 product (output poisoned with NaN, fresh inputs), then
timed: CUDA-graph replay, L2 flushed by a 256 MB read, cuBLAS (F.linear on the same weight as a dense
tensor) in the same run. "floor": the format's bytes at the streaming rate of cuBLAS in this run
(dense bytes / cuBLAS time), as a fraction of the time measured. "defines": the build's extra
defines from CROSS_CUDA_DEFINES (e.g. -DTOGETHER=2), empty for the code as it is; the profiling
builds (-DSLICE_ABLATE=1: no steps, the copies' pace; 2: no words copied, the consumers' pace) give
wrong results and run only with --no-check. "format": pairs (a pair of elements stored whole where
either is nonzero) or elements (each nonzero alone), pack/slices.py.

    PYTHONPATH=src python benchmarks/slice_bench.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
        --ns 1,8,16 --formats pairs,elements
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
from cross.bench.weights import make_weight  # noqa: E402
from cross.kernels.cuda_backend import DEFINES_ENV  # noqa: E402
from cross.kernels.launch import slice_matmul  # noqa: E402
from cross.pack.slices import SliceWeight  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-qkvo,llama-up,llama-down")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--ns", default="1,8,16")
    ap.add_argument("--warps", default="auto", help="consumer warps per block of the format (auto: default_warps)")
    ap.add_argument("--producers", type=int, default=1, help="producer warps per block (1-4)")
    ap.add_argument("--formats", default="pairs", help="pairs, elements, or both (comma-separated)")
    ap.add_argument("--no-check", action="store_true",
                    help="time without checking the result: only for the profiling builds whose results are wrong "
                         "(CROSS_CUDA_DEFINES with -DSLICE_ABLATE=1 or 2)")
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("slice_bench: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)
    warps = None if args.warps == "auto" else int(args.warps)
    formats = args.formats.split(",")
    if not set(formats) <= {"pairs", "elements"}:
        ap.error(f"--formats: pairs and/or elements, got {args.formats!r}")
    out_rows = []
    defines = os.environ.get(DEFINES_ENV, "")  # the build's extra defines (e.g. -DTOGETHER=2)
    if args.no_check and "SLICE_ABLATE" not in defines:
        ap.error("--no-check: only for a profiling build (CROSS_CUDA_DEFINES=-DSLICE_ABLATE=1 or 2)")
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us; {args.producers} producer warps; "
          f"defines '{defines}'")
    print(f"{'shape':>11} {'format':>8} {'N':>3} {'sp':>4} {'warps':>5} {'x bytes':>7} {'dense':>7} {'slices':>7} "
          f"{'x dense':>7} {'floor':>5}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp in (float(v) for v in args.sparsities.split(",")):
            w = make_weight(m, k, sp, "uniform", cpu_gen).cuda()
            for fmt in formats:
                sw = SliceWeight.from_dense(w, warps=warps, elements=fmt == "elements")
                ratio = sw.nbytes / (2 * m * k)
                for n in (int(v) for v in args.ns.split(",")):
                    x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                    y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
                    dense_us = graph_us(lambda: F.linear(x, w))
                    xc = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                    yc = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                    slice_matmul(xc, sw, out=yc, producers=args.producers)
                    bad = None if args.no_check else check(yc, xc.float() @ w.float().T)
                    if bad:
                        raise SystemExit(f"{shape} {fmt} N={n} {sp}: {bad}")
                    us = graph_us(lambda: slice_matmul(x, sw, out=y, producers=args.producers))
                    floor = ratio * dense_us / us
                    rec = dict(shape=shape, format=fmt, M=m, K=k, N=n, sparsity=sp, warps=sw.warps,
                               producers=args.producers, bytes_vs_dense=round(ratio, 4),
                               dense_us=round(dense_us, 2), slices_us=round(us, 2),
                               speedup_vs_dense=round(dense_us / us, 3), floor_fraction=round(floor, 3),
                               defines=defines)
                    out_rows.append(rec)
                    print(f"{shape:>11} {fmt:>8} {n:>3} {sp:>4} {sw.warps:>5} {ratio:>7.3f} {dense_us:>7.2f} "
                          f"{us:>7.2f} {dense_us / us:>7.2f} {floor:>5.2f}", flush=True)
    if args.out and out_rows:
        start_csv(Path(args.out), list(out_rows[0]), out_rows)


if __name__ == "__main__":
    main()
