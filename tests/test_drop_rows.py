"""benchmarks/drop_rows.py: a kernel CSV less one method's rows (at some token counts), the rest
kept as they were, for `cross bench kernels --resume` to measure those rows again."""

import csv

import pytest

from cross.bench.kernels import FIELDS, done_keys, in_grid_order
from cross.bench.report import kernel_rows, read_csv
from scripts import load_benchmark

drop = load_benchmark("drop_rows")


def _write(path, rows):
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=FIELDS)
        out.writeheader()
        out.writerows({**dict.fromkeys(FIELDS, ""), **r} for r in rows)


def _row(method, n, us):
    return dict(shape="llama-up", M="11008", K="4096", N=str(n), sparsity="0.7", weight_sparsity="0.7",
                distribution="uniform", method=method, dtype="bfloat16", us=str(us), dense_us="38.0",
                speedup_vs_dense=str(round(38.0 / us, 3)), timing="graph", status="ok")


@pytest.mark.parametrize("ns, left", [(None, {("dense", 1), ("dense", 8), ("dense", 128), ("cross+wgmma24", 8)}),
                                      ({1, 8}, {("dense", 1), ("dense", 8), ("dense", 128), ("cross+wgmma24", 8),
                                                ("cross", 128)})])
def test_drops_one_methods_rows_and_keeps_the_rest(tmp_path, ns, left):
    rows = [_row(m, n, us) for m, n, us in [("dense", 1, 38.0), ("cross", 1, 20.0), ("dense", 8, 38.0), ("cross", 8, 30.0),
                                            ("cross+wgmma24", 8, 27.0), ("dense", 128, 60.0), ("cross", 128, 60.1)]]
    src, dst = tmp_path / "kernels.csv", tmp_path / "out" / "kernels.csv"
    _write(src, rows)
    assert drop.main([str(src), str(dst), "--method", "cross"] + ([] if ns is None else ["--ns", "1,8"])) == 0
    kept = read_csv(dst)
    assert {(r["method"], int(r["N"])) for r in kept} == left
    # what is left is what --resume skips, in its order and with its values
    assert len(done_keys(kernel_rows(kept))) == len(left)
    assert [dict(r) for r in kept] == [{**dict.fromkeys(FIELDS, ""), **r} for r in rows
                                       if (r["method"], int(r["N"])) in left]


def test_refuses_a_file_that_is_not_a_kernel_csv(tmp_path):
    src = tmp_path / "model.csv"
    src.write_text("model,phase\nllama,decode\n")
    with pytest.raises(ValueError, match="expected a kernel benchmark CSV"):
        drop.drop_rows(src, tmp_path / "x.csv", "cross")


def test_rows_measured_again_go_back_to_the_grids_order(tmp_path):
    """--resume appends the rows it measures; in_grid_order puts them back where the grid plans them
    (the tables list methods in the order they first appear), rows the grid does not plan (an
    earlier part's) first, in their order."""
    grid = [_row(m, n, us) for m, n, us in [("dense", 1, 38.0), ("cross", 1, 20.0), ("cross+wgmma24", 1, 20.1),
                                            ("dense", 8, 38.0), ("cross", 8, 30.0), ("cross+wgmma24", 8, 27.0)]]
    src, dst = tmp_path / "kernels.csv", tmp_path / "again.csv"
    earlier = [dict(_row("dense", 1, 19.0), shape="llama-qkvo"), dict(_row("cusparse-csr", 1, 40.0), shape="llama-qkvo")]
    _write(src, earlier + grid)
    drop.drop_rows(src, dst, "cross")
    kept = read_csv(dst)
    resumed = kept + [_row("cross", 1, 19.0), _row("cross", 8, 26.5)]  # appended, as the run measures them
    ordered = in_grid_order(resumed, grid)
    assert [(r["shape"], r["method"], r["N"]) for r in ordered] == [(r["shape"], r["method"], r["N"])
                                                                     for r in earlier + grid]
    assert [r["us"] for r in ordered if r["method"] == "cross"] == ["19.0", "26.5"]
