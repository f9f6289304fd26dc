"""Measuring the cost model on the GPU (``cross profile``).

For each tile kind the kernels run (DENSE, BITMAP) and each density, a weight made of that kind only
(11008 x 4096, 11008 tiles of 64 x 64) is timed through the same kernel the runtime uses; its time
less the launch's fixed cost (launch, pipeline fill, epilogue: extrapolated to zero rows from 5504
and 11008 rows) over the number of tiles is the amortised cost of one tile; one work item's latency
is timed on a weight run with many more items per unit. Dense cuBLAS is timed on two shapes to
calibrate the baseline the planner must beat. The row kernel is timed on random weights of three
shapes (two widths) and three densities at one and eight tokens, and its fixed part and per-token
terms fitted to those times (rowfit.fit_row_terms) on the calibrated spec's streaming rate; where it
cannot run or the fit fails, the spec keeps its row terms and the provenance says why. The result is a CostModel
whose tables replace the roofline, saved as JSON with its provenance and found again automatically
for the same device and library versions.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..tiling import TileGrid, TileKind
from .model import CostModel, TileTable
from .roofline import DENSE_REF_COLS, H100, ROW_MAX_K, GPUSpec, block_n_for, plan_kernel_vals_bytes
from .rowfit import RowSample, fit_row_terms, relative_errors

DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
N_TOKENS = (1, 16, 64, 128, 512, 2048)
#: the plan kernels are timed on weights of KERNEL_ROWS x COLS (Llama-2-7B's MLP: the size class where
#: sparse layers pay off, and where a block gets ~14 tiles; per-tile costs measured on smaller weights
#: carry more per-item work per tile and over-predict larger ones by ~9%)
KERNEL_ROWS = 11008
COLS = DENSE_REF_COLS  # 4096: the width the cuBLAS fit is calibrated at
#: cuBLAS is timed on ROWS x COLS weights; its fit (_calibrate_dense) reproduces these two and
#: interpolates between them, so the largest is the largest layer the planner usually sees; and on
#: the largest one's transpose (COLS x KERNEL_ROWS), whose longer rows it runs slower (dense_col_us)
ROWS = (2048, KERNEL_ROWS)
DENSE_SHAPES = ((ROWS[0], COLS), (ROWS[1], COLS), (COLS, KERNEL_ROWS))
#: bytes that evict L2 before every timed run (H100: 50 MB of L2)
FLUSH_BYTES = 256 * 1024 * 1024
#: how L2 is emptied before a timed run: "read" replaces its lines by clean ones (a reduction over
#: FLUSH_BYTES, as a model's previous layers leave it); "write" zero-fills a buffer, as
#: triton.testing.do_bench does, which leaves up to 50 MB of dirty lines that the timed kernel's own
#: reads must first write back to HBM (docs/perf-notes.md: 46.8 us instead of 37.2 for cuBLAS on 11008x4096 at N = 1)
FLUSHES = ("read", "write")
#: how tables are measured (part of a cached table's key, so tables measured another way are measured
#: again): CUDA-graph replays, L2 flushed by a read, plans with units capped at the resident programs,
#: the row kernel's terms fitted (ROW_SHAPES)
PROTOCOL = "read-flush-resident-units-dense-11008-wide-rows"
FIT_DENSITY = 0.3  # the fixed cost: BITMAP weights of this density at KERNEL_ROWS // 2 and KERNEL_ROWS rows
#: the per-item latency: a weight of as many FIT_DENSITY tiles as the KERNEL_ROWS one, two per tile-row,
#: run with every tile its own work item (a tile-row's two on different units, so each item ends in
#: the split-row exchange): ~14 items per unit instead of 1-2, the same tiles per unit
ITEM_TILES_PER_ROW = 2
#: the row kernel's terms (roofline.row_matmul_us) are fitted to its times on random weights of these
#: shapes (rows x columns) and densities, at these token counts: one token gives the fixed part, a
#: pass of eight the per-token terms, per entry (the densities and shapes vary the entries) and per
#: column (the two widths: fitted on 4096 columns alone, the H100's kernel-grid times of the 4096 x
#: 11008 weight at 8 tokens, benchmarks/results/h100/kernels.csv, come out over-predicted by 14-16%,
#: against at most 5% with the wider weight in the fit); the densities are the kernel grid's (50-90%
#: sparsity), where the row format is smaller than the dense weight
ROW_SHAPES = ((KERNEL_ROWS, COLS), (COLS, COLS), (COLS, KERNEL_ROWS))
ROW_DENSITIES = (0.1, 0.3, 0.5)
ROW_TOKENS = (1, 8)


def cache_dir() -> Path:
    """cross's cache folder: ``CROSS_CACHE_DIR`` where set (not empty), else ``~/.cache/cross``. The
    measured cost models are kept in it, and NVRTC's builds in its ``cubin`` folder."""
    given = os.environ.get("CROSS_CACHE_DIR")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "cross"


