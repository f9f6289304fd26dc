"""Kernel benchmark: the plan kernels against dense cuBLAS (torch.matmul), same run, L2 flushed.

Each row: one weight shape, sparsity, distribution and token count N; methods
    dense          torch.matmul(x, W^T) (cuBLAS)
    cross          what the runtime does: the planned hybrid kernel, or dense where the plan falls back
    cross-<backend>-<kinds>   the kernel forced to run a plan restricted to those tile kinds
and the sparse peers of `cross bench kernels` (cusparse-csr, triton-bsr-<block>, sparse-2:4).
Every result is checked against the fp32 dense product before it is timed.
Times are medians of CUDA-graph replays (L2 flushed by a 256 MB read before every run: cross.bench.timing).

This is `cross bench kernels` (src/cross/bench, src/cross/cli/bench.py) with this script's
earlier defaults, writing kernels.csv only; benchmarks/report_kernels.py draws it.

    PYTHONPATH=src python benchmarks/kernels.py --out benchmarks/results/h100
"""

from __future__ import annotations

import sys

from cross.bench.timing import graph_us as bench
from cross.bench.weights import SHAPES, make_weight
from cross.cli.bench import add_kernel_options, bench_kernels, run_script

__all__ = ["SHAPES", "bench", "make_weight", "main"]  # benchmarks/kernel_ablation.py and costmodel_accuracy.py import these

DEFAULTS = dict(shapes="llama-qkvo,llama-up,llama-down", sparsities="0.5,0.7,0.9", ns="1,8,16,128,2048",
                distributions="uniform", methods="dense,cross,cross-cuda-bitmap", out=None)


def main(argv=None) -> int:
    return run_script(__doc__, add_kernel_options, DEFAULTS,
                      lambda args: bench_kernels(args, csv_name="kernels.csv", report=False), argv)


if __name__ == "__main__":
    sys.exit(main())
