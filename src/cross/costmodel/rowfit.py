"""Fitting the row kernel's cost terms to its measured times.

The row kernel's prediction (roofline.row_matmul_us) is a streaming term (the row format's bytes at
the dense product's streaming rate, one read per pass), a launch per pass beyond the first, and
three terms fitted to a GPU: its fixed part (``row_launch_us``: launch, first loads, tail) and its
cost per token beyond the second of a pass, per column (``row_token_col_ns``) and per entry of the
row format (``row_token_entry_ps``). ``fit_row_terms`` keeps the first two as the spec has them
(roofline.row_matmul_parts) and fits the three by least squares to measured times, so the fit and
the planner's prediction share one model. ``cross profile`` (profile.measure) times the row kernel
and fits the terms with it; benchmarks/fit_row_costs.py fits them to kernel-benchmark CSVs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .roofline import GPUSpec, row_entries, row_matmul_parts, row_matmul_us

#: Fewer measured times than this leave three terms under-determined
MIN_SAMPLES = 6


@dataclass(frozen=True)
class RowSample:
    """One measured time of the row kernel: an rows x cols weight whose row format has ``entries``
    entries, run with ``n_tokens`` tokens in ``us`` microseconds."""

    rows: int
    cols: int
    entries: int
    n_tokens: int
    us: float

    @classmethod
    def from_nnz(cls, rows: int, cols: int, nnz: int, n_tokens: int, us: float) -> "RowSample":
        """A sample whose entries are estimated from the weight's nonzeros as the planner estimates
        them (roofline.row_entries over the whole weight), so that the fitted terms reproduce the
        planner's prediction, not a prediction from entries the planner never sees."""
        entries = row_entries(np.array([nnz]), np.array([rows * cols]), rows)
        return cls(int(rows), int(cols), int(entries), int(n_tokens), float(us))


def _terms(spec: GPUSpec, s: RowSample) -> tuple[float, list[float]]:
    """(the prediction less its fitted terms, [1, extra tokens x columns / 1e3, extra tokens x entries
    / 1e6]) of one sample (roofline.row_matmul_parts): the fitted terms' units are us, ns and ps."""
    base, extra = row_matmul_parts(spec, s.rows, s.cols, s.entries, s.n_tokens)
    return base, [1.0, extra * s.cols * 1e-3, extra * s.entries * 1e-6]


def fit_row_terms(spec: GPUSpec, samples) -> tuple[GPUSpec, list[dict]]:
    """The spec with the row kernel's three terms (``row_launch_us``, ``row_token_col_ns``,
    ``row_token_entry_ps``) fitted to ``samples`` (RowSample) by least squares, and per sample its
    rows, cols, entries, n_tokens, measured ``us`` and the predictions ``before`` (``spec``) and
    ``after`` (the fitted spec). Raises ValueError where the samples cannot determine the terms (fewer
    than MIN_SAMPLES; none at one token and at more than two tokens, or one weight only) or the fit
    gives a negative term."""
    samples = list(samples)
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"expected at least {MIN_SAMPLES} row-kernel rows (measured times) to fit three terms, "
                         f"got {len(samples)}")
    base, design = zip(*(_terms(spec, s) for s in samples))
    a = np.array(design)
    if np.linalg.matrix_rank(a) < 3:
        raise ValueError("the times cannot tell the terms apart: expected times at one token and at more than "
                         "two tokens, over more than one weight")
    y = np.array([s.us for s in samples]) - np.array(base)
    launch, col_ns, entry_ps = np.linalg.lstsq(a, y, rcond=None)[0]
    if min(launch, col_ns, entry_ps) < 0:
        raise ValueError(f"the fit gave a negative term (fixed part {launch:.3g} us, {col_ns:.3g} ns per column, "
                         f"{entry_ps:.3g} ps per entry): the times do not follow the model")
    fitted = replace(spec, row_launch_us=float(launch), row_token_col_ns=float(col_ns),
                     row_token_entry_ps=float(entry_ps))
    report = [{"rows": s.rows, "cols": s.cols, "entries": s.entries, "n_tokens": s.n_tokens, "us": s.us,
               "before": row_matmul_us(spec, s.rows, s.cols, s.entries, s.n_tokens),
               "after": row_matmul_us(fitted, s.rows, s.cols, s.entries, s.n_tokens)} for s in samples]
    return fitted, report


def relative_errors(report, key: str = "after") -> np.ndarray:
    """|prediction / measured - 1| of each entry of a fit_row_terms report, for the prediction
    ``key`` ('after' or 'before')."""
    return np.array([abs(r[key] / r["us"] - 1) for r in report])
