"""The ways to compute Y[N, M] = X[N, K] @ W^T that `cross bench kernels` compares.

    dense                       torch.matmul(x, w.T): cuBLAS, the baseline of every speed-up
    cross                       what the runtime runs with SparseLinear.from_dense's defaults: the
                                planned kernel, or cuBLAS where the plan of this token count falls
                                back (on a compute capability 9.0 GPU the warpgroup 2:4 kernel is
                                offered under nan_policy "propagate", its layout "auto": both
                                timed where their bytes are close, else the compressed one)
    cross-<backend>-<kinds>     the plan kernel forced, tiles restricted to kinds (bitmap, dense,
                                hybrid) on backend cuda or triton, e.g. cross-cuda-bitmap
    cross+slices                what the runtime runs when the planner may offer buckets of up to 16
                                tokens to the slice kernel (make_plan(slice_kernel=True)), which
                                the measured check takes where it times faster than dense
    cross+wgmma24               what the runtime runs when the planner may offer buckets that the
                                row kernel does not take to the warpgroup 2:4 kernel, its format
                                in the slots layout (make_plan(wgmma_kernel=True,
                                nan_policy="ignore", wgmma_layout="slots")), which the measured
                                check takes where it times faster than dense
    cross+wgmma24c              the same with the 2:4 format's compressed layout
                                (make_plan(..., wgmma_layout="compressed"))
    cross+wgmma24l              the same with the compressed layout's lone halves
                                (make_plan(..., wgmma_layout="lone"))
    cross+wgmma24a              the same with either layout, the faster as the measured check
                                timed both (make_plan(..., wgmma_layout="auto"))
    cross-rows                  the row kernel forced (kernels/row_gemv.cu, one launch per pass
                                of up to 8 tokens; GPU only, K % 8 == 0, K <= 16384)
    cross-slices                the slice kernel forced (kernels/slice_mma.cu, one launch per pass
                                of up to 16 tokens; sm_90+, K % 8 == 0)
    cross-wgmma24               the warpgroup 2:4 kernel forced (kernels/wgmma24.cu, one launch of
                                blocks of 16-128 tokens; compute capability 9.0, K % 8 == 0)
    cross-wgmma24c              the same over the compressed layout
    cross-wgmma24l              the same over the compressed layout with lone halves
    cusparse-csr                w.to_sparse_csr() @ x.T (cuSPARSE SpMM through torch), in the
                                weight's dtype where torch runs it there, else fp16, else fp32
    triton-bsr-<b>              torch.sparse._triton_ops.bsr_dense_mm with b x b blocks (GPU only;
                                N padded to a multiple of 16, which the kernel needs)
    sparse-2:4                  torch.sparse.to_sparse_semi_structured (cuSPARSELt, else CUTLASS)
                                on a 2:4-pruned dense random weight of the same shape; 50% only

A method is prepared once per weight (planning, packing, format conversion: not timed), then
bound to an input, which gives the callable that is checked and timed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..partition.planner import WGMMA_LAYOUT_DEFAULT
from ..tiling import TileKind
from .report import FALLBACK_NOTE
from .timing import reason
from .weights import make_weight, prune_2to4, seeded, zero_fraction

DEFAULT_METHODS = ("dense", "cross", "cross-cuda-bitmap", "cusparse-csr", "triton-bsr-32", "sparse-2:4")
KINDS = {"bitmap": (TileKind.BITMAP,), "dense": (TileKind.DENSE,), "hybrid": (TileKind.DENSE, TileKind.BITMAP),
         "index": (TileKind.INDEX,), "all": (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX)}
CROSS_BACKENDS = ("cuda", "triton")
SEMI_SPARSITY = 0.5
BSR_N_MULTIPLE = 16  # bsr_dense_mm refuses a dense operand whose column count is not a multiple of 16


@dataclass(frozen=True)
class Method:
    """A parsed method name. family: dense, cross, rows, slices, wgmma24, csr, bsr or 2:4."""

    name: str
    family: str
    backend: str | None = None
    kinds: tuple[TileKind, ...] | None = None  # None: the planner's choice, as the runtime runs it
    block: int = 0
    slice_kernel: bool = False  # cross: the planner may offer buckets to the slice kernel
    wgmma_kernel: bool | str = False  # cross: the planner may offer buckets to the warpgroup 2:4 kernel ('auto':
    # where the measured check times them, as SparseLinear.from_dense's default)
    wgmma_layout: str = "slots"  # cross, wgmma24: the 2:4 format's layout (make_plan's wgmma_layout)

    def applies(self, sparsity: float) -> bool:
        """Whether the method has a row at this sparsity: 2:4 exists at 50% only."""
        return self.family != "2:4" or abs(sparsity - SEMI_SPARSITY) < 1e-9


#: the warpgroup 2:4 methods' last letter: their format's layout (none: slots)
_LAYOUT_SUFFIX = {"c": "compressed", "l": "lone", "a": "auto"}


def parse_method(name: str) -> Method:
    expected = ("expected dense, cross, cross+slices, cross+wgmma24, cross+wgmma24c, cross+wgmma24l, "
                "cross+wgmma24a, cross-cuda-<bitmap|dense|hybrid>, cross-triton-<bitmap|dense|hybrid|index|all>, "
                "cross-rows, cross-slices, cross-wgmma24, cross-wgmma24c, cross-wgmma24l, cusparse-csr, "
                f"triton-bsr-<block: a power of two >= 16> or sparse-2:4, got {name!r}")
    if name == "dense":
        return Method(name, "dense")
    if name == "cross":  # the runtime's defaults
        return Method(name, "cross", wgmma_kernel="auto", wgmma_layout=WGMMA_LAYOUT_DEFAULT)
    if name == "cusparse-csr":
        return Method(name, "csr")
    if name == "cross+slices":
        return Method(name, "cross", slice_kernel=True)
    if name in ("cross+wgmma24", "cross+wgmma24c", "cross+wgmma24l", "cross+wgmma24a"):
        return Method(name, "cross", wgmma_kernel=True, wgmma_layout=_LAYOUT_SUFFIX.get(name[-1], "slots"))
    if name in ("cross-wgmma24", "cross-wgmma24c", "cross-wgmma24l"):
        return Method(name, "wgmma24", wgmma_layout=_LAYOUT_SUFFIX.get(name[-1], "slots"))
    if name == "cross-rows":
        return Method(name, "rows")
    if name == "cross-slices":
        return Method(name, "slices")
    if name == "sparse-2:4":
        return Method(name, "2:4")
    parts = name.split("-")
    if (len(parts) == 3 and parts[0] == "cross" and parts[1] in CROSS_BACKENDS and parts[2] in KINDS
            and not (parts[1] == "cuda" and TileKind.INDEX in KINDS[parts[2]])):  # INDEX: Triton only
        return Method(name, "cross", backend=parts[1], kinds=KINDS[parts[2]])
    if len(parts) == 3 and parts[:2] == ["triton", "bsr"] and parts[2].isdigit():
        block = int(parts[2])
        if block >= 16 and not block & (block - 1):
            return Method(name, "bsr", block=block)
    raise ValueError(expected)


def _bsr_dense_mm():
    """torch's BSR Triton matmul, or None where torch has no Triton GPU support."""
    try:
        from torch.sparse._triton_ops import bsr_dense_mm
    except ImportError:
        return None
    return bsr_dense_mm


