"""Running a packed weight on an input: validation, token-count bucket, dense fallback, and the
choice between the GPU kernels and the reference executor."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .._checks import dtype_name
from ..pack.packed import PackedWeight
from ..pack.rows import rows_reference
from ..pack.slices import slices_reference
from ..pack.wgmma24 import wgmma24_reference
from .reference import reference_matmul


def check_input(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> None:
    """The op boundary: dtype, device and shape of the activations must match the packed weight."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    k = packed.shape[1]
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"input: expected last dimension {k} (in_features), got shape {tuple(x.shape)}")
    if x.dtype != packed.dtype:
        raise TypeError(f"input: expected dtype {dtype_name(packed.dtype)} (the weight's), got {dtype_name(x.dtype)}")
    if x.device != packed.device:
        raise ValueError(f"input: expected device {packed.device} (the weight's), got {x.device}")
    if bias is not None and (bias.shape != (packed.shape[0],) or bias.device != x.device):
        raise ValueError(f"bias: expected shape ({packed.shape[0]},) on {x.device}, got {tuple(bias.shape)} on {bias.device}")
    # the dense fallback (F.linear) rejects a bias of another dtype while the plan path would accept it
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias: expected dtype {dtype_name(x.dtype)} (the input's), got {dtype_name(bias.dtype)}")


class ReferencePathWarning(UserWarning):
    """Sparse layers on the CPU run their plans on the reference executor: correct, and slower than
    the dense product (the kernels, and the speed-ups the plans predict, are a GPU's).
    Silence with ``warnings.filterwarnings("ignore", category=cross.runtime.ReferencePathWarning)``."""


class KernelFallbackWarning(UserWarning):
    """A plan runs on a GPU through the reference executor because no kernel supports it.
    Silence with ``warnings.filterwarnings("ignore", category=cross.runtime.KernelFallbackWarning)``."""


def warn_without_kernel(packed: PackedWeight, kernels: dict, falls_back: bool) -> list[int]:
    """Warn (KernelFallbackWarning) when buckets that run the plan on a GPU have no kernel
    (``kernels[i]`` is None: e.g. the slice kernel's buckets below sm_90) and so run on the
    reference executor. ``falls_back``: the layer runs its fallback buckets as the dense product
    (a kept copy, or decoded), so those are not counted. Returns the indices of the buckets
    concerned."""
    if packed.device.type != "cuda":
        return []
    bad = [i for i, pb in enumerate(packed.buckets)
           if kernels.get(i) is None and not (pb.plan.fallback and falls_back)]
    if bad:
        if all(packed.buckets[i].plan.kernel == "slices" for i in bad):
            why, fix = "the slice kernel needs an sm_90+ GPU", "plan with slice_kernel=False"
        elif all(packed.buckets[i].plan.kernel == "wgmma24" for i in bad):
            why, fix = "the warpgroup 2:4 kernel needs a compute capability 9.0 GPU", "plan with wgmma_kernel=False"
        else:
            why, fix = "no kernel backend accepts it", "plan with the default options"
        spans = ", ".join(_span(packed.buckets[i].plan) for i in bad)
        warnings.warn(f"plan {packed.shape[0]}x{packed.shape[1]} on {packed.device}: {why}, so token counts {spans} run "
                      f"on the reference executor (correct, but far slower than the dense product); {fix} to get the "
                      f"GPU kernels. Silence with warnings.filterwarnings("
                      f"'ignore', category=cross.runtime.KernelFallbackWarning)", KernelFallbackWarning, stacklevel=3)
    return bad


def _span(bucket) -> str:
    if bucket.n_min == bucket.n_max:
        return f"{bucket.n_min}"
    return f"{bucket.n_min} and more" if bucket.n_max >= 2**31 - 1 else f"{bucket.n_min}-{bucket.n_max}"


def gpu_kernel_args(packed: PackedWeight, bucket_index: int, cache: dict | None = None):
    """The resolved kernel arguments of one bucket on the packed weight's GPU, or None where no
    kernel backend can run it (then the reference executor does). ``cache`` keeps them per bucket."""
    if cache is not None and bucket_index in cache:
        return cache[bucket_index]
    from ..kernels.launch import (default_backend, kernel_args, row_eligible, row_kernel_args, slice_eligible,
                                  slice_kernel_args, wgmma24_eligible, wgmma24_kernel_args)

    kernel = packed.buckets[bucket_index].plan.kernel
    if kernel == "rows":
        # no row format: dropped (PackedWeight.without_rows) where the bucket falls back
        args = row_kernel_args(packed) if packed.rows is not None and row_eligible(packed, packed.device) else None
    elif kernel == "slices":
        # no slice format: dropped (PackedWeight.without_slices) where the bucket falls back; before
        # sm_90 the bucket runs on the reference executor (warn_without_kernel says so)
        args = slice_kernel_args(packed) if slice_eligible(packed, packed.device) else None
    elif kernel == "wgmma24":
        # as the slice kernel's: dropped where the bucket falls back; elsewhere than compute
        # capability 9.0 the bucket runs on the reference executor (warn_without_kernel says so)
        args = wgmma24_kernel_args(packed) if wgmma24_eligible(packed, packed.device) else None
    elif packed.tiled is None:  # tiles dropped: this bucket falls back to the dense product
        args = None
    else:
        backend = default_backend(packed, packed.device)
        args = None if backend is None else kernel_args(packed, packed.buckets[bucket_index], backend)
    if cache is not None:
        cache[bucket_index] = args
    return args


def execute(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
            dense_weight: torch.Tensor | None = None, force_plan: bool = False,
            tiles: torch.Tensor | None = None, kernels: dict | None = None, checked: bool = False,
            decode_fallback: bool = False) -> torch.Tensor:
    """Y = X @ W^T (+ bias) for X of shape [..., K], Y of shape [..., M] in X's dtype.

    dense_weight: the weight as a dense tensor, used where the bucket's plan falls back to dense;
                  without it (or with force_plan) the plan runs regardless.
    decode_fallback: where the bucket falls back and no dense_weight is given, decode the packed
                  weight to a dense temporary for the dense product (``keep_dense="decode"``).
    tiles:        decoded executed tiles for the reference executor (a cache kept by the caller).
    kernels:      resolved GPU kernel arguments per bucket (a cache kept by the caller).
    checked:      the caller has already run check_input on these arguments.
    On a GPU the plan runs through the ``cross::plan_linear`` operator (``cross::row_linear`` for a
    bucket of the row kernel, ``cross::slice_linear`` for one of the slice kernel,
    ``cross::wgmma24_linear`` for one of the warpgroup 2:4 kernel); on the CPU, or where no kernel
    supports the plan, through the reference executor (``rows_reference``, ``slices_reference`` and
    ``wgmma24_reference`` for those kernels' buckets).
    """
    if not checked:
        check_input(x, packed, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    n = x2.shape[0]
    m = packed.shape[0]
    if n == 0:
        return x.new_empty((*lead, m))
    index = bucket_index(packed, n)
    bucket = packed.buckets[index]
    if bucket.plan.fallback and (dense_weight is not None or decode_fallback) and not force_plan:
        if dense_weight is None:
            from .op import decode

            dense_weight = decode(packed)
        y = F.linear(x2, dense_weight, bias)
    else:
        args = gpu_kernel_args(packed, index, kernels) if x.is_cuda else None
        if args is not None:
            from .op import call

            y = call(x2, args, bias)
        elif bucket.plan.kernel == "rows" and packed.rows is not None:  # else the tiles (a row format dropped)
            y = rows_reference(x2, packed.rows, bias, propagate=packed.plan.nan_policy == "propagate")
        elif bucket.plan.kernel == "slices" and packed.slices is not None:  # else the tiles (dropped)
            y = slices_reference(x2, packed.slices, bias)
        elif bucket.plan.kernel == "wgmma24" and packed.wgmma24 is not None:  # else the tiles (dropped)
            y = wgmma24_reference(x2, packed.wgmma24, bias)
        else:
            y = reference_matmul(x2, packed, bias, bucket=bucket, tiles=tiles)
    return y.reshape(*lead, m)


def bucket_index(packed: PackedWeight, n: int) -> int:
    for i, b in enumerate(packed.buckets):
        if b.plan.contains(n):
            return i
    raise ValueError(f"n_tokens: expected 1..{packed.plan.buckets[-1].n_max}, got {n}")
