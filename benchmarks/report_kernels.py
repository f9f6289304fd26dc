"""Figure 1 (speed-up over cuBLAS against sparsity, one panel per N) and a markdown table from
benchmarks/results/<gpu>/kernels.csv.

    python benchmarks/report_kernels.py benchmarks/results/h100
"""

import collections
import csv
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/h100")
rows = list(csv.DictReader(open(folder / "kernels.csv")))
ns = sorted({int(r["N"]) for r in rows})
shapes = list(dict.fromkeys(r["shape"] for r in rows))
methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]

fig = Figure(figsize=(3.4 * len(ns), 3.3))
FigureCanvasAgg(fig)
for i, n in enumerate(ns):
    ax = fig.add_subplot(1, len(ns), i + 1)
    for shape in shapes:
        for method, style in zip(methods, ("-", "--", ":")):
            pts = sorted((float(r["sparsity"]), float(r["speedup_vs_dense"])) for r in rows
                         if int(r["N"]) == n and r["shape"] == shape and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{shape} {method}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_title(f"N = {n}")
    ax.set_xlabel("sparsity")
    if i == 0:
        ax.set_ylabel("speed-up over cuBLAS")
ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
fig.suptitle("bf16, H100, L2 flushed, CUDA-graph replay: 'cross' = what the runtime runs (plan or dense)", fontsize=9)
fig.tight_layout()
fig.savefig(folder / "kernels.png", dpi=110)

table = collections.defaultdict(dict)
for r in rows:
    table[(r["shape"], int(r["N"]))][(r["method"], r["sparsity"])] = float(r["speedup_vs_dense"])
sparsities = sorted({r["sparsity"] for r in rows}, key=float)
lines = ["| shape | N | " + " | ".join(f"{m} {float(s):.0%}" for m in methods for s in sparsities) + " |",
         "|---|---|" + "---|" * (len(methods) * len(sparsities))]
for (shape, n), v in table.items():
    lines.append(f"| {shape} | {n} | " + " | ".join(f"{v.get((m, s), float('nan')):.2f}x" for m in methods for s in sparsities) + " |")
(folder / "kernels_table.md").write_text("\n".join(lines) + "\n")
print(f"wrote {folder / 'kernels.png'} and {folder / 'kernels_table.md'}")
