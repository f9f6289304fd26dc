"""The rate of Hopper's warpgroup mma fed from registers, dense (m64n128k16) and sparse 2:4
(wgmma.mma_async.sp m64n128k32), with a synthetic decode of D dependent ALU instructions per k-step on
the next step's A registers (benchmarks/wgmma_probe.cu): how fast a 128-token kernel that decodes the
weight into registers could run its tensor cores, and how much decode hides under the mma
(docs/perf-notes.md, "128 tokens: the weight as the sparse A operand of wgmma.sp"). One block of W
warpgroups per SM, each running --iters mma back to back (two register sets alternating); the time of
one launch, median of --reps, after a warm-up. "tflops": 2 x 64 x 128 x K per mma (K = 32 for the
sparse mma: the dense work it stands for), over the time; "of peak": against --peak (dense bf16
TFLOP/s of the GPU; the sparse mma's peak is twice it).

    PYTHONPATH=src python benchmarks/wgmma_probe.py --decode 0,16,32,64,128 --wgs 1,2 --out wgmma_probe.csv
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import torch

from cross.bench.report import start_csv
from cross.kernels import cuda_backend

SOURCE = Path(__file__).with_name("wgmma_probe.cu")
SMEM = 16384  # wgmma_probe.cu's B_BYTES


def probe_kernel(sparse: bool, decode: int, wgs: int):
    """The probe's build for the current device."""
    device = torch.cuda.current_device()
    defines = (f"-DSPARSE={int(sparse)}", f"-DDECODE={decode}", f"-DWGS={wgs}")
    header = resources.files(cuda_backend.__package__).joinpath("wgmma.cuh").read_bytes()
    cubin = cuda_backend.nvrtc_cubin_of(device, SOURCE.read_bytes(), SOURCE.name, defines, {"wgmma.cuh": header},
                                        arch_specific=True)
    return cuda_backend.load_kernel(device, cubin, "wgmma_probe", SMEM)[1]


def time_us(func, blocks: int, wgs: int, iters: int, reps: int) -> float:
    out = torch.empty(blocks * wgs * 128, device="cuda")
    ptrs = cuda_backend.Pointers((out,), True)

    def launch():
        cuda_backend._launch(func, blocks, wgs * 128, SMEM, ptrs, (iters,))

    launch()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", default="0,16,32,64,128", help="ALU instructions per k-step (comma-separated)")
    ap.add_argument("--wgs", default="1,2", help="warpgroups per block (comma-separated)")
    ap.add_argument("--kinds", default="sparse,dense", help="sparse, dense, or both")
    ap.add_argument("--iters", type=int, default=8192, help="mma per warpgroup and launch (even)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--peak", type=float, default=989.4, help="the GPU's dense bf16 TFLOP/s (H100/H200 SXM: 989.4)")
    ap.add_argument("--out", default=None, help="CSV file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("wgmma_probe: needs an sm_90 GPU (wgmma)")
    if args.iters < 2 or args.iters % 2:
        ap.error("--iters: an even number >= 2")
    kinds = args.kinds.split(",")
    if not set(kinds) <= {"sparse", "dense"}:
        ap.error(f"--kinds: sparse and/or dense, got {args.kinds!r}")
    blocks = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    print(f"# {torch.cuda.get_device_name()}, one block per SM ({blocks}), {args.iters} mma per warpgroup")
    print(f"{'kind':>6} {'decode':>6} {'wgs':>3} {'us':>9} {'tflops':>8} {'of peak':>7}")
    for kind in kinds:
        sparse = kind == "sparse"
        flops = 2 * 64 * 128 * (32 if sparse else 16)
        for wgs in (int(v) for v in args.wgs.split(",")):
            for decode in (int(v) for v in args.decode.split(",")):
                us = time_us(probe_kernel(sparse, decode, wgs), blocks, wgs, args.iters, args.reps)
                tflops = flops * args.iters * wgs * blocks / us * 1e-6
                peak = args.peak * (2 if sparse else 1)
                rows.append(dict(gpu=torch.cuda.get_device_name(), kind=kind, decode=decode, warpgroups=wgs,
                                 iters=args.iters, us=round(us, 2), tflops=round(tflops, 1),
                                 peak_fraction=round(tflops / peak, 3)))
                print(f"{kind:>6} {decode:>6} {wgs:>3} {us:>9.2f} {tflops:>8.1f} {tflops / peak:>7.3f}", flush=True)
    if args.out and rows:
        start_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
