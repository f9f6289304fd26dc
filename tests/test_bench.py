"""bench: the CPU side of `cross bench kernels` and `cross bench model`: argument parsing, the dry
runs and their commands, the refusal without a GPU, the methods' availability, the CSR dtype
fallback, 2:4 pruning and the DLMC archives, the kernel grid and a model run with a stand-in timer
(checks before timing, failures reported, never timed), the break-even function, and the CSV,
markdown and PNG outputs from synthetic rows."""

import math
import os
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cross.bench import methods, models, report
from cross.bench import kernels as bench_kernels
from cross.bench.kernels import FIELDS, KernelConfig, cases, done_keys, planned_rows, row_key, run_kernels
from cross.bench.methods import DEFAULT_METHODS, Bound, Prepared, parse_method, prepare, unavailable
from cross.bench.timing import check
from cross.bench.weights import (DLMC_LAYERS, SHAPES, dlmc_files, dlmc_mask, dlmc_weight, make_weight, nearest_dlmc,
                                 prune_2to4, seeded, zero_fraction)
from cross.cli.bench import kernel_config
from cross.cli.main import build_parser, main
from scripts import load_benchmark

HAS_GPU = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[1]
REAL_DLMC = ROOT.parent / "shared" / "data" / "dlmc"
TINY = {"tiny": (32, 64)}
#: a small grid on the CPU: 2:4 and BSR are unavailable there, CSR runs in fp32 (MKL)
TINY_METHODS = ("dense", "cross", "cusparse-csr", "triton-bsr-32", "sparse-2:4")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fake_timer(calls):
    """Stands in for measure_us: runs fn once, records it and says 1 us."""
    def timer(fn, *_):
        calls.append(fn)
        fn()
        return 1.0, "graph"

    return timer


def tiny_config(**kw):
    kw.setdefault("methods", tuple(parse_method(m) for m in TINY_METHODS))
    return KernelConfig(shapes=("tiny",), sparsities=(0.5, 0.7), ns=(1, 4), shape_table=TINY, **kw)


@pytest.fixture
def dlmc_dir(tmp_path):
    """Two DLMC-like archives (0.5 and 0.9) holding the three benchmarked layers at small shapes."""
    shapes = dict(zip(DLMC_LAYERS.values(), [(32, 32), (64, 32), (32, 64)]))
    masks = {}
    for s in (0.5, 0.9):
        arrays = {}
        for key, (r, c) in shapes.items():
            mask = np.random.default_rng(int(s * 10) + r + c).random((r, c)) >= s
            masks[(s, key)] = mask
            arrays[f"{key}__shape"] = np.array([r, c], dtype=np.int64)
            arrays[f"{key}__bits"] = np.packbits(mask.reshape(-1))
        np.savez(tmp_path / f"transformer__magnitude_pruning__{s}.npz", **arrays)
    (tmp_path / "README.md").write_text("not an archive")
    return tmp_path, masks


# ---------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name, family, backend, block", [
    ("dense", "dense", None, 0), ("cross", "cross", None, 0), ("cross-cuda-bitmap", "cross", "cuda", 0),
    ("cross-triton-hybrid", "cross", "triton", 0), ("cross-triton-all", "cross", "triton", 0),
    ("cross-triton-index", "cross", "triton", 0), ("cusparse-csr", "csr", None, 0), ("triton-bsr-16", "bsr", None, 16),
    ("triton-bsr-64", "bsr", None, 64), ("sparse-2:4", "2:4", None, 0)])
def test_parse_method(name, family, backend, block):
    m = parse_method(name)
    assert (m.name, m.family, m.backend, m.block) == (name, family, backend, block)
    assert (m.kinds is None) == (name == "cross" or family != "cross")


@pytest.mark.parametrize("name", ["", "sparse", "cross-cuda", "cross-rocm-bitmap", "cross-cuda-index", "cross-cuda-all", "triton-bsr-8",
                                  "triton-bsr-24", "triton-bsr-x", "sparse-4:8", "csr"])
def test_parse_method_rejects(name):
    with pytest.raises(ValueError, match="expected dense, cross"):
        parse_method(name)


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.9, 0.98])
def test_semi_structured_only_at_half(sparsity):
    for name in DEFAULT_METHODS:
        assert parse_method(name).applies(sparsity) == (name != "sparse-2:4" or sparsity == 0.5)


@pytest.mark.parametrize("name, m, k, capability, expected", [
    ("sparse-2:4", 4096, 4096, None, "needs a CUDA GPU"),
    ("sparse-2:4", 4096, 4096, (7, 5), "compute capability 8.0+, got 7.5"),
    ("sparse-2:4", 4096, 4096, (9, 0), None),
    ("sparse-2:4", 100, 4096, (9, 0), "rows a multiple of"),
    ("triton-bsr-32", 768, 768, None, "need a CUDA GPU"),
    ("triton-bsr-64", 4096, 11008, (9, 0), None),
    ("triton-bsr-512", 768, 768, (9, 0), "not a whole number of 512x512 blocks"),
    ("cusparse-csr", 17, 33, None, None),
    ("cross", 17, 33, None, None),
    ("cross-triton-bitmap", 17, 33, None, None),
    ("cross-cuda-bitmap", 64, 64, None, "CUDA backend needs a CUDA GPU"),
    ("dense", 1, 1, None, None)])
def test_unavailable(name, m, k, capability, expected, monkeypatch):
    monkeypatch.setattr(methods, "_bsr_dense_mm", lambda: object())  # as on a GPU machine with Triton
    why = unavailable(parse_method(name), m, k, capability)
    assert why is None if expected is None else expected in why


def test_bsr_unavailable_without_torch_triton_kernels(monkeypatch):
    monkeypatch.setattr(methods, "_bsr_dense_mm", lambda: None)
    assert "not available" in unavailable(parse_method("triton-bsr-32"), 768, 768, (9, 0))


def test_every_benchmark_shape_runs_every_method_on_an_h100(monkeypatch):
    monkeypatch.setattr(methods, "_bsr_dense_mm", lambda: object())
    shapes = [*SHAPES.values(), (512, 512), (2048, 512), (512, 2048)]
    for name in DEFAULT_METHODS:
        for m, k in shapes:
            assert unavailable(parse_method(name), m, k, (9, 0)) is None, (name, m, k)


