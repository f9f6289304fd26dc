"""make_plan: from a weight's tile counts and a cost model to an executable, balanced Plan."""

from __future__ import annotations

import datetime
import math

import numpy as np
import torch

from .._checks import check_plan_tile_shape, check_weight, dtype_name
from ..costmodel import CostModel, block_n_for, default_cost_model
from ..costmodel.roofline import (ROW_MAX_TOKENS, SLICE_MAX_TOKENS, WGMMA_BLOCK_ROWS, WGMMA_CHUNK, WGMMA_MAX_TOKENS,
                                  plan_kernel_vals_bytes, row_entries, row_format_bytes, row_kernel_fits, slice_format,
                                  slice_kernel_fits, wgmma24_compressed_bytes, wgmma24_format_bytes,
                                  wgmma24_kernel_fits)
from ..tiling import TileGrid, TileKind
from .balance import (alternate_order, chunk_by_cost, convert_swing, equal_count_chunks, items_from_chunks,
                      simulate_makespan, split_units, tile_list)
from .classify import DEFAULT_KINDS, Classification, classify
from .plan import KERNEL_NAMES, BucketPlan, Plan

#: Token-count buckets: one-token decode, two, three or four, five to eight tokens (the row
#: kernel's widths where it wins), small batches, a full token tile, prefill chunks, long
#: prefill. The first bucket's token count also picks the tile kinds every bucket shares.
DEFAULT_BUCKETS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 64), (65, 128), (129, 512), (513, 2**31 - 1))
#: A plan must be predicted this much faster than dense, or the bucket runs the dense product.
WIN_MARGIN = 0.03
#: A bucket whose row kernel is predicted short of WIN_MARGIN but at most this much slower than
#: dense, over a row format of fewer bytes than the dense weight, is a near win: it falls back, with
#: its plan on the row kernel, and the measured check (runtime.measure_plan) times it, because the
#: prediction's error at 5-16 tokens (5-10% on the H200) is as large as the gap: measured, the row
#: kernel ran 1.08-1.12x of cuBLAS at 6-8 tokens and 70% on 4096x4096, predicted 1.00x.
NEAR_MARGIN = 0.05
#: A bucket the row kernel runs has the tile kernel as its alternative (the measured check times both)
#: where the tile kernel is predicted to win too and within this fraction of the row kernel's
#: prediction: the row kernel's prediction errs by up to 15% on the H100 after its fit
#: (benchmarks/fit_row_costs.py), more where it extrapolates to two passes at 9-16 tokens.
ALT_MARGIN = 0.2
#: The slice kernel (kernels/slice_mma.cu, up to 16 tokens, sm_90+) has no cost model: a bucket of at
#: most SLICE_MAX_TOKENS tokens that the prediction gives the tile kernel (or the dense product after
#: it), of a weight whose slice format (pairs or elements, the smaller larger floor: roofline.slice_format)
#: is expected to cost at most this fraction of the dense bytes (its bound at the streaming rate:
#: 1.5x), becomes the slice kernel's candidate, with the standing of a near win: it falls back until
#: the measured check times it faster than dense. Buckets the row kernel wins or nearly wins keep it.
SLICE_MAX_BYTES = 2 / 3
#: Whether make_plan offers buckets to the slice kernel by default (``slice_kernel``): off until it is
#: measured to win (docs/perf-notes.md).
SLICE_KERNEL_DEFAULT = False
#: The warpgroup 2:4 kernel (kernels/wgmma24.cu, sm_90a) has no cost model either: with
#: ``wgmma_kernel``, a bucket of at most WGMMA_MAX_TOKENS tokens that the prediction gives the tile
#: kernel (or the dense product after it; the row kernel's wins and near wins stay), of a weight
#: whose 2:4 format costs at most this fraction of the dense bytes (roofline.wgmma24_format_bytes),
#: becomes its candidate with the standing of a near win: it falls back until the measured check
#: times it faster than dense.
#: The overflow runs as a second sparse mma (no instruction per entry), so the bytes are its cost:
#: 0.8 is uniform sparsity from 50% (the word slots of the fullest chunk counted: 0.78 of dense in the
#: slots layout, 0.75 compressed; 45% is 0.81, not offered). At 50% and 8-16 tokens the kernel, forced,
#: timed 1.07-1.22x cuBLAS where the tile kernel gave 1.00-1.09x (H100, docs/perf-notes.md, "The
#: warpgroup 2:4 kernel at 50%").
WGMMA_MAX_BYTES = 0.8
#: The warpgroup 2:4 format's layouts (``wgmma_layout``; pack/wgmma24.py: 'lone' is the compressed layout
#: with lone halves), and 'auto': the measured check times two and keeps the faster for each weight
#: (runtime.measure_plan)
WGMMA_LAYOUTS = ("slots", "compressed", "lone", "auto")
#: With 'auto' the layouts' contest runs only where the slots layout's bytes are at most this many times the
#: compressed layout's (uniform sparsity: 1.04 at 50%, 1.09 at 60%, 1.16 at 65%, 1.23 at 70%); elsewhere
#: make_plan takes the compressed layout without timing both. Measured on the H100 (16 tokens, both layouts
#: forced), slots won only at 50-60% on 11008-row weights (30.4 against 32.5 us at 50%, 29.1 against 29.8
#: at 60%) and never at 70% and above since STREAM's launches (docs/perf-notes.md, "The warpgroup 2:4
#: kernel at 50%, forced").
LAYOUT_CONTEST_BYTES = 1.1
#: make_plan's ``wgmma_layout`` unless given: 'auto', so the contest runs where the layouts' bytes are close
#: (LAYOUT_CONTEST_BYTES: uniform sparsity up to ~60%) and the compressed layout is taken elsewhere. At 70
#: and 90% 'auto' (then a contest everywhere) kept the compressed layout for every layer of the
#: Llama-2-7B-shaped decoder, the same decode times as 'compressed' alone in 95 s of sparsify_ against
#: 175-181 s (benchmarks/results/h100/defaults_grid/). At 50% the contest kept slots for its 12288x4096,
#: 4096x4096 and 4096x11008 weights (1-3.5% faster alone at 3-16 tokens) and compressed for 22016x4096:
#: batch 8 / 16 7.13 / 7.74 ms against 7.23 / 7.83 with 'compressed', sparsify_ 217 s against 109 s, and
#: 112 s where sparsify_ takes a weight kind's settled layout without a contest (nn/sparsify.LAYOUT_SETTLED)
#: (benchmarks/results/h100/layout_half/).
WGMMA_LAYOUT_DEFAULT = "auto"
#: The compressed form that 'auto' takes: the slots layout's rival in the measured check's contest and the
#: layout taken where no contest runs. 'compressed': lone halves ('lone', 0.69 / 0.46 / 0.23 of dense at 50 / 70
#: / 90% against 0.72 / 0.52 / 0.27) timed on the H100 at 16 tokens were no faster at 50%, 3-4% faster at 70% on
#: 11008-wide weights (slower on 4096x4096) and 4-9% slower at 90%: their chain's instructions are on the path
#: (docs/perf-notes.md, "Lone halves and 128 tokens, measured (H100)").
AUTO_COMPRESSED = "compressed"
#: Whether make_plan offers buckets to the warpgroup 2:4 kernel by default (``wgmma_kernel``): off, as
#: its candidates have no cost model and fall back until a GPU times them; SparseLinear.from_dense and
#: sparsify_ offer them by default where the measured check will time them (``wgmma_kernel='auto'``,
#: nn/linear.py WGMMA_KERNEL).
WGMMA_KERNEL_DEFAULT = False
BALANCE_MODES = ("none", "intra", "full")
UNIT_MODES = ("split", "mixed")


