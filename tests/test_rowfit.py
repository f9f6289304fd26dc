"""costmodel.rowfit: the row kernel's fixed part and per-token terms fitted to its measured times; and
`cross profile`'s row step (profile._row_terms), which times the row kernel and fits them."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cross.costmodel.roofline import H100, row_entries, row_matmul_us
from cross.costmodel.rowfit import MIN_SAMPLES, RowSample, fit_row_terms, relative_errors

TRUE = replace(H100, row_launch_us=6.5, row_token_col_ns=0.07, row_token_entry_ps=0.05)
CELLS = [(m, k, n, d) for m, k in ((4096, 4096), (11008, 4096), (4096, 11008)) for n in (1, 8) for d in (0.1, 0.3, 0.5)]


def _nnz(rows, cols, density):
    return round(rows * cols * density)


def _samples(spec, cells, noise=None):
    out = []
    for i, (m, k, n, d) in enumerate(cells):
        nnz = _nnz(m, k, d)
        entries = row_entries(np.array([nnz]), np.array([m * k]), m)
        us = row_matmul_us(spec, m, k, entries, n) * (1.0 if noise is None else noise[i])
        out.append(RowSample.from_nnz(m, k, nnz, n, us))
    return out


def _terms(spec):
    return spec.row_launch_us, spec.row_token_col_ns, spec.row_token_entry_ps


def test_a_sample_estimates_its_entries_as_the_planner_does():
    s = RowSample.from_nnz(4096, 4096, 5_000_000, 8, 12.5)
    assert s.entries == row_entries(np.array([5_000_000]), np.array([4096 * 4096]), 4096)
    assert (s.rows, s.cols, s.n_tokens, s.us) == (4096, 4096, 8, 12.5)


def test_the_fit_recovers_the_terms_the_times_were_made_with():
    fitted, report = fit_row_terms(H100, _samples(TRUE, CELLS))
    assert _terms(fitted) == pytest.approx(_terms(TRUE), rel=1e-6)
    # the rest of the spec is kept: the streaming term and the extra passes' launches are not fitted
    assert replace(fitted, row_launch_us=None, row_token_col_ns=H100.row_token_col_ns,
                   row_token_entry_ps=H100.row_token_entry_ps) == H100
    assert [(r["rows"], r["cols"], r["n_tokens"]) for r in report] == [(m, k, n) for m, k, n, _ in CELLS]
    assert np.all(relative_errors(report) < 1e-6)
    assert relative_errors(report, "before").max() > 0.05  # the default terms were off
    for r in report:
        assert r["before"] == row_matmul_us(H100, r["rows"], r["cols"], r["entries"], r["n_tokens"])


def test_the_fit_on_noisy_times_is_close():
    noise = np.random.default_rng(0).uniform(0.97, 1.03, len(CELLS))
    fitted, report = fit_row_terms(H100, _samples(TRUE, CELLS, noise))
    assert fitted.row_launch_us == pytest.approx(6.5, rel=0.15)
    assert relative_errors(report).max() < 0.06


def test_the_fit_refuses_times_that_cannot_determine_the_terms():
    with pytest.raises(ValueError, match=f"at least {MIN_SAMPLES} row-kernel rows"):
        fit_row_terms(H100, _samples(TRUE, CELLS[:MIN_SAMPLES - 1]))
    with pytest.raises(ValueError, match="cannot tell the terms apart"):  # one token only
        fit_row_terms(H100, _samples(TRUE, [c for c in CELLS if c[2] == 1]))
    with pytest.raises(ValueError, match="cannot tell the terms apart"):  # one weight only
        fit_row_terms(H100, _samples(TRUE, [(4096, 4096, n, 0.3) for n in (1, 8, 1, 8, 1, 8)]))
    with pytest.raises(ValueError, match="negative term"):  # times that fall as tokens are added
        fit_row_terms(H100, _samples(TRUE, CELLS, [1.0 if c[2] == 1 else 0.5 for c in CELLS]))


# ---------------------------------------------------------------------- cross profile's row step
def _fake_timer(spec, calls=None):
    """A row_timer stand-in: the weight's nonzeros at its density and row_matmul_us of ``spec``."""

    def time_weight(rows, cols, density, tokens):
        if calls is not None:
            calls.append((rows, cols, density, tokens))
        nnz = _nnz(rows, cols, density)
        entries = row_entries(np.array([nnz]), np.array([rows * cols]), rows)
        return nnz, [row_matmul_us(spec, rows, cols, entries, n) for n in tokens]

    return time_weight


def test_the_profile_row_step_fits_the_terms_it_timed():
    from cross.costmodel import profile

    calibrated = replace(H100, dense_bandwidth_efficiency=0.9, dense_launch_us=7.0)  # as _calibrate_dense leaves it
    true = replace(calibrated, row_launch_us=6.5, row_token_col_ns=0.07, row_token_entry_ps=0.05)
    calls = []
    fitted, prov = profile._row_terms(calibrated, _fake_timer(true, calls))
    assert calls == [(m, k, d, profile.ROW_TOKENS) for m, k in profile.ROW_SHAPES for d in profile.ROW_DENSITIES]
    assert _terms(fitted) == pytest.approx(_terms(true), rel=1e-6)
    assert fitted.dense_bandwidth_efficiency == 0.9  # the streaming term at the calibrated rate
    n = len(profile.ROW_SHAPES) * len(profile.ROW_DENSITIES) * len(profile.ROW_TOKENS)
    assert prov["samples"] == n == 18 and prov["max_error"] < 1e-4 and prov["median_error"] < 1e-4
    assert "least squares" in prov["method"] and "11008x4096" in prov["method"]
    first = prov["by_weight"][0]
    assert (first["shape"], first["density"]) == ("11008x4096", profile.ROW_DENSITIES[0])
    assert set(first["us"]) == set(first["predicted_us"]) == {str(t) for t in profile.ROW_TOKENS}
    assert first["us"]["1"] == pytest.approx(first["predicted_us"]["1"], abs=0.01)


