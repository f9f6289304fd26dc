"""The slice kernel in the runtime: buckets of up to 16 tokens the planner offers it (``make_plan(
slice_kernel=True)``), which the measured check takes only where it times faster than dense.

On the CPU: which buckets become candidates (and which never do), the slice format packed beside
the tiles, the reference executor's result on it (non-finite inputs included), the layer dropping
the format where no bucket runs it, plans and saved models carrying the choice, and the benchmark's
method names (the measured check's part: test_measure.py). With a GPU (`-m gpu`): the runtime's
slice-kernel buckets against the fp64 product (poisoned outputs), under CUDA graphs and
torch.compile, and the measured check deciding, refusing a kernel whose result is wrong.
"""

from dataclasses import replace

import pytest
import torch

import cross
from cross.costmodel.roofline import SLICE_MAX_TOKENS, slice_format, slice_format_bytes
from cross.pack import pack
from cross.pack.slices import SliceWeight, slices_reference
from cross.partition import make_plan
from cross.partition.planner import SLICE_KERNEL_DEFAULT, SLICE_MAX_BYTES, is_near_win
from cross.runtime.dispatch import execute
from cross.tiling import TileGrid
from runtime_checks import (check_candidates_run, check_measured_candidates, check_product, check_saved_model,
                            check_wrong_kernel_refused, linear_of)
from weights import pruned

HAS_GPU = torch.cuda.is_available()
SM90 = HAS_GPU and torch.cuda.get_device_capability()[0] >= 9


# ---------------------------------------------------------------------------------------- planner
def test_off_by_default():
    assert SLICE_KERNEL_DEFAULT is False
    plan = make_plan(pruned(1024, 512, 0.8))
    assert all(b.kernel != "slices" for b in plan.buckets) and plan.provenance["options"]["slice_kernel"] is False


@pytest.mark.parametrize("shape", [(1024, 512), (11008, 4096)])
def test_candidates_are_the_small_buckets_of_the_tiles(shape):
    w = pruned(*shape, 0.8)
    off, on = make_plan(w), make_plan(w, slice_kernel=True)
    assert on.provenance["options"]["slice_kernel"] is True
    assert any(b.kernel == "slices" for b in on.buckets)
    for a, b in zip(off.buckets, on.buckets):
        # a bucket becomes a candidate exactly where it has up to 16 tokens and the tile kernel's
        # plan (a win or not: the row kernel's wins and near wins stay); it falls back until the
        # measured check times it; the rest of the bucket stays as it was
        offered = a.n_max <= SLICE_MAX_TOKENS and a.kernel == "tiles"
        assert (b.kernel == "slices") == offered, (a.n_min, a.n_max)
        assert b.predicted_us == a.predicted_us and b.dense_us == a.dense_us
        if offered:
            assert b.fallback and is_near_win(b) and "slice kernel's candidate" in b.reason
        else:
            assert b.kernel == a.kernel and b.fallback == a.fallback and b.reason == a.reason


@pytest.mark.parametrize("why", ["denser", "fp32", "odd K"])
def test_no_candidates_where_the_kernel_cannot_win_or_run(why):
    sparsity = 0.35 if why == "denser" else 0.8
    k = 516 if why == "odd K" else 512
    w = pruned(1024, k, sparsity, torch.float32 if why == "fp32" else torch.bfloat16)
    plan = make_plan(w, slice_kernel=True)
    assert all(b.kernel != "slices" for b in plan.buckets)


def _format_bytes(sw):
    return sw.heads[:-4].numel() * 4 + (sw.values.numel() - 4096) * 4  # less the padding


def test_byte_estimate_is_the_formats():
    """The planner's estimate of the pair format's bytes, from tile counts, is within 2% of the bytes
    the format takes on a uniform weight, and the element format's within 1%; the format chosen is
    the one whose larger floor (bytes, or instructions at SLICE_BYTES_PER_INSTRUCTION) is smaller:
    elements where pairs cost more bytes (50%), pairs where the elements' instructions weigh more
    (90%); a 35% sparse weight is over SLICE_MAX_BYTES in either."""
    for sparsity, want in ((0.35, "elements"), (0.5, "elements"), (0.9, "pairs")):
        w = pruned(1024, 1024, sparsity)
        grid = TileGrid.for_weight(w, (64, 64))
        nnz, size = grid.tile_nnz(w), grid.tile_sizes()
        est = slice_format_bytes(nnz, size, 1024, 1024)
        fmt = _format_bytes(SliceWeight.from_dense(w))
        assert abs(est - fmt) <= 0.02 * fmt, sparsity
        elements = _format_bytes(SliceWeight.from_dense(w, elements=True))
        chosen, floor = slice_format(nnz, size, 1024, 1024)
        assert chosen == want, sparsity
        if chosen == "elements":
            assert abs(floor - elements) <= 0.01 * elements and elements < fmt
        assert (floor <= SLICE_MAX_BYTES * 2 * w.numel()) == (sparsity > 0.4)


