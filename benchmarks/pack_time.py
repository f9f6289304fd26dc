"""How long a layer takes to plan and pack (the work ``sparsify_`` does per nn.Linear before any
timing), on the device given: ``make_plan``, ``pack``, and ``SparseLinear.from_dense`` with the
measured check off, each the best of ``--repeats`` calls after one to warm up. Weights: bf16,
uniform random sparsity (``cross.bench.weights``).

    PYTHONPATH=src python benchmarks/pack_time.py --shapes llama-up --sparsities 0.5,0.7,0.9
"""

import argparse
import time

import torch

import cross
from cross.bench.weights import SHAPES, make_weight, seeded
from cross.pack import pack
from cross.partition import make_plan


def best_s(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-up")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"{'shape':>11} {'sparsity':>8} {'plan s':>7} {'pack s':>7} {'from_dense s':>12}  kernels by bucket")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp in (float(v) for v in args.sparsities.split(",")):
            w = make_weight(m, k, sp, "uniform", seeded(shape, sp)).to(args.device, torch.bfloat16)
            lin = torch.nn.Linear(k, m, bias=False, device="meta")
            lin.weight = torch.nn.Parameter(w, requires_grad=False)
            plan = make_plan(w)
            plan_s = best_s(lambda: make_plan(w), args.repeats)
            pack_s = best_s(lambda: pack(w, plan), args.repeats)
            layer_s = best_s(lambda: cross.SparseLinear.from_dense(lin, measure=False), args.repeats)
            kernels = " ".join(("-" if b.fallback else b.kernel[0]) for b in plan.buckets)
            print(f"{shape:>11} {sp:>8} {plan_s:>7.2f} {pack_s:>7.2f} {layer_s:>12.2f}  {kernels}", flush=True)


if __name__ == "__main__":
    main()
