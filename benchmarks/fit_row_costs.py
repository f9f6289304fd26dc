"""Fit the row kernel's cost terms of a cost model to that GPU's measured row-kernel times.

The row kernel's prediction (costmodel.roofline.row_matmul_us) has three terms fitted to a GPU: its
fixed part (the dense product's launch term unless ``row_launch_us`` is set), and its cost per token
beyond the second of a pass, per column (``row_token_col_ns``) and per entry (``row_token_entry_ps``).
`cross profile` fits them to the row kernel's times on a few random weights; this script fits them
to the rows of kernel-benchmark CSVs (`cross bench kernels`, benchmarks/kernels.py) that ran the row
kernel (method `cross-rows`, or a `cross` method whose note says the row kernel ran), over the
shapes, sparsities and token counts of the kernel grid. Both fit through costmodel.rowfit: the
streaming term is kept as the model has it (the row format's bytes at the dense product's streaming
rate) and the three terms are fitted by least squares. The script prints each row's measured, old
and new prediction, and with --write stores the terms in the cost model's spec, with a provenance
entry `row_fit` (the source files, the rows, the largest error).

    python benchmarks/fit_row_costs.py --kernels benchmarks/results/h100/kernels.csv \\
        --cost-model benchmarks/results/h100/costmodel.json --write
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

_SRC = Path(__file__).resolve().parents[1] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from cross.costmodel.model import CostModel  # noqa: E402
from cross.costmodel.rowfit import RowSample, fit_row_terms, relative_errors  # noqa: E402


def row_kernel_rows(paths) -> list[dict]:
    """The measured rows of the CSVs at ``paths`` that ran the row kernel."""
    out = []
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                ran_rows = r["method"] == "cross-rows" or (r["method"].startswith("cross")
                                                           and r.get("note", "").startswith("row kernel"))
                if ran_rows and r.get("status") == "ok" and r.get("us"):
                    out.append(dict(r, source=str(path)))
    return out


def sample(r) -> RowSample:
    """One CSV row as a measured time of the row kernel, its entries estimated from its nonzeros as
    the planner estimates them."""
    m, k, n = int(r["M"]), int(r["K"]), int(r["N"])
    nnz = round(m * k * (1.0 - float(r["weight_sparsity"] or r["sparsity"])))
    return RowSample.from_nnz(m, k, nnz, n, float(r["us"]))


def fit(cm: CostModel, rows) -> tuple[CostModel, list[dict]]:
    """The cost model with the row kernel's three terms fitted to ``rows`` (costmodel.rowfit), and per
    row its measured time and both predictions. Raises where the rows cannot determine the terms or
    give a negative one."""
    spec, per_sample = fit_row_terms(cm.spec, [sample(r) for r in rows])
    report = [{"shape": f"{f['rows']}x{f['cols']}", "N": f["n_tokens"], "sparsity": float(r["sparsity"]),
               "us": f["us"], "before": f["before"], "after": f["after"]} for r, f in zip(rows, per_sample)]
    return replace(cm, spec=spec), report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", required=True, help="comma-separated kernel-benchmark CSVs")
    p.add_argument("--cost-model", required=True, type=Path, help="the cost model JSON of the same GPU")
    p.add_argument("--write", action="store_true", help="store the fitted terms in --cost-model")
    args = p.parse_args(argv)
    paths = [Path(s) for s in args.kernels.split(",")]
    cm = CostModel.load(args.cost_model)
    rows = row_kernel_rows(paths)
    fitted, report = fit(cm, rows)
    s = fitted.spec
    print(f"# {len(rows)} row-kernel rows of {', '.join(map(str, paths))}; the spec's streaming rate "
          f"{s.bandwidth * s.dense_bandwidth_efficiency / 1e12:.2f} TB/s kept")
    print(f"fixed part {s.row_launch_us:.2f} us, {s.row_token_col_ns:.4f} ns per column and "
          f"{s.row_token_entry_ps:.4f} ps per entry per token beyond the second of a pass")
    print(f"{'shape':>12} {'N':>3} {'sp':>5} {'us':>7} {'before':>7} {'after':>7}")
    for r in report:
        print(f"{r['shape']:>12} {r['N']:>3} {r['sparsity']:>5.2f} {r['us']:>7.2f} {r['before']:>7.2f} {r['after']:>7.2f}")
    errors, before = relative_errors(report), relative_errors(report, "before")
    print(f"error: median {np.median(before):.1%} -> {np.median(errors):.1%}, largest {max(before):.1%} -> "
          f"{max(errors):.1%}")
    if args.write:
        prov = dict(fitted.provenance)
        prov["row_fit"] = {"sources": [str(q) for q in paths], "rows": len(rows),
                           "median_error": round(float(np.median(errors)), 4),
                           "max_error": round(float(max(errors)), 4),
                           "command": "python benchmarks/fit_row_costs.py " + " ".join(argv if argv is not None
                                                                                       else sys.argv[1:])}
        replace(fitted, provenance=prov).save(args.cost_model)
        print(f"wrote {args.cost_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
