"""The kernel grid: speed-up over dense cuBLAS against sparsity, per method, shape and token count N
(the seed's Figure 1).

A case is one weight: a layer shape with a synthetic distribution and sparsity, or a real DLMC
layer at its archive's sparsity. For every case and N each method's result is checked against the
fp32 product before it is timed: a method that raises or fails the check is reported as failed with
the reason and never timed. The dense product and the methods are then timed in a palindrome (dense,
the methods, the methods in reverse, dense), each time the mean of its two: a drift linear in time
cancels out of every ratio. (Timed one after another, the same cuBLAS call read 3-5% slower the
second time on 7-8 us products, so a layer that falls back to dense read 0.95-0.97x.)
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .methods import DEFAULT_METHODS, Method, Prepared, parse_method, prepare, unavailable
from .timing import check, measure_us, reason
from .weights import (ALL_SHAPES, DLMC_LAYERS, SHAPES, SYNTHETIC, dlmc_files, dlmc_shape, dlmc_weight, make_weight,
                      nearest_dlmc, seeded)

FIELDS = ["shape", "M", "K", "N", "sparsity", "weight_sparsity", "distribution", "method", "dtype", "us",
          "dense_us", "speedup_vs_dense", "timing", "status", "weight_bytes", "note", "command"]
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
DEFAULT_NS = (1, 16, 128, 2048)
OK = "ok"
#: rough costs for the dry run's estimate: one graph-timed measurement, and preparing a method
#: (planning, packing, format conversion) per million weight elements
MEASURE_S = 0.3
PREPARE_S_PER_MELEM = 0.05


@dataclass(frozen=True)
class Case:
    """One benchmark weight. For DLMC cases ``shape`` is the DLMC layer name and ``source`` its archive."""

    shape: str
    m: int
    k: int
    distribution: str
    sparsity: float
    source: Path | None = None

    def weight(self, seed: int) -> torch.Tensor:
        gen = seeded(seed, self.shape, self.distribution, self.sparsity)
        if self.distribution == "dlmc":
            return dlmc_weight(self.source, self.shape, gen)
        return make_weight(self.m, self.k, self.sparsity, self.distribution, gen)

    def input(self, n: int, seed: int) -> torch.Tensor:
        gen = seeded(seed, self.shape, self.distribution, self.sparsity, n)
        return torch.randn(n, self.k, generator=gen).to(torch.bfloat16)


@dataclass(frozen=True)
class KernelConfig:
    shapes: tuple[str, ...] = tuple(SHAPES)
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    ns: tuple[int, ...] = DEFAULT_NS
    distributions: tuple[str, ...] = SYNTHETIC
    methods: tuple[Method, ...] = tuple(parse_method(m) for m in DEFAULT_METHODS)
    dlmc: Path | None = None
    dlmc_layers: tuple[str, ...] = tuple(DLMC_LAYERS)
    tile: tuple[int, int] = (64, 64)
    programs_per_sm: int = 6
    seed: int = 0
    cost_model: Path | None = None
    shape_table: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(ALL_SHAPES))


def cases(cfg: KernelConfig) -> list[Case]:
    """Synthetic cases shape by shape (distribution, then sparsity within), then the DLMC cases:
    for each requested sparsity the archive nearest to it, at the archive's own sparsity."""
    out = [Case(name, *cfg.shape_table[name], dist, s) for name in cfg.shapes
           for dist in cfg.distributions if dist != "dlmc" for s in cfg.sparsities]
    if "dlmc" in cfg.distributions:
        if cfg.dlmc is None:
            raise ValueError("distribution dlmc: expected the folder of the DLMC archives (--dlmc DIR)")
        for nominal, path in nearest_dlmc(dlmc_files(cfg.dlmc), cfg.sparsities).items():
            out += [Case(layer, *dlmc_shape(path, layer), "dlmc", nominal, path) for layer in cfg.dlmc_layers]
    return out


def row_key(shape: str, distribution: str, sparsity: float, n: int, method: str) -> tuple:
    return shape, distribution, round(float(sparsity), 6), int(n), method


def done_keys(rows) -> set[tuple]:
    """The keys of rows already measured (any status), for --resume."""
    return {row_key(r["shape"], r["distribution"], r["sparsity"], r["N"], r["method"]) for r in rows}