def test_csr_falls_back_to_a_dtype_torch_runs():
    """On the CPU torch's CSR matmul (MKL) runs fp32 only: the bf16 weight is run in the first dtype
    that works, and the note names the ones refused."""
    gen = torch.Generator().manual_seed(0)
    w = make_weight(48, 80, 0.7, "uniform", gen)
    x = torch.randn(5, 80, generator=gen).to(torch.bfloat16)
    bound = prepare(parse_method("cusparse-csr"), w).bind(x)
    order = [torch.bfloat16, torch.float16, torch.float32]
    assert bound.dtype in order
    for refused in order[: order.index(bound.dtype)]:
        assert f"{str(refused).removeprefix('torch.')} refused" in bound.note
    assert check(bound.fn(), x.float() @ w.float().T) is None
    nnz = int(torch.count_nonzero(w))
    assert bound.weight_bytes == nnz * (bound.dtype.itemsize + 8) + 49 * 8  # values, int64 columns and row pointers


def test_dense_and_cross_methods_match_the_fp32_product():
    gen = torch.Generator().manual_seed(1)
    w = make_weight(40, 96, 0.8, "uniform", gen)
    x = torch.randn(3, 96, generator=gen).to(torch.bfloat16)
    for name in ("dense", "cross"):  # cross: the roofline keeps this tiny weight on cuBLAS
        p = prepare(parse_method(name), w)
        assert p.weight is w and p.sparsity == zero_fraction(w)
        assert check(p.bind(x).fn(), x.float() @ w.float().T) is None


# ---------------------------------------------------------------------------------------- weights
def test_prune_2to4_keeps_the_two_largest_of_four():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    pruned = prune_2to4(w).reshape(8, 4, 4)
    assert ((pruned != 0).sum(-1) == 2).all()
    kept = w.reshape(8, 4, 4).abs().topk(2, dim=-1).values.sum(-1)
    assert torch.allclose(pruned.abs().sum(-1), kept)
    sparse = prune_2to4(w * (torch.rand(8, 16, generator=torch.Generator().manual_seed(3)) < 0.3))
    assert ((sparse.reshape(8, 4, 4) != 0).sum(-1) <= 2).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2to4(torch.ones(4, 6))


def test_semi_structured_weight_is_exactly_half():
    dense = make_weight(64, 128, 0.0, "uniform", seeded(0, "x"))
    assert zero_fraction(dense) == 0 and zero_fraction(prune_2to4(dense)) == 0.5


