"""Load balancing, as pure functions on cost arrays.

- Intra-batch (the seed's Figure 4c): dense tiles and sparse tiles run on different compute units;
  when one side is heavier per unit, swing tiles are converted toward the lighter side until the
  two finish together.
- Mapping: each side's tiles, in tile-row order, are cut into contiguous runs of equal predicted
  cost, one run per unit; a run becomes work items (one per tile-row it touches).
- Inter-batch (Figure 5b): all token tiles share the weight, so a unit that is heavy on one token
  tile is heavy on all of them. Program p runs unit a on even token tiles and a's partner on odd
  ones, partners pairing the heaviest unit with the lightest, so imbalance cancels instead of
  accumulating.
"""

from __future__ import annotations

import numpy as np

from ..tiling import TileKind

#: Order of the kinds inside a tile-row's list of tiles.
SECTION_ORDER = (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX, TileKind.EMPTY)
_RANK = np.zeros(len(TileKind), dtype=np.int64)
for _r, _k in enumerate(SECTION_ORDER):
    _RANK[_k] = _r


def tile_list(kinds: np.ndarray, include_empty: bool):
    """The executed tiles, CSR over tile-rows, each row ordered by SECTION_ORDER then column.

    Returns tile_ptr [ti+1], tile_col [T], tile_kind [T].
    """
    ti, tj = kinds.shape
    rows, cols = np.nonzero(kinds != TileKind.EMPTY) if not include_empty else np.nonzero(np.ones_like(kinds, dtype=bool))
    k = kinds[rows, cols]
    order = np.lexsort((cols, _RANK[k], rows))
    rows, cols, k = rows[order], cols[order], k[order]
    tile_ptr = np.zeros(ti + 1, dtype=np.int64)
    np.add.at(tile_ptr, rows + 1, 1)
    return np.cumsum(tile_ptr).astype(np.int32), cols.astype(np.int32), k.astype(np.uint8)


def split_units(loads: tuple[float, float], n_units: int) -> tuple[int, int]:
    """Units for (dense, sparse) work minimising the larger per-unit load."""
    ld, ls = loads
    if ld <= 0 or n_units < 2:
        return (0, n_units) if ls > 0 or ld <= 0 else (n_units, 0)
    if ls <= 0:
        return (n_units, 0)
    best = min(range(1, n_units), key=lambda ud: max(ld / ud, ls / (n_units - ud)))
    return best, n_units - best


def stream_makespan(loads: tuple[float, float], n_units: int) -> float:
    ud, us = split_units(loads, n_units)
    return max(loads[0] / ud if ud else 0.0, loads[1] / us if us else 0.0)


def convert_swing(kinds: np.ndarray, costs: dict, swing: np.ndarray, best_sparse: np.ndarray, n_units: int):
    """Intra-batch balancing: convert swing tiles toward the side with the smaller per-unit load
    while that lowers the makespan max(load_dense / units_dense, load_sparse / units_sparse).

    Returns (new kinds, number of tiles converted).
    """
    kinds = kinds.copy()
    dense = kinds == TileKind.DENSE
    sparse = np.isin(kinds, (TileKind.BITMAP, TileKind.INDEX, TileKind.EMPTY))
    tile_cost = np.zeros(kinds.shape)
    for k, c in costs.items():
        sel = kinds == k
        tile_cost[sel] = c[sel]
    loads = [float(tile_cost[dense].sum()), float(tile_cost[sparse].sum())]
    span = stream_makespan(tuple(loads), n_units)
    sparse_cost = np.zeros(kinds.shape)
    for k in (TileKind.BITMAP, TileKind.INDEX):
        if k in costs:
            sel = best_sparse == k
            sparse_cost[sel] = costs[k][sel]
    dense_cost = costs.get(TileKind.DENSE)
    if dense_cost is None or n_units < 2:  # one unit runs both sides: nothing to balance
        return kinds, 0
    converted = 0
    while True:
        ud, us = split_units(tuple(loads), n_units)
        per_d = loads[0] / ud if ud else 0.0
        per_s = loads[1] / us if us else 0.0
        heavy_is_dense = per_d > per_s
        cand = swing & ((kinds == TileKind.DENSE) if heavy_is_dense else np.isin(kinds, (TileKind.BITMAP, TileKind.INDEX)))
        if not cand.any():
            break
        idx = np.flatnonzero(cand)
        added = (sparse_cost if heavy_is_dense else dense_cost).reshape(-1)[idx]
        removed = (dense_cost if heavy_is_dense else sparse_cost).reshape(-1)[idx]
        # cheapest net conversion first; one at a time keeps the search monotone and simple
        best = idx[np.argmin(added - removed)]
        a, r = float(added[np.argmin(added - removed)]), float(removed[np.argmin(added - removed)])
        trial = [loads[0] - r, loads[1] + a] if heavy_is_dense else [loads[0] + a, loads[1] - r]
        new_span = stream_makespan(tuple(trial), n_units)
        if new_span >= span * (1 - 1e-9):
            break
        loads, span = trial, new_span
        flat = kinds.reshape(-1)
        flat[best] = best_sparse.reshape(-1)[best] if heavy_is_dense else TileKind.DENSE
        swing.reshape(-1)[best] = False  # never convert a tile back and forth
        converted += 1
    return kinds, converted


