"""SparseLinear: an nn.Linear whose pruned weight is stored in the tile formats its Plan chose.

The conversion is offline and one-way for the weight's dtype: plan (``cross.partition.make_plan``),
pack (``cross.pack.pack``), keep the bias, and keep a dense copy of the weight only where some
token-count bucket is predicted to run faster dense. ``forward`` hands everything to
``cross.runtime.execute``. The module is for inference: it has no weight gradient.

Its state dict is nn.Linear's (``weight``, decoded from the packed form, and ``bias``), so that a
sparsified model's checkpoint is its dense model's; loading one into it checks that the weight is
the one it was packed from (the packed form cannot take another). ``cross.save`` stores the packed
form instead (``packed_state``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
from torch import nn

from .._checks import check_weight, dtype_name
from ..partition import DEFAULT_BUCKETS, Plan, make_plan
from ..partition.plan import KERNEL_NAMES, bucket_name
from ..pack import PackedWeight, pack
from ..runtime import check_input, decode_executed_tiles, execute
from ..runtime.dispatch import gpu_kernel_args, warn_without_kernel
from ..runtime.measure import measure_weight
from ..tiling import TileKind

KEEP_DENSE = ("auto", True, False, "decode")
MEASURE = ("auto", True, False)
#: from_dense's and sparsify_'s ``wgmma_kernel``: 'auto' (the default) offers buckets to the warpgroup 2:4
#: kernel where the measured check will time its candidates (``wgmma_options``); True or False: as given
#: to make_plan. Measured on the H100 (benchmarks/results/h100/wgmma24_propagate/): the Llama-2-7B-shaped
#: decoder at 70%, siblings stacked, decodes at batch 16 at 1.25x with it against 1.13x without, and at
#: batch 1 and 8 as fast as without.
WGMMA_KERNEL = ("auto", True, False)
#: The casts a SparseLinear takes (``.half()``, ``.to(torch.bfloat16)``, ...): between these dtypes its
#: plan's choices hold (the same bytes, the same kernels)
CASTS = {torch.float16, torch.bfloat16}


def check_measure(measure, device: torch.device | None = None) -> None:
    """``measure`` is one of MEASURE, and True only for a weight on a CUDA device (``device``;
    None checks the value alone)."""
    if measure not in MEASURE:
        raise ValueError(f"measure: expected one of {MEASURE}, got {measure!r}")
    if measure is True and device is not None and device.type != "cuda":
        raise ValueError(f"measure=True: expected a weight on a CUDA device, got one on {device} (timings "
                         "are a GPU fact; use measure='auto' or False on the CPU)")


def check_values(weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """A weight whose values can be read: planning and packing look at every element."""
    if isinstance(weight, torch.Tensor) and weight.is_meta:
        raise ValueError(f"{name}: expected a weight with values, got one on the meta device (no data to plan "
                         "from): load the weights before sparsifying")
    return weight


def plan_linear(weight: torch.Tensor, *, cost_model=None, tile_shape=(64, 64), buckets=None,
                nan_policy: str = "propagate", balance: str = "full", unit_mode: str = "split",
                **plan_options) -> Plan:
    """The Plan ``SparseLinear.from_dense`` makes for ``weight`` (``plan_options`` go to make_plan:
    allowed_kinds, swing_band, n_programs, row_kernel, slice_kernel, wgmma_kernel, wgmma_layout)."""
    check_values(weight)
    return make_plan(weight.detach(), tile_shape=tile_shape, cost_model=cost_model,
                     buckets=DEFAULT_BUCKETS if buckets is None else buckets, nan_policy=nan_policy,
                     balance=balance, unit_mode=unit_mode, **plan_options)


def check_plan(plan: Plan, weight: torch.Tensor) -> Plan:
    """A plan given to from_dense must be one made for a weight of this shape and dtype."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a cross.partition.Plan, got {type(plan).__name__}")
    if plan.shape != tuple(weight.shape):
        raise ValueError(f"plan: expected a plan for shape {tuple(weight.shape)}, got one for {plan.shape}")
    if plan.dtype != dtype_name(weight.dtype):
        raise ValueError(f"plan: expected a plan for dtype {dtype_name(weight.dtype)}, got one for {plan.dtype}")
    return plan


