"""The warpgroup 2:4 kernel's speed-up over cuBLAS against its pipeline's stages, from
benchmarks/wgmma24_bench.py's CSVs (their ``stages`` column: the depth each build had, the format's or
CROSS_CUDA_DEFINES' -DSTAGES): a panel per token count and shape, a line per layout and sparsity.

    python benchmarks/wgmma24_stages_plot.py benchmarks/results/h100/wgmma24_stages.csv
    python benchmarks/wgmma24_stages_plot.py <OUT>/stages_*.csv --out wgmma24_stages.png   # one run's steps
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from cross.bench.report import speedup_figure  # noqa: E402


def panels_of(rows) -> dict:
    """{(tokens, shape): {layout sparsity: [(stages, speed-up)]}}."""
    panels: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        label = f"{r['layout']} {float(r['sparsity']):.0%}"
        panel = (f"{int(r['N'])} tokens", f"{r['shape']} {r['M']}x{r['K']}")
        panels[panel][label].append((int(r["stages"]), float(r["speedup_vs_dense"])))
    return panels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csvs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=None, help="the PNG (default: beside the first CSV)")
    args = ap.parse_args(argv)
    rows = [r for path in args.csvs for r in csv.DictReader(path.open())]
    if not rows or "stages" not in rows[0]:
        raise SystemExit(f"{args.csvs[0]}: no rows with a stages column (wgmma24_bench.py writes one)")
    out = args.out or args.csvs[0].with_suffix(".png")
    speedup_figure(panels_of(rows), out, "warpgroup 2:4 kernel, bf16, against its pipeline's stages",
                   log=False, xlabel="stages")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