#: Where a row's own command writes
ROW_OUT = "reports/bench/row"


def in_grid_order(rows, planned) -> list:
    """``rows`` (of a CSV, in any order) sorted as ``planned`` (planned_rows) lists their keys; rows the
    grid does not plan (an earlier part's, run with other --shapes) keep their order before the others."""
    index = {row_key(r["shape"], r["distribution"], r["sparsity"], r["N"], r["method"]): i for i, r in enumerate(planned)}
    at = lambda r: index.get(row_key(r["shape"], r["distribution"], r["sparsity"], r["N"], r["method"]), -1)  # noqa: E731
    return sorted(rows, key=at)


def row_command(cfg: KernelConfig, case: Case, n: int, method: Method) -> str:
    """The command that measures this one row again (same weight and input: both are seeded by
    what they are, not by their place in the grid), into a folder of its own (ROW_OUT), so that it
    does not replace the grid's results."""
    parts = ["cross", "bench", "kernels"]
    if case.distribution == "dlmc":
        parts += ["--distributions", "dlmc", "--dlmc", str(cfg.dlmc), "--dlmc-layers", case.shape]
    else:
        parts += ["--shapes", case.shape, "--distributions", case.distribution]
    parts += ["--sparsities", f"{case.sparsity:g}", "--ns", str(n), "--methods", method.name]
    defaults = KernelConfig()
    if cfg.tile != defaults.tile:
        parts += ["--tile", f"{cfg.tile[0]}x{cfg.tile[1]}"]
    if cfg.programs_per_sm != defaults.programs_per_sm:
        parts += ["--programs-per-sm", str(cfg.programs_per_sm)]
    if cfg.seed != defaults.seed:
        parts += ["--seed", str(cfg.seed)]
    if cfg.cost_model is not None:
        parts += ["--cost-model", str(cfg.cost_model)]
    return shlex.join(parts + ["--out", ROW_OUT])


def _base_row(cfg: KernelConfig, case: Case, n: int, method: Method) -> dict:
    return dict(shape=case.shape, M=case.m, K=case.k, N=n, sparsity=case.sparsity, weight_sparsity="",
                distribution=case.distribution, method=method.name, dtype="", us="", dense_us="",
                speedup_vs_dense="", timing="", status="", weight_bytes="", note="",
                command=row_command(cfg, case, n, method))


def planned_rows(cfg: KernelConfig, all_cases: list[Case] | None = None) -> list[dict]:
    """Every row the grid has (2:4 at 50% only), unmeasured: what --dry-run prints."""
    return [_base_row(cfg, case, n, meth) for case in (all_cases if all_cases is not None else cases(cfg))
            for n in cfg.ns for meth in cfg.methods if meth.applies(case.sparsity)]


def estimate_seconds(cfg: KernelConfig, all_cases: list[Case]) -> float:
    """A rough GPU time for the grid: every timed measurement (each method's row and the dense
    baseline per case and N) and the preparation of every method for every weight."""
    total = 0.0
    for case in all_cases:
        sparse = [m for m in cfg.methods if m.applies(case.sparsity) and m.family != "dense"]
        total += len(cfg.ns) * (len(sparse) + 1) * MEASURE_S + len(sparse) * case.m * case.k / 1e6 * PREPARE_S_PER_MELEM
    return total


HEADER = (f"{'shape':>13} {'M':>6} {'K':>6} {'N':>5} {'sp':>5} {'dist':>10} {'method':>18} {'dtype':>9} "
          f"{'us':>9} {'speedup':>7}  timing / status")


def format_row(row: dict) -> str:
    us = f"{row['us']:9.2f}" if row["us"] != "" else f"{'-':>9}"
    speed = f"{row['speedup_vs_dense']:7.2f}" if row["speedup_vs_dense"] != "" else f"{'-':>7}"
    what = row["timing"] if row["status"] == OK else row["status"]
    return (f"{row['shape']:>13} {row['M']:>6} {row['K']:>6} {row['N']:>5} {row['sparsity']:>5g} "
            f"{row['distribution']:>10} {row['method']:>18} {row['dtype']:>9} {us} {speed}  {what}").rstrip()


