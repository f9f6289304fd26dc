"""The plain-PyTorch executor of a Plan: the reference that kernels are checked against, and the
CPU path.

It walks a bucket's work list exactly as the kernels do (tile by tile, through the packed tables),
in fp32, so a wrong table, a missing work item or a tile computed twice shows up as a wrong
result, not as a silently right dense product.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..pack.packed import PackedBucket, PackedWeight


def decode_executed_tiles(packed: PackedWeight) -> torch.Tensor:
    """Every executed tile (the plan's order) decoded from the kernel tables: [T, tile_rows, tile_cols]."""
    if packed.tiled is None:
        raise ValueError("decode_executed_tiles: expected a packed weight that holds its tiles, got one whose tiles "
                         "were dropped (no bucket runs the tile kernel); use packed.tiled_weight()")
    t = packed.tiles
    kinds = torch.from_numpy(packed.plan.tile_kind.copy()).to(t.device)
    if t.shape[0] == 0:
        return packed.tiled.values.new_zeros((0, *packed.plan.tile_shape))
    return packed.tiled.decode(kinds, t[:, 1], t[:, 2], t[:, 3])


def reference_matmul(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
                     bucket: PackedBucket | None = None, tiles: torch.Tensor | None = None) -> torch.Tensor:
    """Y = X @ W^T (+ bias) for a 2-D X [N, K], computed by the bucket's work items in fp32.

    bucket: which bucket's work list to walk (default: the one for N, even if it falls back to dense).
    tiles:  decoded executed tiles, when the caller keeps them between calls.
    Returns Y [N, M] in X's dtype. Under torch.compile the walk is the ``cross::reference_linear``
    operator, so that it (fullgraph too) takes it whole instead of tracing a loop over the work list.
    """
    bucket = bucket or packed.bucket_for(max(x.shape[0], 1))
    tiles = decode_executed_tiles(packed) if tiles is None else tiles
    args = (x, bias, tiles, packed.tiles[:, 0], bucket.items,
            [packed.shape[0], *packed.plan.tile_shape, *packed.plan.grid.shape])
    return reference_linear(*args) if torch.compiler.is_compiling() else _reference_linear(*args)


def _reference_linear(x: torch.Tensor, bias: Optional[torch.Tensor], tiles: torch.Tensor, cols: torch.Tensor,
                     items: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) in fp32 from the decoded executed tiles [T, tm, tk], their
    tile columns [T] and a bucket's work items [W, >= 3] (tile-row, start, stop, ...); sizes = (M,
    tm, tk, tile-rows, tile-columns)."""
    n, k = x.shape
    m, tm, tk, ti, tj = sizes
    tiles = tiles.float()
    xf = torch.zeros((n, tj * tk), dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    xb = xf.reshape(n, tj, tk)
    cols = cols.long().to(x.device)
    y = torch.zeros((n, ti * tm), dtype=torch.float32, device=x.device)
    for row, start, stop, *_ in items.tolist():
        if stop > start:
            w = tiles[start:stop]  # [s, tm, tk]
            xs = xb[:, cols[start:stop]]  # [n, s, tk]
            y[:, row * tm : (row + 1) * tm] += torch.einsum("nsk,smk->nm", xs, w)
    y = y[:, :m]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).contiguous()  # as nn.Linear's: callers may .view() it


reference_linear = torch.library.custom_op("cross::reference_linear", _reference_linear, mutates_args=())


@reference_linear.register_fake
def _(x, bias, tiles, cols, items, sizes):
    return x.new_empty((x.shape[0], sizes[0]))