def test_the_profile_row_step_is_skipped_where_the_timer_or_the_fit_fails():
    from cross.costmodel import profile

    def broken(rows, cols, density, tokens):
        raise RuntimeError("the row kernel cannot run here\nsecond line")

    spec, prov = profile._row_terms(H100, broken)
    assert spec is H100 and prov == {"skipped": "RuntimeError: the row kernel cannot run here"}
    # times that fall as tokens are added: the fit refuses them, the spec keeps its terms
    backwards = replace(TRUE, row_token_col_ns=-0.5)
    spec, prov = profile._row_terms(H100, _fake_timer(backwards))
    assert spec is H100 and prov["skipped"].startswith("ValueError: the fit gave a negative term")


def test_the_profile_row_timer_refuses_a_device_without_the_row_kernel():
    """On a CPU (or where the row kernel cannot run) the real timer raises, so the profile skips the step."""
    from cross.costmodel import profile

    timer = profile.row_timer(torch.device("cpu"), torch.Generator().manual_seed(0))
    spec, prov = profile._row_terms(H100, timer)
    assert spec is H100 and "the row kernel cannot run a 11008x4096 bfloat16 weight on cpu" in prov["skipped"]


def test_the_profile_row_terms_survive_the_saved_model():
    from cross.costmodel import profile
    from cross.costmodel.model import CostModel

    fitted, prov = profile._row_terms(H100, _fake_timer(TRUE))
    again = CostModel.from_dict(CostModel(spec=fitted, provenance={"row_fit": prov}).to_dict())
    assert _terms(again.spec) == pytest.approx(_terms(TRUE), rel=1e-6)
    assert again.provenance["row_fit"] == prov


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_profile_row_step_fits_the_row_kernel():
    """The row step on the GPU, on smaller weights than the profile's, on the spec calibrated to
    cuBLAS as the profile calibrates it: the row kernel runs, the fitted terms are positive and
    reproduce the times they were fitted to."""
    from cross.costmodel import profile

    device = torch.device("cuda", torch.cuda.current_device())
    gen = torch.Generator().manual_seed(0)
    tokens = (1, 16)
    dense = np.zeros((len(profile.DENSE_SHAPES), len(tokens)))
    for r, (rows, cols) in enumerate(profile.DENSE_SHAPES):
        w = torch.randn(rows, cols, generator=gen).to(torch.bfloat16).to(device)
        for j, n in enumerate(tokens):
            x = torch.randn(n, cols, generator=gen).to(torch.bfloat16).to(device)
            dense[r, j] = profile.graph_time_us(lambda: torch.matmul(x, w.T))
    spec = profile._calibrate_dense(replace(H100, name=torch.cuda.get_device_name(device)), dense, tokens)
    shapes = ((2048, 4096), (4096, 4096), (2048, 8192))
    fitted, prov = profile._row_terms(spec, profile.row_timer(device, gen), shapes=shapes)
    assert "skipped" not in prov, prov
    assert fitted.row_launch_us > 0 and fitted.row_token_col_ns > 0 and fitted.row_token_entry_ps > 0
    assert prov["samples"] == len(shapes) * len(profile.ROW_DENSITIES) * len(profile.ROW_TOKENS)
    # least squares: the fitted terms explain the times at least as well as the spec's own terms (one
    # point of the same three-term family), whatever the times are (how well is the profile's report)
    residuals = {"before": [], "after": []}
    for w in prov["by_weight"]:
        rows, cols = map(int, w["shape"].split("x"))
        for n, us in w["us"].items():
            s = RowSample.from_nnz(rows, cols, w["nnz"], int(n), us)
            for key, sp in (("before", spec), ("after", fitted)):
                residuals[key].append(row_matmul_us(sp, s.rows, s.cols, s.entries, s.n_tokens) - s.us)
    sse = {key: float(np.sum(np.square(r))) for key, r in residuals.items()}
    slack = 1e-3 * sse["before"] + 1e-2 * prov["samples"]  # the provenance's times are rounded to 0.01 us
    assert len(residuals["after"]) == prov["samples"] and sse["after"] <= sse["before"] + slack


@pytest.mark.parametrize("fitted", [True, False])
def test_cross_profile_reports_the_row_terms_or_why_they_were_kept(fitted, capsys, monkeypatch, tmp_path):
    """`cross profile` prints the fitted row terms and their error, or the reason the step was skipped
    (the profile itself faked: it needs a GPU)."""
    from cross.cli.main import main
    from cross.costmodel import profile
    from cross.costmodel.model import CostModel

    times = _fake_timer(TRUE if fitted else replace(TRUE, row_token_col_ns=-0.5))
    spec, prov = profile._row_terms(H100, times)
    model = CostModel(spec=spec, provenance={"row_fit": prov})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(profile, "profile", lambda force, progress: (model, tmp_path / "cm.json", True))
    assert main(["profile"]) == 0
    out = capsys.readouterr().out
    if fitted:
        assert "row kernel: fixed part 6.5 us, 0.070 ns per column and 0.050 ps per entry" in out
        assert "fitted to 18 times, median error 0.0%" in out
    else:
        assert "row kernel not fitted, its terms kept: ValueError: the fit gave a negative term" in out
