"""Figure 1 (speed-up over cuBLAS against sparsity, one panel per N, a line per shape and method)
and a markdown table from benchmarks/results/<gpu>/kernels.csv (written by benchmarks/kernels.py).

    python benchmarks/report_kernels.py benchmarks/results/h100
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without PYTHONPATH
from cross.bench.report import kernel_figure, kernel_rows, read_csv, speedup_table  # noqa: E402

TITLE = "bf16, {gpu}, L2 flushed, CUDA-graph replay: 'cross' = what the runtime runs (plan or dense)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0] if argv else "benchmarks/results/h100")
    rows = kernel_rows(read_csv(folder / "kernels.csv"))
    # the results folder is named after the GPU (benchmarks/results/<gpu>)
    figure = kernel_figure(rows, folder / "kernels.png", TITLE.format(gpu=folder.resolve().name.upper()), per_shape=True)
    table = folder / "kernels_table.md"
    table.write_text(speedup_table(rows) + "\n")
    print(f"wrote {figure} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
