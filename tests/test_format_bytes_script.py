"""benchmarks/format_bytes.py's accounting: with neither kind of halves it gives the bytes the compressed
layout as built reads (its sized records), so the candidate layouts are counted on the same rules; the
halves take what a hand count of one record says; the targets' budget is the line through a split's two
points."""

import csv

import pytest
import torch
from scripts import load_benchmark

from cross.bench.weights import make_weight
from cross.pack.wgmma24 import Wgmma24Weight

fb = load_benchmark("format_bytes")


@pytest.mark.parametrize("m,k,sparsity", [(256, 64, 0.5), (300, 200, 0.7), (512, 256, 0.9), (256, 128, 0.3)])
def test_without_halves_it_is_the_compressed_layouts_bytes(m, k, sparsity):
    w = make_weight(m, k, sparsity, "uniform", torch.Generator().manual_seed(m + k))
    built = Wgmma24Weight.from_dense(w, compressed=True, sized=True).bytes_read
    assert fb.halves_bytes(fb.record_counts(w), overflow_halves=False, lone_halves=False) == built


def test_halves_by_hand():
    # one record (256 rows x 64 columns); row 0: a lone nonzero (group 0), a group of three (group 1), a
    # group of four (group 2), a pair (group 3)
    w = torch.zeros(256, 64, dtype=torch.bfloat16)
    w[0, 0] = 1
    w[0, 4:7] = 2
    w[0, 8:12] = 3
    w[0, 13:15] = 4
    counts = fb.record_counts(w)
    assert counts.tolist() == [[1, 1, 1, 1]]
    fixed = 2048  # the metadata
    # as built: 4-byte heads and bases; words: 4 groups + 2 overflow
    assert fb.halves_bytes(counts, False, False) == fixed + -(-(1024 + 32 + 4 * 6) // 16) * 16
    # lone halves: 8-byte heads and bases; words: 3 groups + 2 overflow, one half (4 bytes)
    assert fb.halves_bytes(counts, False) == fixed + -(-(2048 + 64 + 4 * 5 + 4) // 16) * 16
    # and overflow halves: words 3 groups + 1 overflow, two halves (4 bytes)
    assert fb.halves_bytes(counts, True) == fixed + -(-(2048 + 64 + 4 * 4 + 4) // 16) * 16


def test_budgets_are_the_line_through_a_splits_two_points(tmp_path):
    path = tmp_path / "floor.csv"
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=["shape", "sparsity", "mb", "copies_only_us", "dense_us"])
        out.writeheader()
        out.writerow(dict(shape="s", sparsity=0.7, mb=40.0, copies_only_us=22.0, dense_us=36.0))
        out.writerow(dict(shape="s", sparsity=0.9, mb=20.0, copies_only_us=16.0, dense_us=37.0))
    dense, intercept, slope = fb.budgets(str(path))["s"]
    assert dense == {0.7: 36.0, 0.9: 37.0}
    assert (intercept, slope) == pytest.approx((10.0, 0.3))


def test_dense_fit_is_cublass_line_through_the_shapes(tmp_path):
    path = tmp_path / "floor.csv"
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=["shape", "M", "K", "sparsity", "dense_us"])
        out.writeheader()
        for shape, m, k, times in (("a", 1000, 1000, (9.0, 11.0)), ("b", 3000, 1000, (20.0, 20.0))):
            for sp, t in zip((0.7, 0.9), times):
                out.writerow(dict(shape=shape, M=m, K=k, sparsity=sp, dense_us=t))
    intercept, slope = fb.dense_fit(str(path))  # (2 MB, 10 us) and (6 MB, 20 us)
    assert (intercept, slope) == pytest.approx((5.0, 2.5))
    with open(path, "w", newline="") as f:
        f.write("shape,M,K,sparsity,dense_us\na,1000,1000,0.7,9.0\n")
    assert fb.dense_fit(str(path)) is None
