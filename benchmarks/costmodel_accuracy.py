"""How well the measured cost model predicts, whether the planner picks the fastest option, and what
balancing buys: predicted vs measured whole-matrix time of plans, and an ablation.

For every (shape, distribution, sparsity, N): three ways to run the weight are timed, each checked
against the fp32 product first:
    dense    cuBLAS (predicted: CostModel.dense_us)
    sparse   a plan with every non-empty tile BITMAP, forced
    hybrid   the planner's plan (DENSE and BITMAP tiles), forced
and the runtime's choice (hybrid unless its bucket falls back to dense) is compared with the fastest.
The ablation times hybrid plans made with balance='none', 'intra' and 'full' on non-uniform weights.

    PYTHONPATH=src python benchmarks/costmodel_accuracy.py --dlmc ../shared/data/dlmc \
        --cost-model benchmarks/results/h100/costmodel.json --out benchmarks/results/h100
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

from cross.costmodel import CostModel, default_cost_model
from cross.kernels.launch import kernel_args, launch
from cross.pack import pack
from cross.partition import make_plan
from cross.bench.weights import DLMC_LAYERS, dlmc_files, dlmc_mask
from cross.tiling import TileKind

sys.path.insert(0, str(Path(__file__).parent))
from kernels import SHAPES, bench, make_weight  # noqa: E402

FIELDS = ["shape", "N", "distribution", "sparsity", "plan", "predicted_us", "measured_us", "best_alternative_us"]


def dlmc_weights(folder: Path, sparsity: float):
    """The real magnitude-pruned Transformer patterns of DLMC_LAYERS (encoder layer 0) at this
    sparsity, filled with random values; none where the folder has no archive of that sparsity."""
    path = dlmc_files(folder).get(sparsity)
    if path is None:
        return []
    out = []
    for name in DLMC_LAYERS:
        mask = dlmc_mask(path, name)
        out.append((name, (torch.randn(mask.shape) * mask).to(torch.bfloat16)))
    return out


def run_plan(w, x, plan):
    packed = pack(w, plan)
    bucket = packed.bucket_for(x.shape[0])
    args = kernel_args(packed, bucket)
    y = launch(x, args).float()
    ref = x.float() @ w.float().T
    err = ((y - ref).norm() / ref.norm().clamp_min(1e-6)).item()
    if not err < 2e-2:
        raise AssertionError(f"plan result off the dense product: relative error {err}")
    return bench(lambda: launch(x, args)), bucket.plan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-up,llama-qkvo,bert-up")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--ns", default="1,16,128,2048")
    ap.add_argument("--dlmc", type=Path, default=None, help="folder of the DLMC .npz files")
    ap.add_argument("--cost-model", type=Path, default=None, metavar="JSON",
                    help="a measured cost model (default: the one `cross profile` measured on this GPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cm = CostModel.load(args.cost_model) if args.cost_model else default_cost_model()
    print(f"# {torch.cuda.get_device_name()}, cost model: {cm.source}", flush=True)
    gen = torch.Generator().manual_seed(0)
    ns = [int(v) for v in args.ns.split(",")]
    sparsities = [float(v) for v in args.sparsities.split(",")]
    cases = []
    for name in args.shapes.split(","):
        m, k = SHAPES[name]
        for dist in ("uniform", "nonuniform"):
            for sp in sparsities:
                cases.append((name, dist, sp, lambda m=m, k=k, sp=sp, dist=dist: make_weight(m, k, sp, dist, gen)))
    if args.dlmc:
        for sp in sparsities:
            for key, w in dlmc_weights(args.dlmc, sp):
                cases.append((key, "dlmc", sp, lambda w=w: w))
    rows, choice_ok, rel_err = [], [], []
    print(f"{'shape':>26} {'dist':>10} {'sp':>4} {'N':>5} {'plan':>7} {'pred us':>9} {'meas us':>9} {'best alt':>9}")
    for name, dist, sp, build in cases:
        w = build().cuda()
        hybrid_plan = make_plan(w, cost_model=cm)
        sparse_plan = make_plan(w, cost_model=cm, allowed_kinds=(TileKind.BITMAP,))
        for n in ns:
            x = torch.randn(n, w.shape[1], generator=gen).to(torch.bfloat16).cuda()
            measured = {"dense": bench(lambda: torch.matmul(x, w.T))}
            predicted = {"dense": cm.dense_us(w.shape[0], w.shape[1], n)}
            measured["sparse"], bp = run_plan(w, x, sparse_plan)
            predicted["sparse"] = bp.predicted_us
            measured["hybrid"], bp = run_plan(w, x, hybrid_plan)
            predicted["hybrid"] = bp.predicted_us
            chosen = "dense" if bp.fallback else "hybrid"
            best = min(measured.values())
            choice_ok.append(measured[chosen] <= 1.05 * best)
            for plan in ("dense", "sparse", "hybrid"):
                alt = min(v for p, v in measured.items() if p != plan)
                rows.append(dict(shape=name, N=n, distribution=dist, sparsity=sp, plan=plan,
                                 predicted_us=round(predicted[plan], 2), measured_us=round(measured[plan], 2),
                                 best_alternative_us=round(alt, 2)))
                rel_err.append(abs(predicted[plan] - measured[plan]) / measured[plan])
                print(f"{name:>26} {dist:>10} {sp:>4} {n:>5} {plan:>7} {predicted[plan]:9.1f} {measured[plan]:9.1f} {alt:9.1f}"
                      + ("  <- runtime's choice" if plan == chosen else ""), flush=True)
    print(f"median |predicted - measured| / measured: {np.median(rel_err):.3f} over {len(rel_err)} timings")
    print(f"runtime's choice within 5% of the fastest of dense / sparse / hybrid: {np.mean(choice_ok):.1%} of {len(choice_ok)} cases")

    ablation = []
    for sp in (0.7, 0.9):
        w = make_weight(*SHAPES["llama-up"], sp, "nonuniform", gen).cuda()
        for n in (16, 128, 512):
            x = torch.randn(n, w.shape[1], generator=gen).to(torch.bfloat16).cuda()
            for balance in ("none", "intra", "full"):
                t, bp = run_plan(w, x, make_plan(w, cost_model=cm, balance=balance))
                ablation.append(dict(sparsity=sp, N=n, balance=balance, measured_us=round(t, 2),
                                     predicted_us=round(bp.predicted_us, 2), imbalance=round(bp.imbalance, 3)))
                print(f"ablation llama-up nonuniform {sp} N={n:4d} balance={balance:5s}: {t:8.1f} us "
                      f"(predicted {bp.predicted_us:8.1f}, unit imbalance {bp.imbalance:.3f})", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "costmodel_accuracy.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=FIELDS)
            wr.writeheader()
            wr.writerows(rows)
        with open(os.path.join(args.out, "balance_ablation.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(ablation[0]))
            wr.writeheader()
            wr.writerows(ablation)


if __name__ == "__main__":
    main()
