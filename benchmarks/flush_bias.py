"""How the way L2 is flushed before a timed run changes the time of memory-bound layers.

Each op is timed three ways: after a zero-fill of 256 MB (triton.testing.do_bench's flush, which
leaves L2 full of dirty lines), after a read of 256 MB (clean lines), and without any flush in a
graph of R back-to-back calls on R distinct copies of the weight (R copies > 4x L2: the weights
are never in L2, and nothing dirty is there beyond what the calls write), per call. The third is
what a layer meets inside a model; the flush whose isolated times agree with it is the right one.

    PYTHONPATH=src python benchmarks/flush_bias.py
"""

from __future__ import annotations

import argparse
import sys

import torch

from cross.bench.timing import check, graph_us
from cross.bench.weights import make_weight
from cross.kernels.launch import kernel_args, launch
from cross.pack import pack
from cross.partition import make_plan
from cross.tiling import TileKind

SHAPES = {"llama-up": (11008, 4096), "llama-qkvo": (4096, 4096), "llama-down": (4096, 11008)}
ROTATE_BYTES = 200e6


def prepare(shape: str, sparsity: float, copies: int, gen, dev):
    """(the weight, a function of x giving `copies` callables that compute x @ W^T on distinct copies
    of the weight, the bytes one copy reads)."""
    m, k = SHAPES[shape]
    w = make_weight(m, k, sparsity, "uniform", gen).to(dev)
    if sparsity == 0:
        ws = [w] + [w.clone() for _ in range(copies - 1)]
        return w, lambda x: [lambda w=w: torch.matmul(x, w.T) for w in ws], w.numel() * 2
    plan = make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=6 * torch.cuda.get_device_properties(dev).multi_processor_count)
    packs = [pack(w, plan) for _ in range(copies)]

    def bind(x):
        kargs = [kernel_args(p, p.bucket_for(x.shape[0]), "cuda") for p in packs]
        return [lambda a=a: launch(x, a) for a in kargs]

    return w, bind, packs[0].nbytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="llama-up:0,llama-up:0.7,llama-up:0.9,llama-qkvo:0,llama-qkvo:0.9,llama-down:0")
    ap.add_argument("--ns", default="1,16")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    print(f"# {torch.cuda.get_device_name(dev)}, bf16, command: benchmarks/flush_bias.py {' '.join(sys.argv[1:])}")
    print(f"{'shape':>11} {'sp':>4} {'N':>3} {'MB':>6} {'write-flush':>11} {'read-flush':>10} {'rotate':>7} {'R':>3}")
    for case in args.cases.split(","):
        shape, sp = case.split(":")
        sp = float(sp)
        m, k = SHAPES[shape]
        copies = max(2, min(16, int(ROTATE_BYTES / (m * k * 2 * (1 - sp) * 1.2 + 1)) + 1))
        w, bind, nbytes = prepare(shape, sp, copies, gen, dev)
        for n in (int(v) for v in args.ns.split(",")):
            x = torch.randn(n, k, generator=gen).to(torch.bfloat16).to(dev)
            fns = bind(x)
            bad = check(fns[-1](), x.float() @ w.float().T)
            if bad:
                raise SystemExit(f"{shape} at {sp}, N={n}: {bad}")
            write = graph_us(fns[0], flush="write")
            read = graph_us(fns[0], flush="read")

            def chain():
                for f in fns:
                    f()

            rotate = graph_us(chain, flush="read") / len(fns)
            print(f"{shape:>11} {sp:4.2f} {n:3d} {nbytes / 1e6:6.1f} {write:11.1f} {read:10.1f} {rotate:7.1f} {len(fns):3d}",
                  flush=True)


if __name__ == "__main__":
    main()
