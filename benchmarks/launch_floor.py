"""What a launch costs before any work, timed as the benchmarks time everything (one CUDA graph
replayed, L2 flushed by a 256 MB read before each replay, median between CUDA events): an empty
kernel at one block, at the warpgroup 2:4 kernel's STREAM grid (two 256-thread blocks an SM) with no
dynamic shared memory and with as much as that kernel's 16-token builds ask for, with the preferred
shared-memory carveout left to the driver and set to the largest, the STREAM grid also launched
cooperatively (as the kernel's STREAM launches are); each alone in its graph and as two
launches in one graph (the difference: what a second launch adds inside a graph);
then cuBLAS at 1 and 16 tokens on the Llama-2-7B shapes, in the same run.

The warpgroup 2:4 kernel's "launch only" build (benchmarks/wgmma24_floor.py, -DABLATE=4) measured
5.2-5.6 us at 16 tokens, a quarter of the launch at 90%. Whether that is the graph's own cost (which
cuBLAS pays too), the grid's blocks, or the shared memory's carveout changed after the flush (a
reduction asking for little shared memory) is what the rows split:

    PYTHONPATH=src python benchmarks/launch_floor.py [--out launch_floor.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import graph_us  # noqa: E402
from cross.bench.weights import ALL_SHAPES  # noqa: E402

SOURCE = b'extern "C" __global__ void empty(int) {}\n'  # one argument: launched as every kernel is
THREADS = 256
#: dynamic shared memory of the empty launches, bytes: none, and about the most an SM's two blocks can hold (the
#: warpgroup 2:4 kernel's 16-token STREAM builds ask for nearly that: pack/wgmma24.smem_bytes)
SMEM = (0, 112 * 1024)
#: CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: -1 the driver's choice, 100 the largest shared part
CARVEOUTS = (-1, 100)


def empty_kernel(smem: int, carveout: int):
    """The empty kernel, loaded with ``smem`` bytes of dynamic shared memory allowed and ``carveout``."""
    from cross.kernels import cuda_backend

    device = torch.cuda.current_device()
    cubin = cuda_backend.nvrtc_cubin_of(device, SOURCE, "empty.cu", ())
    _, func = cuda_backend.load_kernel(device, cubin, "empty", smem)
    if carveout >= 0:
        driver, _ = cuda_backend._bindings()
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT
        cuda_backend._check(driver.cuFuncSetAttribute(func, attr, carveout), "cuFuncSetAttribute")
    return func


def launcher(func, grid: int, smem: int, launches: int, cooperative: bool = False):
    from cross.kernels import cuda_backend

    none = cuda_backend.Pointers((), True)

    def run():
        for _ in range(launches):
            cuda_backend._launch(func, grid, THREADS, smem, none, (0,), cooperative=cooperative)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-qkvo,llama-up", help=f"comma-separated, of {', '.join(ALL_SHAPES)}")
    ap.add_argument("--out", default="")
    opts = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("launch_floor: needs a CUDA GPU (launch costs are a GPU fact)")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"# {torch.cuda.get_device_name()}, {sms} SMs; CUDA-graph replay, L2 flushed; us", flush=True)
    rows = []

    def record(what: str, grid: int, smem: int, carveout: int, one: float, two: float | None = None) -> None:
        rows.append(dict(what=what, grid=grid, threads=THREADS if grid else "", smem=smem, carveout=carveout,
                         one_us=round(one, 2), two_us="" if two is None else round(two, 2),
                         second_us="" if two is None else round(two - one, 2)))
        extra = "" if two is None else f", two in one graph {two:.2f} (the second {two - one:+.2f})"
        print(f"{what:>28} grid {grid:>4} smem {smem:>6} carveout {carveout:>3}: {one:.2f}{extra}", flush=True)

    for smem in SMEM:
        for carveout in CARVEOUTS:
            func = empty_kernel(smem, carveout)
            for grid, cooperative in ((1, False), (2 * sms, False), (2 * sms, True)):
                record("empty kernel" + ", cooperative" * cooperative, grid, smem, carveout,
                       graph_us(launcher(func, grid, smem, 1, cooperative)),
                       graph_us(launcher(func, grid, smem, 2, cooperative)))
    gen = torch.Generator().manual_seed(0)
    for shape in opts.shapes.split(","):
        m, k = ALL_SHAPES[shape]
        w = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
        for n in (1, 16):
            x = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
            record(f"cuBLAS {shape} N={n}", 0, 0, -1, graph_us(lambda: F.linear(x, w)))
    if opts.out:
        start_csv(Path(opts.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