def bucket_facts(plan: Plan, dense_kept: bool) -> list[dict]:
    """Per token-count bucket: what runs there and the predicted times.

    ``runs`` is 'dense' where the bucket falls back and the layer has the dense product (a kept
    copy, or ``keep_dense="decode"``: then the decode adds to ``run_us``, which does not count it);
    otherwise 'plan' (a fallback bucket without either runs its plan, slower than predicted dense).
    ``kernel`` is the plan's kernel ('tiles' or 'rows': partition.plan.KERNELS). ``run_us`` is
    the predicted time of what runs; ``speedup`` is dense_us / run_us. Buckets
    timed on the GPU (``measure``) add ``measured_us`` and ``measured_dense_us`` (None elsewhere).
    """
    out = []
    for b in plan.buckets:
        runs = "dense" if b.fallback and dense_kept else "plan"
        effective = b.dense_us if runs == "dense" else b.predicted_us
        out.append({"n_min": b.n_min, "n_max": b.n_max, "fallback": bool(b.fallback), "runs": runs, "kernel": b.kernel,
                    "predicted_us": float(b.predicted_us), "dense_us": float(b.dense_us), "run_us": float(effective),
                    "speedup": float(b.dense_us / max(effective, 1e-9)),
                    "measured_us": b.measured_us, "measured_dense_us": b.measured_dense_us})
    return out


def plan_facts(plan: Plan) -> dict:
    """Name-free facts of a plan alone (no packed buffers needed)."""
    return {
        "shape": plan.shape,
        "dtype": plan.dtype,
        "tile_shape": plan.tile_shape,
        "tiles": plan.kind_counts(),
        "swing": int(plan.swing.sum()),
        "swing_converted": int(plan.provenance.get("swing_converted", 0)),
        # 'hybrid', 'single kind', or the twin that replaced a hybrid ('all sparse' / 'all dense')
        "kinds_chosen": plan.provenance.get("kinds_chosen", "?"),
        "nan_policy": plan.nan_policy,
        "cost_model": plan.provenance.get("cost_model", "?"),
        # the warpgroup 2:4 format's layout (with 'auto', the one the measured check kept); None
        # where the plan was made without the option
        "wgmma_layout": plan.provenance.get("options", {}).get("wgmma_layout"),
    }


def measures(measure, device: torch.device, keep_dense) -> bool:
    """Whether from_dense times the plan on the GPU (the measured check) with these arguments."""
    return measure is True or (measure == "auto" and device.type == "cuda" and keep_dense is not False)


def wgmma_options(plan_options: dict, device: torch.device, measure, keep_dense) -> dict:
    """``plan_options`` (make_plan's) with ``wgmma_kernel`` decided for a weight on ``device``: 'auto' (or
    absent) is True where the measured check runs (``measures``) on a compute capability 9.0 GPU (the
    kernel's sm_90a build; untimed, its candidates would only fall back) and slice_kernel is not asked
    for, else False; True and False stay."""
    choice = plan_options.get("wgmma_kernel", "auto")
    if not (isinstance(choice, bool) or choice == "auto"):
        raise ValueError(f"wgmma_kernel: expected one of {WGMMA_KERNEL}, got {choice!r}")
    if choice == "auto":
        choice = (not plan_options.get("slice_kernel", False) and measures(measure, device, keep_dense)
                  and device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0))
    return {**plan_options, "wgmma_kernel": bool(choice)}