@pytest.mark.parametrize("distribution", ["uniform", "nonuniform"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_make_weight(distribution, sparsity):
    w = make_weight(1024, 1024, sparsity, distribution, seeded(0, distribution, sparsity))
    assert w.dtype == torch.bfloat16 and abs(zero_fraction(w) - sparsity) < 0.1
    with pytest.raises(ValueError, match="distribution"):
        make_weight(4, 4, 0.5, "banded", seeded(0))


def test_cases_are_seeded_by_what_they_are():
    """A row measured alone draws the weight and input it drew inside the whole grid."""
    whole = {(c.shape, c.distribution, c.sparsity): c for c in cases(tiny_config(distributions=("uniform", "nonuniform")))}
    alone = cases(KernelConfig(shapes=("tiny",), sparsities=(0.7,), distributions=("nonuniform",), shape_table=TINY))
    assert len(alone) == 1
    case = whole[("tiny", "nonuniform", 0.7)]
    assert torch.equal(alone[0].weight(0), case.weight(0)) and torch.equal(alone[0].input(4, 0), case.input(4, 0))
    assert not torch.equal(case.weight(0), case.weight(1))


def test_dlmc_archives(dlmc_dir):
    folder, masks = dlmc_dir
    files = dlmc_files(folder)
    assert list(files) == [0.5, 0.9]
    assert list(nearest_dlmc(files, (0.5, 0.6, 0.7))) == [0.5]
    assert list(nearest_dlmc(files, (0.8, 0.9, 0.98))) == [0.9]
    for (s, key), mask in masks.items():
        assert np.array_equal(dlmc_mask(files[s], key).numpy(), mask)
    w = dlmc_weight(files[0.9], "dlmc-ffn-up", seeded(0))
    assert w.dtype == torch.bfloat16 and torch.equal(w != 0, torch.from_numpy(masks[(0.9, DLMC_LAYERS["dlmc-ffn-up"])]))
    with pytest.raises(KeyError, match="expected a matrix"):
        dlmc_mask(files[0.5], "body_decoder_layer_9_nothing")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        dlmc_files(folder / "missing")
    (folder / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found none"):
        dlmc_files(folder / "empty")


def test_dlmc_cases_take_the_archives_sparsity(dlmc_dir):
    folder, _ = dlmc_dir
    got = cases(KernelConfig(shapes=(), sparsities=(0.6, 0.7, 0.95), distributions=("dlmc",), dlmc=folder))
    assert [(c.shape, c.m, c.k, c.sparsity) for c in got] == [
        ("dlmc-attn-q", 32, 32, 0.5), ("dlmc-ffn-up", 64, 32, 0.5), ("dlmc-ffn-down", 32, 64, 0.5),
        ("dlmc-attn-q", 32, 32, 0.9), ("dlmc-ffn-up", 64, 32, 0.9), ("dlmc-ffn-down", 32, 64, 0.9)]
    with pytest.raises(ValueError, match="--dlmc DIR"):
        cases(KernelConfig(distributions=("dlmc",)))


@pytest.mark.skipif(not REAL_DLMC.is_dir(), reason="the DLMC data set is not on this machine")
def test_real_dlmc_layers():
    files = dlmc_files(REAL_DLMC)
    assert list(files) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
    for s in (0.5, 0.98):
        for layer, shape in zip(DLMC_LAYERS, [(512, 512), (2048, 512), (512, 2048)]):
            mask = dlmc_mask(files[s], layer)
            assert tuple(mask.shape) == shape and abs(1 - mask.float().mean().item() - s) < 0.01


# ---------------------------------------------------------------------------------------- break-even
@pytest.mark.parametrize("points, expected", [
    ([(0.5, 0.8), (0.7, 1.1), (0.9, 1.5)], 0.7),
    ([(0.9, 1.5), (0.5, 0.8), (0.7, 1.1)], 0.7),  # any order
    ([(0.5, 1.2), (0.7, 0.9), (0.9, 1.3)], 0.9),  # a dip: it must stay above from there on
    ([(0.5, 1.0), (0.7, 1.0)], None),  # ties with dense are no win
    ([(0.5, 1.0), (0.7, 1.1), (0.8, 1.0), (0.9, 1.2)], 0.7),  # ... and do not end a run of wins
    ([(0.5, 0.5), (0.9, 0.99)], None),  # never
    ([(0.5, 1.1), (0.5, 0.9), (0.9, 1.2)], 0.9),  # two points at one sparsity: the smaller counts
    ([(0.5, 1.1), (0.7, math.nan), (0.9, 1.2)], 0.9),  # NaN counts as below
    ([(0.98, 2.0)], 0.98),
    ([], None)])
def test_breakeven(points, expected):
    assert report.breakeven(points) == expected


def synthetic_rows():
    """Two shapes, three sparsities, two N; 'cross' wins from 70% at N = 1 and never at N = 128;
    'cusparse-csr' fails on one shape at 90% (a gap in the geometric mean)."""
    speed = {("cross", 1): (0.8, 1.2, 1.5), ("cross", 128): (0.2, 0.3, 0.4), ("cusparse-csr", 1): (0.5, 0.9, 1.1),
             ("cusparse-csr", 128): (0.1, 0.2, 0.3)}
    rows = []
    for shape in ("a", "b"):
        for n in (1, 128):
            for i, s in enumerate((0.5, 0.7, 0.9)):
                rows.append(dict(shape=shape, N=n, sparsity=s, distribution="uniform", method="dense",
                                 speedup_vs_dense=1.0, status="ok"))
                for method in ("cross", "cusparse-csr"):
                    failed = method == "cusparse-csr" and shape == "b" and s == 0.9
                    value = speed[(method, n)][i] * (1.1 if shape == "a" else 1.0)
                    rows.append(dict(shape=shape, N=n, sparsity=s, distribution="uniform", method=method,
                                     speedup_vs_dense=None if failed else value,
                                     status="failed: relative error 1" if failed else "ok"))
    return rows


def test_geomean_curves_leave_gaps_where_a_shape_failed():
    curves = report.geomean_curves(synthetic_rows())
    assert set(curves) == {("uniform", m, n) for m in ("cross", "cusparse-csr") for n in (1, 128)}
    s, v = curves[("uniform", "cross", 1)][0]
    assert s == 0.5 and v == pytest.approx(math.sqrt(0.8 * 1.1 * 0.8))
    assert [s for s, _ in curves[("uniform", "cusparse-csr", 1)]] == [0.5, 0.7]


def test_breakeven_rows_and_markdown():
    be = report.breakeven_rows(synthetic_rows())
    geo = {(r["method"], r["N"]): r for r in be if r["shape"] == report.GEOMEAN}
    assert geo[("cross", 1)]["breakeven_sparsity"] == 0.7 and geo[("cross", 128)]["breakeven_sparsity"] == ""
    assert geo[("cusparse-csr", 1)]["breakeven_sparsity"] == ""  # the 90% point is a gap
    per_shape = {(r["shape"], r["method"], r["N"]): r for r in be}
    assert per_shape[("a", "cusparse-csr", 1)]["breakeven_sparsity"] == 0.9
    assert report.breakeven_cell(geo[("cross", 1)]) == "70%"
    assert report.breakeven_cell(geo[("cross", 128)]) == "never (max 0.42x)"
    assert report.breakeven_cell(dict(breakeven_sparsity=0.5, lowest_sparsity=0.5, max_speedup=2)) == "<= 50%"
    md = report.breakeven_markdown(be, "fig.png")
    assert "## uniform" in md and "| `cross` | 70% | never (max 0.42x) |" in md and "](fig.png)" in md


def test_breakeven_counts_fallback_rows_as_dense():
    """Where cross falls back, its row times cuBLAS twice: 1.03x or 0.97x there is noise, and the
    break-even must not report it as a win (nor its 0.97x as a loss ending a run of wins)."""
    rows = []
    for s, v, fell_back in ((0.5, 1.03, True), (0.7, 0.97, True), (0.9, 1.2, False)):
        note = f"{report.FALLBACK_NOTE} (predicted 9.0 us is not 3% under dense 9.1 us)" if fell_back else "cuda kernel"
        rows.append(dict(shape="a", N=1, sparsity=s, distribution="uniform", method="cross", speedup_vs_dense=v,
                         status="ok", note=note))
    be = {r["shape"]: r for r in report.breakeven_rows(rows)}
    assert be[report.GEOMEAN]["breakeven_sparsity"] == 0.9 and be["a"]["breakeven_sparsity"] == 0.9
    only_fallback = [dict(r, sparsity=0.95, speedup_vs_dense=1.05, note=report.FALLBACK_NOTE) for r in rows[:1]]
    (geo, _) = report.breakeven_rows(only_fallback)
    assert geo["breakeven_sparsity"] == "" and report.breakeven_cell(geo) == "never (max 1.00x)"


def test_floor_table():
    """At N <= 16: weight bytes over the copy rate against the measured time; fallback rows (the
    dense weight's time under the plan's bytes), failed rows and larger N are left out."""
    base = dict(shape="a", sparsity=0.9, distribution="uniform", status="ok", note="")
    rows = [dict(base, N=1, method="dense", us=20.0, weight_bytes="4000000"),
            dict(base, N=1, method="cross-cuda-bitmap", us=10.0, weight_bytes="1000000"),
            dict(base, N=1, method="cross", us=20.0, weight_bytes="1000000", note=report.FALLBACK_NOTE),
            dict(base, N=1, method="cusparse-csr", us=None, weight_bytes="1200000", status="failed: x"),
            dict(base, N=128, method="cross-cuda-bitmap", us=50.0, weight_bytes="1000000")]
    lines = report.floor_table(rows, 1e12).splitlines()
    assert len(lines) == 2 + 2
    assert lines[2] == "| uniform | a | 1 | 90% | dense | 1.00 | 20.0 | 4.0 | 0.20 |"
    assert lines[3] == "| uniform | a | 1 | 90% | cross-cuda-bitmap | 0.25 | 10.0 | 1.0 | 0.10 |"
    with pytest.raises(ValueError, match="copy_bytes_per_s"):
        report.floor_table(rows, 0.0)


def test_kernel_report_files(tmp_path):
    rows = synthetic_rows()
    paths = report.write_kernel_report(rows, tmp_path, "synthetic")
    assert [p.name for p in paths] == ["breakeven.csv", "breakeven.md", "kernels_fig1.png", "kernels_fig1_table.md"]
    assert (tmp_path / "kernels_fig1.png").read_bytes().startswith(b"\x89PNG")
    back = report.read_csv(tmp_path / "breakeven.csv")
    assert list(back[0]) == report.BREAKEVEN_FIELDS and len(back) == 4 + 2 * 4
    table = (tmp_path / "kernels_fig1_table.md").read_text()
    assert "| uniform | b | 1 | 0.80x | 1.20x | 1.50x | 0.50x | 0.90x | failed |" in table


@pytest.mark.parametrize("top, expected", [(3.3, {"1x", "2x", "3x"}), (4.0, {"0.001x", "0.01x", "0.1x", "1x"})])
def test_times_axis_labels(top, expected):
    """Speed-up axes are labelled 2x, 0.1x on the ticks matplotlib labels: the minor ticks where the
    axis spans under a decade (1-3.3x), the decades alone where it spans several."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0.5, 0.9], [1.0 if top < 4 else 0.001, top])
    report.times_axis(ax)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    labels = {t.get_text() for t in [*ax.get_yticklabels(), *ax.get_yticklabels(minor=True)]
              if lo <= t.get_position()[1] <= hi} - {""}
    assert labels == expected


def test_csv_rows_round_trip(tmp_path):
    path = report.start_csv(tmp_path / "k.csv", FIELDS)
    row = {f: "" for f in FIELDS} | dict(shape="a", M=4, K=8, N=16, sparsity=0.7, distribution="uniform",
                                          method="cross", us=3.5, speedup_vs_dense=1.25, status="ok", extra="dropped")
    report.append_row(path, row, FIELDS)
    back = report.kernel_rows(report.read_csv(path))
    assert back[0]["N"] == 16 and back[0]["sparsity"] == 0.7 and back[0]["speedup_vs_dense"] == 1.25
    assert done_keys(back) == {row_key("a", "uniform", 0.7, 16, "cross")}
    old = tmp_path / "kernels.csv"  # written before the status column existed
    old.write_text("shape,M,K,N,sparsity,distribution,method,us,speedup_vs_dense\n"
                   "llama-up,11008,4096,1,0.9,uniform,cross,9.1,1.46\n")
    assert report.kernel_rows(report.read_csv(old))[0]["status"] == "ok"


# ---------------------------------------------------------------------------------------- the grid
def test_run_kernels_checks_before_timing_and_reports_failures():
    calls = []
    rows = run_kernels(tiny_config(), device=torch.device("cpu"), timer=fake_timer(calls), echo=lambda _: None)
    by = {(r["sparsity"], r["N"], r["method"]): r for r in rows}
    assert len(rows) == 2 * (2 * 2 * 4 + 2)  # 2 distributions; 4 methods at both sparsities, 2:4 at 50% only
    assert not any(r["method"] == "sparse-2:4" and r["sparsity"] != 0.5 for r in rows)
    for (s, n, method), r in by.items():
        assert r["command"].endswith(f"--sparsities {s:g} --ns {n} --methods {method} --out reports/bench/row")
        if method in ("triton-bsr-32", "sparse-2:4"):
            assert r["status"].startswith("unavailable: ") and r["us"] == ""
        else:
            assert r["status"] == "ok" and r["speedup_vs_dense"] == 1.0 and r["timing"] == "graph"
    assert by[(0.7, 4, "cusparse-csr")]["dtype"] == "float32"  # MKL: fp32 only
    assert abs(by[(0.7, 1, "dense")]["weight_sparsity"] - 0.7) < 0.15
    # two timings per dense baseline and per measured row other than dense
    ok = [r for r in rows if r["status"] == "ok" and r["method"] != "dense"]
    assert len(calls) == 2 * (2 * 2 * 2 + len(ok))
    calls.clear()
    assert run_kernels(tiny_config(), device=torch.device("cpu"), done=done_keys(rows), timer=fake_timer(calls),
                       echo=lambda _: None) == []
    assert calls == []


def raise_boom():
    raise RuntimeError("boom\nmore")


def test_failed_methods_are_reported_and_never_timed(monkeypatch):
    from cross.bench import kernels

    def broken(method, w, **kw):
        if method.name == "cross":  # a wrong result
            return Prepared(w, 0.0, lambda x: Bound(lambda: torch.zeros(x.shape[0], w.shape[0]), w.dtype, "", 0))
        if method.name == "cusparse-csr":  # a call that raises
            return Prepared(w, 0.0, lambda x: Bound(raise_boom, w.dtype, "", 0))
        raise NotImplementedError("no such format here")

    monkeypatch.setattr(kernels, "prepare", broken)
    calls = []
    cfg = tiny_config(methods=tuple(parse_method(m) for m in ("cross", "cusparse-csr", "cross-triton-dense")))
    rows = run_kernels(cfg, device=torch.device("cpu"), timer=fake_timer(calls), echo=lambda _: None)
    status = {r["method"]: r["status"] for r in rows}
    assert status["cross"].startswith("failed: relative error 1 against the fp32 product")
    assert status["cusparse-csr"] == "failed: RuntimeError: boom"
    assert status["cross-triton-dense"] == "failed: preparing: NotImplementedError: no such format here"
    assert all(r["us"] == "" and r["speedup_vs_dense"] == "" for r in rows)
    assert len(calls) == 2 * 2 * 2 * 2  # the dense baselines only, twice each


def test_timing_palindrome_cancels_a_linear_drift():
    """Every call reads slower than the one before; the dense baseline and the methods (all the
    same speed here) still come out at 1.0x, and each time is the mean of its two."""
    clock = []

    def drifting(fn, *_):
        fn()
        clock.append(fn)
        return 1.0 + 0.1 * len(clock), "graph"

    rows = run_kernels(tiny_config(), device=torch.device("cpu"), timer=drifting, echo=lambda _: None)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["speedup_vs_dense"] == 1.0 for r in ok)
    first = [r for r in ok if (r["sparsity"], r["N"], r["distribution"]) == (ok[0]["sparsity"], ok[0]["N"], ok[0]["distribution"])]
    n_timed = len([r for r in first if r["method"] != "dense"]) + 1
    # calls 1 .. 2 n_timed of the first case and N: each pair sums to 2 n_timed + 1
    assert first[0]["dense_us"] == round(1.0 + 0.1 * (2 * n_timed + 1) / 2, 2)


def test_palindrome_times_reports_a_timing_that_raises():
    calls = []
    got = bench_kernels.palindrome_times([lambda: None, raise_boom, lambda: None], fake_timer(calls))
    assert got[0] == (1.0, "graph") and got[2] == (1.0, "graph") and got[1] == "RuntimeError: boom"
    assert len(calls) == 5  # the failing one is not timed again


@pytest.mark.parametrize("distribution", ["uniform", "dlmc"])
def test_row_command_measures_that_row_alone(distribution, dlmc_dir):
    folder, _ = dlmc_dir
    cfg = KernelConfig(shapes=("bert-up",), distributions=(distribution,), dlmc=folder, seed=3, tile=(64, 128))
    for row in planned_rows(cfg)[::97]:
        argv = shlex.split(row["command"])
        assert argv[:3] == ["cross", "bench", "kernels"]
        alone = planned_rows(kernel_config(build_parser().parse_args(argv[1:])))
        assert len(alone) == 1 and {k: alone[0][k] for k in FIELDS} == {k: row[k] for k in FIELDS}


# ---------------------------------------------------------------------------------------- CLI
def test_kernels_dry_run(capsys):
    code, out, err = run_cli(capsys, "bench", "kernels", "--dry-run")
    assert code == 0, err
    commands = [line for line in out.splitlines() if line.startswith("    $ cross bench kernels ")]
    assert len(commands) == len(planned_rows(KernelConfig())) == 6 * 2 * 7 * 4 * 5 + 6 * 2 * 4
    assert all("--sparsities 0.5 " in c for c in commands if "--methods sparse-2:4 " in c)
    assert "1728 rows over 84 weights; roughly" in out


def test_stacked_shapes_are_offered_not_run_by_default(capsys):
    """The sibling projections stacked (q, k, v: 12288x4096; gate, up: 22016x4096) can be asked for
    by name; the default grid stays the six layer shapes."""
    from cross.bench.weights import STACKED_SHAPES

    assert STACKED_SHAPES == {"llama-qkv": (12288, 4096), "llama-gateup": (22016, 4096)}
    assert not set(STACKED_SHAPES) & set(KernelConfig().shapes)
    code, out, err = run_cli(capsys, "bench", "kernels", "--dry-run", "--shapes", "llama-qkv,llama-gateup",
                             "--sparsities", "0.7", "--ns", "16", "--methods", "dense,cross", "--distributions", "uniform")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["llama-qkv"], ["llama-gateup"])]
    assert [r[:4] for r in rows] == [["llama-qkv", "12288", "4096", "16"]] * 2 + [["llama-gateup", "22016", "4096", "16"]] * 2


def test_kernels_dry_run_with_dlmc(dlmc_dir, capsys):
    folder, _ = dlmc_dir
    code, out, err = run_cli(capsys, "bench", "kernels", "--dry-run", "--distributions", "dlmc", "--dlmc", folder,
                             "--ns", "16", "--methods", "dense,sparse-2:4")
    assert code == 0, err
    assert "9 rows over 6 weights" in out and out.count("--methods sparse-2:4 --out") == 3 and f"--dlmc {folder}" in out


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal without a GPU")
@pytest.mark.parametrize("benchmark", ["kernels", "model"])
def test_refuses_without_a_gpu(benchmark, capsys):
    code, out, err = run_cli(capsys, "bench", benchmark, "--out", "/nonexistent/never-written")
    assert code == 2 and out == ""
    assert err.startswith("cross bench: error: expected a CUDA GPU, found none") and "--dry-run" in err


@pytest.mark.parametrize("argv, message", [
    (["kernels", "--methods", "dense,bsr"], "argument --methods: expected dense, cross"),
    (["kernels", "--sparsities", "0.5,1.0"], "argument --sparsities: expected a fraction of zeros in [0, 1)"),
    (["kernels", "--ns", "0"], "argument --ns: expected token counts N >= 1"),
    (["kernels", "--shapes", "gpt-up"], "argument --shapes: expected shapes from llama-qkvo"),
    (["kernels", "--distributions", ","], "expected a comma-separated list of distributions"),
    (["kernels", "--tile", "48x64"], "argument --tile"),
    (["kernels", "--dry-run", "--distributions", "dlmc"], "--distributions dlmc: expected --dlmc DIR"),
    (["kernels", "--dry-run", "--distributions", "dlmc", "--dlmc", "/nonexistent"], "no such directory"),
    (["model", "--models", "gpt2"], "argument --models: expected models from bert, llama, minilm"),
    (["model", "--llama-layers", "-2"], "argument --llama-layers: expected an integer >= 1, got '-2'"),
    (["kernels", "--programs-per-sm", "0"], "argument --programs-per-sm: expected an integer >= 1, got '0'"),
    ([], "the following arguments are required: BENCHMARK")])
def test_bad_arguments(argv, message, capsys):
    code, out, err = run_cli(capsys, "bench", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_model_dry_run(capsys):
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--llama-layers", "4", "--llama-sparsities", "0.9",
                             "--sparsities", "0.5,0.7")
    assert code == 0, err
    assert out.count(" llama-4L ") == 4 and out.count("    $ cross bench model --models llama --sparsities 0.9 "
                                                         "--llama-layers 4") == 1
    assert out.count("    bert  encoder     8        1024  0.5") == 1 and out.count(" minilm    embed ") == 2
    assert "10 rows over 5 models and sparsities" in out
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--models", "bert", "--sparsities", "0.9",
                             "--decode-fallback", "--no-measure")
    assert code == 0 and "$ cross bench model --models bert --sparsities 0.9 --no-measure --decode-fallback" in out
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--models", "llama", "--sparsities", "0.7",
                             "--slice-kernel")
    assert code == 0 and "$ cross bench model --models llama --sparsities 0.7 --slice-kernel" in out
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--force-plan", "--decode-fallback")
    assert code != 0 and "expected one of them" in err
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--models", "llama", "--sparsities", "0.7",
                             "--phases", "decode-16,decode-1", "--compile")
    assert code == 0 and out.count(" llama-32L ") == 2 and " decode    16 " in out and "prefill" not in out
    assert "$ cross bench model --models llama --sparsities 0.7 --phases decode-16,decode-1 --compile" in out
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--models", "bert,llama", "--phases", "decode-16")
    assert code != 0 and "bert has none of them; its phases are encoder-8, encoder-1" in err
    code, out, err = run_cli(capsys, "bench", "model", "--dry-run", "--phases", "decode-2")
    assert code != 0 and "decode-2" in err and "decode-16" in err  # the names it takes


# ---------------------------------------------------------------------------------------- models
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.pooler = nn.Linear(64, 64)  # a head: neither pruned nor sparsified

    def forward(self, x):
        return SimpleNamespace(last_hidden_state=self.down(torch.relu(self.up(x))))


def test_run_workload_on_a_tiny_model():
    torch.manual_seed(0)
    model = Tiny().eval()
    models.prune_(model, 0.7)
    assert zero_fraction(model.up.weight) == pytest.approx(0.7, abs=1e-3) and zero_fraction(model.pooler.weight) == 0
    x = {"x": torch.randn(2, 3, 64)}
    wl = models.Workload("tiny", model, (("encoder", 2, 3),), lambda b, s: x,
                         lambda run, inputs: run(**inputs).last_hidden_state.flatten(0, -2))
    dense_bytes = models.linear_bytes(model)
    calls = []
    (row,) = models.run_workload(wl, 0.7, command="cmd", keep_dense=False, timer=fake_timer(calls))
    assert list(row) == models.FIELDS and len(calls) == 3  # dense, cross, dense again
    assert (row["model"], row["phase"], row["batch"], row["tokens"]) == ("tiny", "encoder", 2, 6)
    assert row["sparse_layers"] == "2/2"  # the pooler is a head: not planned
    assert row["speedup"] == 1.0 and row["dense_ms"] == row["cross_ms"] == 0.001 and row["timing"] == "graph"
    assert row["dense_apart_ms"] == "" and "apart" not in models.format_row(row)  # nothing stacked
    assert row["weight_bytes_dense"] == dense_bytes == (64 * 128 * 2 + 64 * 64) * 4
    assert row["weight_bytes_cross"] != dense_bytes and row["min_cosine"] > 0.9999
    assert type(model.up) is nn.Linear  # left dense
    calls.clear()
    lines = []
    models.run_workload(wl, 0.7, keep_dense=False, timer=fake_timer(calls), discard_pass=True, log=lines.append)
    (line,) = lines
    assert re.fullmatch(r"sparsify_: 3 layers in \d+ s; weights .*tile format .* MB; measured check: no layer timed",
                        line)  # the CPU times nothing
    assert len(calls) == models.DISCARDED_TIMINGS + 3  # the dropped timings come first, of the dense model
    # measure goes to sparsify_: asking for GPU timings of a CPU model is refused there
    with pytest.raises(ValueError, match="measure=True: expected a weight on a CUDA device"):
        models.run_workload(wl, 0.7, measure=True, timer=fake_timer([]))
    assert type(model.up) is nn.Linear


def tiny_llama(kind: str, layers: int) -> nn.Module:
    """A seeded tiny Llama (transformers' ``kind``: LlamaModel or LlamaForCausalLM), pruned to 70%."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    model = getattr(transformers, kind)(config).eval()
    models.prune_(model, 0.7)
    return model


def test_run_workload_stacks_siblings_for_both_models():
    """With stack_siblings the dense model is timed as given, then stacked (and timed so: the row's
    dense column), the stacked model sparsified; the model is left dense and apart afterwards."""
    model = tiny_llama("LlamaForCausalLM", layers=2)
    x = {"input_ids": torch.randint(100, (2, 5))}
    wl = models.Workload("tiny-llama", model, (("prefill", 2, 5),), lambda b, s: x,
                         lambda run, inputs: run(**inputs).logits.flatten(0, -2))
    calls, lines = [], []
    # us: dense apart, dense stacked, cross, dense stacked again, dense apart again
    times = iter([3.0, 2.0, 1.0, 2.0, 4.0])

    def timer(fn, *_):
        calls.append(fn)
        fn()
        return next(times), "graph"

    (row,) = models.run_workload(wl, 0.7, keep_dense=False, timer=timer, stack_siblings=True, log=lines.append)
    assert len(calls) == 5
    assert lines[0].startswith("dense, siblings apart -> stacked: prefill 2x5 0.003 -> 0.002 ms")
    # the fair comparison is against the stacked dense model; the model as given is kept beside it
    assert row["dense_ms"] == 0.002 and row["cross_ms"] == 0.001 and row["speedup"] == 2.0
    assert row["dense_apart_ms"] == 0.0035  # the mean of the first and last timings
    assert models.format_row(row).endswith("(dense apart 0.004 ms: 3.50x)")
    # 2 x (q+k+v, o, gate+up, down) planned (14 apart); lm_head is a head: skipped, reported
    assert lines[1].startswith("sparsify_: 9 layers") and row["sparse_layers"] == "8/8"
    assert row["min_cosine"] > 0.9999
    assert type(model.model.layers[0].self_attn.k_proj) is nn.Linear  # apart again
    assert models.model_command("llama", 0.7, stack_siblings=True).endswith("--stack-siblings --out reports/bench/row")


def test_run_workload_logs_the_kernels_of_both_sides(monkeypatch):
    """--kernel-times: one log of each phase's kernels after the dense and after the sparse timing,
    each with the model's call on that phase's inputs."""
    torch.manual_seed(0)
    model = Tiny().eval()
    models.prune_(model, 0.7)
    x = {"x": torch.randn(2, 3, 64)}
    wl = models.Workload("tiny", model, (("encoder", 2, 3),), lambda b, s: x,
                         lambda run, inputs: run(**inputs).last_hidden_state.flatten(0, -2))
    seen = []

    def fake_log_kernels(run, inputs, side, logged_model, log):
        seen.append((side, list(inputs), logged_model is model, type(model.up).__name__))
        log(f"kernels of {side}")

    monkeypatch.setattr(models, "log_kernels", fake_log_kernels)
    lines = []
    models.run_workload(wl, 0.7, keep_dense=False, timer=fake_timer([]), kernel_times=True, log=lines.append)
    assert [s[0] for s in seen] == ["dense", "cross"] and seen[0][1] == [("encoder", 2, 3)]
    assert seen[0][3] == "Linear" and seen[1][3] == "SparseLinear"  # timed as each side runs
    assert seen[0][2] and seen[1][2]  # the workload's model, whose config gives the decoder layers
    assert "kernels of dense" in lines and "kernels of cross" in lines
    seen.clear()
    models.run_workload(wl, 0.7, keep_dense=False, timer=fake_timer([]), log=lines.append)
    assert seen == []  # off by default
    assert models.model_command("llama", 0.7, compile=True, kernel_times=True).endswith(
        "--compile --kernel-times --out reports/bench/row")


def test_log_kernels_groups_by_the_models_decoder_layers(monkeypatch):
    """log_kernels takes the decoder layers from the model's config (none without one) and groups the
    linear layers' kernel by its place in a layer: cuBLAS on the dense side, the 2:4 kernel on the other."""
    from cross.bench import step_kernels

    step = [("wgmma24", 10.0), ("nvjet_gemm", 5.0), ("wgmma24", 20.0), ("nvjet_gemm", 6.0)]
    monkeypatch.setattr(step_kernels, "step_kernels", lambda fn, reps: (
        [(n, 100.0 * r + i, d) for r in range(reps) for i, (n, d) in enumerate(step)], "graph"))
    phase = ("decode", 16, 1)
    lines = []
    models.log_kernels(None, {phase: {}}, "cross", Tiny(), lines.append)
    assert "by the launch's place" not in lines[-1]  # no config: no decoder layers to group by
    two = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=2))
    models.log_kernels(None, {phase: {}}, "cross", two, lines.append)
    assert lines[-1].startswith("kernels per step, decode-16 cross (graph): 4 kernels")
    assert lines[-1].endswith("warpgroup 2:4 by the launch's place in a layer: 1. 15.00 us (wgmma24)")
    models.log_kernels(None, {phase: {}}, "dense", two, lines.append)
    assert lines[-1].endswith("cuBLAS by the launch's place in a layer: 1. 5.50 us (nvjet_gemm)")

    def broken(fn, reps):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(step_kernels, "step_kernels", broken)  # the run keeps its timings, the log says why
    models.log_kernels(None, {phase: {}}, "dense", two, lines.append)
    assert lines[-1] == "kernels per step, decode-16 dense: not recorded (RuntimeError: CUPTI unavailable)"


def test_model_rows_resume_where_the_same_command_measured_every_phase(tmp_path):
    """--resume: the model CSV read back gives the rows as run_workload made them; a model and
    sparsity is kept only where the same command measured each of its phases, else measured again."""
    from cross.bench.report import append_row, read_csv, start_csv

    def row(phase, batch, sp=0.7, command="cmd", apart=""):
        return dict(model="llama-32L", phase=phase, batch=batch, tokens=batch, sparsity=sp, dense_ms=5.7766,
                    cross_ms=4.5257, speedup=1.276, weight_bytes_dense=12952010752, weight_bytes_cross=25744708936,
                    sparse_layers="128/128", min_cosine=0.999525, timing="graph", dense_apart_ms=apart, command=command)

    written = [row("decode", 16, apart=6.4028), row("decode", 1), row("decode", 16, sp=0.9),
               row("decode", 1, sp=0.9, command="other")]
    path = start_csv(tmp_path / "model.csv", models.FIELDS)
    for r in written:
        append_row(path, r, models.FIELDS)
    kept = models.model_rows(read_csv(path))
    assert kept == written  # numbers parsed back to what was written
    phases = (("decode", 16, 1), ("decode", 1, 1))
    assert models.measured_before(kept, "llama-32L", 0.7, phases, "cmd") == written[:2]
    assert models.measured_before(kept, "llama-32L", 0.7, phases[::-1], "cmd") == written[1::-1]  # the phases' order
    assert models.measured_before(kept, "llama-32L", 0.9, phases, "cmd") is None  # decode-1 by another command
    assert models.measured_before(kept, "llama-32L", 0.9, phases[:1], "cmd") == [written[2]]
    assert models.measured_before(kept, "llama-32L", 0.5, phases, "cmd") is None
    assert models.measured_before(kept, "bert", 0.7, phases, "cmd") is None


def test_bench_model_resume_measures_only_what_is_missing(tmp_path, capsys, monkeypatch):
    """`cross bench model --resume`, the GPU's parts stubbed: a first run cut short after one sparsity
    leaves its rows; the same command again keeps them and measures the rest; a row another
    command measured is measured again; the other sparsities' rows stay."""
    from cross.cli import bench as cli_bench

    monkeypatch.setattr(cli_bench, "require_cuda", lambda command: 0)
    monkeypatch.setattr(cli_bench, "bench_cost_model", lambda path: SimpleNamespace(source="stub"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub GPU")
    monkeypatch.setattr(models, "llama", lambda sp, layers: SimpleNamespace(label=f"llama-{layers}L", sp=sp))
    monkeypatch.setattr(models, "select_phases", lambda wl, names: wl)
    measured = []

    def fake_run(wl, sp, command="", discard_pass=False, **_):
        measured.append((sp, discard_pass))
        if sp == 0.8 and stop_at_08:
            raise KeyboardInterrupt  # the call's time ran out
        return [dict(model=wl.label, phase="decode", batch=b, tokens=b, sparsity=sp, dense_ms=2.0, cross_ms=1.0,
                     speedup=2.0, weight_bytes_dense=10, weight_bytes_cross=8, sparse_layers="4/4", min_cosine=0.9995,
                     timing="graph", dense_apart_ms="", command=command) for b in (1, 16)]  # the phases' order

    monkeypatch.setattr(models, "run_workload", fake_run)
    argv = ["bench", "model", "--models", "llama", "--llama-layers", "2", "--phases", "decode-16,decode-1",
            "--out", tmp_path, "--resume"]
    stop_at_08 = True
    code, _, err = run_cli(capsys, *argv, "--sparsities", "0.7,0.8")
    assert code == 130 and "interrupted" in err and measured == [(0.7, True), (0.8, False)]
    stop_at_08, measured[:] = False, []
    code, out, _ = run_cli(capsys, *argv, "--sparsities", "0.7,0.8")
    assert code == 0 and measured == [(0.8, True)] and out.count("(kept)") == 2  # 0.7's two phases
    rows = models.model_rows(report.read_csv(tmp_path / "model.csv"))
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.7, 1), (0.7, 16), (0.8, 1), (0.8, 16)]
    assert "--resume: 2 of the 4 rows come from earlier runs" in (tmp_path / "model.md").read_text()
    measured[:] = []
    code, out, _ = run_cli(capsys, *argv, "--sparsities", "0.8", "--wgmma-kernel")  # another command at 0.8
    assert measured == [(0.8, True)]
    rows = models.model_rows(report.read_csv(tmp_path / "model.csv"))
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.8, 1), (0.8, 16), (0.7, 1), (0.7, 16)]  # 0.7 stays
    assert "--wgmma-kernel" in rows[0]["command"] and "--wgmma-kernel" not in rows[2]["command"]
    assert "--resume: 2 of the 4 rows come from earlier runs" in (tmp_path / "model.md").read_text()  # 0.7's
    measured[:] = []
    run_cli(capsys, *argv[:-1], "--sparsities", "0.7,0.8")  # without --resume: all measured, no such note
    assert measured == [(0.7, True), (0.8, False)] and "--resume:" not in (tmp_path / "model.md").read_text()