def _prepare_or_status(method: Method, w, case: Case, capability, cfg: KernelConfig, cost_model,
                       n_programs) -> Prepared | str:
    why = unavailable(method, case.m, case.k, capability)
    if why:
        return f"unavailable: {why}"
    try:
        return prepare(method, w, tile=cfg.tile, cost_model=cost_model, n_programs=n_programs, seed=cfg.seed)
    except Exception as e:  # a peer library refusing this weight is a result to report, not a crash
        return f"failed: preparing: {reason(e)}"


def run_kernels(cfg: KernelConfig, *, device: torch.device, cost_model=None, n_programs: int | None = None,
                done: Collection[tuple] = (), timer: Callable = measure_us, echo: Callable[[str], None] = print,
                on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure every row of the grid that is not in ``done`` (row_key tuples); returns the rows.
    timer(fn) -> (us, how it was timed); on_row is called with each row as soon as it is measured."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    rows = []
    echo(HEADER)
    for case in cases(cfg):
        todo = {n: [m for m in cfg.methods if m.applies(case.sparsity)
                    and row_key(case.shape, case.distribution, case.sparsity, n, m.name) not in done]
                for n in cfg.ns}
        todo = {n: methods for n, methods in todo.items() if methods}
        if not todo:
            continue
        w = case.weight(cfg.seed).to(device)
        prepared = {m: _prepare_or_status(m, w, case, capability, cfg, cost_model, n_programs)
                    for m in dict.fromkeys(m for methods in todo.values() for m in methods)}
        for n, methods in todo.items():
            x = case.input(n, cfg.seed).to(device)
            refs: dict[int, torch.Tensor] = {}
            n_rows = [_base_row(cfg, case, n, method) for method in methods]
            fns = [_checked_call(row, prepared[method], x, refs) for row, method in zip(n_rows, methods)]
            # the dense row reuses the baseline's time
            timed = [i for i, (row, fn) in enumerate(zip(n_rows, fns)) if fn is not None and row["method"] != "dense"]
            times = palindrome_times([lambda: torch.matmul(x, w.T)] + [fns[i] for i in timed], timer)
            dense = times[0]
            if isinstance(dense, str):
                raise RuntimeError(f"the dense baseline {case.m}x{case.k} at N={n} failed: {dense}")
            by_row = dict(zip(timed, times[1:]))
            for i, row in enumerate(n_rows):
                row["dense_us"] = round(dense[0], 2)
                got = dense if fns[i] is not None and row["method"] == "dense" else by_row.get(i)
                if isinstance(got, str):
                    row["status"] = f"failed: {got}"
                elif got is not None:
                    row.update(us=round(got[0], 2), speedup_vs_dense=round(dense[0] / got[0], 3), timing=got[1],
                               status=OK)
                rows.append(row)
                echo(format_row(row))
                echo(f"    $ {row['command']}")
                if on_row is not None:
                    on_row(row)
    return rows


def palindrome_times(fns: list[Callable], timer: Callable) -> list[tuple[float, str] | str]:
    """Each callable timed twice, in the order given and then in reverse: (mean microseconds, how
    it was timed), or the reason its timing raised (then it is not timed again)."""
    def timed(fn) -> tuple[float, str] | str:
        try:
            return timer(fn)
        except Exception as e:  # any error of a method is its row's result; the grid goes on
            return reason(e)

    out = [timed(fn) for fn in fns]
    for i in reversed(range(len(fns))):
        if not isinstance(out[i], str):
            again = timed(fns[i])
            out[i] = again if isinstance(again, str) else ((out[i][0] + again[0]) / 2, out[i][1])
    return out


def _checked_call(row: dict, p: Prepared | str, x, refs: dict) -> Callable | None:
    """The method's call on x, its result checked against the fp32 product; None (and the row's
    status says why) where it is unavailable, raises or fails the check."""
    if isinstance(p, str):
        row["status"] = p
        return None
    row["weight_sparsity"] = round(p.sparsity, 4)
    try:
        bound = p.bind(x)
        row.update(dtype=str(bound.dtype).removeprefix("torch."), note=bound.note, weight_bytes=bound.weight_bytes)
        if id(p.weight) not in refs:
            refs[id(p.weight)] = x.float() @ p.weight.float().T
        problem = check(bound.fn(), refs[id(p.weight)])
    except Exception as e:  # any error of a method is its row's result; the grid goes on
        problem = reason(e)
    if problem is not None:
        row["status"] = f"failed: {problem}"
        return None
    return bound.fn
