"""compute-sanitizer over the GPU test set, in chunks that each fit one time-limited run.

racecheck slows the CUDA kernel tests ~50x: the whole `-m gpu` set does not fit a 10-minute run.
This script collects the GPU tests, cuts them into --chunks equal parts, runs part --chunk under
compute-sanitizer (log per part in --out) and prints what the tool found; run every part, one per
call, to cover the set. --kernels limits the checking to kernels whose name contains a string
(default: the plan kernels, CUDA and Triton, both named plan_matmul*); the tests' own kernels
(references, random inputs, cuBLAS) then run unchecked and at full speed.

    PYTHONPATH=src python benchmarks/sanitize.py --tool racecheck --chunks 12 --chunk 0 --out reports/sanitize
    PYTHONPATH=src python benchmarks/sanitize.py --chunks 12 --list    # the parts, without a GPU

Exit code 1 if the tool reported errors or hazards, or the tests failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"=+ (ERROR|RACECHECK|SYNCCHECK|INITCHECK) SUMMARY: (\d+) (errors?|hazards?)")


def gpu_tests(paths: list[str], select: str = "") -> list[str]:
    """Node ids of the tests marked gpu (collected without running them), those that ``-k select`` picks if given."""
    pick = ["-k", select] if select else []
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          *pick, *paths], cwd=ROOT, capture_output=True, text=True)
    ids = [line.strip() for line in out.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if not ids:
        raise SystemExit(f"no GPU tests collected from {paths}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


def chunk(ids: list[str], n_chunks: int, index: int) -> list[str]:
    """Part ``index`` of ``n_chunks`` nearly equal, contiguous parts (file order kept)."""
    if not 0 <= index < n_chunks:
        raise ValueError(f"chunk: expected 0 <= chunk < {n_chunks}, got {index}")
    lo, hi = len(ids) * index // n_chunks, len(ids) * (index + 1) // n_chunks
    return ids[lo:hi]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", default="racecheck", choices=("memcheck", "racecheck", "synccheck", "initcheck"))
    ap.add_argument("--chunks", type=int, default=8, help="number of parts (default 8)")
    ap.add_argument("--chunk", type=int, default=0, help="the part to run, 0-based (default 0)")
    ap.add_argument("--paths", default="tests", help="comma-separated test files or folders (default tests)")
    ap.add_argument("--out", type=Path, default=Path("reports/sanitize"), help="folder for the logs")
    ap.add_argument("--kernels", default="plan_matmul",
                    help="check only kernels whose name contains this (default plan_matmul; '' checks every kernel)")
    ap.add_argument("--select", default="", help="only the tests that pytest -k selects (default: all)")
    ap.add_argument("--list", action="store_true", help="print the parts and exit (no GPU needed)")
    args = ap.parse_args(argv)
    if args.chunks < 1:
        ap.error(f"--chunks: expected at least 1, got {args.chunks}")
    ids = gpu_tests(args.paths.split(","), args.select)
    if args.list:
        for i in range(args.chunks):
            part = chunk(ids, args.chunks, i)
            print(f"part {i}: {len(part)} tests, {part[0] if part else '-'} .. {part[-1] if part else '-'}")
        return 0
    part = chunk(ids, args.chunks, args.chunk)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.tool}_{args.chunk}_of_{args.chunks}.txt"
    only = ["--kernel-name", f"kns={args.kernels}"] if args.kernels else []
    cmd = ["compute-sanitizer", "--tool", args.tool, "--report-api-errors", "no", *only, sys.executable, "-m", "pytest",
           "-q", "-p", "no:cacheprovider", *part]
    what = f"kernels named *{args.kernels}*" if args.kernels else "every kernel"
    print(f"{args.tool} of {what}, part {args.chunk} of {args.chunks}: {len(part)} tests -> {log}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    found = [(kind, int(n)) for kind, n, _ in SUMMARY.findall(text)]
    tail = [line for line in text.splitlines() if re.search(r"\d+ passed|\d+ failed|error", line)][-2:]
    print("\n".join(tail))
    print(f"sanitizer summary: {found or 'none printed (did the run end?)'}; exit code {rc}")
    return 1 if rc != 0 or not found or any(n for _, n in found) else 0


if __name__ == "__main__":
    sys.exit(main())