def test_model_command_names_the_measure_option():
    row = " --out reports/bench/row"  # a row's own folder: it does not replace the grid's model.csv
    assert models.model_command("llama", 0.7, no_measure=True).endswith("--sparsities 0.7 --no-measure" + row)
    assert "--no-measure" not in models.model_command("llama", 0.7)
    assert models.model_command("bert", 0.9, decode_fallback=True).endswith("--decode-fallback" + row)
    assert models.model_command("llama", 0.7, slice_kernel=True).endswith("--sparsities 0.7 --slice-kernel" + row)
    assert models.model_command("llama", 0.7, wgmma_kernel=True).endswith("--sparsities 0.7 --wgmma-kernel" + row)
    # --wgmma-layout only where it is not the default (auto)
    assert models.model_command("llama", 0.7, wgmma_kernel=True, wgmma_layout="auto").endswith(
        "--sparsities 0.7 --wgmma-kernel" + row)
    for layout in ("compressed", "lone", "slots"):
        assert models.model_command("llama", 0.7, wgmma_kernel=True, wgmma_layout=layout).endswith(
            f"--wgmma-kernel --wgmma-layout {layout}" + row)


def test_model_report_files(tmp_path):
    rows = [dict(model=m, phase=p, batch=b, tokens=b * 4, sparsity=s, dense_ms=2.0, cross_ms=2.0 / v, speedup=v,
                 weight_bytes_dense=10**8, weight_bytes_cross=6 * 10**7, sparse_layers="3/7", min_cosine=0.99999,
                 timing="graph") for m, p, b in (("bert", "encoder", 8), ("llama-4L", "decode", 1))
            for s, v in ((0.5, 1.0), (0.9, 1.3))]
    fig, md = report.write_model_report(rows, tmp_path, ["a note"])
    assert fig.read_bytes().startswith(b"\x89PNG") and md.name == "model.md"
    text = md.read_text()
    assert "- a note" in text and "| llama-4L | decode | 1 | 4 | 90% | 2.000 | 1.538 | 1.30x | 100.0 | 60.0 | 3/7 |" in text
    assert "dense apart" not in text
    # stacked siblings: the dense model as given gets two more columns
    rows[-1]["dense_apart_ms"] = 2.5
    _, md = report.write_model_report(rows, tmp_path, ["a note"])
    text = md.read_text()
    assert "| vs dense apart |" in text and "| 3/7 | 0.999990 | graph | 2.500 | 1.63x |" in text
    assert "| 3/7 | 0.999990 | graph |  |  |" in text  # the rows without it stay empty


