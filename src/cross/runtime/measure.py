"""The plan against the dense product, timed on the weight's GPU: the cost model's choice checked.

The planner keeps a bucket's plan when the cost model predicts it ``WIN_MARGIN`` faster than
cuBLAS. Its predictions at decode token counts are off by 7-9% (median) on the H100, and a plan
predicted 6% faster can run at 1.00x: more memory for no speed. ``measure_plan`` times every bucket
the plan is predicted to win (at the bucket's design token count, CUDA-graph replay, L2 flushed
by a read, as ``cross profile`` times) against ``F.linear`` on the same weight, and keeps the plan
only where it measured ``margin`` faster. It also times the near wins (``planner.is_near_win``:
predicted to fall back, but with the row kernel within ``NEAR_MARGIN`` of dense, or the slice and
warpgroup 2:4 kernels' candidates, which have no prediction) and takes those that measured ``margin`` faster.
Other buckets predicted to fall back are not timed.
A bucket's alternatives (``BucketPlan.alternatives``: where a candidate kernel is offered, the row
kernel's bucket timed against it, or the candidate's against the tile kernel's predicted win and the
row kernel's win or near win) are timed beside its kernel, their formats built for the check, and
the fastest runs where it measured ``margin`` faster than dense: a cost model that knows only some
of the kernels does not get to choose between them.
Dense times depend only on the shape, so a caller planning many layers passes one ``dense_times``
dict to time each shape once. Because that one time then judges every layer of the shape, it is the
faster of two timings, one before and one after the first plan of the shape: a dense time that
reads slow once (measured on H100: one shape's cuBLAS read 2.7x slow in one model build, and all
32 of its layers measured 2.7x faster than they are) would keep plans that lose. The plan is timed
twice and the faster kept too, so that the estimator (a minimum of two) does not favour dense: with
one plan timing against the faster of two dense ones, 4096x11008 at 8 tokens and 70% measured 2%
faster in the check (not the 3% asked) and 1.10x in the benchmark (H200).
With ``wgmma_layout='auto'`` (make_plan's default, where the layouts' bytes are close) the warpgroup 2:4
kernel's two layouts compete too: the buckets that offer it are timed with the slots layout (as
packed) and again with ``planner.AUTO_COMPRESSED`` (the compressed layout, or its lone halves), and the
layout whose buckets run faster in sum (each at its chosen kernel's time, or dense where it falls
back) becomes the plan's (its options' ``wgmma_layout``): one format per weight. Measured on the H100
(2026-12-05), the compressed layout ran 11008x4096 at 16 tokens and 90% at 1.53x and 4096x4096 at
1.02x of cuBLAS, the slots layout 1.33x and 1.14x; since STREAM's launches the compressed layout is
at least as fast in every cell measured, and in the Llama-2-7B-shaped decoder at 70 and 90% 'auto'
kept it for every layer (the default since, without the contest's timings).
Before a bucket is timed its result on the timing input is compared with the dense product's: a
kernel that disagrees (beyond bf16 rounding) on this GPU is not timed, and a PlanCheckWarning says so;
its bucket falls back unless another of its kernels agrees. A wrong result never runs silently.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..pack.packed import MAX_LAUNCH_TOKENS, PackedWeight
from ..partition.plan import KERNEL_NAMES, Plan
from ..partition import planner
from ..partition.planner import WIN_MARGIN, is_near_win
from .dispatch import execute, gpu_kernel_args

#: Timing per call (ms of warm-up, ms of timed runs): short, as it runs once per layer and bucket.
WARMUP_MS, REP_MS = 5, 20
#: A plan's result agrees with the dense product's where |y - dense| <= AGREE x (|dense| + rms(dense))
#: everywhere: bf16 rounding of the outputs and fp32 sums in another order stay near 1e-2.
AGREE = 3e-2


class PlanCheckWarning(UserWarning):
    """A plan's kernel gave a result that disagrees with the dense product on this GPU; the bucket
    falls back to the dense product."""


def disagreement(y: torch.Tensor, dense: torch.Tensor) -> float:
    """The largest |y - dense| / (|dense| + rms(dense)), in fp32 (inf where y is NaN and dense is not)."""
    y, dense = y.float(), dense.float()
    scale = dense.abs() + dense.pow(2).mean().sqrt() + 1e-30
    err = ((y - dense).abs() / scale).nan_to_num(nan=float("inf"))
    same = (y == dense) | (y.isnan() & dense.isnan())  # Inf and NaN where the dense product has them
    return float(torch.where(same, 0.0, err).max()) if err.numel() else 0.0


def measure_plan(packed: PackedWeight, dense_weight: torch.Tensor, *, margin: float = WIN_MARGIN,
                 dense_times: dict | None = None, seed: int = 0) -> Plan:
    """``packed.plan`` with each bucket it is predicted to win timed on the GPU and decided again
    (``BucketPlan.with_measurement``); provenance gains 'measured'. ``dense_weight`` is the weight
    as a dense tensor (on the same GPU); ``dense_times`` caches the dense product's times by shape."""
    plan, _ = _measured(packed, dense_weight, margin, dense_times, seed)
    return packed.plan if plan is None else plan