def provenance(device: torch.device) -> dict:
    """What a measured table depends on: the device, its driver, the libraries and cross itself."""
    import triton

    from .. import __version__

    props = torch.cuda.get_device_properties(device)
    return {"device": torch.cuda.get_device_name(device), "sm": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "driver": _driver_version(),
            "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
            "cross": __version__, "protocol": PROTOCOL}


def _driver_version() -> str:
    try:
        from cuda.bindings import driver

        err, v = driver.cuDriverGetVersion()
        return f"{v // 1000}.{(v % 1000) // 10}" if int(err) == 0 else "unknown"
    except ImportError:
        return "unknown"


def cache_path(device: torch.device) -> Path:
    p = provenance(device)
    key = "-".join(str(p[k]) for k in ("device", "driver", "torch", "triton", "cross", "protocol"))
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return cache_dir() / f"costmodel-{safe}.json"


def cached_model(device: torch.device | None = None) -> CostModel | None:
    """The measured model for this device and these library versions, if ``cross profile`` made one."""
    if not torch.cuda.is_available():
        return None
    device = device or torch.device("cuda", torch.cuda.current_device())
    path = cache_path(device)
    return CostModel.load(path) if path.is_file() else None


def graph_time_us(fn, warmup_ms: int = 10, rep_ms: int = 40, flush: str = "read") -> float:
    """Median device time of fn in microseconds: fn is captured in a CUDA graph and the graph replayed,
    with L2 flushed (``flush``) before every replay, so host-side launch work (Python, argument
    handling) is not counted. Used by ``cross profile`` and the benchmarks."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_time_us(graph.replay, warmup_ms, rep_ms, flush)


def call_time_us(fn, warmup_ms: int = 10, rep_ms: int = 40) -> tuple[float, str]:
    """(median microseconds, how it was timed): 'graph' (graph_time_us), or 'eager: ...' with the
    reason the capture failed (replay_time_us of the call itself, host launch work included). Both
    flush L2 by a read before every run."""
    stream = torch.cuda.current_stream()
    try:
        return graph_time_us(fn, warmup_ms, rep_ms), "graph"
    except Exception as e:  # libraries raise their own error types when a call refuses capture
        torch.cuda.set_stream(stream)  # a capture that fails to end leaves its side stream current
        torch.cuda.synchronize()
        return replay_time_us(fn, warmup_ms, rep_ms), f"eager: graph capture failed ({reason(e)})"


def reason(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.lru_cache(maxsize=None)
def _flush_buffer(device_index: int) -> torch.Tensor:
    return torch.zeros(FLUSH_BYTES // 4, dtype=torch.int32, device=torch.device("cuda", device_index))


def replay_time_us(run, warmup_ms: int = 10, rep_ms: int = 40, flush: str = "read") -> float:
    """Median time of run() in microseconds between CUDA events, L2 flushed before each run (the
    protocol of triton.testing.do_bench, with the flush chosen: see FLUSHES)."""
    if flush not in FLUSHES:
        raise ValueError(f"flush: expected one of {FLUSHES}, got {flush!r}")
    buf = _flush_buffer(torch.cuda.current_device())
    clear = buf.zero_ if flush == "write" else buf.sum

    def timed(count: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, end in events:
            clear()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    run()
    torch.cuda.synchronize()
    # the number of runs is set by the time of a flush and a run together, as do_bench sets it
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        clear()
        run()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        run()
    return float(np.median(timed(max(1, int(rep_ms / estimate_ms))))) * 1e3


def measure(device: torch.device | None = None, tile_shape=(64, 64), densities=DENSITIES, n_tokens=N_TOKENS,
            backend: str | None = None, progress: bool = True, seed: int = 0) -> CostModel:
    """Time the plan kernels and cuBLAS on this GPU and return the measured CostModel."""
    from tqdm.auto import tqdm

    from ..kernels.launch import kernel_args, launch
    from ..pack import pack
    from ..partition import make_plan

    if not torch.cuda.is_available():
        raise RuntimeError("cross profile: expected a CUDA GPU, found none (planning on a CPU uses the roofline model)")
    device = device or torch.device("cuda", torch.cuda.current_device())
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    spec = replace(H100, name=torch.cuda.get_device_name(device), n_units=n_sm)
    gen = torch.Generator().manual_seed(seed)
    kinds = (TileKind.DENSE, TileKind.BITMAP)
    jobs = [(kind, d) for kind in kinds for d in (densities if kind == TileKind.BITMAP else (1.0,))]
    per_tile = {k: np.zeros((len(n_tokens), len(densities))) for k in kinds}
    fit_runs = 1 if FIT_DENSITY in densities else 2
    row_runs = len(ROW_SHAPES) * len(ROW_DENSITIES) * len(ROW_TOKENS)
    bar = tqdm(total=(len(jobs) + fit_runs + 2 + len(DENSE_SHAPES)) * len(n_tokens) + 1 + row_runs,
               desc="cross profile", disable=None if progress else True)  # a bar where stderr is a terminal

    def plan_of(w, kind, programs=spec.n_programs):
        return make_plan(w, tile_shape=tile_shape, allowed_kinds=(kind,), n_programs=programs,
                         cost_model=CostModel(spec=spec))

    def time_packed(packed, n, vals_bytes=None):
        x = torch.randn(n, packed.shape[1], generator=gen).to(torch.bfloat16).to(device)
        args = kernel_args(packed, packed.bucket_for(n), backend)
        if vals_bytes is not None:
            args = args._replace(vals_bytes=vals_bytes)
        t = graph_time_us(lambda: launch(x, args))
        bar.update()
        return t, args.backend

    def timed(w, kind):
        plan = plan_of(w, kind)
        packed = pack(w, plan)
        return np.array([time_packed(packed, n)[0] for n in n_tokens]), int(plan.tile_ptr[-1])

    def weight(rows, d, cols=COLS):
        return random_weight(rows, cols, d, gen, device)

    rows = KERNEL_ROWS
    measured, nnz = {}, {}
    for kind, d in jobs:
        w = weight(rows, d)
        measured[(kind, d)] = timed(w, kind)
        nnz[(kind, d)] = TileGrid.for_weight(w, tile_shape).tile_nnz(w)
    # the fixed cost (launch, a block's first loads, the split-row exchanges) is where the time of a
    # BITMAP weight extrapolates to at zero rows, from KERNEL_ROWS // 2 and KERNEL_ROWS rows: a weight of
    # a single tile-row instead splits that row over every program and times its exchange, not the
    # fixed cost of a full weight. The N = 1 value is used at every N: at large N a weight's token
    # tiles, not its fixed cost, decide the time.
    half, _ = timed(weight(rows // 2, FIT_DENSITY), TileKind.BITMAP)
    if FIT_DENSITY in densities:
        full, _ = measured[(TileKind.BITMAP, FIT_DENSITY)]
    else:
        full, _ = timed(weight(rows, FIT_DENSITY), TileKind.BITMAP)
    fixed = np.maximum(2 * half - full, 0.0)
    # the latency of one work item at every N (per item and token tile: the time difference over the
    # extra items on the busiest unit and over the token tiles), and sparse tiles in the kernel
    # variant that stages whole tiles (what a plan with DENSE tiles runs) at N = 1, both against the
    # KERNEL_ROWS weight
    base_w = weight(rows, FIT_DENSITY)
    base_plan = plan_of(base_w, TileKind.BITMAP)
    base_packed = pack(base_w, base_plan)
    split_w = weight(KERNEL_ROWS * COLS // (tile_shape[1] * ITEM_TILES_PER_ROW), FIT_DENSITY,
                     cols=tile_shape[1] * ITEM_TILES_PER_ROW)
    split_plan = one_tile_items(plan_of(split_w, TileKind.BITMAP))
    split_packed = pack(split_w, split_plan)
    item_rows = []
    for n in n_tokens:
        base_us, used_backend = time_packed(base_packed, n)
        split_us, _ = time_packed(split_packed, n)
        extra = max_items_per_unit(split_packed.bucket_for(n).plan) - max_items_per_unit(base_packed.bucket_for(n).plan)
        token_tiles = -(-n // block_n_for(n))
        item_rows.append((n, base_us, split_us, extra, max(0.0, (split_us - base_us) / max(extra, 1) / token_tiles)))
    item_us = item_rows[0][4]
    base_us = item_rows[0][1]
    mixed_scale = 1.0
    if used_backend == "cuda":  # the Triton kernels stage tiles the same way with or without DENSE ones
        whole = plan_kernel_vals_bytes(tile_shape, True, 0)
        programs = spec.resident_programs(tile_shape, block_n_for(1), whole)
        mixed_us, _ = time_packed(pack(base_w, plan_of(base_w, TileKind.BITMAP, programs)), 1, vals_bytes=whole)
        if base_us > fixed[0]:
            mixed_scale = max(1.0, (mixed_us - fixed[0]) / (base_us - fixed[0]))
    else:
        bar.update()
    item_table = tuple((float(r[0]), float(r[4])) for r in item_rows)
    for (kind, d), (times, n_tiles) in measured.items():
        cost = np.maximum(times - fixed[0], 0.0) / n_tiles
        cols = range(len(densities)) if kind == TileKind.DENSE else [list(densities).index(d)]
        for c in cols:
            per_tile[kind][:, c] = cost
    dense_times = np.zeros((len(DENSE_SHAPES), len(n_tokens)))
    for r, (rows, cols) in enumerate(DENSE_SHAPES):
        w = torch.randn(rows, cols, generator=gen).to(torch.bfloat16).to(device)
        for j, n in enumerate(n_tokens):
            x = torch.randn(n, cols, generator=gen).to(torch.bfloat16).to(device)
            dense_times[r, j] = graph_time_us(lambda: torch.matmul(x, w.T))
            bar.update()
    spec = _calibrate_dense(spec, dense_times, n_tokens)
    # the row kernel's streaming term is the calibrated dense product's rate: its terms are fitted on it
    spec, row_fit = _row_terms(spec, row_timer(device, gen, bar.update))
    bar.close()
    spec = replace(spec, launch_us=float(fixed[0]), item_us=float(item_us), mixed_sparse_scale=float(mixed_scale))
    tables = tuple(TileTable(k, tile_shape, np.array(densities), np.array(n_tokens, dtype=float), per_tile[k]) for k in kinds)
    # the planner composes tile costs into a weight's time through its units (the slowest unit's
    # load, tiles of slightly different densities): scale each kind's costs per N so that the
    # planner's own prediction for a measured weight equals its measured time
    unscaled = CostModel(spec, tables, item_us_by_tokens=item_table)
    for kind in kinds:
        d = FIT_DENSITY if kind == TileKind.BITMAP else 1.0
        if (kind, d) in measured:
            scale = _composition_scale(unscaled, nnz[(kind, d)], (KERNEL_ROWS, COLS), kind, tile_shape, n_tokens,
                                       measured[(kind, d)][0] - fixed[0], spec.n_programs)
            per_tile[kind] = per_tile[kind] * scale[:, None]
    tables = tuple(TileTable(k, tile_shape, np.array(densities), np.array(n_tokens, dtype=float), per_tile[k]) for k in kinds)
    prov = provenance(device)
    prov["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    prov["method"] = (f"(({KERNEL_ROWS}x{COLS} weight of one tile kind) - fixed) over its tiles; fixed = "
                      f"2 T({KERNEL_ROWS // 2} rows) - T({KERNEL_ROWS} rows) of BITMAP weights of density {FIT_DENSITY}; "
                      f"CUDA-graph replay, L2 flushed, backend {backend or 'default'}")
    prov["fixed_us"] = dict(zip(map(str, n_tokens), np.round(fixed, 2).tolist()))
    prov["item_latency"] = {"weight": f"{split_w.shape[0]}x{split_w.shape[1]}",
                            "by_tokens": [{"n": n, "base_us": round(b, 2), "one_tile_items_us": round(t, 2),
                                           "extra_items_per_unit": int(e), "item_us": round(u, 3)}
                                          for n, b, t, e, u in item_rows]}
    if used_backend == "cuda":
        prov["mixed_variant"] = {"vals_bytes": whole, "programs": programs, "us": round(mixed_us, 2),
                                 "scale": round(mixed_scale, 3)}
    prov["dense_us"] = {f"{rows}x{cols}": dict(zip(map(str, n_tokens), np.round(dense_times[r], 2).tolist()))
                        for r, (rows, cols) in enumerate(DENSE_SHAPES)}
    prov["row_fit"] = row_fit
    return CostModel(spec, tables, prov, item_table)


def random_weight(rows: int, cols: int, density: float, gen: torch.Generator, device) -> torch.Tensor:
    """A bf16 rows x cols weight on ``device`` whose elements are kept with probability ``density``
    (normal values; drawn on the CPU from ``gen``, so a seed gives the same weight on every GPU)."""
    keep = torch.rand(rows, cols, generator=gen) < density
    return (torch.randn(rows, cols, generator=gen) * keep).to(torch.bfloat16).to(device)


def row_timer(device: torch.device, gen: torch.Generator, done=lambda: None):
    """The row kernel's timer for _row_terms on ``device``: time_weight(rows, cols, density, tokens)
    makes a random_weight, its row format (pack.rows.RowWeight) and launch arguments as the runtime
    does, and returns (its nonzeros, graph_time_us of row_launch at each of ``tokens``), calling
    ``done`` after each timing. Raises where the row kernel cannot run the weight on the device, with
    the stream it found current made current again (a capture that fails to end leaves its side
    stream current)."""
    from ..kernels.launch import row_args, row_kernel_eligible, row_launch
    from ..pack.rows import RowWeight

    def time_weight(rows: int, cols: int, density: float, tokens) -> tuple[int, list[float]]:
        if not row_kernel_eligible((rows, cols), torch.bfloat16, device):
            raise RuntimeError(f"the row kernel cannot run a {rows}x{cols} bfloat16 weight on {device}: it needs "
                               f"an sm_80+ GPU with cuda-python, K % 8 == 0 and K <= {ROW_MAX_K}")
        stream = torch.cuda.current_stream(device)
        try:
            fmt = RowWeight.from_dense(random_weight(rows, cols, density, gen, device))
            args = row_args(fmt)
            times = []
            for n in tokens:
                x = torch.randn(n, cols, generator=gen).to(torch.bfloat16).to(device)
                times.append(graph_time_us(lambda: row_launch(x, args)))
                done()
        except Exception:
            torch.cuda.set_stream(stream)
            raise
        return fmt.nnz, times

    return time_weight


def _row_terms(spec: GPUSpec, time_weight, shapes=ROW_SHAPES, densities=ROW_DENSITIES,
               tokens=ROW_TOKENS) -> tuple[GPUSpec, dict]:
    """The spec with the row kernel's fixed part and per-token terms fitted (rowfit.fit_row_terms) to
    its times on weights of ``shapes`` x ``densities`` at each of ``tokens`` tokens, and the
    provenance entry ``row_fit``: the samples, the fit's median and largest error, the method, and
    each weight's times and fitted predictions. Each weight's entries are estimated from its nonzeros
    (RowSample.from_nnz), as the planner's prediction estimates them, so the terms fit what the
    planner predicts with. ``time_weight(rows, cols, density, tokens)`` -> (the weight's nonzeros, its
    microseconds at each of ``tokens``): row_timer on a GPU. Where the timer raises (the row kernel
    cannot run here) or the fit does (the times do not determine the terms), the spec comes back
    unchanged and the entry is ``{"skipped": reason}``: the rest of the profile stands without them."""
    tokens = tuple(tokens)
    try:
        samples, weights = [], []
        for rows, cols in shapes:
            for d in densities:
                nnz, times = time_weight(rows, cols, d, tokens)
                samples += [RowSample.from_nnz(rows, cols, nnz, n, us) for n, us in zip(tokens, times, strict=True)]
                weights.append({"shape": f"{rows}x{cols}", "density": d, "nnz": int(nnz)})
        fitted, report = fit_row_terms(spec, samples)
    except Exception as e:  # the kernel's build and launch raise their own error types
        return spec, {"skipped": reason(e)}
    for i, w in enumerate(weights):
        runs = report[i * len(tokens):(i + 1) * len(tokens)]
        w["us"] = {str(r["n_tokens"]): round(r["us"], 2) for r in runs}
        w["predicted_us"] = {str(r["n_tokens"]): round(r["after"], 2) for r in runs}
    errors = relative_errors(report)
    return fitted, {"samples": len(samples), "median_error": round(float(np.median(errors)), 4),
                    "max_error": round(float(errors.max()), 4),
                    "method": (f"row kernel on random bf16 weights {', '.join(f'{r}x{c}' for r, c in shapes)} of "
                               f"densities {', '.join(map(str, densities))} at {', '.join(map(str, tokens))} "
                               "tokens, CUDA-graph replay, L2 flushed; row_launch_us, row_token_col_ns and "
                               "row_token_entry_ps fitted by least squares (rowfit.fit_row_terms) to the times "
                               "less the streaming term at the calibrated dense rate, entries estimated from "
                               "the nonzeros (row_entries)"),
                    "by_weight": weights}


def max_items_per_unit(bucket) -> int:
    return int(np.diff(bucket.unit_ptr).max()) if bucket.n_units else 0


def one_tile_items(plan):
    """The plan with every bucket's work list replaced: every executed tile is its own work item,
    the k-th tiles of all tile-rows on the k-th group of units (each group an equal share of the
    units, rows in order), so each tile-row is split over different units and every item ends in
    the split-row exchange, while each unit keeps about the same number of tiles."""
    from ..partition.balance import alternate_order
    from ..partition.plan import BucketPlan

    per_row = np.diff(plan.tile_ptr)
    width = int(per_row.max()) if per_row.size else 0
    if width < 2 or np.any(per_row != width):
        raise ValueError(f"one_tile_items: expected every tile-row to have the same number (>= 2) of tiles, got {sorted(set(per_row.tolist()))}")
    n_rows = per_row.size
    pos = np.arange(int(plan.tile_ptr[-1]))
    row, k = pos // width, pos % width
    buckets = []
    for b in plan.buckets:
        group = b.n_units // width
        if group < 1:
            raise ValueError(f"one_tile_items: expected at least {width} units, got {b.n_units}")
        unit = k * group + row * group // n_rows
        order = np.argsort(unit, kind="stable")
        unit_ptr = np.concatenate([[0], np.cumsum(np.bincount(unit, minlength=group * width))])
        loads = np.diff(unit_ptr).astype(np.float64)
        buckets.append(BucketPlan(b.n_min, b.n_max, b.n_design, b.block_n, False, np.stack([row, pos, pos + 1], axis=1)[order],
                                  unit_ptr, alternate_order(loads, alternate=False), loads, b.predicted_us, b.dense_us))
    return replace(plan, buckets=tuple(buckets))


def _composition_scale(model: CostModel, nnz: np.ndarray, shape, kind, tile_shape, n_tokens, measured_us,
                       n_programs: int) -> np.ndarray:
    """Per N: (measured - fixed) over what the planner predicts above the fixed cost for this weight
    on the tile kernel (the row kernel left out: its prediction is not what was measured)."""
    from ..partition import make_plan

    scale = np.ones(len(n_tokens))
    for j, n in enumerate(n_tokens):
        plan = make_plan(nnz=nnz, shape=shape, dtype="bfloat16", tile_shape=tile_shape, cost_model=model,
                         allowed_kinds=(kind,), buckets=((1, int(n)),), n_programs=n_programs, row_kernel=False)
        predicted = plan.buckets[0].predicted_us - model.spec.launch_us
        if predicted > 0 and measured_us[j] > 0:
            scale[j] = measured_us[j] / predicted
    return scale


def _calibrate_dense(spec: GPUSpec, times: np.ndarray, n_tokens) -> GPUSpec:
    """Fit cuBLAS's launch cost, its weight-streaming efficiency (small N) and tensor-core efficiency
    (large N) to the measured times of the two weight sizes of DENSE_SHAPES (rows x COLS), and its
    extra time per column past COLS to the third (the larger one's transpose: the same bytes in rows
    of KERNEL_ROWS columns), at the smallest N. The streaming efficiency is relative to
    ``spec.bandwidth`` (a copy's read + write rate) and is not capped at 1: cuBLAS only reads, and
    an H200 streams a weight at ~1.7x the H100 spec's 3.0 TB/s. Capped at 1 (as before), the fit
    missed its own calibration points: on an H200 it predicted 39.3 us for 11008x4096 at N = 1, which
    cuBLAS ran in 26.7, and every sparse plan looked like a win. ``times``: [shape, N]."""
    (small, _), (large, _), (_, wide) = DENSE_SHAPES
    bytes_diff = (large - small) * COLS * 2
    j1 = 0
    slope_bw = (times[1, j1] - times[0, j1]) * 1e-6 / bytes_diff  # s per byte at the smallest N
    bw_eff = 1.0 / (slope_bw * spec.bandwidth) if slope_bw > 0 else spec.dense_bandwidth_efficiency
    launch = max(0.0, times[0, j1] - small * COLS * 2 * slope_bw * 1e6)
    col_us = max(0.0, (times[2, j1] - times[1, j1]) / (wide - COLS))
    jn = len(n_tokens) - 1
    flops_diff = 2.0 * (large - small) * COLS * n_tokens[jn]
    slope_fl = (times[1, jn] - times[0, jn]) * 1e-6 / flops_diff
    tc_eff = 1.0 / (slope_fl * spec.tensor_flops) if slope_fl > 0 else spec.dense_tensor_efficiency
    return replace(spec, dense_bandwidth_efficiency=float(bw_eff), dense_tensor_efficiency=float(min(tc_eff, 1.5)),
                   dense_launch_us=float(launch), dense_col_us=float(col_us))


def profile(force: bool = False, progress: bool = True, **kwargs) -> tuple[CostModel, Path, bool]:
    """The measured model for this GPU: from the cache unless ``force``; measured and saved otherwise.
    Returns (model, path, measured_now)."""
    device = torch.device("cuda", torch.cuda.current_device())
    path = cache_path(device)
    if path.is_file() and not force:
        return CostModel.load(path), path, False
    model = measure(device, progress=progress, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, path, True


def describe(model: CostModel) -> str:
    return json.dumps({"source": model.source, **{k: model.provenance.get(k) for k in ("device", "driver", "torch", "triton")}})
