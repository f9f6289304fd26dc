"""Figure 1 (speed-up over cuBLAS against sparsity, one panel per N, a line per shape and method)
and markdown tables from benchmarks/results/<gpu>/kernels.csv (written by benchmarks/kernels.py):
the speed-ups (kernels_table.md) and, at N <= 16, the fraction of each method's bandwidth floor
reached (kernels_floor.md: its weight bytes at the GPU's measured copy rate, --copy-tbps, which
defaults to the rate measured on the GPU the folder is named after).

    python benchmarks/report_kernels.py benchmarks/results/h100
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without PYTHONPATH
from cross.bench.report import floor_table, kernel_figure, kernel_rows, read_csv, speedup_table  # noqa: E402

TITLE = "bf16, {gpu}, L2 flushed, CUDA-graph replay: 'cross' = what the runtime runs (plan or dense)"
#: copy rates (TB/s: a device-to-device copy's read + write bytes over its time) measured on the
#: project's GPUs: H100 3.02 (the machines' documented check), H200 a 256 MiB copy in 127.6 us
#: (tests/test_costmodel.py's graph-timing test, 2026-12-03)
COPY_TBPS = {"h100": 3.02, "h200": 4.2}


def grid_command(rows, folder: Path) -> str:
    """The commands that measure ``rows`` again and draw them: benchmarks/kernels.py over their shapes,
    sparsities, token counts, distributions (where not uniform alone) and methods, in the order first
    seen, with the cost model their rows' commands name; then this script."""
    def values(key, fmt=str):
        return ",".join(dict.fromkeys(fmt(r[key]) for r in rows))

    cost_models = (re.search(r"--cost-model (\S+)", r.get("command") or "") for r in rows)
    cost_model = next((m.group(1) for m in cost_models if m), None)
    dists = values("distribution")
    return " \\\n    ".join([
        f"PYTHONPATH=src python benchmarks/kernels.py --shapes {values('shape')}",
        f"--sparsities {values('sparsity', lambda v: f'{v:g}')} --ns {values('N')}"
        + (f" --distributions {dists}" if dists != "uniform" else ""),
        f"--methods {values('method')}" + (f" --cost-model {cost_model}" if cost_model else ""),
        f"--out {folder.as_posix()}"]) + f"\npython benchmarks/report_kernels.py {folder.as_posix()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="benchmarks/results/h100", type=Path)
    ap.add_argument("--copy-tbps", type=float, default=None, help="the GPU's copy rate in TB/s (default: by folder name)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    folder = args.folder
    gpu = folder.resolve().name  # the results folder is named after the GPU (benchmarks/results/<gpu>)
    tbps = args.copy_tbps or COPY_TBPS.get(gpu.lower())
    if tbps is None:
        ap.error(f"--copy-tbps: no measured copy rate for a folder named {gpu!r}; give one")
    rows = kernel_rows(read_csv(folder / "kernels.csv"))
    figure = kernel_figure(rows, folder / "kernels.png", TITLE.format(gpu=gpu.upper()), per_shape=True)
    table = folder / "kernels_table.md"
    dtype = rows[0].get("dtype") if rows else None
    table.write_text(f"# Speed-up over cuBLAS ({gpu.upper()})\n\n"
                     f"{dtype or 'bf16'}, L2 flushed, CUDA-graph replay; the speed-up is cuBLAS's time over the "
                     "method's in the same run; 'cross' is what the runtime runs (plan or cuBLAS). Measured by:\n\n"
                     f"```\n{grid_command(rows, folder)}\n```\n\n" + speedup_table(rows) + "\n")
    floor = folder / "kernels_floor.md"
    floor.write_text(f"# Bandwidth floor at N <= 16 ({gpu.upper()}, copy rate {tbps} TB/s)\n\n"
                     + floor_table(rows, tbps * 1e12) + "\n")
    print(f"wrote {figure}, {table} and {floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