def measure_weight(packed: PackedWeight, dense_weight: torch.Tensor, *, margin: float = WIN_MARGIN,
                   dense_times: dict | None = None, seed: int = 0) -> PackedWeight:
    """``packed.with_plan(measure_plan(packed, ...))``, with the formats the check built to time the
    alternatives (the row format, the other 2:4 layout) taken where the measured plan runs them,
    not built a second time. ``packed`` itself where nothing was timed."""
    plan, built = _measured(packed, dense_weight, margin, dense_times, seed)
    return packed if plan is None else packed.with_plan(plan, built=built)


def _measured(packed, dense_weight, margin, dense_times, seed):
    """(the measured plan, or None where nothing was timed or refused; a weight of ``packed``'s tiles
    holding the formats the timings built)."""
    if packed.device.type != "cuda":
        raise ValueError(f"measure_plan: expected a packed weight on a CUDA device, got one on {packed.device} "
                         "(timings are a GPU fact; on the CPU the cost model's choice stands)")
    m, k = packed.shape
    if tuple(dense_weight.shape) != (m, k) or dense_weight.device != packed.device or dense_weight.dtype != packed.dtype:
        raise ValueError(f"dense_weight: expected {packed.dtype} {(m, k)} on {packed.device}, got "
                         f"{dense_weight.dtype} {tuple(dense_weight.shape)} on {dense_weight.device}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin: expected a fraction in [0, 1), got {margin!r}")
    with torch.cuda.device(packed.device):  # the flush buffer and the stream of the weight's GPU
        buckets, how, layout, built = _measure(packed, dense_weight, margin,
                                               {} if dense_times is None else dense_times, seed)
    if layout is None and all(a is b for a, b in zip(buckets, packed.plan.buckets)):  # nothing timed or refused
        return None, built
    return _measured_plan(packed, buckets, how, layout, margin), built


def _measured_plan(packed, buckets, how, layout, margin) -> Plan:
    """The plan with the measured buckets, its provenance's 'measured' (and, where the layouts were
    timed, the chosen one in its options, with both layouts' sums)."""
    timing = "; ".join(sorted(how)) or "none"  # none: every bucket concerned refused before timing
    measured = {"device": _name(packed.device), "timing": timing, "flush": "read", "margin": margin}
    if layout is None:
        return packed.plan.with_buckets(buckets, measured=measured)
    chosen, sums = layout
    return packed.plan.with_buckets(buckets, measured={**measured, "wgmma_layouts_us": sums},
                                    options={**_options(packed.plan), "wgmma_layout": chosen})


def _options(plan: Plan) -> dict:
    return plan.provenance.get("options", {})


def _measure(packed, dense_weight, margin, cache, seed):
    """``_measure_buckets``, and with wgmma_layout 'auto' the layouts' contest: (buckets, how,
    None or (the chosen layout, {layout: the sum of its buckets' times in us}), a weight holding the
    formats built for the timings). None also where no bucket offers the warpgroup 2:4 kernel (the
    plan holds no 2:4 format: 'auto', the default, then changes nothing)."""
    buckets, how, built = _measure_buckets(packed, dense_weight, margin, cache, seed)
    if _options(packed.plan).get("wgmma_layout") != "auto":
        return buckets, how, None, built
    offered = {i for i, b in enumerate(packed.plan.buckets) if "wgmma24" in (b.kernel, *b.alternatives)}
    if not offered:
        return buckets, how, None, built
    if not _capable("wgmma24", packed.device):
        return buckets, how, ("slots", {}), built
    rival = planner.AUTO_COMPRESSED
    rival_plan = packed.plan.with_buckets(packed.plan.buckets, options={**_options(packed.plan), "wgmma_layout": rival})
    # from the weight the slots' timings built, so that it holds their alternatives' formats too
    compressed = replace(built, wgmma24=None).with_plan(rival_plan)
    other, how_other, built_other = _measure_buckets(compressed, dense_weight, margin, cache, seed, only=offered)
    sums = {"slots": _run_us(buckets, offered), rival: _run_us(other, offered)}
    if not sums[rival] < sums["slots"]:
        return buckets, how, ("slots", sums), built
    merged = [other[i] if i in offered else b for i, b in enumerate(buckets)]
    return merged, how | how_other, (rival, sums), built_other


def _run_us(buckets, indices) -> float:
    """The sum over ``indices`` of what each measured bucket runs: its kernel's time, or the dense
    product's where it falls back (the prediction's where it was not timed)."""
    def us(b):
        if b.fallback:
            return b.measured_dense_us if b.measured_dense_us is not None else b.dense_us
        return b.measured_us if b.measured_us is not None else b.predicted_us
    return round(sum(us(buckets[i]) for i in sorted(indices)), 3)