@pytest.mark.parametrize("sparsity, fmt", [(0.5, "elements"), (0.9, "pairs")])
def test_plan_file_keeps_the_slice_kernel(tmp_path, sparsity, fmt):
    plan = make_plan(pruned(1024, 512, sparsity), slice_kernel=True)
    assert plan.provenance["options"]["slice_format"] == fmt
    loaded = cross.partition.Plan.load(plan.save(tmp_path / "p.safetensors"))
    assert [b.kernel for b in loaded.buckets] == [b.kernel for b in plan.buckets]
    assert [is_near_win(b) for b in loaded.buckets] == [is_near_win(b) for b in plan.buckets]
    assert loaded.provenance["options"]["slice_format"] == fmt
    assert make_plan(pruned(1024, 512, sparsity)).provenance["options"]["slice_format"] is None  # not offered


# ---------------------------------------------------------------------------------------- pack and run
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_packed_weight_carries_the_slice_format(sparsity):
    w = pruned(1024, 512, sparsity)
    plan = make_plan(w, slice_kernel=True)
    packed = pack(w, plan)
    assert isinstance(packed.slices, SliceWeight) and torch.equal(packed.slices.to_dense(), w)
    assert packed.slices.elements == (plan.provenance["options"]["slice_format"] == "elements")
    assert packed.nbytes >= packed.tiled.nbytes + packed.slices.nbytes
    assert pack(w, make_plan(w)).slices is None
    # another plan's candidates get the format back; no candidate, no format
    assert pack(w, make_plan(w)).with_plan(make_plan(w, slice_kernel=True)).slices is not None


@pytest.mark.parametrize("bad", ["none", "inf", "nan"])
def test_reference_is_the_dense_product(bad):
    """slices_reference multiplies every element, zeros included: an Inf or NaN of X reaches every
    row, as in the dense product, also rows whose weights in its column are zero."""
    gen = torch.Generator().manual_seed(1)
    w = pruned(40, 96, 0.8)
    w[:, 5] = 0
    x = torch.randn(3, 96, generator=gen).to(torch.bfloat16)
    if bad != "none":
        x[1, 5] = float(bad)
    b = torch.randn(40, generator=gen).to(torch.bfloat16)
    y = slices_reference(x, SliceWeight.from_dense(w), b)
    ref = (x.double() @ w.double().t() + b.double())
    assert torch.equal(y.isnan(), ref.isnan()) and bool(y[1].isnan().all()) == (bad != "none")
    fin = ref.isfinite()
    assert float(((y.double() - ref).abs()[fin] / (ref.abs()[fin] + 1)).max()) < 2e-2


def test_reference_reads_the_format_once(monkeypatch):
    """slices_reference decodes a SliceWeight once and keeps it; a copy moved with .to() reads again."""
    sw = SliceWeight.from_dense(pruned(40, 96, 0.8))
    calls = []
    read = SliceWeight.to_dense
    monkeypatch.setattr(SliceWeight, "to_dense", lambda self: calls.append(1) or read(self))
    x = torch.randn(3, 96).to(torch.bfloat16)
    y = slices_reference(x, sw)
    assert torch.equal(slices_reference(x, sw), y) and len(calls) == 1
    assert torch.equal(slices_reference(x, sw.to("cpu")), y) and len(calls) == 2


def test_forced_slice_bucket_runs_the_format():
    """A candidate's plan forced (or run where the layer keeps no dense copy) is the slice format's
    reference on the CPU: the dense product, at each end of the buckets it has."""
    gen = torch.Generator().manual_seed(2)
    w = pruned(1000, 520, 0.8)
    packed = pack(w, make_plan(w, slice_kernel=True))
    bias = torch.randn(1000, generator=gen).to(torch.bfloat16)
    slices = [pb for pb in packed.buckets if pb.plan.kernel == "slices"]
    assert slices, "the plan no longer offers the slice kernel a bucket"
    for pb in slices:
        for n in {pb.plan.n_min, pb.plan.n_max}:
            x = torch.randn(n, 520, generator=gen).to(torch.bfloat16)
            check_product(x, w, bias, execute(x, packed, bias, force_plan=True))
            # the bucket reads the slice format, not the tiles
            doubled = replace(packed, slices=SliceWeight.from_dense(2 * w))
            check_product(x, 2 * w, bias, execute(x, doubled, bias, force_plan=True))


