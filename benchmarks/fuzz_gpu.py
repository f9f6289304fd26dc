"""Random cases through SparseLinear on a GPU, each checked against the fp64 dense product.

The cases come from the generator of tests/strategies.py (the one the hypothesis property tests
use), driven by plain seeded `random` draws: a pruned weight (1..300 rows and columns, tiles 16x32 /
32x64 / 64x64, five sparsity patterns, fp32 / fp16 / bf16, every balance and unit mode, 1..300
programs, custom buckets), 0..300 tokens in leading dims, NaN / Inf where nan_policy is
'propagate'. Each layer is built with keep_dense=False, so every bucket runs its plan: the CUDA or
Triton kernel where one supports the plan, the reference executor where none does (INDEX tiles).
Case i of a seed is the same on every run, so a failure is replayed with --only. Few random cases
fit the CUDA kernel (64x64 tiles, K % 8 == 0, fp16/bf16, no INDEX tiles), so --cuda-share of them
(default half) are moved onto it: tile shape, K rounded down to a multiple of 8, dtype and kinds
redrawn from what it runs; everything else stays random.

    PYTHONPATH=src python benchmarks/fuzz_gpu.py --cases 2000 --seed 1 --time-limit 300
    PYTHONPATH=src python benchmarks/fuzz_gpu.py --seed 1 --only 137
    PYTHONPATH=src python benchmarks/fuzz_gpu.py --device cpu --cases 20    # the script itself, no GPU

The first cases of each new tile shape / dtype / token tile compile kernels (NVRTC and Triton), so
the first minute is mostly compilation. --time-limit stops starting new cases after that many seconds
and still prints the summary; a progress line every 50 cases keeps a partial result if the process
is killed. Exit code 1 if any case fails.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from strategies import KIND_SETS, check_sparse_linear, random_case  # noqa: E402

from cross.tiling import TileKind  # noqa: E402

CUDA_KIND_SETS = [tuple(int(k) for k in ks) for ks in KIND_SETS if TileKind.INDEX not in ks]


def cuda_case(case, rng: random.Random):
    """The case moved onto what the CUDA kernel runs (tile 64x64, K % 8 == 0, fp16/bf16, no INDEX)."""
    return dataclasses.replace(case, tile_shape=(64, 64), k=max(8, case.k // 8 * 8),
                               dtype=rng.choice(("float16", "bfloat16")), allowed_kinds=rng.choice(CUDA_KIND_SETS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500, help="number of random cases (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="case i of seed s is the same on every run (default 0)")
    parser.add_argument("--only", type=int, metavar="I", help="run case I of the seed alone (replays a failure)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the reference executor only)")
    parser.add_argument("--nonfinite", choices=("mixed", "always", "never"), default="mixed",
                        help="NaN / Inf in the inputs: drawn (default), in every case, or never")
    parser.add_argument("--max-failures", type=int, default=20, help="stop after this many failures (default 20)")
    parser.add_argument("--cuda-share", type=float, default=0.5, metavar="F",
                        help="fraction of cases moved onto the CUDA kernel's shapes and dtypes (default 0.5)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="start no new case after S seconds (the summary covers the cases run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: --device cpu runs the cases on the reference executor")

    nonfinite = {"mixed": None, "always": True, "never": False}[args.nonfinite]
    indices = [args.only] if args.only is not None else range(args.cases)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"fuzz: {len(indices)} cases, seed {args.seed}, on {where}, torch {torch.__version__}")
    ran, failures = collections.Counter(), []
    start = time.perf_counter()
    for n_done, i in enumerate(indices):
        if args.time_limit is not None and time.perf_counter() - start > args.time_limit:
            print(f"time limit: {args.time_limit:.0f} s reached after {n_done} cases")
            break
        if n_done and n_done % 50 == 0:
            print(f"  {n_done} cases, {len(failures)} failures, {time.perf_counter() - start:.0f} s", flush=True)
        rng = random.Random(f"{args.seed}:{i}")
        case = random_case(rng, nonfinite)
        if rng.random() < args.cuda_share:
            case = cuda_case(case, rng)
        try:
            message, path = check_sparse_linear(case, device)
        except Exception as e:  # a crash is a failure like a wrong number; the next case may still run
            message, path = f"raised {type(e).__name__}: {e}", "error"
        ran[path] += 1
        if message:
            failures.append(i)
            print(f"FAIL case {i} ({path}): {message}\n  {case.replay()}\n"
                  f"  replay: PYTHONPATH=src python benchmarks/fuzz_gpu.py --seed {args.seed} --only {i} --device {args.device}")
            if len(failures) >= args.max_failures:
                print(f"stopping after {len(failures)} failures")
                break
    paths = ", ".join(f"{k} {v}" for k, v in sorted(ran.items()))
    print(f"{sum(ran.values())} cases, {len(failures)} failures ({paths}) in {time.perf_counter() - start:.1f} s")
    if failures:
        print(f"failing cases: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
