"""The warpgroup 2:4 kernel (kernels/wgmma24.cu: Hopper's sparse warpgroup mma over pack/wgmma24.py,
a second one for the overflow) against cuBLAS at 1-512 tokens (blocks of 16, 32, 64 or 128 tokens), in
the slots layout or the compressed one (a setting with a leading c). Weights (bf16): uniform random
sparse at each sparsity ("uniform": a group's third and fourth nonzeros are overflow), or their 2:4 part
("2:4": the two largest-magnitude entries of every group of 4 consecutive columns kept; no overflow).
Each launch setting (warpgroups:m-tiles[:split]; a split: clusters of that many blocks per row block,
no split: wgmma24_split's, 0: the launch's chunks in equal parts over the SMs' resident blocks) is checked against the fp32 product (output poisoned
with NaN, fresh inputs; a wrong one is reported and not timed), then timed: CUDA-graph replay, L2
flushed by a 256 MB read, cuBLAS (F.linear on the same weight as a dense tensor) in the same run.

    PYTHONPATH=src python benchmarks/wgmma24_bench.py --shapes llama-qkvo,llama-up,llama-down \\
        --sparsities 0.6,0.7,0.9 --ns 16,64,128 --settings 2:2,c2:2
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from sparse24_bench import bench_weights, parse_bench_args, print_header  # noqa: E402

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import check, graph_us  # noqa: E402
from cross.kernels import cuda_backend  # noqa: E402
from cross.kernels.launch import wgmma24_args, wgmma24_run, wgmma24_split  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight, token_tile  # noqa: E402


def main(argv=None):
    args = parse_bench_args(argv, __doc__, "wgmma24_bench", "llama-qkvo,llama-up,llama-down", "128", "2:2",
                            "[c]warpgroups:m-tiles[:split], comma-separated (c: the compressed layout)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    out_rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print_header(4)
    for shape, m, k, sp, kind, w in bench_weights(args):  # 2:4: groups of 4 consecutive columns
        packed = {}
        for s in args.settings.split(","):
            wgs, mt = (int(v) for v in s.lstrip("c").split(":")[:2])
            packed[s] = Wgmma24Weight.from_dense(w, wgs, mt, compressed=s.startswith("c"))
        over = next(iter(packed.values())).n_entries / max(int((w != 0).sum()), 1)
        for n in (int(v) for v in args.ns.split(",")):
            x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
            y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
            dense_us = graph_us(lambda: F.linear(x, w))
            for setting, sw in packed.items():
                parts = setting.lstrip("c").split(":")
                split = int(parts[2]) if len(parts) > 2 else wgmma24_split(*sw.values.shape[:2], sms,
                                                                           -(-n // token_tile(n)))
                run = wgmma24_args(sw, split)  # resolved once, as the runtime does
                xc = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
                yc = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                wgmma24_run(xc, run, None, yc)
                bad = check(yc, xc.float() @ w.float().T)
                if bad:  # not timed; the other settings go on
                    print(f"{shape} N={n} {sp} {kind} {setting}: WRONG: {bad}", flush=True)
                    continue
                us = graph_us(lambda: wgmma24_run(x, run, None, y))
                mb = sw.nbytes / 1e6
                stages = cuda_backend.defined_stages(cuda_backend.wgmma24_defines(
                    True, sw.wgs, sw.mt, split, sw.slots, token_tile(n), sw.compressed))  # the build's depth
                rec = dict(shape=shape, M=m, K=k, N=n, sparsity=sp, weight=kind, overflow_of_nonzeros=round(over, 4),
                           layout="compressed" if sw.compressed else "slots",
                           setting=f"{parts[0]}:{parts[1]}:{split}", stages=stages, mb=round(mb, 2),
                           dense_us=round(dense_us, 2),
                           wgmma24_us=round(us, 2), speedup_vs_dense=round(dense_us / us, 3))
                out_rows.append(rec)
                print(f"{shape:>11} {n:>4} {sp:>4} {kind:>7} {over:>8.3f} {setting[0] if sw.compressed else ''}"
                      f"{rec['setting']:>8} {mb:>6.1f} "
                      f"{dense_us:>7.2f} {us:>7.2f} {dense_us / us:>7.2f} {mb / us:>5.2f}", flush=True)
    if args.out and out_rows:
        start_csv(Path(args.out), list(out_rows[0]), out_rows)


if __name__ == "__main__":
    main()
