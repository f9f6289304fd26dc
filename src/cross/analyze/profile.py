"""Where a pruned weight's nonzeros are: overall, per row and column, and per tile.

The planner decides per tile, so the numbers that matter are how tile densities spread: a weight
whose tiles all sit near the mean density needs one kernel, while one whose tiles range from
nearly empty to nearly dense (the CROSS paper's Figure 2) gains from mixing dense and sparse tiles.
`TileStats.cv_ratio` condenses that spread into one number against a uniform-random baseline.

Counting runs in torch on the weight's own device; the results are stored as read-only numpy
arrays so a profile is plain data that every later stage can read without touching the GPU.
NaN and Inf count as nonzero: they are stored values that a kernel must carry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .._checks import check_tile_shape, check_weight, dtype_name
from ..tiling import TileGrid

DEFAULT_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class TileStats:
    """Nonzeros per tile of one tile shape.

    Compared by identity (eq=False): arrays have no single truth value, so a field-wise == would
    raise rather than answer.

    grid: the tile geometry.
    nnz: int64 [n_tile_rows, n_tile_cols], nonzeros per tile.
    size: int64 [n_tile_rows, n_tile_cols], elements each tile really holds (edge tiles partial).
    """

    grid: TileGrid
    nnz: np.ndarray
    size: np.ndarray

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.grid.tile_shape

    @property
    def n_tiles(self) -> int:
        return int(self.nnz.size)

    @property
    def overall_density(self) -> float:
        return float(self.nnz.sum() / self.size.sum())

    @property
    def density(self) -> np.ndarray:
        """float64 [n_tile_rows, n_tile_cols], nnz / size per tile."""
        return _frozen(self.nnz / self.size)

    @property
    def sparsity(self) -> np.ndarray:
        """float64 [n_tile_rows, n_tile_cols], 1 - density per tile."""
        return _frozen(1.0 - self.density)

    @property
    def empty_fraction(self) -> float:
        """Fraction of tiles (by count) with no nonzero: work the kernels skip outright."""
        return float(np.mean(self.nnz == 0))

    @property
    def full_fraction(self) -> float:
        """Fraction of tiles (by count) with every element nonzero."""
        return float(np.mean(self.nnz == self.size))

    def quantiles(self, qs: Iterable[float] = DEFAULT_QUANTILES) -> np.ndarray:
        """Quantiles of tile density over tiles (by count, each tile one sample)."""
        qs = np.asarray(list(qs), dtype=np.float64)
        if qs.size == 0 or np.any((qs < 0) | (qs > 1)):
            raise ValueError(f"qs: expected quantiles in [0, 1], got {qs.tolist()}")
        return np.quantile(self.density, qs)

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean) of tile density, each tile weighted by its size.

        Weighting by size makes the weighted mean the overall density and keeps partial edge tiles
        from counting as much as whole ones. 0 for an all-zero weight (nothing varies).
        """
        d = self.overall_density
        if d == 0.0:
            return 0.0
        var = float(np.sum(self.size * (self.density - d) ** 2) / self.size.sum())
        return math.sqrt(var) / d

    @property
    def uniform_cv(self) -> float:
        """The cv expected if the same nonzeros were placed uniformly at random.

        With S elements in T tiles at overall density d, a random placement of the d*S nonzeros
        (hypergeometric per tile) gives an expected size-weighted variance of
        d(1-d)(T-1)/(S-1), so cv0 = sqrt((1-d)(T-1) / (d(S-1))). For many tiles this is the
        binomial sqrt((1-d) / (d * mean tile size)). It is 0 when the placement is forced:
        d = 0, d = 1, or a single tile.
        """
        d = self.overall_density
        n_elements = int(self.size.sum())
        if d == 0.0 or d == 1.0 or self.n_tiles == 1:
            return 0.0
        return math.sqrt((1.0 - d) * (self.n_tiles - 1) / (d * (n_elements - 1)))

    @property
    def cv_ratio(self) -> float:
        """cv / uniform_cv: about 1 for uniform random sparsity, >> 1 when nonzeros cluster.

        When uniform_cv is 0 the placement is forced (d = 0, d = 1 or a single tile), the observed
        cv is then 0 as well, and the weight is exactly as uniform as a random one: the ratio is
        1.0. It is therefore always finite.
        """
        cv0 = self.uniform_cv
        if cv0 == 0.0:
            return 1.0
        return self.cv / cv0

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary; the per-tile nnz array only when `arrays` is set."""
        qs = DEFAULT_QUANTILES
        out: dict[str, Any] = {
            "tile_shape": list(self.tile_shape),
            "grid_shape": list(self.grid.shape),
            "density": self.overall_density,
            "empty_fraction": self.empty_fraction,
            "full_fraction": self.full_fraction,
            "density_quantiles": {str(q): float(v) for q, v in zip(qs, self.quantiles(qs))},
            "cv": self.cv,
            "cv_ratio": self.cv_ratio,
        }
        if arrays:
            out["nnz"] = self.nnz.tolist()
        return out


@dataclass(frozen=True)
class LineStats:
    """Nonzeros per row (or per column) of a weight: how unevenly the output rows load the units.

    length: elements per line (K for rows, M for columns); n_lines: how many lines.
    """

    n_lines: int
    length: int
    min: int
    max: int
    mean: float
    std: float
    empty: int

    @classmethod
    def from_counts(cls, counts: np.ndarray, length: int) -> LineStats:
        return cls(
            n_lines=int(counts.size),
            length=int(length),
            min=int(counts.min()),
            max=int(counts.max()),
            mean=float(counts.mean()),
            std=float(counts.std()),
            empty=int(np.count_nonzero(counts == 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class WeightProfile:
    """Everything the planner needs to know about one weight's sparsity, as immutable data.

    shape: (M, K), the nn.Linear layout (out_features, in_features).
    dtype: the weight's dtype name, e.g. "bfloat16".
    nnz, density: over the whole weight.
    row_nnz: int64 [M]; col_nnz: int64 [K].
    tiles: (tile_rows, tile_cols) -> TileStats, one entry per profiled tile shape (read-only).
    """

    shape: tuple[int, int]
    dtype: str
    nnz: int
    density: float
    row_nnz: np.ndarray
    col_nnz: np.ndarray
    tiles: Mapping[tuple[int, int], TileStats]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def row_stats(self) -> LineStats:
        return LineStats.from_counts(self.row_nnz, self.shape[1])

    @property
    def col_stats(self) -> LineStats:
        return LineStats.from_counts(self.col_nnz, self.shape[0])

    def tile(self, tile_shape: Sequence[int]) -> TileStats:
        """The TileStats of one profiled tile shape."""
        key = check_tile_shape(tile_shape)
        if key not in self.tiles:
            raise KeyError(f"tile_shape: expected one of {sorted(self.tiles)}, got {key}")
        return self.tiles[key]

    def summary(self) -> str:
        m, k = self.shape
        rows, cols = self.row_stats, self.col_stats
        lines = [
            f"weight {m} x {k} {self.dtype}: {self.nnz:,} nonzeros, "
            f"density {self.density:.2%} (sparsity {self.sparsity:.2%})",
            f"rows: nnz min {rows.min} / mean {rows.mean:.1f} / max {rows.max} "
            f"(std {rows.std:.1f}), {rows.empty} of {rows.n_lines} empty",
            f"cols: nnz min {cols.min} / mean {cols.mean:.1f} / max {cols.max} "
            f"(std {cols.std:.1f}), {cols.empty} of {cols.n_lines} empty",
        ]
        for (tm, tk), stats in self.tiles.items():
            q05, q50, q95 = stats.quantiles((0.05, 0.5, 0.95))
            ti, tj = stats.grid.shape
            lines.append(
                f"tiles {tm}x{tk} ({ti} x {tj}): density p5 {q05:.1%} / p50 {q50:.1%} / "
                f"p95 {q95:.1%}, {stats.empty_fraction:.1%} empty, {stats.full_fraction:.1%} full, "
                f"cv {stats.cv:.3f} = {stats.cv_ratio:.1f}x uniform random"
            )
        return "\n".join(lines)

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """JSON-serialisable; row_nnz, col_nnz and per-tile nnz only when `arrays` is set."""
        out: dict[str, Any] = {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "nnz": self.nnz,
            "density": self.density,
            "rows": self.row_stats.to_dict(),
            "cols": self.col_stats.to_dict(),
            "tiles": [stats.to_dict(arrays) for stats in self.tiles.values()],
        }
        if arrays:
            out["row_nnz"] = self.row_nnz.tolist()
            out["col_nnz"] = self.col_nnz.tolist()
        return out


def _tile_stats(nonzero: torch.Tensor, tile_shape: tuple[int, int]) -> TileStats:
    grid = TileGrid.for_weight(nonzero, tile_shape)
    return TileStats(grid, _frozen(grid.tile_nnz(nonzero)), _frozen(grid.tile_sizes()))


def profile_weight(
    weight: torch.Tensor, tile_shapes: Iterable[Sequence[int]] = ((64, 64),)
) -> WeightProfile:
    """Profile one weight (M x K, nn.Linear layout, fp32/fp16/bf16, any device) for each tile shape."""
    check_weight(weight)
    shapes = [check_tile_shape(s) for s in tile_shapes]
    if not shapes:
        raise ValueError("tile_shapes: expected at least one tile shape, got none")
    nonzero = weight.detach() != 0
    tiles = {shape: _tile_stats(nonzero, shape) for shape in dict.fromkeys(shapes)}
    row_nnz = nonzero.sum(dim=1).cpu().numpy().astype(np.int64)
    col_nnz = nonzero.sum(dim=0).cpu().numpy().astype(np.int64)
    nnz = int(row_nnz.sum())
    return WeightProfile(
        shape=(int(weight.shape[0]), int(weight.shape[1])),
        dtype=dtype_name(weight.dtype),
        nnz=nnz,
        density=nnz / weight.numel(),
        row_nnz=_frozen(row_nnz),
        col_nnz=_frozen(col_nnz),
        tiles=MappingProxyType(tiles),
    )