# ---------------------------------------------------------------------------------------- scripts
def test_benchmark_scripts_keep_their_command_lines(capsys):
    kernels = load_benchmark("kernels")
    assert kernels.SHAPES is SHAPES and callable(kernels.bench) and kernels.make_weight is make_weight
    assert kernels.main(["--shapes", "bert-qkvo", "--dry-run"]) == 0
    assert "45 rows over 3 weights" in capsys.readouterr().out  # its own defaults: 0.5,0.7,0.9 x 5 N x 3 methods
    assert load_benchmark("model").main(["--dry-run"]) == 0
    assert "14 rows over 5 models" in capsys.readouterr().out
    if not HAS_GPU:
        assert kernels.main([]) == 2 and "expected a CUDA GPU" in capsys.readouterr().err


def test_report_kernels_script(tmp_path, capsys):
    (tmp_path / "kernels.csv").write_text(
        "shape,M,K,N,sparsity,distribution,method,us,speedup_vs_dense\n"
        + "".join(f"llama-up,11008,4096,{n},{s},uniform,{m},1.0,{v}\n" for n in (1, 128) for s in (0.5, 0.9)
                  for m, v in (("dense", 1.0), ("cross", 1.0), ("cross-cuda-bitmap", 0.7 + s / 2))))
    script = load_benchmark("report_kernels")
    with pytest.raises(SystemExit):  # a folder not named after a GPU with a measured copy rate
        script.main([str(tmp_path)])
    assert "--copy-tbps" in capsys.readouterr().err
    assert script.main([str(tmp_path), "--copy-tbps", "3.0"]) == 0
    assert (tmp_path / "kernels.png").read_bytes().startswith(b"\x89PNG")
    table = (tmp_path / "kernels_table.md").read_text()
    assert "| uniform | llama-up | 1 | 1.00x | 1.00x | 0.95x | 1.15x |" in table
    assert "copy rate 3.0 TB/s" in (tmp_path / "kernels_floor.md").read_text()
    # the command that measures the rows again, from the rows themselves
    command = (f"PYTHONPATH=src python benchmarks/kernels.py --shapes llama-up \\\n    --sparsities 0.5,0.9 --ns 1,128 "
               f"\\\n    --methods dense,cross,cross-cuda-bitmap \\\n    --out {tmp_path.as_posix()}\n"
               f"python benchmarks/report_kernels.py {tmp_path.as_posix()}")
    assert f"```\n{command}\n```" in table
    rows = [dict(shape="a", sparsity=0.7, N=16, distribution=d, method="cross",
                 command="cross bench kernels --shapes a --cost-model cm.json --out reports/bench/row")
            for d in ("uniform", "dlmc")]
    assert script.grid_command(rows, Path("out")).splitlines()[1:3] == [
        "    --sparsities 0.7 --ns 16 --distributions uniform,dlmc \\", "    --methods cross --cost-model cm.json \\"]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU code needs a C++ compiler")
