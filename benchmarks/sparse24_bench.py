"""The 2:4 kernel (kernels/sparse24_mma.cu, sparse tensor cores over pack/sparse24.py, CUDA cores for
the overflow) against cuBLAS at 8-16 tokens. Weights (bf16): uniform random sparse at each sparsity
("uniform": a group's third and fourth nonzeros are overflow entries), or their 2:4 part ("2:4": the
two largest-magnitude entries of every group kept, pack.sparse24.group_columns; no overflow). Each
launch setting (warps:m-tiles) is checked against the fp32 product (output poisoned with NaN, fresh
inputs), then timed: CUDA-graph replay, L2 flushed by a 256 MB read, cuBLAS (F.linear on the same
weight as a dense tensor) in the same run.

    PYTHONPATH=src python benchmarks/sparse24_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.9 --ns 8,16
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
from cross.kernels.launch import sparse24_matmul  # noqa: E402
from cross.pack.sparse24 import Sparse24Weight, group_columns, smem_bytes  # noqa: E402


def two_of_four(w: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """w with only the two largest-magnitude entries of every group kept: groups of 4 of ``cols`` (the
    columns in group order, pack.sparse24.group_columns), or of 4 consecutive columns (None)."""
    m, k = w.shape
    cols = torch.arange(-(-k // 4) * 4, device=w.device) if cols is None else cols
    g = torch.nn.functional.pad(w, (0, len(cols) - k))[:, cols].view(m, -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.abs().float().topk(2, -1).indices, True)
    out = torch.empty(m, len(cols), dtype=w.dtype, device=w.device)
    out[:, cols] = torch.where(keep, g, torch.zeros_like(g)).view(m, -1)
    return out[:, :k].contiguous()


def parse_bench_args(argv, doc: str, name: str, shapes: str, ns: str, settings: str, settings_help: str):
    """The 2:4 benchmarks' command line (shapes, sparsities, token counts, launch settings, weights,
    CSV); exits without a CUDA GPU."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shapes", default=shapes)
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--ns", default=ns)
    ap.add_argument("--settings", default=settings, help=settings_help)
    ap.add_argument("--weights", default="uniform,2:4", help="uniform and/or 2:4 (see above), comma-separated")
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(f"{name}: needs a CUDA GPU")
    return args


def bench_weights(args, cols_of=None):
    """(shape, m, k, sparsity, kind, weight on the GPU) for each shape, sparsity and weight kind of
    ``args``: uniform random, or its 2:4 part (``two_of_four`` over ``cols_of(k, device)``, or over
    consecutive columns), seeded once for the whole run."""
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp, kind in ((float(v), kind) for v in args.sparsities.split(",") for kind in args.weights.split(",")):
            w = make_weight(m, k, sp, "uniform", gen).cuda()
            if kind == "2:4":
                w = two_of_four(w, None if cols_of is None else cols_of(k, w.device))
            elif kind != "uniform":
                raise SystemExit(f"--weights: expected uniform or 2:4, got {kind!r}")
            yield shape, m, k, sp, kind, w


def print_header(n_width: int) -> None:
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us")
    print(f"{'shape':>11} {'N':>{n_width}} {'sp':>4} {'weight':>7} {'overflow':>8} {'setting':>8} {'MB':>6} "
          f"{'dense':>7} {'2:4':>7} {'x dense':>7} {'TB/s':>5}")


def main(argv=None):
    args = parse_bench_args(argv, __doc__, "sparse24_bench", "llama-qkvo,llama-up", "8,16", "16:2,8:2",
                            "launch settings warps:m-tiles, comma-separated")
    gen = torch.Generator(device="cuda").manual_seed(0)
    out_rows = []
    print_header(3)
    for shape, m, k, sp, kind, w in bench_weights(args, group_columns):
        packed = {s: Sparse24Weight.from_dense(w, mt=int(s.split(":")[1])) for s in args.settings.split(",")}
        over = next(iter(packed.values())).entries.numel() / max(int((w != 0).sum()), 1)
        for n in (int(v) for v in args.ns.split(",")):
            nt = 8 if n <= 8 else 16
            x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
            y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
            dense_us = graph_us(lambda: F.linear(x, w))
            for setting, sw in packed.items():
                warps = int(setting.split(":")[0])
                if smem_bytes(k, nt, warps, sw.mt) > 227 * 1024:
                    print(f"{shape:>11} {n:>3} {sp:>4} {kind:>7} {'':>8} {setting:>8}  (X and partial sums over the "
                          "shared memory)")
                    continue
                xc = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                yc = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                sparse24_matmul(xc, sw, out=yc, nt=nt, warps=warps)
                bad = check(yc, xc.float() @ w.float().T)
                if bad:
                    raise SystemExit(f"{shape} N={n} {sp} {setting}: {bad}")
                us = graph_us(lambda: sparse24_matmul(x, sw, out=y, nt=nt, warps=warps))
                mb = sw.nbytes() / 1e6
                rec = dict(shape=shape, M=m, K=k, N=n, sparsity=sp, weight=kind, overflow_of_nonzeros=round(over, 4),
                           setting=setting,
                           mb=round(mb, 2), dense_us=round(dense_us, 2), sparse24_us=round(us, 2),
                           speedup_vs_dense=round(dense_us / us, 3))
                out_rows.append(rec)
                print(f"{shape:>11} {n:>3} {sp:>4} {kind:>7} {over:>8.3f} {setting:>8} {mb:>6.1f} {dense_us:>7.2f} {us:>7.2f} "
                      f"{dense_us / us:>7.2f} {mb / us:>5.2f}", flush=True)
    if args.out and out_rows:
        start_csv(Path(args.out), list(out_rows[0]), out_rows)


if __name__ == "__main__":
    main()