def _semi_structured_class():
    """The class to_sparse_semi_structured would use, where the backend it needs is present:
    cuSPARSELt if torch has it, else CUTLASS (to_sparse_semi_structured itself always picks
    cuSPARSELt unless a global flag is set, and fails without it)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


def unavailable(method: Method, m: int, k: int, capability: tuple[int, int] | None) -> str | None:
    """Why ``method`` cannot run an m x k bf16 weight on this machine (capability: the CUDA GPU's
    compute capability, None without one), or None if it can."""
    if method.family == "bsr":
        if capability is None:
            return "torch's BSR Triton kernels need a CUDA GPU"
        if _bsr_dense_mm() is None:
            return "torch.sparse._triton_ops.bsr_dense_mm is not available (torch without Triton GPU support)"
        if m % method.block or k % method.block:
            return f"{m}x{k} is not a whole number of {method.block}x{method.block} blocks"
    if method.family == "2:4":
        if capability is None:
            return "2:4 semi-structured sparsity needs a CUDA GPU"
        if capability < (8, 0):
            return f"2:4 semi-structured sparsity needs compute capability 8.0+, got {capability[0]}.{capability[1]}"
        limits = _semi_structured_class()._DTYPE_SHAPE_CONSTRAINTS[torch.bfloat16]
        if m % limits.sparse_min_rows or k % limits.sparse_min_cols:
            return (f"{_semi_structured_class().BACKEND} 2:4 needs rows a multiple of {limits.sparse_min_rows} and "
                    f"columns of {limits.sparse_min_cols}, got {m}x{k}")
    if method.family == "cross" and method.backend == "cuda" and capability is None:
        return "the cross CUDA backend needs a CUDA GPU"
    if method.family == "rows":
        from ..costmodel.roofline import row_kernel_fits

        if capability is None:
            return "the row kernel needs a CUDA GPU"
        if not row_kernel_fits(m, k, "bfloat16"):
            return f"the row kernel needs K % 8 == 0 and K <= 16384, got K = {k}"
    if method.family == "slices":
        if capability is None or capability < (9, 0):
            return "the slice kernel needs an sm_90+ GPU"
        if k % 8:
            return f"the slice kernel needs K % 8 == 0, got K = {k}"
    if method.family == "wgmma24":
        if capability != (9, 0):
            return "the warpgroup 2:4 kernel needs a compute capability 9.0 GPU"
        if k % 8:
            return f"the warpgroup 2:4 kernel needs K % 8 == 0, got K = {k}"
    return None


class Bound(NamedTuple):
    """A method bound to one input: fn() returns Y[N, M]."""

    fn: Callable[[], torch.Tensor]
    dtype: torch.dtype  # what it computes in
    note: str
    weight_bytes: int  # bytes of the weight in the format the call reads


@dataclass
class Prepared:
    """A method prepared for one weight. ``weight`` is the weight it computes with (the 2:4 method's
    own 2:4 weight, else the benchmark weight), the one its result is checked against."""

    weight: torch.Tensor
    sparsity: float
    bind: Callable[[torch.Tensor], Bound]


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def prepare(method: Method, w: torch.Tensor, *, tile=(64, 64), cost_model=None, n_programs=None,
            seed: int = 0) -> Prepared:
    """Plan, pack or convert ``w`` (bf16, on its device) for ``method``; nothing here is timed."""
    sparsity = zero_fraction(w)
    if method.family == "dense":
        return Prepared(w, sparsity, lambda x: Bound(lambda: torch.matmul(x, w.T), w.dtype, "", nbytes(w)))
    if method.family == "cross":
        return Prepared(w, sparsity, _prepare_cross(method, w, tile, cost_model, n_programs))
    if method.family == "rows":
        return Prepared(w, sparsity, _prepare_rows(w))
    if method.family == "slices":
        return Prepared(w, sparsity, _prepare_slices(w, tile))
    if method.family == "wgmma24":
        return Prepared(w, sparsity, _prepare_wgmma24(w, method.wgmma_layout))
    if method.family == "csr":
        return Prepared(w, sparsity, _prepare_csr(w))
    if method.family == "bsr":
        return Prepared(w, sparsity, _prepare_bsr(method.block, w))
    if method.family == "2:4":
        m, k = w.shape
        w24 = prune_2to4(make_weight(m, k, 0.0, "uniform", seeded(seed, m, k, "2:4"))).to(w.device)
        return Prepared(w24, zero_fraction(w24), _prepare_semi_structured(w24))
    raise ValueError(f"method: no preparation for family {method.family!r}")


def _prepare_cross(method: Method, w, tile, cost_model, n_programs):
    from ..kernels.launch import (kernel_args, launch, row_eligible, row_kernel_args, row_launch, slice_eligible,
                                  slice_kernel_args, slice_run, wgmma24_eligible, wgmma24_kernel_args, wgmma24_run)
    from ..nn.linear import wgmma_options
    from ..pack import pack
    from ..pack.rows import rows_reference
    from ..pack.slices import slices_reference
    from ..pack.wgmma24 import wgmma24_reference
    from ..partition import make_plan

    # a forced tile method runs the tile kernel at every token count; the cross+wgmma24 methods plan with
    # nan_policy 'ignore' (the kernel then multiplies only the stored slots), as they were first measured;
    # cross, as SparseLinear.from_dense's defaults plan (nan_policy 'propagate', wgmma_kernel 'auto')
    options = ({"row_kernel": False, "allowed_kinds": method.kinds} if method.kinds is not None
               else wgmma_options({"slice_kernel": method.slice_kernel, "wgmma_kernel": method.wgmma_kernel,
                                   "wgmma_layout": method.wgmma_layout,
                                   "nan_policy": "ignore" if method.wgmma_kernel is True else "propagate"},
                                  w.device, "auto", "auto"))
    packed = pack(w, make_plan(w, tile_shape=tile, cost_model=cost_model, n_programs=n_programs, **options))
    if method.kinds is None and w.is_cuda:  # what the runtime runs: predicted wins checked on the GPU
        from ..runtime import measure_weight

        packed = measure_weight(packed, w)

    def bind(x):
        bucket = packed.bucket_for(x.shape[0])
        if method.kinds is None and bucket.plan.fallback:
            why = f"{FALLBACK_NOTE} ({bucket.plan.reason})" if bucket.plan.reason else FALLBACK_NOTE
            return Bound(lambda: torch.matmul(x, w.T), w.dtype, why, packed.nbytes)
        if bucket.plan.kernel == "rows":
            if row_eligible(packed, x.device):
                rargs = row_kernel_args(packed)
                return Bound(lambda: row_launch(x, rargs), w.dtype, _note("row kernel", bucket), packed.rows.nbytes)
            return Bound(lambda: rows_reference(x, packed.rows), w.dtype, "row format, reference", packed.rows.nbytes)
        if bucket.plan.kernel == "slices":
            if slice_eligible(packed, x.device):
                sargs = slice_kernel_args(packed)
                fmt = "elements" if packed.slices.elements else "pairs"
                return Bound(lambda: slice_run(x, sargs), w.dtype, _note(f"slice kernel ({fmt})", bucket),
                             packed.slices.nbytes)
            return Bound(lambda: slices_reference(x, packed.slices), w.dtype, "slice format, reference",
                         packed.slices.nbytes)
        if bucket.plan.kernel == "wgmma24":
            layout = packed.wgmma24.layout  # with 'auto', the check's choice
            if wgmma24_eligible(packed, x.device):
                wargs = wgmma24_kernel_args(packed)
                return Bound(lambda: wgmma24_run(x, wargs), w.dtype,
                             _note(f"warpgroup 2:4 kernel, {layout} layout", bucket), packed.wgmma24.nbytes)
            return Bound(lambda: wgmma24_reference(x, packed.wgmma24), w.dtype,
                         f"2:4 format, {layout} layout, reference", packed.wgmma24.nbytes)
        kargs = kernel_args(packed, bucket, method.backend)  # resolved once, as the runtime does
        held = packed.nbytes_by_format()  # what the tile kernel reads: its formats and the tables
        tile_bytes = held.get("tiles", 0) + held["tables"]
        return Bound(lambda: launch(x, kargs), w.dtype, _note(f"{kargs.backend} kernel", bucket), tile_bytes)

    return bind


def _note(kernel: str, bucket) -> str:
    """What ran, with the reason of a bucket that runs its plan where there is one (the other kernels
    the measured check timed); a forced run of a bucket that falls back gets the kernel alone."""
    plan = bucket.plan
    return f"{kernel} ({plan.reason})" if plan.reason and not plan.fallback else kernel


def _prepare_rows(w):
    from ..kernels.launch import row_args, row_launch
    from ..pack.rows import RowWeight

    rows = RowWeight.from_dense(w)
    args = row_args(rows)
    return lambda x: Bound(lambda: row_launch(x, args), w.dtype, "row kernel", rows.nbytes)


def _prepare_wgmma24(w, layout: str):
    from ..kernels.launch import wgmma24_args, wgmma24_run
    from ..pack.wgmma24 import Wgmma24Weight

    sw = Wgmma24Weight.for_layout(w, layout)  # as the runtime packs it
    args = wgmma24_args(sw)
    return lambda x: Bound(lambda: wgmma24_run(x, args), w.dtype, "warpgroup 2:4 kernel", sw.nbytes)


def _prepare_slices(w, tile):
    """The slice kernel forced, in the format the planner chooses for the weight (roofline.slice_format
    on its tile counts, as make_plan takes it)."""
    from ..costmodel.roofline import slice_format
    from ..kernels.launch import slice_args, slice_run
    from ..pack.slices import SliceWeight
    from ..tiling import TileGrid

    grid = TileGrid.for_weight(w, tile)
    fmt, _ = slice_format(grid.tile_nnz(w), grid.tile_sizes(), *w.shape)
    sw = SliceWeight.from_dense(w, elements=fmt == "elements")
    args = slice_args(sw)
    return lambda x: Bound(lambda: slice_run(x, args), w.dtype, f"slice kernel ({fmt})", sw.nbytes)


def _prepare_csr(w):
    """cuSPARSE SpMM through torch. torch dispatches CUDA CSR @ dense for fp16 and bf16 too, but
    whether cuSPARSE runs a dtype depends on its version (and on the CPU, MKL runs fp32 only), so
    the weight's dtype is tried first, then fp16, then fp32, and the one that ran is recorded."""
    candidates = list(dict.fromkeys((w.dtype, torch.float16, torch.float32)))
    converted: dict[torch.dtype, torch.Tensor] = {}
    refused: dict[torch.dtype, str] = {}

    def bind(x):
        for dtype in candidates:
            if dtype in refused:
                continue
            if dtype not in converted:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    converted[dtype] = w.to(dtype).to_sparse_csr()
            a = converted[dtype]

            def fn(a=a, dtype=dtype):  # casts (no-ops in the weight's dtype) are part of what a caller pays
                return (a @ x.to(dtype).T).T.to(x.dtype)

            try:
                fn()
            except RuntimeError as e:  # torch raises NotImplementedError (a RuntimeError) for a dtype it lacks
                refused[dtype] = reason(e)
                del converted[dtype]
                continue
            note = "; ".join(f"{str(d).removeprefix('torch.')} refused ({why})" for d, why in refused.items())
            return Bound(fn, dtype, note, nbytes(a.values(), a.crow_indices(), a.col_indices()))
        raise RuntimeError("torch's CSR matmul refused every dtype: "
                           + "; ".join(f"{str(d).removeprefix('torch.')}: {why}" for d, why in refused.items()))

    return bind


def _prepare_bsr(block, w):
    bsr_dense_mm = _bsr_dense_mm()
    a = w.to_sparse_bsr((block, block))
    weight_bytes = nbytes(a.values(), a.crow_indices(), a.col_indices())

    def bind(x):
        n, k = x.shape
        padded = -(-n // BSR_N_MULTIPLE) * BSR_N_MULTIPLE
        if padded == n:
            xt = x.T
            return Bound(lambda: bsr_dense_mm(a, xt).T, w.dtype, "", weight_bytes)
        buf = torch.zeros(k, padded, dtype=x.dtype, device=x.device)

        def fn():
            buf[:, :n].copy_(x.T)
            return bsr_dense_mm(a, buf)[:, :n].T

        return Bound(fn, w.dtype, f"N padded to {padded} inside the timed call", weight_bytes)

    return bind


def _prepare_semi_structured(w24):
    cls = _semi_structured_class()
    a = cls.from_dense(w24)
    weight_bytes = nbytes(a.packed, a.meta)
    note = f"{cls.BACKEND}; its own 2:4-pruned dense random weight (exactly 50%), not this row's pattern"
    return lambda x: Bound(lambda: torch.nn.functional.linear(x, a), w24.dtype, note, weight_bytes)