def test_run_workload_compiled():
    """compile=True times the models compiled by cross.compile (the timer gets the compiled callable),
    checks the compiled sparse model against the dense one run eagerly, and logs the repeated calls
    merged: the stacked siblings' products of the sparse model (the CPU's reference executor)."""
    model = tiny_llama("LlamaModel", layers=1)
    x = {"input_ids": torch.randint(100, (2, 5)), "use_cache": False}
    wl = models.Workload("tiny-llama", model, (("prefill", 2, 5), ("decode", 2, 1)), lambda b, s: x, models.hidden_rows)
    wl = models.select_phases(wl, ("prefill-2",))
    assert [models.phase_name(p) for p in wl.phases] == ["prefill-2"]
    with pytest.raises(ValueError, match="tiny-llama has none of decode-16"):
        models.select_phases(wl, ("decode-16",))
    runs, lines = [], []

    def timer(fn, *_):
        fn()  # compiles this phase's graph for the model's present state
        runs.append(fn)
        return 1.0, "graph"

    try:  # inductor's caches off: a graph compiled before would come back without the pass run on it
        with torch._inductor.config.patch(force_disable_caches=True):
            (row,) = models.run_workload(wl, 0.7, keep_dense=False, timer=timer, stack_siblings=True, compile=True,
                                         log=lines.append)
    finally:
        torch._dynamo.reset()
    assert len(runs) == 5 and row["min_cosine"] > 0.9999 and row["sparse_layers"] == "4/4"
    (merged,) = [line for line in lines if line.startswith("cross.compile:")]
    assert int(re.match(r"cross.compile: (\d+) repeated calls merged", merged).group(1)) > 0
    assert type(model.layers[0].self_attn.k_proj) is nn.Linear  # dense and apart again
    command = models.model_command("llama", 0.7, phases=("decode-16", "decode-1"), compile=True)
    assert command.endswith("--phases decode-16,decode-1 --compile --out reports/bench/row")


