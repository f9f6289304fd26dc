"""The measured check's GPU path step by step, for running under compute-sanitizer: one BITMAP plan
(2048x2048 bf16 at density 0.5, the weight of tests/test_measure.py), run eagerly, captured in a
CUDA graph, replayed, timed by graph_time_us, then measure_plan (which also times cuBLAS). Each
step prints when it has finished, so a sanitizer failure names the step it happened in.

    CUDA_LAUNCH_BLOCKING=1 compute-sanitizer --tool racecheck --report-api-errors no \
        --kernel-name kns=plan_matmul python3 benchmarks/sanitize_measure_path.py all
    python3 benchmarks/sanitize_measure_path.py eager|graph|all      # without the sanitizer
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from weights import random_weight  # noqa: E402

from cross.costmodel import CostModel, GPUSpec  # noqa: E402
from cross.costmodel.profile import graph_time_us  # noqa: E402
from cross.pack import pack  # noqa: E402
from cross.partition import make_plan  # noqa: E402
from cross.runtime import measure_plan  # noqa: E402
from cross.runtime.dispatch import execute, gpu_kernel_args  # noqa: E402

#: the plan is predicted to win every bucket, so measure_plan times every one
WINNING = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0))


def main(step: str) -> None:
    rng = torch.Generator().manual_seed(3948706912)
    w = random_weight((2048, 2048), 0.5, rng, torch.bfloat16).cuda()
    packed = pack(w, make_plan(w, cost_model=WINNING))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(16, 2048, generator=gen, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    print("randn ok", flush=True)
    kernels: dict = {}
    gpu_kernel_args(packed, 0, kernels)

    def run():
        return execute(x, packed, force_plan=True, kernels=kernels, checked=True)

    run()
    torch.cuda.synchronize()
    print("eager ok", flush=True)
    if step in ("graph", "all"):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
        torch.cuda.synchronize()
        print("captured", flush=True)
        g.replay()
        torch.cuda.synchronize()
        print("replayed", flush=True)
        print("graph_time_us", graph_time_us(run, 1, 2), flush=True)
    if step == "all":
        with torch.cuda.device(packed.device):
            run()
            torch.cuda.synchronize()
        print("in device ctx ok", flush=True)
        plan = measure_plan(packed, w)
        print("measure ok", [b.measured_us for b in plan.buckets], flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")
