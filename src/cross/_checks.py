"""Eager argument validation shared by every stage: errors say what was expected and what came."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: pruning does not depend on the dtype: float64 models may be pruned (and cast before sparsify_)
PRUNE_DTYPES = (torch.float64, *SUPPORTED_DTYPES)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_weight(weight, name: str = "weight", dtypes=SUPPORTED_DTYPES) -> torch.Tensor:
    """A 2-D floating weight in the nn.Linear layout (out_features x in_features), of one of ``dtypes``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (out_features x in_features), got {weight.dim()}-D with shape {tuple(weight.shape)}")
    if weight.dtype not in dtypes:
        expected = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({expected}), got {dtype_name(weight.dtype)}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(weight.shape)}")
    return weight


def check_tile_shape(tile_shape, name: str = "tile_shape") -> tuple[int, int]:
    """Tile shapes are powers of two >= 16 (the GPU kernels' tensor-core tiles need that)."""
    try:
        tm, tk = (int(v) for v in tile_shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a pair of ints, got {tile_shape!r}") from None
    for v in (tm, tk):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}: expected powers of two >= 16, got {(tm, tk)}")
    return tm, tk


def check_plan_tile_shape(tile_shape, name: str = "tile_shape") -> tuple[int, int]:
    """A tile shape a plan can use: powers of two >= 16, and at least 32 columns (a BITMAP tile's
    rows are 32-bit words)."""
    tm, tk = check_tile_shape(tile_shape, name)
    if tk < 32:
        raise ValueError(f"{name}: expected at least 32 tile columns for a plan (a BITMAP tile's rows are 32-bit "
                         f"words), got {(tm, tk)}")
    return tm, tk


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"expected all tensors on one device, got {listing}")
    return first
