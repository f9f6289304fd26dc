"""Where the CUDA plan kernel's time goes: the same plan timed with parts of the work compiled out.

Variants are NVRTC builds of plan_matmul.cu with extra defines (CROSS_CUDA_DEFINES): the ABLATE bits
remove one part each (results are then wrong, so only the full builds are checked against the fp32
product), other defines select alternative code paths. Times: CUDA-graph replay, L2 flushed, with
dense cuBLAS in the same run.

    PYTHONPATH=src python benchmarks/kernel_ablation.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --ns 1,16
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from kernels import SHAPES, bench, make_weight  # noqa: E402

from cross.kernels import cuda_backend  # noqa: E402
from cross.kernels.launch import kernel_args, launch  # noqa: E402
from cross.pack import pack  # noqa: E402
from cross.partition import make_plan  # noqa: E402
from cross.tiling import TileKind  # noqa: E402

VARIANTS = {
    "full": "",
    "no-reduction": "-DABLATE=1",
    "partials-only": "-DABLATE=64",
    "no-decode": "-DABLATE=2",
    "no-mma": "-DABLATE=32",
    "no-decode-mma": "-DABLATE=34",
    "no-copies": "-DABLATE=4",
    "walk-only": "-DABLATE=38",
    "no-tiles": "-DABLATE=16",
    "exit": "-DABLATE=8",
    # not ablations: the BITMAP decode forced one way, checked like "full"
    "scatter": "-DDECODE_REGS=0 -DDECODE_CORES=0",  # every BITMAP tile scattered into the A tile
    "regs": "-DDECODE_REGS=1 -DREGS_MIN_NNZ=0 -DDECODE_CORES=0",  # every BITMAP tile decoded into the mma registers
    "cp-async": "-DBULK_COPY=0",  # values and bitmap copied by every thread's cp.async, no bulk copies
    "no-cores": "-DDECODE_CORES=0",  # at N = 1, no BITMAP tile on CUDA cores (the launcher's build otherwise)
    "cores": "-DDECODE_CORES=1",  # at N = 1, BITMAP tiles under the threshold on CUDA cores, whatever the weight
    "cores-all": "-DDECODE_CORES=1 -DCORES_MAX_NNZ=4097",  # at N = 1, every BITMAP tile on CUDA cores
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-up,llama-qkvo")
    ap.add_argument("--sparsities", default="0.7,0.9")
    ap.add_argument("--ns", default="1,16")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="names above, or name=defines pairs")
    ap.add_argument("--programs-per-sm", type=int, default=6)
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variants.split(","):
        name, _, defines = v.partition("=")
        variants[name] = defines if defines or name not in VARIANTS else VARIANTS[name]
    dev = torch.device("cuda")
    programs = args.programs_per_sm * torch.cuda.get_device_properties(dev).multi_processor_count
    gen = torch.Generator().manual_seed(0)
    print(f"# {torch.cuda.get_device_name(dev)}, bf16, {programs} programs, command: benchmarks/kernel_ablation.py {' '.join(sys.argv[1:])}")
    print(f"{'shape':>11} {'N':>4} {'sp':>4} {'variant':>28} {'us':>8} {'vs dense':>8}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        for sp in (float(s) for s in args.sparsities.split(",")):
            w = make_weight(m, k, sp, "uniform", gen).to(dev)
            packed = pack(w, make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=programs))
            for n in (int(v) for v in args.ns.split(",")):
                x = torch.randn(n, k, generator=gen).to(torch.bfloat16).to(dev)
                ref = x.float() @ w.float().T
                dense_us = bench(lambda: torch.matmul(x, w.T))
                bucket = packed.bucket_for(n)
                kargs = kernel_args(packed, bucket, "cuda")
                for name, defines in variants.items():
                    os.environ[cuda_backend.DEFINES_ENV] = defines
                    cuda_backend._kernel.cache_clear()
                    y = launch(x, kargs).float()
                    torch.cuda.synchronize()
                    if "ABLATE" not in defines:
                        err = ((y - ref).norm() / ref.norm()).item()
                        if not err < 2e-2:
                            print(f"  CHECK FAILED {shape} N={n} sp={sp} {name}: rel err {err}", flush=True)
                            continue
                    else:  # the ablated launch leaves the arrival counters in an unknown state
                        kargs.counters.zero_()
                    us = bench(lambda: launch(x, kargs))
                    kargs.counters.zero_()
                    print(f"{shape:>11} {n:>4} {sp:>4} {name:>28} {us:8.2f} {dense_us / us:8.2f}", flush=True)
    os.environ[cuda_backend.DEFINES_ENV] = ""
    cuda_backend._kernel.cache_clear()


if __name__ == "__main__":
    main()