def _bucket_runs(bucket, kernel: str, falls_back: bool) -> bool:
    """The bucket runs ``kernel`` (``plan.KERNELS``): its plan's kernel, and not a fallback the layer
    runs dense."""
    return bucket.kernel == kernel and not (bucket.fallback and falls_back)


def _formats_run(packed: PackedWeight, falls_back: bool) -> PackedWeight:
    """``packed`` with only the formats some bucket runs (``falls_back``: the layer runs its fallback
    buckets as the dense product, a kept copy or decoded)."""
    def runs(kernel):
        return any(_bucket_runs(b, kernel, falls_back) for b in packed.plan.buckets)

    if packed.tiled is not None and packed.rows is not None and not runs("tiles"):
        # no bucket runs the tile kernel: the row format holds the weight (and is what the
        # fallback buckets decode under decode_fallback)
        packed = packed.without_tiles()
    if packed.tiled is not None and packed.rows is not None and not runs("rows"):
        # no bucket runs the row kernel (near wins the measured check did not take fall back)
        packed = packed.without_rows()
    if packed.slices is not None and not runs("slices"):
        # no bucket runs the slice kernel (candidates the measured check did not take fall back)
        packed = packed.without_slices()
    if packed.wgmma24 is not None and not runs("wgmma24"):
        # no bucket runs the warpgroup 2:4 kernel (candidates the measured check did not take fall back)
        packed = packed.without_wgmma24()
    return packed


