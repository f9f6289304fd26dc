"""Copy a benchmark CSV less the rows of one method (optionally only at some token counts), so that
`cross bench kernels --resume` measures those rows again, each against cuBLAS in its own run, and
keeps the others as they were.

    python benchmarks/drop_rows.py benchmarks/results/h100/kernels.csv <dir>/kernels.csv --method cross --ns 1,8,16
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def drop_rows(src: Path, dst: Path, method: str, ns: set[int] | None = None) -> int:
    """Write ``src`` to ``dst`` without the rows of ``method`` (at ``ns`` only, where given); returns
    how many rows were dropped."""
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    if not fields or "method" not in fields or "N" not in fields:
        raise ValueError(f"{src}: expected a kernel benchmark CSV (columns method and N), got {fields}")
    kept = [r for r in rows if not (r["method"] == method and (ns is None or int(r["N"]) in ns))]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        out.writerows(kept)
    return len(rows) - len(kept)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--method", required=True, help="the method whose rows are dropped, e.g. cross")
    p.add_argument("--ns", help="comma-separated token counts (default: every N)")
    args = p.parse_args(argv)
    ns = None if args.ns is None else {int(n) for n in args.ns.split(",")}
    dropped = drop_rows(args.src, args.dst, args.method, ns)
    print(f"{args.dst}: {dropped} {args.method} rows dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
