"""benchmarks/fit_row_costs.py: the row kernel's fixed part and per-token terms fitted to measured
row-kernel times, stored in the cost model's spec (and read back by the planner's prediction)."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from cross.costmodel.model import CostModel
from cross.costmodel.roofline import H100, row_entries, row_matmul_us
from scripts import load_benchmark

fit_mod = load_benchmark("fit_row_costs")

TRUE = replace(H100, row_launch_us=6.5, row_token_col_ns=0.07, row_token_entry_ps=0.05)
FIELDS = ["shape", "M", "K", "N", "sparsity", "weight_sparsity", "distribution", "method", "us", "status", "note"]
CELLS = [(m, k, n, sp) for m, k in ((4096, 4096), (11008, 4096), (4096, 11008)) for n in (1, 8) for sp in (0.5, 0.7, 0.9)]


def _write_rows(path, spec, cells, method="cross-rows", note="", noise=None):
    rows = []
    for i, (m, k, n, sp) in enumerate(cells):
        entries = row_entries(np.array([round(m * k * (1 - sp))]), np.array([m * k]), m)
        us = row_matmul_us(spec, m, k, entries, n) * (1 if noise is None else noise[i])
        rows.append(dict(shape=f"{m}x{k}", M=m, K=k, N=n, sparsity=sp, weight_sparsity=sp, distribution="uniform",
                         method=method, us=f"{us:.6f}", status="ok", note=note))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_missing_fixed_part_is_the_dense_launch_term():
    """A spec without row_launch_us (every cost model before it) predicts as before."""
    assert H100.row_launch_us is None
    with_it = replace(H100, row_launch_us=H100.dense_launch_us)
    for n in (1, 8, 16):
        assert row_matmul_us(H100, 4096, 4096, 5_000_000, n) == row_matmul_us(with_it, 4096, 4096, 5_000_000, n)
    assert row_matmul_us(replace(H100, row_launch_us=2.0), 4096, 4096, 5_000_000, 1) == pytest.approx(
        row_matmul_us(H100, 4096, 4096, 5_000_000, 1) - (H100.dense_launch_us - 2.0))


def test_fit_recovers_the_terms_times_were_made_with(tmp_path):
    cm = CostModel(spec=H100)
    rows = fit_mod.row_kernel_rows([_write_rows(tmp_path / "k.csv", TRUE, CELLS)])
    fitted, report = fit_mod.fit(cm, rows)
    s = fitted.spec
    assert (s.row_launch_us, s.row_token_col_ns, s.row_token_entry_ps) == pytest.approx((6.5, 0.07, 0.05), rel=1e-4)
    assert all(r["after"] == pytest.approx(r["us"], rel=1e-5) for r in report)
    assert any(abs(r["before"] / r["us"] - 1) > 0.05 for r in report)  # the old terms were off


def test_write_stores_the_terms_and_their_provenance(tmp_path, capsys):
    kernels = _write_rows(tmp_path / "k.csv", TRUE, CELLS, method="cross", note="row kernel",
                          noise=np.random.default_rng(0).uniform(0.97, 1.03, len(CELLS)))
    other = tmp_path / "other.csv"  # rows the tile kernel ran are not the row kernel's
    _write_rows(other, replace(TRUE, row_launch_us=50.0), CELLS[:4], method="cross", note="cuda kernel")
    model = CostModel(spec=H100, provenance={"device": "test"}).save(tmp_path / "cm.json")
    assert fit_mod.main(["--kernels", f"{kernels},{other}", "--cost-model", str(model), "--write"]) == 0
    out = capsys.readouterr().out
    assert f"{len(CELLS)} row-kernel rows" in out and "error: median" in out
    saved = CostModel.load(model)
    assert saved.spec.row_launch_us == pytest.approx(6.5, rel=0.1)
    assert saved.provenance["device"] == "test" and saved.provenance["row_fit"]["rows"] == len(CELLS)
    assert saved.provenance["row_fit"]["max_error"] < 0.05
    # the planner's prediction reads them
    entries = row_entries(np.array([round(4096 * 4096 * 0.3)]), np.array([4096 * 4096]), 4096)
    assert saved.row_us(4096, 4096, entries, 8) == row_matmul_us(saved.spec, 4096, 4096, entries, 8)
    assert json.loads(model.read_text())["spec"]["row_launch_us"] == saved.spec.row_launch_us


def test_refuses_rows_that_cannot_determine_the_terms(tmp_path):
    cm = CostModel(spec=H100)
    few = fit_mod.row_kernel_rows([_write_rows(tmp_path / "a.csv", TRUE, CELLS[:3])])
    with pytest.raises(ValueError, match="at least 6 row-kernel rows"):
        fit_mod.fit(cm, few)
    one_token = [c for c in CELLS if c[2] == 1]
    with pytest.raises(ValueError, match="cannot tell the terms apart"):
        fit_mod.fit(cm, fit_mod.row_kernel_rows([_write_rows(tmp_path / "b.csv", TRUE, one_token)]))
    # times that fall as tokens are added give a negative per-token term
    backwards = [c for c in CELLS]
    noise = [1.0 if c[2] == 1 else 0.5 for c in backwards]
    with pytest.raises(ValueError, match="negative term"):
        fit_mod.fit(cm, fit_mod.row_kernel_rows([_write_rows(tmp_path / "c.csv", TRUE, backwards, noise=noise)]))