def test_layer_drops_the_format_no_bucket_runs():
    """A layer that runs its fallback buckets dense (a kept copy) holds no slice format for a
    candidate the measured check did not take (or could not: the CPU); without a dense copy the
    candidates run their plan, so the format stays, and the layer's results are the product's."""
    gen = torch.Generator().manual_seed(3)
    w = pruned(1024, 512, 0.8)
    lin = linear_of(w)
    plan = make_plan(w, slice_kernel=True)
    checked = plan.with_buckets([replace(b, measured_us=20.0, measured_dense_us=10.0) if b.kernel == "slices" else b
                                 for b in plan.buckets])  # timed: slower than dense
    kept = cross.SparseLinear.from_dense(lin, plan=checked)
    assert kept.dense_kept and kept.packed.slices is None
    bare = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense=False)
    assert bare.packed.slices is not None
    n = next(b.n_max for b in plan.buckets if b.kernel == "slices")
    x = torch.randn(n, 512, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        check_product(x, w, lin.bias, kept(x))
        check_product(x, w, lin.bias, bare(x))


def test_sparsified_model_with_the_slice_format_saves_and_loads(tmp_path):
    check_saved_model(tmp_path, "slices", 0.8, 16, slice_kernel=True)


def test_operator_shape_without_running():
    """cross::slice_linear's fake (what torch.compile traces) gives [N, M] in X's dtype; ``call``
    routes a SliceArgs to it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cross.kernels.launch import SliceArgs
    from cross.runtime.op import call

    sw = SliceWeight.from_dense(pruned(300, 520, 0.8))
    with FakeTensorMode() as mode:
        heads, values = mode.from_tensor(sw.heads), mode.from_tensor(sw.values)
        args = SliceArgs(heads, values, mode.from_tensor(torch.zeros(5, dtype=torch.int32)), 300, 520, sw.tiles,
                         sw.pieces, sw.warps, 4, 2, 1024, 1)
        y = call(mode.from_tensor(torch.zeros(7, 520, dtype=torch.bfloat16)), args, None)
        assert tuple(y.shape) == (7, 300) and y.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------- benchmark
def test_bench_methods():
    from cross.bench.methods import parse_method, unavailable

    assert parse_method("cross+slices").slice_kernel and parse_method("cross+slices").family == "cross"
    assert not parse_method("cross").slice_kernel
    assert parse_method("cross-slices").family == "slices"
    assert "sm_90" in unavailable(parse_method("cross-slices"), 64, 64, None)
    assert "sm_90" in unavailable(parse_method("cross-slices"), 64, 64, (8, 0))
    assert "K % 8" in unavailable(parse_method("cross-slices"), 64, 60, (9, 0))
    assert unavailable(parse_method("cross-slices"), 64, 64, (9, 0)) is None


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs an sm_90+ GPU")
@pytest.mark.parametrize("shape", [(1000, 520), (4096, 4096), (11008, 4096)])
def test_gpu_runtime_runs_the_slice_kernel(shape, rng):
    """A layer whose candidates run (no dense copy): the slice kernel at each end and the middle of
    their buckets, against the fp64 product, outputs poisoned; in a CUDA graph and under torch.compile."""
    from cross.kernels.launch import SliceArgs

    w = pruned(*shape, 0.8, seed=int(torch.randint(1 << 30, (1,), generator=rng))).cuda()
    check_candidates_run(w, "slices", SliceArgs, rng, slice_kernel=True)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs an sm_90+ GPU")
def test_gpu_measured_check_times_the_candidates():
    """The measured check times every bucket that offers the slice kernel; each runs what it timed
    fastest where that measured faster than dense."""
    check_measured_candidates(pruned(11008, 4096, 0.8).cuda(), "slices", "slices", slice_kernel=True)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs an sm_90+ GPU")
def test_gpu_measured_check_refuses_a_wrong_kernel(monkeypatch):
    """A slice kernel whose result disagrees with the dense product is not timed; its buckets fall back."""
    w = pruned(4096, 4096, 0.8).cuda()
    check_wrong_kernel_refused(monkeypatch, w, "slices", "slices", "slice kernel", slice_kernel=True)
