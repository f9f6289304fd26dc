"""The ``cross::plan_linear`` operator: one bucket's plan kernel behind torch.library, so
torch.compile traces through it (a fake implementation gives the output's shape) and CUDA graphs
capture its launch like any other kernel. ``cross::row_linear`` is the row kernel's
launches (buckets whose plan says ``kernel="rows"``), ``cross::slice_linear`` the slice kernel's
(``kernel="slices"``), ``cross::wgmma24_linear`` the warpgroup 2:4 kernel's (``kernel="wgmma24"``).
``cross::decode_dense`` does the same for the kernel that
decodes a packed weight back to dense (layers with ``keep_dense="decode"``).

The arrival counters in ``counters`` are written during a launch but always back to zero by its end
(the last block to use each one resets it), so the operator is declared free of mutations.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..kernels.launch import KernelArgs, RowArgs, SliceArgs, Wgmma24Args, launch, row_launch, slice_run, wgmma24_run

_TENSORS = ("values", "meta", "tiles", "sections", "items", "row_parts", "unit_ptr", "unit_order", "counters")
_INTS = ("out_features", "in_features", "tile_m", "tile_k", "block_n", "n_units", "n_slots", "max_token_tiles", "n_max",
         "vals_bytes", "cores")


@torch.library.custom_op("cross::plan_linear", mutates_args=())
def plan_linear(x: torch.Tensor, bias: Optional[torch.Tensor], values: torch.Tensor, meta: torch.Tensor,
                tiles: torch.Tensor, sections: torch.Tensor, items: torch.Tensor, row_parts: torch.Tensor,
                unit_ptr: torch.Tensor, unit_order: torch.Tensor, counters: torch.Tensor, sizes: list[int],
                backend: str) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) for a 2-D X of any strides, by the plan kernel described by the arguments."""
    # the kernels take X's row stride only and read the bias densely: other layouts (a sliced or
    # transposed X, a strided bias) would be read as if packed, so they are copied first
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    args = KernelArgs(values, meta, tiles, sections, items, row_parts, unit_ptr, unit_order, counters, *sizes, backend)
    return launch(x, args, bias)


@plan_linear.register_fake
def _(x, bias, values, meta, tiles, sections, items, row_parts, unit_ptr, unit_order, counters, sizes, backend):
    return x.new_empty((x.shape[0], sizes[0]))


@torch.library.custom_op("cross::row_linear", mutates_args=())
def row_linear(x: torch.Tensor, bias: Optional[torch.Tensor], values: torch.Tensor, meta: torch.Tensor,
               row_ptr: torch.Tensor, heads: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the row kernel; sizes = (M, K, propagate)."""
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    return row_launch(x, RowArgs(values, meta, row_ptr, heads, *sizes), bias)


@row_linear.register_fake
def _(x, bias, values, meta, row_ptr, heads, sizes):
    return x.new_empty((x.shape[0], sizes[0]))


@torch.library.custom_op("cross::slice_linear", mutates_args=())
def slice_linear(x: torch.Tensor, bias: Optional[torch.Tensor], heads: torch.Tensor, values: torch.Tensor,
                 ranges: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the slice kernel; sizes = SliceArgs' ints (M, K, tiles,
    pieces, warps, blocks, rt, smem, producers)."""
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    return slice_run(x, SliceArgs(heads, values, ranges, *sizes), bias)


@slice_linear.register_fake
def _(x, bias, heads, values, ranges, sizes):
    return x.new_empty((x.shape[0], sizes[0]))


@torch.library.custom_op("cross::wgmma24_linear", mutates_args=())
def wgmma24_linear(x: torch.Tensor, bias: Optional[torch.Tensor], values: torch.Tensor, counters: torch.Tensor,
                   sizes: list[int]) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) by the warpgroup 2:4 kernel; sizes = Wgmma24Args' ints (M, K,
    row blocks, chunks, warpgroups, m-tiles, split, word slots, SMs, compressed, its overflow, sized,
    propagate, lone halves)."""
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    return wgmma24_run(x, Wgmma24Args(values, counters, *sizes), bias)


@wgmma24_linear.register_fake
def _(x, bias, values, counters, sizes):
    return x.new_empty((x.shape[0], sizes[0]))


def call(x: torch.Tensor, args: KernelArgs | RowArgs | SliceArgs | Wgmma24Args,
         bias: torch.Tensor | None) -> torch.Tensor:
    """Run the operator with a bucket's resolved kernel arguments."""
    if isinstance(args, Wgmma24Args):
        return torch.ops.cross.wgmma24_linear(x, bias, args.values, args.counters, [int(v) for v in args[2:]])
    if isinstance(args, RowArgs):
        return torch.ops.cross.row_linear(x, bias, args.values, args.meta, args.row_ptr, args.heads,
                                          [args.out_features, args.in_features, args.propagate])
    if isinstance(args, SliceArgs):
        return torch.ops.cross.slice_linear(x, bias, args.heads, args.values, args.ranges, list(args[3:]))
    tensors = [getattr(args, name) for name in _TENSORS]
    sizes = [getattr(args, name) for name in _INTS]
    return torch.ops.cross.plan_linear(x, bias, *tensors, sizes, args.backend)


@torch.library.custom_op("cross::decode_dense", mutates_args=())
def decode_dense_op(values: torch.Tensor, meta: torch.Tensor, kinds: torch.Tensor, value_offset: torch.Tensor,
                    meta_offset: torch.Tensor, nnz: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The dense [M, K] weight of a tiled weight; sizes = (M, K, tile_m, tile_k)."""
    from ..kernels.decode import decode_tensors

    return decode_tensors(values, meta, kinds, value_offset, meta_offset, nnz, sizes)


@decode_dense_op.register_fake
def _(values, meta, kinds, value_offset, meta_offset, nnz, sizes):
    return values.new_empty((sizes[0], sizes[1]))


@torch.library.custom_op("cross::decode_rows", mutates_args=())
def decode_rows_op(values: torch.Tensor, meta: torch.Tensor, row_ptr: torch.Tensor, sizes: list[int],
                   dtype: torch.dtype) -> torch.Tensor:
    """The dense [M, K] weight of a row format; sizes = (M, K)."""
    from ..kernels.decode import decode_row_tensors

    return decode_row_tensors(values, meta, row_ptr, sizes, dtype)


@decode_rows_op.register_fake
def _(values, meta, row_ptr, sizes, dtype):
    return values.new_empty((sizes[0], sizes[1]), dtype=dtype)


def decode(packed) -> torch.Tensor:
    """The dense weight of a PackedWeight: the decode kernel on a GPU, the reference decoder on
    the CPU; from the row format where the layer dropped its tiles."""
    if packed.device.type != "cuda":
        return packed.to_dense()  # whichever format is held
    if packed.tiled is None:
        r = packed.rows
        return torch.ops.cross.decode_rows(r.values, r.meta, r.row_ptr, [*r.shape], r.dtype)
    t = packed.tiled
    sizes = [t.grid.rows, t.grid.cols, *t.grid.tile_shape]
    return torch.ops.cross.decode_dense(t.values, t.meta, t.kinds, t.value_offset, t.meta_offset, t.nnz, sizes)
