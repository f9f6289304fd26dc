"""Device time of a callable, L2 flushed, and the check every result passes before it is timed.

``graph_us`` replays a CUDA graph of the call (host work is not counted) with L2 flushed by a
256 MB read before each replay (costmodel.profile.FLUSHES says why a read); ``measure_us`` falls
back to timing the call itself where it cannot be captured in a graph (a host sync, or a library
that refuses capture), and says so in the result.
"""

from __future__ import annotations

import math

import torch

from ..costmodel.profile import reason  # noqa: F401  (re-exported for the benchmarks)
#: largest ||y - ref|| / ||ref|| against the fp32 product that a bf16 result may have
CHECK_TOL = 2e-2
GRAPH = "graph"


def graph_us(fn, warmup_ms: int = 25, rep_ms: int = 100, flush: str = "read") -> float:
    """Median device time of fn in microseconds (CUDA-graph replay, L2 flushed: see graph_time_us)."""
    from ..costmodel.profile import graph_time_us

    return graph_time_us(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, flush=flush)


def measure_us(fn, warmup_ms: int = 25, rep_ms: int = 100) -> tuple[float, str]:
    """(median microseconds, how it was timed): 'graph', or 'eager: ...' with the reason the graph
    capture failed. Both flush L2 before every run; the eager one also counts host launch work."""
    from ..costmodel.profile import call_time_us

    return call_time_us(fn, warmup_ms, rep_ms)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in fp32 (ref's norm floored so that an all-zero product is not 0/0)."""
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-6))


def check(y: torch.Tensor, ref: torch.Tensor, tol: float = CHECK_TOL) -> str | None:
    """None if y matches the fp32 reference, else why not."""
    if tuple(y.shape) != tuple(ref.shape):
        return f"output shape {tuple(y.shape)}, expected {tuple(ref.shape)}"
    err = relative_error(y, ref)
    if not math.isfinite(err) or err > tol:
        return f"relative error {err:.3g} against the fp32 product (limit {tol})"
    return None


def checked_us(run, w: torch.Tensor, n: int, gen: torch.Generator, what: str,
               verify: bool = True) -> tuple[float, float]:
    """(cuBLAS us, run's us) of an [n, K] x [M, K]^T product in one process: ``run(x, out)`` is first
    checked against the fp32 product on fresh inputs with its output poisoned with NaN (SystemExit
    naming ``what`` if it is wrong; not with ``verify=False``, for profiling builds whose results are
    wrong), then both are timed by graph_us on other inputs."""
    import torch.nn.functional as F

    m, k = w.shape
    x = torch.randn(n, k, generator=gen, device=w.device).to(w.dtype)
    y = torch.empty(n, m, dtype=w.dtype, device=w.device)
    dense_us = graph_us(lambda: F.linear(x, w))
    xc = torch.randn(n, k, generator=gen, device=w.device).to(w.dtype)
    yc = torch.full((n, m), float("nan"), dtype=w.dtype, device=w.device)
    run(xc, yc)
    bad = check(yc, xc.float() @ w.float().T) if verify else None
    if bad:
        raise SystemExit(f"{what}: {bad}")
    return dense_us, graph_us(lambda: run(x, y))