def is_near_win(bucket: BucketPlan) -> bool:
    """The bucket falls back on the prediction, but its plan is the row kernel predicted within
    NEAR_MARGIN of dense, or the slice or warpgroup 2:4 kernel (a candidate: no cost model), or it
    has alternatives: the measured check times it (a plan predicted to win is always timed)."""
    if not bucket.fallback or bucket.measured:
        return False
    return bucket.kernel in ("slices", "wgmma24") or bool(bucket.alternatives) or (
        bucket.kernel == "rows" and bucket.predicted_us <= bucket.dense_us * (1 + NEAR_MARGIN))


def design_tokens(n_min: int, n_max: int) -> int:
    """The token count a bucket's costs are predicted at: its top, or 2048 for an open-ended bucket."""
    return n_max if n_max <= 8192 else max(n_min, 2048)


def _per_chunk(weight: torch.Tensor, count) -> np.ndarray:
    """``count`` (of each group of 4 consecutive columns' nonzeros, -0.0 a zero and NaN a nonzero; an
    int64 tensor per group) summed per row block of WGMMA_BLOCK_ROWS and chunk of WGMMA_CHUNK columns
    of the weight padded to whole ones (int64 [row blocks, chunks])."""
    m, k = weight.shape
    rows, cols = -(-m // WGMMA_BLOCK_ROWS) * WGMMA_BLOCK_ROWS, -(-k // WGMMA_CHUNK) * WGMMA_CHUNK
    nz = torch.nn.functional.pad(weight != 0, (0, cols - k, 0, rows - m)).view(rows, -1, 4).sum(-1, dtype=torch.int64)
    per = count(nz).view(rows // WGMMA_BLOCK_ROWS, WGMMA_BLOCK_ROWS, -1, WGMMA_CHUNK // 4)
    return per.sum((1, 3), dtype=torch.int64).cpu().numpy()


def overflow_groups(weight: torch.Tensor) -> np.ndarray:
    """A weight's groups of 4 consecutive columns holding more than two nonzeros (each one overflow
    word of the warpgroup 2:4 format, pack/wgmma24.py) per row block and chunk (``_per_chunk``)."""
    return _per_chunk(weight, lambda nz: (nz > 2).to(torch.int64))


def _wgmma24_bytes(layout: str, weight: torch.Tensor | None, nnz, size, grid: TileGrid) -> int:
    """The warpgroup 2:4 format's bytes in ``layout`` ('slots' or 'compressed'): counted on the weight where
    there is one (tile counts cannot tell a 2:4 weight from a uniform one), else expected from the tile
    counts."""
    if layout == "compressed":
        return wgmma24_compressed_bytes(nnz, size, grid.rows, grid.cols,
                                        chunk_words=None if weight is None else chunk_words(weight))
    return wgmma24_format_bytes(nnz, size, grid.rows, grid.cols,
                                chunk_groups=None if weight is None else overflow_groups(weight))


def contest_layout(slots_bytes: int, compressed_bytes: int) -> str:
    """'auto' where the warpgroup 2:4 format's slots layout takes at most LAYOUT_CONTEST_BYTES times the
    compressed layout's bytes (the measured check then times it against AUTO_COMPRESSED), else
    AUTO_COMPRESSED."""
    return "auto" if slots_bytes <= LAYOUT_CONTEST_BYTES * compressed_bytes else AUTO_COMPRESSED


def chunk_words(weight: torch.Tensor) -> np.ndarray:
    """A weight's words in the warpgroup 2:4 compressed layout per row block and chunk (``_per_chunk``):
    a word per group of 4 with a nonzero, one more per group with more than two."""
    return _per_chunk(weight, lambda nz: (nz > 0).to(torch.int64) + (nz > 2).to(torch.int64))


def check_buckets(buckets) -> tuple[tuple[int, int], ...]:
    """``buckets`` as (n_min, n_max) pairs of ints; contiguous token ranges from 1, or a ValueError."""
    out = tuple((int(a), int(b)) for a, b in buckets)
    if not out:
        raise ValueError("buckets: expected at least one token range, e.g. ((1, 2**31 - 1),), got none")
    prev = 0
    for a, b in out:
        if a != prev + 1 or b < a:
            raise ValueError(f"buckets: expected contiguous token ranges from 1, got {out}")
        prev = b
    return out


def _best_chunks(pos, rows, tile_cost, n_chunks, item_us):
    """Chunks of one stream with the smallest largest load, work items included.

    Cutting by tile cost alone ignores the items: a chunk spanning a tile-row boundary pays one
    more, and where an item costs as much as a few tiles that can make the cost cut worse than
    equal counts. So three cuts are tried (by tile cost, by tile cost with an item charged to each
    tile-row's first tile, by count) and the one whose heaviest unit is lightest is kept.
    """
    costs = tile_cost[pos]
    row_start = np.r_[True, rows[1:] != rows[:-1]] if pos.size else np.zeros(0, dtype=bool)
    run_cost = np.concatenate([[0.0], np.cumsum(tile_cost)])
    candidates = (chunk_by_cost(costs, n_chunks), chunk_by_cost(costs + item_us * row_start, n_chunks),
                  equal_count_chunks(pos.size, n_chunks))

    def largest_load(chunk):
        items, unit = items_from_chunks(pos, rows, chunk)
        loads = np.bincount(unit, run_cost[items[:, 2]] - run_cost[items[:, 1]] + item_us, minlength=n_chunks)
        return loads.max() if loads.size else 0.0

    return min(candidates, key=largest_load)


def item_cost(cm: CostModel, n_tokens: int, token_tiles: int, resident: int) -> float:
    """What one work item adds to its unit's load: the item's latency on its program at
    ``n_tokens`` (``cm.item_latency``, a wall time per token tile) in the amortised units of the
    tile costs, whose sum over a unit times the resident programs is that unit's wall time. A
    unit's first item is not charged: the fixed cost (``cm.launch_us``) holds one per program."""
    return cm.item_latency(n_tokens) * token_tiles / max(1, resident)


def _map_bucket(tile_ptr, tile_kind, tile_cost, n_units, unit_mode, balance, item_us):
    """Work items and units for one bucket. Returns (items [W,3], unit_ptr, unit_loads, interleave).

    item_us: the load one work item adds (item_cost); a unit's first item is not charged."""
    n_rows = tile_ptr.size - 1
    n_t = tile_kind.size
    rows = np.repeat(np.arange(n_rows), np.diff(tile_ptr))
    positions = np.arange(n_t)
    if unit_mode == "split" and n_units >= 2:  # one unit cannot be split: it runs everything
        dense = tile_kind == TileKind.DENSE
        streams = [positions[dense], positions[~dense]]
        if balance == "none":
            nd = int(dense.sum())
            ud = 0 if nd == 0 else (n_units if nd == n_t else min(n_units - 1, max(1, round(n_units * nd / n_t))))
            units = (ud, n_units - ud)
        else:
            # a stream has at least one item per tile-row it has tiles in: a few sparse tiles
            # scattered over many tile-rows are many items, which need more units than their tiles' cost
            loads = [float(tile_cost[sel].sum()) + item_us * np.unique(rows[sel]).size for sel in (dense, ~dense)]
            units = split_units(tuple(loads), n_units)
    else:
        streams = [positions]
        units = (n_units,)
    all_items, all_units, used, offset = [], [], [], 0
    for pos, nu in zip(streams, units):
        if pos.size and nu == 0:  # a stream with work but no unit: give it one
            nu = 1
        if nu == 0:
            continue
        used.append(nu)
        chunk = equal_count_chunks(pos.size, nu) if balance == "none" else _best_chunks(pos, rows[pos], tile_cost, nu, item_us)
        items, unit = items_from_chunks(pos, rows[pos], chunk)
        all_items.append(items)
        all_units.append(unit + offset)
        offset += nu
    n_units = max(offset, 1)
    items = np.concatenate(all_items) if all_items else np.zeros((0, 3), dtype=np.int64)
    unit = np.concatenate(all_units) if all_units else np.zeros(0, dtype=np.int64)
    loads = np.zeros(n_units)
    if items.size:
        run_cost = np.concatenate([[0.0], np.cumsum(tile_cost)])
        np.add.at(loads, unit, run_cost[items[:, 2]] - run_cost[items[:, 1]] + item_us)
    missing = np.setdiff1d(np.arange(n_rows), items[:, 0] if items.size else [])
    for r in missing:  # tile-rows without tiles still need their outputs written (zeros / bias)
        u = int(np.argmin(loads))
        items = np.vstack([items, [[r, tile_ptr[r], tile_ptr[r]]]])
        unit = np.append(unit, u)
        loads[u] += item_us
    order = np.argsort(unit, kind="stable")
    items, unit = items[order], unit[order]
    unit_ptr = np.zeros(n_units + 1, dtype=np.int64)
    np.add.at(unit_ptr, unit + 1, 1)
    loads -= item_us * (unit_ptr[1:] > 0)  # (counts per unit here) the first item of a unit is in the fixed cost
    # spread the split streams over program ids so each SM gets a mix of dense and sparse units
    # (over the units each stream really got: one may have been added above)
    fractions = [(np.arange(u) + 0.5) / u for u in used] or [np.array([0.5])]
    interleave = np.argsort(np.concatenate(fractions), kind="stable")
    return items, np.cumsum(unit_ptr), loads, interleave


def make_plan(weight: torch.Tensor | None = None, *, nnz: np.ndarray | None = None, shape=None, dtype=None,
              tile_shape=(64, 64), cost_model: CostModel | None = None, buckets=DEFAULT_BUCKETS,
              allowed_kinds=DEFAULT_KINDS, nan_policy: str = "propagate", balance: str = "full",
              unit_mode: str = "split", swing_band: float = 0.10, n_programs: int | None = None,
              row_kernel: bool = True, slice_kernel: bool = SLICE_KERNEL_DEFAULT,
              wgmma_kernel: bool = WGMMA_KERNEL_DEFAULT, wgmma_layout: str = WGMMA_LAYOUT_DEFAULT) -> Plan:
    """Plan one weight. Give either ``weight`` (M x K tensor with zeros) or ``nnz`` per tile with
    ``shape`` and ``dtype``.

    balance: 'none' (equal tile counts per unit), 'intra' (cost-balanced units, swing tiles
             converted between the dense and sparse sides), 'full' (intra + alternated order
             between adjacent token tiles).
    unit_mode: 'split' runs dense and sparse tiles on different units (CROSS); 'mixed' lets one
             unit run both.
    nan_policy: 'propagate' makes non-finite inputs reach the outputs exactly as in the dense
             product (empty tiles are checked); 'ignore' skips empty tiles entirely.
    row_kernel: buckets of at most 16 tokens may run the row kernel (kernels/row_gemv.cu, on the
             row format) where it is predicted faster than the tile plan and the dense product
             (bf16/fp16, K % 8 == 0, K <= 16384).
    slice_kernel: buckets of at most 16 tokens not given to the row kernel become the slice
             kernel's candidates (kernels/slice_mma.cu on the slice format; SLICE_MAX_BYTES; bf16/
             fp16, K % 8 == 0), which the measured check times on an sm_90+ GPU. Needs nan_policy
             'propagate' (else a ValueError). Off by default (SLICE_KERNEL_DEFAULT).
    wgmma_kernel: buckets (of at most WGMMA_MAX_TOKENS tokens: all) not given to the row or slice
             kernel become the warpgroup 2:4 kernel's candidates (kernels/wgmma24.cu on pack/wgmma24.py's format;
             WGMMA_MAX_BYTES; bf16/fp16, K % 8 == 0), which the measured check times on a compute
             capability 9.0 GPU. With nan_policy 'propagate' its build checks X for Inf and NaN in
             every unit (a few instructions) and recomputes a part whose X has one, so that they reach
             the outputs as in the dense product; with 'ignore' only the stored slots' products do.
             Not with slice_kernel (a ValueError). Off by default here (WGMMA_KERNEL_DEFAULT); on by
             default in SparseLinear.from_dense and sparsify_ where the measured check runs on a
             compute capability 9.0 GPU (their wgmma_kernel='auto').
    wgmma_layout: the warpgroup 2:4 format's layout, 'slots' (two slots per group and the overflow's
             words) or 'compressed' (only the nonzero words, found by each thread's masks: fewer
             bytes, more instructions per chunk) or 'lone' (the compressed layout with a group's lone
             nonzero as a 16-bit value: fewer bytes again, more instructions; its gate counts the
             compressed layout's bytes; on the H100 at 16 tokens 3-4% faster than 'compressed' at 70%
             on 11008-wide weights, slower at 90%, docs/perf-notes.md "Lone halves and 128 tokens,
             measured (H100)"); its bytes decide whether a weight is offered; or
             'auto' (the default, WGMMA_LAYOUT_DEFAULT): where the slots layout's bytes are at most
             LAYOUT_CONTEST_BYTES times the compressed layout's (uniform sparsity up to ~60%), packed
             in slots, and the measured check times the buckets it offers in slots and in
             AUTO_COMPRESSED ('compressed') and keeps the faster for the weight (the smaller bytes
             decide the offer); elsewhere the plan takes AUTO_COMPRESSED (its options say which).
             Where the check does not run (measure=False, on the CPU, keep_dense=False) a plan left
             'auto' stays in slots.
    Where the slice or warpgroup 2:4 kernel is offered, buckets get alternatives that the measured
    check times beside their kernel (``BucketPlan.alternatives``): a row kernel's bucket the
    candidate kernel, a candidate's bucket the tile kernel where it was predicted to win and the row
    kernel where it wins or nearly does.
    """
    tile_shape = check_plan_tile_shape(tile_shape)
    if weight is not None:
        check_weight(weight)
        grid = TileGrid.for_weight(weight, tile_shape)
        nnz = grid.tile_nnz(weight)
        dtype = dtype_name(weight.dtype)
    else:
        if nnz is None or shape is None:
            raise ValueError("make_plan: expected a weight, or nnz per tile together with shape")
        grid = TileGrid(int(shape[0]), int(shape[1]), *tile_shape)
        nnz = np.asarray(nnz, dtype=np.int64)
        if nnz.shape != grid.shape:
            raise ValueError(f"nnz: expected shape {grid.shape}, got {nnz.shape}")
        dtype = str(dtype or "bfloat16")
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance: expected one of {BALANCE_MODES}, got {balance!r}")
    if unit_mode not in UNIT_MODES:
        raise ValueError(f"unit_mode: expected one of {UNIT_MODES}, got {unit_mode!r}")
    if nan_policy not in ("propagate", "ignore"):
        raise ValueError(f"nan_policy: expected 'propagate' or 'ignore', got {nan_policy!r}")
    if wgmma_layout not in WGMMA_LAYOUTS:
        raise ValueError(f"wgmma_layout: expected one of {WGMMA_LAYOUTS}, got {wgmma_layout!r}")
    if slice_kernel and nan_policy != "propagate":
        raise ValueError("slice_kernel=True: expected nan_policy='propagate' (the slice kernel's candidates are "
                         "planned with it)")
    if slice_kernel and wgmma_kernel:
        raise ValueError("slice_kernel=True and wgmma_kernel=True: choose one of the two (both take the buckets "
                         "the row kernel does not)")
    buckets = check_buckets(buckets)
    if cost_model is not None and not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model: expected a cross.costmodel.CostModel (CostModel.load(path) reads a saved one), "
                        f"got {type(cost_model).__name__}")
    if n_programs is not None and (isinstance(n_programs, bool) or not isinstance(n_programs, int) or n_programs < 1):
        raise ValueError(f"n_programs: expected an integer >= 1 (or None: the cost model's), got {n_programs!r}")
    if isinstance(allowed_kinds, (str, TileKind)) or not all(isinstance(k, TileKind) for k in allowed_kinds):
        raise TypeError(f"allowed_kinds: expected a sequence of TileKind, e.g. (TileKind.DENSE, TileKind.BITMAP), "
                        f"got {allowed_kinds!r}")
    cm = cost_model or default_cost_model()
    size = grid.tile_sizes()
    programs = int(n_programs or cm.n_programs)

    first = classify(nnz, size, tile_shape, design_tokens(*buckets[0]), cm, allowed_kinds, swing_band)
    kinds, swing = first.kinds.copy(), first.swing.copy()
    converted = 0
    if balance != "none" and unit_mode == "split":
        kinds, converted = convert_swing(kinds, first.costs, swing, first.best_sparse, programs)
    classes = {design_tokens(*buckets[0]): first}

    def classes_at(n: int) -> Classification:
        if n not in classes:
            classes[n] = classify(nnz, size, tile_shape, n, cm, allowed_kinds, swing_band)
        return classes[n]

    # the row format's entries where the row kernel may run, else None
    entries = (row_entries(nnz, size, grid.rows)
               if row_kernel and row_kernel_fits(grid.rows, grid.cols, dtype) else None)
    # whether buckets may become the slice kernel's candidates, and in which format
    slice_fmt, slice_floor = slice_format(nnz, size, grid.rows, grid.cols)
    slices = (bool(slice_kernel) and nan_policy == "propagate" and slice_kernel_fits(grid.rows, grid.cols, dtype)
              and slice_floor <= SLICE_MAX_BYTES * 2 * grid.rows * grid.cols)
    # whether buckets may become the warpgroup 2:4 kernel's candidates (its bytes counted only where
    # the kernel is offered: the default plans pay nothing for them; 'auto': the smaller layout's decide)
    wgmma = bool(wgmma_kernel) and wgmma24_kernel_fits(grid.rows, grid.cols, dtype)
    if wgmma:
        # lone halves take at most the compressed layout's bytes: its count is their gate
        fmt_bytes = {one: _wgmma24_bytes(one, weight, nnz, size, grid) for one in ("slots", "compressed")
                     if wgmma_layout in (one, "auto") or (one, wgmma_layout) == ("compressed", "lone")}
        wgmma = min(fmt_bytes.values()) <= WGMMA_MAX_BYTES * 2 * grid.rows * grid.cols
        if wgmma and wgmma_layout == "auto":
            wgmma_layout = contest_layout(fmt_bytes["slots"], fmt_bytes["compressed"])

    def plan_buckets(kinds):
        return _plan_buckets(kinds, nnz, grid, tile_shape, buckets, classes_at, cm, programs, unit_mode, balance,
                             nan_policy, entries, slices, wgmma)

    layout, bucket_plans = plan_buckets(kinds)
    dense, sparse = kinds == TileKind.DENSE, np.isin(kinds, (TileKind.BITMAP, TileKind.INDEX))
    chosen = "hybrid" if dense.any() and sparse.any() else "single kind"
    if chosen == "hybrid":
        # one DENSE tile moves every tile to the kernel variant that stages whole tiles (fewer
        # programs at once, sparse tiles slower), and a few scattered sparse tiles cost items on
        # top of their tiles: weigh the hybrid against its all-sparse and all-dense twins
        # (ties keep the hybrid)
        best = _runtime_cost(bucket_plans)
        for name, alt in (("all sparse", np.where(dense, first.best_sparse, kinds).astype(np.uint8)),
                          ("all dense", np.where(sparse, TileKind.DENSE, kinds).astype(np.uint8))):
            alt_layout, alt_plans = plan_buckets(alt)
            cost = _runtime_cost(alt_plans)
            if cost < best:
                kinds, layout, bucket_plans, chosen, best = alt, alt_layout, alt_plans, name, cost
    tile_ptr, tile_col, tile_kind = layout

    provenance = {
        "cost_model": cm.source,
        "gpu_spec": cm.spec.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cross_version": _version(),
        "torch": torch.__version__,
        "options": {"balance": balance, "unit_mode": unit_mode, "swing_band": swing_band, "n_programs": programs,
                    "row_kernel": bool(row_kernel), "slice_kernel": bool(slice_kernel),
                    "wgmma_kernel": bool(wgmma_kernel), "wgmma_layout": wgmma_layout,
                    "slice_format": slice_fmt if slices else None,
                    "allowed_kinds": [TileKind(k).name for k in allowed_kinds]},
        "swing_converted": int(converted),
        "kinds_chosen": chosen,
    }
    return Plan((grid.rows, grid.cols), tile_shape, dtype, nan_policy, kinds, first.swing, tile_ptr, tile_col,
                tile_kind, tuple(bucket_plans), provenance)


def _runtime_cost(bucket_plans) -> float:
    """Relative time the runtime spends over the buckets (each runs the plan or the dense product)."""
    return sum(min(b.predicted_us, b.dense_us) / b.dense_us for b in bucket_plans)


def _plan_buckets(kinds, nnz, grid, tile_shape, buckets, classes_at, cm, programs, unit_mode, balance, nan_policy,
                  n_row_entries=None, slices=False, wgmma=False):
    """The work lists of every bucket for one choice of tile kinds; buckets of at most
    ROW_MAX_TOKENS tokens run the row kernel (over ``n_row_entries`` entries; None: not allowed)
    where it is predicted faster than the tiles; with ``slices``, buckets of at most
    SLICE_MAX_TOKENS tokens that would run the tiles or fall back after them become the slice
    kernel's candidates; with ``wgmma``, those of at most WGMMA_MAX_TOKENS tokens the warpgroup 2:4
    kernel's.
    Returns ((tile_ptr, tile_col, tile_kind), [BucketPlan])."""
    tile_ptr, tile_col, tile_kind = tile_list(kinds, include_empty=nan_policy == "propagate")
    n_exec = int(tile_ptr[-1])
    rows = np.repeat(np.arange(grid.shape[0]), np.diff(tile_ptr))
    # the kernel variant's shared memory decides how many programs run at once (more would run in
    # waves, each unit's work list after another's): units per bucket are capped to that
    sparse = (kinds == TileKind.BITMAP) | (kinds == TileKind.INDEX)
    has_dense = bool((kinds == TileKind.DENSE).any())
    max_nnz = int(nnz[sparse].max()) if sparse.any() else 0
    # sparse tiles in the whole-tile variant (measured: costmodel.profile)
    scale = np.where(tile_kind == TileKind.DENSE, 1.0, cm.spec.mixed_sparse_scale if has_dense else 1.0)
    bucket_plans = []
    for n_min, n_max in buckets:
        n = design_tokens(n_min, n_max)
        tile_cost = classes_at(n).cost_of(kinds)[rows, tile_col] * scale if n_exec else np.zeros(0)
        bn = block_n_for(n)
        vals = plan_kernel_vals_bytes(tile_shape, n_exec == 0 or has_dense, max_nnz, bn)
        resident = min(programs, cm.spec.resident_programs(tile_shape, bn, vals))
        units = max(1, min(resident, n_exec + grid.shape[0]))
        token_tiles = math.ceil(n / bn)
        items, unit_ptr, loads, interleave = _map_bucket(tile_ptr, tile_kind, tile_cost, units, unit_mode, balance,
                                                         item_cost(cm, n, token_tiles, resident))
        order = alternate_order(loads, interleave, alternate=balance == "full")
        span = simulate_makespan(loads / token_tiles, order, token_tiles)
        predicted = cm.launch_us + resident * span
        dense = cm.dense_us(grid.rows, grid.cols, n)
        kernel, tiles_win, row_ok = "tiles", predicted * (1 + WIN_MARGIN) < dense, False
        tiles_us = predicted
        if n_row_entries is not None and n_max <= ROW_MAX_TOKENS:
            # the row format is stored only where the row kernel wins or nearly wins (is_near_win)
            row_us = cm.row_us(grid.rows, grid.cols, n_row_entries, n)
            fewer_bytes = row_format_bytes(grid.rows, n_row_entries) < 2 * grid.rows * grid.cols
            row_ok = row_us * (1 + WIN_MARGIN) < dense or (fewer_bytes and row_us <= dense * (1 + NEAR_MARGIN))
            if row_us < predicted and row_ok:
                predicted, kernel = row_us, "rows"
        fallback = predicted * (1 + WIN_MARGIN) >= dense
        reason = f"predicted {predicted:.1f} us is not {WIN_MARGIN:.0%} under dense {dense:.1f} us" if fallback else ""
        if fallback and kernel == "rows":
            reason += f" (within {NEAR_MARGIN:.0%}: timed by the measured check)"
        # the candidates, which have no cost model: at 9-16 tokens the tile kernel measured 0.85-1.0x of
        # cuBLAS where it was predicted to win, and it loses at 9-128 tokens (H200,
        # benchmarks/results/h200/kernels_buckets.csv, docs/results.md): they are timed instead
        candidates = [k for k, offered in (("slices", slices and n_max <= SLICE_MAX_TOKENS),
                                           ("wgmma24", wgmma and n_max <= WGMMA_MAX_TOKENS)) if offered]
        alternatives: list[str] = []
        if candidates and kernel == "tiles":
            # the first candidate with the standing of a near win, timed against the others, the
            # tile kernel where it was predicted to win and the row kernel where it wins or nearly does
            reason = f"the {KERNEL_NAMES[candidates[0]]} kernel's candidate (no cost model; the tile kernel predicted " \
                     f"{predicted:.1f} us, dense {dense:.1f} us): timed by the measured check"
            alternatives = candidates[1:] + ["tiles"] * tiles_win + ["rows"] * row_ok
            kernel, fallback = candidates[0], True
        elif kernel == "rows":
            # the row kernel's win or near win, timed against the candidates, and against the tile
            # kernel where that is predicted to win and close behind (ALT_MARGIN)
            alternatives = candidates + ["tiles"] * (tiles_win and tiles_us <= predicted * (1 + ALT_MARGIN))
        elif kernel == "tiles" and row_ok:
            # the row kernel wins or nearly wins but is predicted behind the tile kernel: timed beside it,
            # as the candidates' buckets time it (H100, 8 tokens, 70%: predicted behind, measured 1.43x
            # on 11008x4096 against the tile kernel's 1.24x)
            alternatives = ["rows"]
        bucket_plans.append(BucketPlan(n_min, n_max, n, bn, bool(fallback), items, unit_ptr, order, loads,
                                       float(predicted), float(dense), reason, kernel=kernel,
                                       alternatives=tuple(alternatives)))
    return (tile_ptr, tile_col, tile_kind), bucket_plans


def _version() -> str:
    from .. import __version__

    return __version__
