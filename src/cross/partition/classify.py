"""Tile classification: each tile gets the kind the cost model predicts fastest, and the tiles whose
best sparse and dense costs lie within the swing band are marked, so balancing may convert them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..costmodel import CostModel
from ..tiling import SPARSE_KINDS, TileKind

DEFAULT_KINDS = (TileKind.DENSE, TileKind.BITMAP)


@dataclass(frozen=True)
class Classification:
    kinds: np.ndarray  # uint8 [ti, tj] chosen TileKind
    swing: np.ndarray  # bool [ti, tj] tiles within the swing band
    costs: dict  # TileKind -> float64 [ti, tj] amortised microseconds of each allowed kind
    best_sparse: np.ndarray  # uint8 [ti, tj] cheapest sparse kind per tile

    def cost_of(self, kinds: np.ndarray) -> np.ndarray:
        """Cost of every tile under the given kinds (EMPTY tiles cost what EMPTY costs)."""
        out = np.zeros(kinds.shape, dtype=np.float64)
        for k, c in self.costs.items():
            sel = kinds == k
            out[sel] = c[sel]
        return out


def classify(nnz: np.ndarray, size: np.ndarray, tile_shape, n_tokens: int, cost_model: CostModel,
             allowed=DEFAULT_KINDS, swing_band: float = 0.10) -> Classification:
    """Pick the fastest allowed kind for every tile at ``n_tokens`` tokens.

    nnz, size: int arrays [ti, tj] (nonzeros and elements of each tile).
    swing_band: relative cost difference under which a tile counts as 'swing' (either kind will do).
    """
    allowed = tuple(TileKind(k) for k in allowed)
    if TileKind.EMPTY in allowed:
        raise ValueError("allowed: EMPTY is implied for tiles without nonzeros; expected only DENSE/BITMAP/INDEX")
    if not allowed:
        raise ValueError("allowed: expected at least one tile kind")
    if swing_band < 0:
        raise ValueError(f"swing_band: expected >= 0, got {swing_band}")
    density = nnz / np.maximum(size, 1)
    costs = {k: np.asarray(cost_model.predict(k, tile_shape, density, n_tokens), dtype=np.float64) for k in allowed}
    costs[TileKind.EMPTY] = np.asarray(cost_model.predict(TileKind.EMPTY, tile_shape, density, n_tokens), dtype=np.float64)
    order = list(allowed)
    stack = np.stack([costs[k] for k in order])
    kinds = np.asarray(order, dtype=np.uint8)[np.argmin(stack, axis=0)]
    empty = nnz == 0
    kinds[empty] = TileKind.EMPTY

    sparse = [k for k in order if k in SPARSE_KINDS]
    if sparse:
        sstack = np.stack([costs[k] for k in sparse])
        best_sparse = np.asarray(sparse, dtype=np.uint8)[np.argmin(sstack, axis=0)]
        best_sparse_cost = sstack.min(axis=0)
    else:
        best_sparse = np.full(kinds.shape, TileKind.DENSE, dtype=np.uint8)
        best_sparse_cost = np.full(kinds.shape, np.inf)
    if TileKind.DENSE in costs and sparse:
        lo = np.minimum(costs[TileKind.DENSE], best_sparse_cost)
        swing = (np.abs(costs[TileKind.DENSE] - best_sparse_cost) <= swing_band * lo) & ~empty
    else:
        swing = np.zeros(kinds.shape, dtype=bool)
    return Classification(kinds, swing, costs, best_sparse)


def bands(cost_model: CostModel, tile_shape, n_tokens: int, sparse_kind=TileKind.BITMAP,
          swing_band: float = 0.10, resolution: int = 401) -> dict:
    """The dense / swing / sparse bands along density for one token count (the seed's Figure 3).

    Returns densities and both costs on a grid, and the band of every grid point
    ('sparse', 'swing' or 'dense').
    """
    density = np.linspace(0.0, 1.0, resolution)
    dense = np.asarray(cost_model.predict(TileKind.DENSE, tile_shape, density, n_tokens))
    sparse = np.asarray(cost_model.predict(sparse_kind, tile_shape, density, n_tokens))
    lo = np.minimum(dense, sparse)
    band = np.where(np.abs(dense - sparse) <= swing_band * lo, "swing", np.where(sparse < dense, "sparse", "dense"))
    return {"density": density, "dense_us": dense, "sparse_us": sparse, "band": band}
