"""The gather kernel (kernels/gather_mma.cu over pack/gather.py: X gathered at the nonzeros' columns
by ldmatrix as the mma's A operand, a cost per stored slot) against cuBLAS at 8 and 16 tokens.
Weights: uniform random sparse (bf16, benchmarks' seeded weights) at each sparsity. Each is checked
against the fp32 product (output poisoned with NaN, fresh inputs), then timed: CUDA-graph replay, L2
flushed by a 256 MB read, cuBLAS (F.linear on the same weight as a dense tensor) in the same run.
"bytes": the format's bytes against dense; "floor": those bytes at the copy rate (3.02 TB/s), as a
fraction of the time measured; "padding": slots that hold no nonzero. At 9-16 tokens K is at most
~6,900 (X's 16 tokens take 32 bytes a column of shared memory): 4096x11008 runs at up to 8 tokens.

    PYTHONPATH=src python benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.8,0.9 \
        --ns 8,16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from kernels import SHAPES  # noqa: E402

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import checked_us  # noqa: E402
from cross.bench.weights import make_weight, seeded  # noqa: E402
from cross.kernels.cuda_backend import DEFINES_ENV  # noqa: E402
from cross.kernels.launch import gather_matmul  # noqa: E402
from cross.pack.gather import SEG_QUADS, GatherWeight  # noqa: E402

COPY_RATE = 3.02e12  # bytes per second: the H100's device-to-device copy (docs: DESIGN's ceilings)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-qkvo,llama-up")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9")
    ap.add_argument("--ns", default="8,16")
    ap.add_argument("--warps", type=int, default=None, help="warps per block (default: the kernel's, 32)")
    ap.add_argument("--seg-quads", type=int, default=SEG_QUADS, help="records (4 steps each) per segment")
    ap.add_argument("--no-check", action="store_true",
                    help="time without checking the result: only for the profiling builds whose results are wrong "
                         "(CROSS_CUDA_DEFINES with -DGATHER_ABLATE=1 or 2)")
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gather_bench: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    defines = os.environ.get(DEFINES_ENV, "")
    if args.no_check and "GATHER_ABLATE" not in defines:
        ap.error("--no-check: only for a profiling build (CROSS_CUDA_DEFINES=-DGATHER_ABLATE=1 or 2)")
    rows = []
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us; warps {args.warps or 'default'}, "
          f"seg_quads {args.seg_quads}; defines '{defines}'")
    print(f"{'shape':>11} {'N':>3} {'sp':>4} {'bytes':>6} {'padding':>7} {'dense':>7} {'gather':>7} {'x dense':>7} "
          f"{'floor':>5}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp in (float(v) for v in args.sparsities.split(",")):
            w = make_weight(m, k, sp, "uniform", seeded(0, shape, "uniform", sp)).cuda()
            gw = GatherWeight.from_dense(w, seg_quads=args.seg_quads)
            ratio = gw.nbytes / (2 * m * k)
            for n in (int(v) for v in args.ns.split(",")):
                dense_us, us = checked_us(lambda x, y: gather_matmul(x, gw, out=y, warps=args.warps), w, n, gen,
                                          f"{shape} N={n} {sp}", verify=not args.no_check)
                floor = gw.nbytes / COPY_RATE * 1e6 / us
                rec = dict(shape=shape, M=m, K=k, N=n, sparsity=sp, bytes_vs_dense=round(ratio, 4),
                           padding=round(gw.padding, 4), dense_us=round(dense_us, 2), gather_us=round(us, 2),
                           speedup_vs_dense=round(dense_us / us, 3), floor_fraction=round(floor, 3),
                           warps=args.warps or "", seg_quads=args.seg_quads, defines=defines)
                rows.append(rec)
                print(f"{shape:>11} {n:>3} {sp:>4} {ratio:>6.3f} {gw.padding:>7.3f} {dense_us:>7.2f} {us:>7.2f} "
                      f"{dense_us / us:>7.2f} {floor:>5.2f}", flush=True)
    if args.out and rows:
        start_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