class SparseLinear(nn.Module):
    """Y = X @ W^T + b with W stored in the tile formats of its Plan. Inference only.

    Build with :meth:`from_dense`. State:
        packed        PackedWeight: the weight's formats and the kernel tables (not parameters);
                      where no bucket runs the tile kernel (each runs the row kernel or falls back
                      to the dense product) only the row format is held (``PackedWeight.without_tiles``);
                      where a bucket runs the slice kernel, also the slice format; where one
                      runs the warpgroup 2:4 kernel, also its 2:4 format
        bias          buffer [out_features] in the weight's dtype, or None
        dense_weight  buffer [out_features, in_features], or None: the dense copy used by the
                      buckets that fall back to the dense product
        decode_fallback  True: no dense copy; the buckets that fall back decode the packed weight
                      (its tiles, or its row format where the tiles were dropped) to a dense
                      temporary on each call (``keep_dense="decode"``)
    There is no autograd through the sparse weight: forward refuses inputs that require grad
    while grad mode is on (run under ``torch.no_grad()`` or ``torch.inference_mode()``).
    Device moves (``.to(device)``, ``.cuda()``, ``.cpu()``) move the packed weight. Casts between
    float16 and bfloat16 (``.half()``, ``.bfloat16()``, ``.to(dtype)``) re-pack it under the same plan
    (the same bytes and kernels: its choices, measured ones too, hold); a weight that would cast to
    Inf is refused. Other casts (to or from float32) are refused, because the plan and formats were
    chosen for the weight's bytes.
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None,
                 dense_weight: torch.Tensor | None = None, *, weight_requires_grad: bool = True,
                 decode_fallback: bool = False, bias_requires_grad: bool | None = None):
        super().__init__()
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed: expected a cross.pack.PackedWeight, got {type(packed).__name__}")
        if decode_fallback and dense_weight is not None:
            raise ValueError("decode_fallback: expected no dense_weight (the two are alternatives)")
        m, k = packed.shape
        for name, t, shape in (("bias", bias, (m,)), ("dense_weight", dense_weight, (m, k))):
            if t is None:
                continue
            if tuple(t.shape) != shape or t.dtype != packed.dtype or t.device != packed.device:
                raise ValueError(f"{name}: expected {dtype_name(packed.dtype)} {shape} on {packed.device}, "
                                 f"got {dtype_name(t.dtype)} {tuple(t.shape)} on {t.device}")
        self.packed = _formats_run(packed, dense_weight is not None or decode_fallback)
        self.register_buffer("bias", bias)
        self.register_buffer("dense_weight", dense_weight, persistent=False)
        self._weight_requires_grad = weight_requires_grad
        # the bias's flag where it differs (frozen weight, trained bias); None: the weight's
        self._bias_requires_grad = weight_requires_grad if bias_requires_grad is None else bias_requires_grad
        # sparsify_'s record of the nn.Parameter the weight came from (a WeightSource), so that
        # unsparsify_ restores weights tied between modules; None for a layer built alone
        self._weight_source = None
        self.decode_fallback = bool(decode_fallback)
        self._tiles: torch.Tensor | None = None  # decoded executed tiles, for the CPU reference path
        self._kernels: dict = self._resolve_kernels()  # GPU kernel arguments per bucket, resolved once
        warn_without_kernel(packed, self._kernels, self.falls_back)

    def _resolve_kernels(self) -> dict:
        """Kernel arguments of every bucket, on a GPU (empty on the CPU). Resolved eagerly so that
        forward does no host work beyond the launch and torch.compile traces a plain lookup."""
        if self.packed.device.type != "cuda":
            return {}
        cache: dict = {}
        for i in range(len(self.packed.buckets)):
            gpu_kernel_args(self.packed, i, cache)
        return cache

    # ------------------------------------------------------------------ construction
    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, *, cost_model=None, tile_shape=(64, 64), buckets=None,
                   nan_policy: str = "propagate", balance: str = "full", unit_mode: str = "split",
                   keep_dense="auto", plan: Plan | None = None, measure="auto", dense_times: dict | None = None,
                   **plan_options) -> "SparseLinear":
        """Plan, pack and wrap ``linear``'s weight (a dense tensor with zeros), on its device.

        cost_model, tile_shape, buckets (None: DEFAULT_BUCKETS), nan_policy, balance, unit_mode and
        ``plan_options`` (allowed_kinds, swing_band, n_programs, row_kernel, slice_kernel,
        wgmma_kernel, wgmma_layout) go to ``make_plan``; they are unused when ``plan`` (a Plan made
        for a weight of this shape and dtype) is given. wgmma_kernel: 'auto' (the default) offers
        buckets to the warpgroup 2:4 kernel where the measured check times them on a compute
        capability 9.0 GPU, under either nan_policy (``wgmma_options``); True or False: as given.
        keep_dense: 'auto' keeps a dense copy iff some bucket falls back to dense; True keeps it
        always; False never (every bucket then runs its plan, predicted win or not); 'decode'
        never, and the buckets that fall back decode the packed weight to a dense temporary on
        each call before the dense product: the layer's memory stays below dense, at the cost of
        the decode in those buckets.
        measure: 'auto' (the default) times, on a CUDA device, every bucket the plan is predicted
        to win against the dense product, and every near win (the row kernel predicted within 5% of
        it, or the slice or warpgroup 2:4 kernel's candidate), each with its bucket's alternative
        kernels, and keeps the fastest plan only where it measured faster
        (``cross.runtime.measure_plan``; skipped on the CPU and with keep_dense=False, where the
        plan runs anyway); True always (a CUDA weight is required); False never: the cost model's
        prediction alone decides. ``dense_times``: a dict shared between layers so that each
        dense shape is timed once.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        if keep_dense not in KEEP_DENSE:
            raise ValueError(f"keep_dense: expected one of {KEEP_DENSE}, got {keep_dense!r}")
        weight = check_values(check_weight(linear.weight.detach(), name="linear.weight"), name="linear.weight")
        check_measure(measure, weight.device)
        if plan is None:
            plan_options = wgmma_options(plan_options, weight.device, measure, keep_dense)
            plan = plan_linear(weight, cost_model=cost_model, tile_shape=tile_shape, buckets=buckets,
                               nan_policy=nan_policy, balance=balance, unit_mode=unit_mode, **plan_options)
        else:
            check_plan(plan, weight)
        packed = pack(weight, plan)
        if measures(measure, weight.device, keep_dense):
            packed = measure_weight(packed, weight, dense_times=dense_times)
            plan = packed.plan
        keep = any(b.fallback for b in plan.buckets) if keep_dense == "auto" else keep_dense is True
        dense = weight.clone(memory_format=torch.contiguous_format) if keep else None
        bias = None if linear.bias is None else linear.bias.detach().to(weight.dtype).clone()
        return cls(packed, bias, dense, weight_requires_grad=linear.weight.requires_grad,
                   decode_fallback=keep_dense == "decode",
                   bias_requires_grad=None if linear.bias is None else linear.bias.requires_grad)

    def to_dense_linear(self) -> nn.Linear:
        """An nn.Linear with exactly the packed weight and a copy of the bias."""
        m, k = self.packed.shape
        linear = nn.Linear(k, m, bias=self.bias is not None, device="meta", dtype=self.dtype)
        linear.weight = nn.Parameter(self.packed.to_dense(), requires_grad=self._weight_requires_grad)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.clone(), requires_grad=self._bias_requires_grad)
        return linear

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, None)

    def runs_dense_copy(self, n: int) -> bool:
        """Whether a call with ``n`` rows (batch x sequence) runs the dense copy on cuBLAS: ``n``'s
        bucket falls back and the layer keeps its dense weight."""
        return self.dense_weight is not None and n > 0 and self.plan.bucket_for(n).fallback

    def forward_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Output features ``[lo, hi)`` of ``forward(x)``, for a call that runs the dense copy
        (``runs_dense_copy``): the product of those rows of the copy alone, the cuBLAS call a layer of
        those rows would make (stacked siblings take their rows so where their product falls back)."""
        return self._forward(x, (int(lo), int(hi)))

    def _forward(self, x: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
            raise RuntimeError("SparseLinear is inference-only (no gradients through the sparse weight), got an "
                               "input that requires grad with grad mode on: run under torch.no_grad() or "
                               "torch.inference_mode(), or use to_dense_linear() / cross.unsparsify_ to train")
        if _any_autocast() and isinstance(x, torch.Tensor) and x.is_floating_point():
            kind = "cuda" if x.is_cuda else "cpu" if x.is_cpu else None
            if kind is not None and torch.is_autocast_enabled(kind):
                # under autocast the layer computes in its own dtype (its plan's), the input cast to it, and
                # gives the output in the autocast dtype, as nn.Linear's (an fp16 layer under bf16 autocast
                # takes bf16 inputs beyond fp16's range as Inf)
                with torch.autocast(kind, enabled=False):
                    return self._run(x.to(self.dtype), rows).to(torch.get_autocast_dtype(kind))
        return self._run(x, rows)

    def _run(self, x: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        check_input(x, self.packed, self.bias)
        if rows is not None:
            lo, hi = rows
            n = x.numel() // x.shape[-1]
            if not (0 <= lo < hi <= self.out_features and self.runs_dense_copy(n)):
                raise ValueError(f"forward_rows: expected rows within 0..{self.out_features} of a call that runs the "
                                 f"dense copy, got [{lo}, {hi}) at {n} tokens")
            return nn.functional.linear(x, self.dense_weight[lo:hi], None if self.bias is None else self.bias[lo:hi])
        tiles = None
        if x.device.type == "cpu" and self._runs_tiles(x):
            if self._tiles is None:
                self._tiles = decode_executed_tiles(self.packed)
            tiles = self._tiles
        return execute(x, self.packed, self.bias, dense_weight=self.dense_weight, tiles=tiles, kernels=self._kernels,
                       decode_fallback=self.decode_fallback, checked=True)

    def _runs_tiles(self, x: torch.Tensor) -> bool:
        n = x.numel() // x.shape[-1]
        if n == 0:
            return False
        return _bucket_runs(self.plan.bucket_for(n), "tiles", self.falls_back)

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.device))
        if probe.dtype != self.dtype and {probe.dtype, self.dtype} <= CASTS:
            self._cast(probe.dtype)  # the buffers (bias, dense copy) are cast below
        elif probe.dtype != self.dtype:
            raise TypeError(f"SparseLinear {self.out_features}x{self.in_features}: expected device moves and casts "
                            f"between float16 and bfloat16, got a cast from {dtype_name(self.dtype)} to "
                            f"{dtype_name(probe.dtype)}; the plan and tile formats were chosen for "
                            f"{dtype_name(self.dtype)}'s bytes: cast the dense model to {dtype_name(probe.dtype)} and "
                            f"sparsify it again (modules visited before this one may already have been cast)")
        if probe.device != self.device:
            self.packed = self.packed.to(probe.device)
            self._tiles = None
            self._kernels = self._resolve_kernels()
            warn_without_kernel(self.packed, self._kernels, self.falls_back)
        return super()._apply(fn, recurse)

    def _cast(self, dtype: torch.dtype) -> None:
        """The packed weight in ``dtype`` (float16 <-> bfloat16) under the same plan: the formats' bytes
        and the kernels' speed are the same in both, so its choices, measured ones too, still hold.
        Raises, before changing anything, where a value would cast to Inf (beyond float16's range)."""
        weight = self.packed.to_dense()
        cast = weight.to(dtype)
        if not bool((cast.isfinite() | ~weight.isfinite()).all()):
            raise ValueError(f"SparseLinear {self.out_features}x{self.in_features}: expected weights within "
                             f"{dtype_name(dtype)}'s range, got values that cast to Inf (largest |w| "
                             f"{float(weight.float().abs().max()):.4g}); modules visited before this one may "
                             f"already have been cast")
        plan = replace(self.packed.plan, dtype=dtype_name(dtype))
        self.packed = _formats_run(pack(cast, plan), self.falls_back)
        self._tiles = None
        self._kernels = self._resolve_kernels()
        warn_without_kernel(self.packed, self._kernels, self.falls_back)

    # ------------------------------------------------------------------ state dict
    def _weight_values(self) -> torch.Tensor:
        """The weight as a dense tensor: the dense copy kept, else decoded from the packed form."""
        return self.dense_weight if self.dense_weight is not None else self.packed.to_dense()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not _PACKED_STATE[0]:  # a copy, not the kept dense one: an edit of it must not change one path alone
            weight = self._weight_values()
            destination[prefix + "weight"] = (weight.clone() if weight is self.dense_weight else weight).detach()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "weight"
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        given = state_dict[key]
        if tuple(given.shape) != tuple(self.packed.shape):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(given.shape)} from "
                              f"checkpoint, the shape in current model is {tuple(self.packed.shape)}.")
            return
        mine = self._weight_values()
        given = given.detach().to(device=mine.device, dtype=mine.dtype)
        if not bool(((given == mine) | (given.isnan() & mine.isnan())).all()):
            error_msgs.append(f"{key}: expected the weight this SparseLinear was packed from, got another (its "
                              "packed form cannot take a new weight in place): load the state dict into the "
                              "dense model (cross.unsparsify_ first) and sparsify_ it again")

    # ------------------------------------------------------------------ facts
    @property
    def plan(self) -> Plan:
        return self.packed.plan

    @property
    def in_features(self) -> int:
        return self.packed.shape[1]

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.packed.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The weight's shape and dtype as an nn.Linear's ``weight`` has them, on the meta device: for
        code that reads ``layer.weight.dtype`` or ``.shape`` (Hugging Face's T5 casts its input to
        ``wo.weight.dtype``); it holds no values (``to_dense_linear()`` gives them), so arithmetic
        with it fails loudly, and torch's fused paths that would read the values are not taken."""
        meta = self.__dict__.get("_weight_meta")
        if meta is None or meta.dtype != self.dtype:
            meta = self.__dict__["_weight_meta"] = torch.empty(self.out_features, self.in_features,
                                                               dtype=self.dtype, device="meta")
        return meta

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def dense_kept(self) -> bool:
        return self.dense_weight is not None

    @property
    def falls_back(self) -> bool:
        """Whether buckets marked fallback run the dense product (from the kept copy or decoded)."""
        return self.dense_weight is not None or self.decode_fallback

    @property
    def nnz(self) -> int:
        return self.packed.nnz

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.in_features * self.out_features)

    def _bias_nbytes(self) -> int:
        return 0 if self.bias is None else self.bias.numel() * self.bias.element_size()

    @property
    def nbytes(self) -> int:
        """Device bytes this module holds: the packed weight, the dense copy if kept, the bias
        (not the CPU reference path's decoded-tile cache)."""
        return sum(self.nbytes_by_format().values())

    def nbytes_by_format(self) -> dict[str, int]:
        """``nbytes`` by what holds them: the packed weight's formats and tables
        (PackedWeight.nbytes_by_format), 'dense' (the dense copy, where kept) and 'bias'."""
        out = self.packed.nbytes_by_format()
        if self.dense_weight is not None:
            out["dense"] = self.dense_weight.numel() * self.dense_weight.element_size()
        if self.bias is not None:
            out["bias"] = self._bias_nbytes()
        return out

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the equivalent nn.Linear (weight and bias)."""
        return self.packed.dense_nbytes + self._bias_nbytes()

    def summary(self) -> dict:
        """Name-free facts: shape, tiles per kind, swing tiles, per-bucket predictions, bytes."""
        facts = plan_facts(self.plan)
        facts.update(sparsity=self.sparsity, nnz=self.nnz, bias=self.bias is not None, dense_kept=self.dense_kept,
                     decode_fallback=self.decode_fallback, buckets=bucket_facts(self.plan, self.falls_back),
                     nbytes=self.nbytes, nbytes_by_format=self.nbytes_by_format(),
                     dense_nbytes=self.dense_nbytes)
        return facts

    def extra_repr(self) -> str:
        counts = self.plan.kind_counts()
        kinds = ", ".join(f"{k.name.lower()} {counts[k.name]}" for k in TileKind if counts[k.name])
        tm, tk = self.plan.tile_shape
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={dtype_name(self.dtype)}, sparsity={self.sparsity:.1%}, tiles {tm}x{tk}: {kinds}, "
                f"dense kept: {'yes' if self.dense_kept else 'decoded per call' if self.decode_fallback else 'no'}, "
                f"{self.nbytes / 1e6:.3f} MB ({self.nbytes / self.dense_nbytes:.2f}x dense), runs: {self.runs()}")

    def runs(self) -> str:
        """What runs at each token count, adjacent buckets that run the same joined: e.g. 'N1-8 row,
        N9-16 tile, N17+ dense' ('dense': the dense product; a kernel's name: the plan on it)."""
        spans: list[list] = []
        for b in self.plan.buckets:
            what = "dense" if b.fallback and self.falls_back else KERNEL_NAMES[b.kernel]
            if spans and spans[-1][2] == what:
                spans[-1][1] = b.n_max
            else:
                spans.append([b.n_min, b.n_max, what])
        return ", ".join(f"{bucket_name(lo, hi)} {what}" for lo, hi, what in spans)


#: Whether autocast is on for any device: one cheap check on every forward (torch's own; where a
#: torch lacks it, the per-device check below always runs)
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)

_PACKED_STATE = [False]  # True inside packed_state(): SparseLinear's state dict leaves the weight out


@contextlib.contextmanager
def packed_state():
    """Inside it, SparseLinear layers leave ``weight`` out of their state dict (no decode): what
    ``cross.save`` stores beside their packed form."""
    before, _PACKED_STATE[0] = _PACKED_STATE[0], True
    try:
        yield
    finally:
        _PACKED_STATE[0] = before