def chunk_by_cost(costs: np.ndarray, n_chunks: int) -> np.ndarray:
    """Chunk index of every element of a sequence so that contiguous chunks have about equal cost.

    Element t goes to the chunk holding the midpoint of its cost interval; the largest chunk
    exceeds the mean by less than the largest single cost.
    """
    if costs.size == 0:
        return np.zeros(0, dtype=np.int64)
    total = float(costs.sum())
    if total <= 0:
        return (np.arange(costs.size) * n_chunks // costs.size).astype(np.int64)
    mid = np.cumsum(costs) - costs / 2
    return np.minimum((mid / total * n_chunks).astype(np.int64), n_chunks - 1)


def equal_count_chunks(n: int, n_chunks: int) -> np.ndarray:
    """The naive mapping: equal numbers of tiles per chunk, whatever they cost."""
    return (np.arange(n) * n_chunks // max(n, 1)).astype(np.int64)


def items_from_chunks(positions: np.ndarray, rows: np.ndarray, chunk: np.ndarray):
    """Work items from tiles (list positions, their tile-rows, their chunk): one item per maximal
    run of consecutive positions within one tile-row and one chunk. Returns (items [W,3], unit [W])."""
    if positions.size == 0:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
    brk = np.ones(positions.size, dtype=bool)
    brk[1:] = (rows[1:] != rows[:-1]) | (chunk[1:] != chunk[:-1]) | (positions[1:] != positions[:-1] + 1)
    starts = np.flatnonzero(brk)
    stops = np.append(starts[1:], positions.size)
    items = np.stack([rows[starts], positions[starts], positions[stops - 1] + 1], axis=1)
    return items, chunk[starts]


def alternate_order(unit_loads: np.ndarray, interleave: np.ndarray | None = None, alternate: bool = True) -> np.ndarray:
    """unit_order [2, U]: program p runs unit order[0, p] on even token tiles and order[1, p] on odd ones.

    interleave: optional permutation for order[0] (spreads dense and sparse units over programs).
    With alternate=False both rows are the same (the naive order).
    """
    u = unit_loads.size
    first = np.arange(u) if interleave is None else np.asarray(interleave)
    if not alternate:
        return np.stack([first, first])
    by_load = np.argsort(-unit_loads, kind="stable")
    partner = np.empty(u, dtype=np.int64)
    partner[by_load] = by_load[::-1]
    return np.stack([first, partner[first]])


def simulate_makespan(unit_loads: np.ndarray, unit_order: np.ndarray, n_token_tiles: int) -> float:
    """Predicted time of a persistent launch over n_token_tiles token tiles (units' loads per token tile)."""
    even = (n_token_tiles + 1) // 2
    odd = n_token_tiles // 2
    per_program = even * unit_loads[unit_order[0]] + odd * unit_loads[unit_order[1]]
    return float(per_program.max())