def _name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _measure_buckets(packed, dense_weight, margin, cache, seed, only=None):
    """Each bucket timed and decided again (``only``: those indices; the others as they are): (buckets,
    how, a weight of ``packed``'s tiles holding every format built for the timings)."""
    from ..costmodel.profile import call_time_us

    m, k = packed.shape
    kernels: dict = {}  # resolved kernel arguments per kernel name, then bucket index
    held = [packed]  # a weight holding the formats of the alternatives timed so far (PackedWeight.with_plan)
    gen = torch.Generator(device=packed.device).manual_seed(seed)
    buckets, how = [], set()
    for i, b in enumerate(packed.plan.buckets):
        # a bucket is timed where its plan is predicted to win or nearly wins; the kernels timed are
        # its own and its alternatives, those that have a kernel on this GPU (a predicted win is timed
        # whatever runs it)
        runs = {}
        if (only is None or i in only) and (not b.fallback or is_near_win(b)):
            for kernel in (b.kernel, *b.alternatives):
                if kernel != b.kernel and not _capable(kernel, packed.device):
                    continue  # no format built for a kernel this GPU cannot run
                weight = packed if kernel == b.kernel else _with_kernel(held, i, kernel)
                if gpu_kernel_args(weight, i, kernels.setdefault(kernel, {})) is not None or (
                        kernel == b.kernel and not b.fallback):
                    runs[kernel] = weight
        if not runs:
            buckets.append(b)
            continue
        n = min(b.n_design, MAX_LAUNCH_TOKENS)
        x = torch.randn(n, k, generator=gen, device=packed.device, dtype=packed.dtype)
        dense_y = F.linear(x, dense_weight)
        # the result first: a kernel that is wrong on this GPU is not timed
        calls = {kernel: _plan_call(x, weight, kernels[kernel]) for kernel, weight in runs.items()}
        errors = {kernel: disagreement(call(), dense_y) for kernel, call in calls.items()}
        calls = {kernel: call for kernel, call in calls.items() if errors[kernel] <= AGREE}
        instead = ("the bucket falls back to the dense product" if not calls else
                   "the " + " and ".join(KERNEL_NAMES[kernel] for kernel in calls) + " kernel"
                   + ("s are" if len(calls) > 1 else " is") + " timed instead")
        for kernel, err in errors.items():
            if not err <= AGREE:
                warnings.warn(f"{m}x{k} at {n} tokens: the {KERNEL_NAMES[kernel]} kernel's result disagrees with the "
                              f"dense product (error {err:.3g} of the output's scale, more than {AGREE}) on "
                              f"{_name(packed.device)}; {instead}. Please report it with the weight's shape, sparsity "
                              "and dtype", PlanCheckWarning, stacklevel=4)
        if not calls:  # every kernel concerned disagreed: the bucket falls back
            names = " and ".join(KERNEL_NAMES[kernel] for kernel in runs)
            errs = ", ".join(f"{err:.3g}" for err in errors.values())
            buckets.append(replace(b, fallback=True, alternatives=(), reason=f"its {names} kernel"
                                   f"{'s' if len(runs) > 1 else ''} disagreed with the dense product (error"
                                   f"{'s' if len(runs) > 1 else ''} {errs}): not timed"))
            continue
        key = (m, k, n, str(packed.dtype), str(packed.device))
        # dense first: a process's first timings can read fast (benchmarks/timing_drift.py), and a
        # dense time that reads fast errs on the safe side (the plan must beat it)
        first_of_shape = key not in cache
        if first_of_shape:
            cache[key] = call_time_us(lambda: F.linear(x, dense_weight), WARMUP_MS, REP_MS)[0]
        # each kernel twice and the faster kept, as dense is (dense, plan, plan, dense for the first
        # layer of a shape): the same estimator on both sides, so neither is favoured by it
        times = {}
        for kernel, call in calls.items():
            times[kernel], plan_how = min(call_time_us(call, WARMUP_MS, REP_MS) for _ in range(2))
            how.add(plan_how)
        if first_of_shape:  # again after the plan: the faster of the two judges every layer of the shape
            cache[key] = min(cache[key], call_time_us(lambda: F.linear(x, dense_weight), WARMUP_MS, REP_MS)[0])
        best = min(times, key=times.get)
        others = {kernel: us for kernel, us in times.items() if kernel != best}
        buckets.append(b.with_measurement(times[best], cache[key], margin, kernel=best, others=others))
    return buckets, how, held[0]


def _capable(kernel: str, device: torch.device) -> bool:
    """Whether this device can run ``kernel`` at all (before its format is built): the slice kernel
    needs sm_90+, the warpgroup 2:4 kernel compute capability 9.0."""
    from ..kernels.launch import slice_capable, wgmma24_capable

    return {"slices": slice_capable, "wgmma24": wgmma24_capable}.get(kernel, lambda device: True)(device)


def _plan_call(x, weight, kernels):
    return lambda: execute(x, weight, force_plan=True, kernels=kernels, checked=True)


def _with_kernel(held: list, index: int, kernel: str):
    """``held[0]`` with bucket ``index`` run by ``kernel`` (its format built where it is missing);
    ``held[0]`` becomes the result, so that each alternative's format is built once."""
    weight = held[0]
    plan = weight.plan.with_buckets(replace(b, kernel=kernel, fallback=False, alternatives=()) if j == index else b
                                    for j, b in enumerate(weight.plan.buckets))
    held[0] = weight.with_plan(plan)
    return held[0]