def test_measured_sums_line_names_each_phases_bucket():
    """The log line gives, per phase token count, its bucket's summed times (dense -> cross) with the
    layers counted; a token count in no timed bucket is left out, and no line without timings."""
    sums = {(1, 1): {"dense_us": 3000.0, "run_us": 2000.0, "timed": 4, "layers": 4},
            (9, 16): {"dense_us": 6000.0, "run_us": 5000.0, "timed": 3, "layers": 4}}
    report = SimpleNamespace(measured_by_bucket=lambda: sums)
    line = models.measured_sums_line(report, (1, 8, 16))
    assert line.endswith(": 1 token 3.000 -> 2.000 ms (1.50x, 4 of 4 layers); 16 tokens 6.000 -> 5.000 ms "
                         "(1.20x, 3 of 4 layers)")
    assert models.measured_sums_line(SimpleNamespace(measured_by_bucket=dict), (1, 16)) == ""
    shapes = {(4096, 4096): {"dense_us": 18.14, "run_us": 16.5, "timed": 32}}
    assert models.measured_shapes_line(SimpleNamespace(measured_by_shape=lambda n: shapes), 16) == (
        "alone, as the measured check timed them (median per shape, dense -> cross): 4096x4096 18.14 -> 16.50 us "
        "(32 layers)")
    assert models.measured_shapes_line(SimpleNamespace(measured_by_shape=lambda n: {}), 16) == ""
