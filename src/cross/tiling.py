"""The tile grid every stage shares: an M x K weight cut into tile_rows x tile_cols tiles.

Edge tiles are partial (M and K need not be multiples of the tile); counts and densities always
use the elements a tile really holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_tile_shape


class TileKind(enum.IntEnum):
    """How one tile is stored and executed."""

    EMPTY = 0  # no nonzeros: skipped
    DENSE = 1  # all elements, tensor cores
    BITMAP = 2  # 1 bit per element + packed nonzero values, decoded on chip
    INDEX = 3  # in-tile position per nonzero + packed values, for very sparse tiles


SPARSE_KINDS = (TileKind.BITMAP, TileKind.INDEX)


@dataclass(frozen=True)
class TileGrid:
    rows: int
    cols: int
    tile_rows: int
    tile_cols: int

    def __post_init__(self):
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"expected a positive matrix shape, got {(self.rows, self.cols)}")
        check_tile_shape((self.tile_rows, self.tile_cols))

    @classmethod
    def for_weight(cls, weight: torch.Tensor, tile_shape) -> "TileGrid":
        tm, tk = check_tile_shape(tile_shape)
        return cls(int(weight.shape[0]), int(weight.shape[1]), tm, tk)

    @property
    def tile_shape(self) -> tuple[int, int]:
        return (self.tile_rows, self.tile_cols)

    @property
    def n_tile_rows(self) -> int:
        return -(-self.rows // self.tile_rows)

    @property
    def n_tile_cols(self) -> int:
        return -(-self.cols // self.tile_cols)

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile columns) of the grid."""
        return (self.n_tile_rows, self.n_tile_cols)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (self.n_tile_rows * self.tile_rows, self.n_tile_cols * self.tile_cols)

    def tile_sizes(self) -> np.ndarray:
        """Elements each tile really holds, int64 [n_tile_rows, n_tile_cols]."""
        r = np.minimum(self.tile_rows, self.rows - self.tile_rows * np.arange(self.n_tile_rows))
        c = np.minimum(self.tile_cols, self.cols - self.tile_cols * np.arange(self.n_tile_cols))
        return np.outer(r, c).astype(np.int64)

    def pad(self, matrix: torch.Tensor) -> torch.Tensor:
        """Zero-pad a [rows, cols] tensor to whole tiles."""
        pr, pc = self.padded_shape
        if (pr, pc) == tuple(matrix.shape):
            return matrix
        out = matrix.new_zeros((pr, pc))
        out[: self.rows, : self.cols] = matrix
        return out

    def tiles(self, matrix: torch.Tensor) -> torch.Tensor:
        """View a [rows, cols] tensor as [n_tile_rows, n_tile_cols, tile_rows, tile_cols] (zero-padded)."""
        tm, tk = self.tile_shape
        ti, tj = self.shape
        return self.pad(matrix).reshape(ti, tm, tj, tk).permute(0, 2, 1, 3)

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """Inverse of tiles(): [ti, tj, tm, tk] -> [rows, cols] (padding dropped)."""
        ti, tj, tm, tk = tiles.shape
        return tiles.permute(0, 2, 1, 3).reshape(ti * tm, tj * tk)[: self.rows, : self.cols]

    def tile_nnz(self, weight: torch.Tensor) -> np.ndarray:
        """Nonzeros per tile, int64 [n_tile_rows, n_tile_cols]. NaN and Inf count as nonzero."""
        nz = (weight != 0).to(torch.int32)
        return self.tiles(nz).sum(dim=(2, 3)).cpu().numpy().astype(np.int64)
