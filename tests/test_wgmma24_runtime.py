"""The warpgroup 2:4 kernel in the runtime: buckets the planner offers it
(``make_plan(wgmma_kernel=True, nan_policy="ignore")``), which the measured check takes only where
it times faster than dense.

On the CPU: which buckets become candidates (and which never do), the planner's byte estimate
against the format's, the 2:4 format packed beside the tiles, the reference executor's result on
it, the layer dropping the format where no bucket runs it, plans and saved models carrying the
choice, the operator's fake and the benchmark's method names. With a GPU of compute capability 9.0
(`-m gpu`): the runtime's 2:4 buckets against the fp64 product (poisoned outputs), under CUDA
graphs and torch.compile, and the measured check deciding, refusing a kernel whose result is wrong.
"""

from dataclasses import replace

import pytest
import torch

import cross
from cross.costmodel.roofline import WGMMA_MAX_TOKENS, wgmma24_compressed_bytes, wgmma24_format_bytes
from cross.pack import pack
from cross.pack.wgmma24 import START_BITS, TILE_WORDS, Wgmma24Weight, wgmma24_reference
from cross.partition import make_plan
from cross.partition.planner import (LAYOUT_CONTEST_BYTES, WGMMA_KERNEL_DEFAULT, WGMMA_LAYOUT_DEFAULT, WGMMA_MAX_BYTES,
                                    _wgmma24_bytes, chunk_words, is_near_win, overflow_groups)
from cross.runtime.dispatch import execute
from cross.tiling import TileGrid
from runtime_checks import (assert_dense_nonfinite, check_candidates_run, check_measured_candidates, check_product,
                            check_saved_model, check_wrong_kernel_refused, dense_terms, linear_of, nonfinite_inputs, top)
from weights import pruned

HAS_GPU = torch.cuda.is_available()
SM90 = HAS_GPU and torch.cuda.get_device_capability() == (9, 0)
IGNORE = {"wgmma_kernel": True, "nan_policy": "ignore"}
AUTO = {**IGNORE, "wgmma_layout": "auto"}


# ---------------------------------------------------------------------------------------- planner
def test_off_by_default():
    assert WGMMA_KERNEL_DEFAULT is False
    plan = make_plan(pruned(1024, 512, 0.9), nan_policy="ignore")
    assert all(b.kernel != "wgmma24" for b in plan.buckets) and plan.provenance["options"]["wgmma_kernel"] is False


def test_offered_by_default_where_the_measured_check_times_it(monkeypatch):
    """from_dense's and sparsify_'s wgmma_kernel='auto' (the default): True exactly where the measured check
    runs on a compute capability 9.0 GPU and the slice kernel is not asked for; True and False stay; other
    values are refused. On the CPU a layer is planned without it."""
    from cross.nn.linear import WGMMA_KERNEL, wgmma_options

    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")

    def decide(device, measure="auto", keep="auto", **options):
        return wgmma_options(options, device, measure, keep)["wgmma_kernel"]

    assert WGMMA_KERNEL == ("auto", True, False)
    assert decide(gpu) is True and decide(gpu, wgmma_kernel="auto") is True and decide(gpu, keep="decode") is True
    assert decide(gpu, measure=True) is True
    assert decide(cpu) is False and decide(cpu, measure=False) is False
    assert decide(gpu, measure=False) is False and decide(gpu, keep=False) is False  # untimed: only fallbacks
    assert decide(gpu, slice_kernel=True) is False
    capability[0] = (10, 0)
    assert decide(gpu) is False and decide(gpu, wgmma_kernel=True) is True
    assert decide(cpu, wgmma_kernel=True) is True and decide(gpu, wgmma_kernel=False) is False
    options = {"wgmma_layout": "slots", "nan_policy": "ignore"}
    assert wgmma_options(options, cpu, "auto", "auto") == {**options, "wgmma_kernel": False}
    for bad in ("on", 1, None):
        with pytest.raises(ValueError, match="wgmma_kernel: expected one of"):
            wgmma_options({"wgmma_kernel": bad}, cpu, "auto", "auto")
    layer = cross.SparseLinear.from_dense(linear_of(pruned(1024, 512, 0.9)))  # on the CPU
    assert layer.plan.provenance["options"]["wgmma_kernel"] is False
    model = torch.nn.Sequential(linear_of(pruned(1024, 512, 0.9)))
    with pytest.raises(ValueError, match="0: wgmma_kernel: expected one of"):  # sparsify_ plans through it too
        cross.sparsify_(model, wgmma_kernel="on", progress=False)


@pytest.mark.parametrize("shape, sparsity", [((1024, 512), 0.9), ((11008, 4096), 0.9), ((11008, 4096), 0.7)])
def test_candidates_are_the_tile_kernels_buckets(shape, sparsity):
    w = pruned(*shape, sparsity)
    off, on = make_plan(w, nan_policy="ignore"), make_plan(w, **IGNORE)
    assert on.provenance["options"]["wgmma_kernel"] is True
    assert any("wgmma24" in (b.kernel, *b.alternatives) for b in on.buckets)  # a candidate, or the row kernel's alternative
    for a, b in zip(off.buckets, on.buckets):
        # a candidate exactly where the bucket has at most WGMMA_MAX_TOKENS tokens and the tile kernel's plan (a win
        # or not: the row kernel's wins and near wins stay); it falls back until the measured check
        # times it; the rest stays as it was
        offered = a.n_max <= WGMMA_MAX_TOKENS and a.kernel == "tiles"
        assert (b.kernel == "wgmma24") == offered, (a.n_min, a.n_max)
        assert b.predicted_us == a.predicted_us and b.dense_us == a.dense_us
        if offered:
            assert b.fallback and is_near_win(b) and "2:4 kernel's candidate" in b.reason
            # timed against the tile kernel where it was predicted to win, and the row kernel where it
            # wins or nearly does (only up to 16 tokens)
            assert ("tiles" in b.alternatives) == (not a.fallback)
            assert set(b.alternatives) <= {"tiles", "rows"} and ("rows" not in b.alternatives or b.n_max <= 16)
            # the row kernel where the plan without the candidate times it beside the tile kernel
            assert ("rows" in b.alternatives) == (a.alternatives == ("rows",))
        else:
            assert b.kernel == a.kernel and b.fallback == a.fallback and b.reason == a.reason
            # a row kernel's bucket is timed against the candidate, and the tile kernel where the
            # plan without the candidate times it
            assert b.alternatives == (("wgmma24", *a.alternatives) if a.kernel == "rows" else a.alternatives)
        # without a candidate: the row and tile kernels, each beside the other, up to 16 tokens
        assert a.alternatives in ((), ("rows",), ("tiles",)) and (not a.alternatives or a.n_max <= 16)
        assert a.alternatives != ("rows",) or a.kernel == "tiles"
        assert a.alternatives != ("tiles",) or a.kernel == "rows"
    # none past WGMMA_MAX_TOKENS (16: where it lost wherever the H100 timed it): the default buckets
    # from 17 tokens on keep the plan they had, and no bucket times the kernel as an alternative there
    assert WGMMA_MAX_TOKENS == 16
    assert all(b.kernel != "wgmma24" and "wgmma24" not in b.alternatives for b in on.buckets if b.n_max > 16)
    assert any(b.n_max > 16 for b in on.buckets)


@pytest.mark.parametrize("why", ["denser", "fp32", "odd K"])
def test_no_candidates_where_the_kernel_cannot_win_or_run(why):
    """Not where the format would cost over WGMMA_MAX_BYTES of dense (a 40% sparse weight: many
    overflow entries), nor fp32, nor K % 8 != 0."""
    sparsity = 0.4 if why == "denser" else 0.9
    k = 516 if why == "odd K" else 512
    w = pruned(1024, k, sparsity, torch.float32 if why == "fp32" else torch.bfloat16)
    plan = make_plan(w, **IGNORE)
    assert all(b.kernel != "wgmma24" for b in plan.buckets)


def test_nan_policy_propagate_offers_the_kernel():
    """With nan_policy 'propagate' (the default) the kernel is offered as with 'ignore' (its PROPAGATE
    build gives the dense product's NaN and Inf); asked for with the slice kernel as well, or the slice
    kernel with 'ignore', the planner says so instead of offering nothing."""
    w = pruned(1024, 512, 0.9)
    kernels = lambda plan: [b.kernel for b in plan.buckets]  # noqa: E731
    assert "wgmma24" in kernels(make_plan(w, wgmma_kernel=True))
    assert kernels(make_plan(w, wgmma_kernel=True)) == kernels(make_plan(w, **IGNORE))
    with pytest.raises(ValueError, match="choose one of the two"):
        make_plan(w, wgmma_kernel=True, slice_kernel=True)
    with pytest.raises(ValueError, match="slice_kernel=True: expected nan_policy='propagate'"):
        make_plan(w, slice_kernel=True, nan_policy="ignore")


def test_byte_estimate_is_the_formats():
    """The planner's bytes of the format: exact where it counts the weight's overflow per row block
    and chunk, and from tile counts alone (a uniform weight) within 3% of the format; they decide
    which sparsities are offered (from 50% on uniform weights)."""
    for sparsity in (0.3, 0.5, 0.6, 0.7, 0.9):
        w = pruned(1024, 1024, sparsity)
        grid = TileGrid.for_weight(w, (64, 64))
        fmt = Wgmma24Weight.from_dense(w).nbytes
        exact = wgmma24_format_bytes(grid.tile_nnz(w), grid.tile_sizes(), 1024, 1024, overflow_groups(w))
        est = wgmma24_format_bytes(grid.tile_nnz(w), grid.tile_sizes(), 1024, 1024)
        assert exact == fmt and abs(est - fmt) <= 0.03 * fmt, (sparsity, est, fmt)
        assert (fmt <= WGMMA_MAX_BYTES * 2 * w.numel()) == (sparsity >= 0.5), sparsity
        assert any(b.kernel == "wgmma24" for b in make_plan(w, **IGNORE).buckets) == (sparsity >= 0.5)
    # tile counts cannot see a 2:4 pattern: on a 2:4 weight (no overflow) their estimate is that of a
    # uniform 50% weight (within WGMMA_MAX_BYTES, but 0.78 of dense); given the weight, the planner
    # counts its overflow (none), the format's 0.5625; either way it is offered
    w = pruned(1024, 1024, 0.0)
    w.view(1024, 256, 4)[..., 2:] = 0
    grid = TileGrid.for_weight(w, (64, 64))
    est = wgmma24_format_bytes(grid.tile_nnz(w), grid.tile_sizes(), 1024, 1024)
    uniform = pruned(1024, 1024, 0.5)
    uniform_est = wgmma24_format_bytes(grid.tile_nnz(uniform), grid.tile_sizes(), 1024, 1024)
    assert Wgmma24Weight.from_dense(w).nbytes == 0.5625 * 2 * w.numel() < est
    assert abs(est - uniform_est) <= 0.03 * uniform_est and est <= WGMMA_MAX_BYTES * 2 * w.numel()
    assert not overflow_groups(w).any()
    assert any(b.kernel == "wgmma24" for b in make_plan(w, **IGNORE).buckets)
    counts = make_plan(nnz=grid.tile_nnz(w), shape=(1024, 1024), dtype="bfloat16", **IGNORE)
    assert any(b.kernel == "wgmma24" for b in counts.buckets)


def test_overflow_groups_are_the_formats():
    """The planner's count of a weight's groups with overflow per row block and chunk is the format's
    (the bits set in its head words' masks; odd K and M, -0.0, NaN)."""
    w = pruned(300, 130, 0.3)
    w[0, :4] = torch.tensor([-0.0, 1.0, float("nan"), 2.0])
    w[1, 128:130] = 1.0
    w[2, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sw = Wgmma24Weight.from_dense(w)
    heads = sw.values[..., 4 * TILE_WORDS: 4 * TILE_WORDS + 256].to(torch.int64)
    words = sum((heads >> (START_BITS + b)) & 1 for b in range(16)).sum(-1)
    counts = overflow_groups(w)
    assert counts.shape == (2, 3) and counts.sum() == sw.n_groups > 0
    assert (counts == words.numpy()).all()


def test_plan_file_keeps_the_kernel(tmp_path):
    plan = make_plan(pruned(1024, 512, 0.9), **IGNORE)
    loaded = cross.partition.Plan.load(plan.save(tmp_path / "p.safetensors"))
    assert [b.kernel for b in loaded.buckets] == [b.kernel for b in plan.buckets]
    assert [b.alternatives for b in loaded.buckets] == [b.alternatives for b in plan.buckets]
    assert any(b.alternatives for b in plan.buckets)
    assert [is_near_win(b) for b in loaded.buckets] == [is_near_win(b) for b in plan.buckets]
    assert loaded.provenance["options"]["wgmma_kernel"] is True


# ---------------------------------------------------------------------------------------- pack and run
@pytest.mark.parametrize("sparsity", [0.6, 0.9])
def test_packed_weight_carries_the_format(sparsity):
    w = pruned(1024, 512, sparsity)
    packed = pack(w, make_plan(w, **IGNORE))
    assert isinstance(packed.wgmma24, Wgmma24Weight) and torch.equal(packed.wgmma24.to_dense(), w)
    assert packed.nbytes >= packed.tiled.nbytes + packed.wgmma24.nbytes
    assert pack(w, make_plan(w, nan_policy="ignore")).wgmma24 is None
    # another plan's candidates get the format back
    assert pack(w, make_plan(w, nan_policy="ignore")).with_plan(make_plan(w, **IGNORE)).wgmma24 is not None
    moved = packed.to("cpu")
    assert moved.wgmma24 is not packed.wgmma24 and torch.equal(moved.wgmma24.values, packed.wgmma24.values)


def test_reference_is_the_product_and_reads_once(monkeypatch):
    """wgmma24_reference is the product for finite inputs (bias added in fp32) and decodes a
    Wgmma24Weight once; a copy moved with .to() reads again."""
    gen = torch.Generator().manual_seed(1)
    w = pruned(100, 136, 0.6)
    sw = Wgmma24Weight.from_dense(w)
    x = torch.randn(5, 136, generator=gen).to(torch.bfloat16)
    b = torch.randn(100, generator=gen).to(torch.bfloat16)
    calls = []
    read = Wgmma24Weight.to_dense
    monkeypatch.setattr(Wgmma24Weight, "to_dense", lambda self: calls.append(1) or read(self))
    y = wgmma24_reference(x, sw, b)
    check_product(x, w, b, y)
    assert torch.equal(wgmma24_reference(x, sw, b), y) and len(calls) == 1
    assert torch.equal(wgmma24_reference(x, sw.to("cpu"), b), y) and len(calls) == 2


def test_forced_bucket_runs_the_format():
    """A candidate's plan forced is the 2:4 format's reference on the CPU: the product, at each end
    of the buckets it has, read from the format and not the tiles."""
    gen = torch.Generator().manual_seed(2)
    w = pruned(1000, 520, 0.9)
    packed = pack(w, make_plan(w, **IGNORE))
    bias = torch.randn(1000, generator=gen).to(torch.bfloat16)
    runs = [pb for pb in packed.buckets if pb.plan.kernel == "wgmma24"]
    assert runs, "the plan no longer offers the 2:4 kernel a bucket"
    doubled = replace(packed, wgmma24=Wgmma24Weight.from_dense(2 * w))
    for pb in runs:
        for n in {pb.plan.n_min, top(pb.plan)}:
            x = torch.randn(n, 520, generator=gen).to(torch.bfloat16)
            check_product(x, w, bias, execute(x, packed, bias, force_plan=True))
            check_product(x, 2 * w, bias, execute(x, doubled, bias, force_plan=True))


def test_layer_drops_the_format_no_bucket_runs():
    """A layer that runs its fallback buckets dense holds no 2:4 format for a candidate the measured
    check did not take; without a dense copy the candidates run their plan, so the format stays."""
    gen = torch.Generator().manual_seed(3)
    w = pruned(1024, 512, 0.9)
    lin = linear_of(w)
    plan = make_plan(w, **IGNORE)
    checked = plan.with_buckets([replace(b, measured_us=20.0, measured_dense_us=10.0) if b.kernel == "wgmma24" else b
                                 for b in plan.buckets])  # timed: slower than dense
    kept = cross.SparseLinear.from_dense(lin, plan=checked)
    assert kept.dense_kept and kept.packed.wgmma24 is None
    bare = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense=False)
    assert bare.packed.wgmma24 is not None
    n = next(top(b) for b in plan.buckets if b.kernel == "wgmma24")
    x = torch.randn(n, 512, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        check_product(x, w, lin.bias, kept(x))
        check_product(x, w, lin.bias, bare(x))


@pytest.mark.parametrize("layout", ["slots", "compressed", "lone"])
def test_sparsified_model_with_the_format_saves_and_loads(tmp_path, layout):
    check_saved_model(tmp_path, "wgmma24", 0.9, 100, wgmma_layout=layout, **IGNORE)
    layers = cross.load(tmp_path / "m")  # in the layout it was saved in (with 'auto', the one the check kept)
    assert all(layers[n].packed.wgmma24.layout == layout for n in layers)


def test_operator_shape_without_running():
    """cross::wgmma24_linear's fake (what torch.compile traces) gives [N, M] in X's dtype; ``call``
    routes a Wgmma24Args to it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cross.kernels.launch import Wgmma24Args
    from cross.runtime.op import call

    sw = Wgmma24Weight.from_dense(pruned(300, 520, 0.8))
    with FakeTensorMode() as mode:
        counters = mode.from_tensor(torch.zeros(132 * 4, dtype=torch.int32))
        args = Wgmma24Args(mode.from_tensor(sw.values), counters, 300, 520, *sw.values.shape[:2], sw.wgs, sw.mt, 0,
                           sw.slots, 132)
        y = call(mode.from_tensor(torch.zeros(7, 520, dtype=torch.bfloat16)), args, None)
        assert tuple(y.shape) == (7, 300) and y.dtype == torch.bfloat16


def test_cpu_layer_does_not_resolve_the_kernel():
    """On the CPU (or any GPU other than compute capability 9.0) no kernel arguments are resolved
    for the 2:4 buckets; they run on the reference."""
    from cross.kernels.launch import wgmma24_capable, wgmma24_eligible

    w = pruned(256, 128, 0.9)
    packed = pack(w, make_plan(w, **IGNORE))
    assert not wgmma24_capable(torch.device("cpu")) and not wgmma24_eligible(packed, torch.device("cpu"))
    with pytest.raises(ValueError, match="compute capability 9.0"):
        from cross.kernels.launch import wgmma24_kernel_args

        wgmma24_kernel_args(packed)


# ---------------------------------------------------------------------------------------- benchmark
def test_bench_methods():
    from cross.bench.methods import parse_method, unavailable

    m = parse_method("cross+wgmma24")
    assert m.family == "cross" and m.wgmma_kernel and not m.slice_kernel
    assert parse_method("cross").wgmma_kernel == "auto" and parse_method("cross").wgmma_layout == WGMMA_LAYOUT_DEFAULT
    assert parse_method("cross-wgmma24").family == "wgmma24"
    assert "9.0" in unavailable(parse_method("cross-wgmma24"), 64, 64, None)
    assert "9.0" in unavailable(parse_method("cross-wgmma24"), 64, 64, (10, 0))
    assert "K % 8" in unavailable(parse_method("cross-wgmma24"), 64, 60, (9, 0))
    assert unavailable(parse_method("cross-wgmma24"), 64, 64, (9, 0)) is None
    assert parse_method("cross+wgmma24c").wgmma_layout == "compressed" and m.wgmma_layout == "slots"
    assert parse_method("cross+wgmma24a").wgmma_layout == "auto" and parse_method("cross+wgmma24a").wgmma_kernel
    forced = parse_method("cross-wgmma24c")
    assert forced.family == "wgmma24" and forced.wgmma_layout == "compressed"
    assert parse_method("cross+wgmma24l").wgmma_layout == "lone"
    assert parse_method("cross-wgmma24l").wgmma_layout == "lone"
    with pytest.raises(ValueError, match="cross-wgmma24l"):
        parse_method("cross-wgmma24x")


@pytest.mark.parametrize("layout", ["compressed", "lone"])
@pytest.mark.parametrize("sparsity", [0.4, 0.5, 0.7, 0.9])
def test_compressed_layout_option(sparsity, layout):
    """make_plan(wgmma_layout='compressed' or 'lone'): the compressed layout's bytes decide which weights
    are offered (50, 70 and 90%: 0.75, 0.53 and 0.28 of dense against the slots layout's 0.78, 0.66 and
    0.60; 40% by neither, 0.85; lone halves' fewer bytes offer no other weight), the plan says so, pack
    builds the layout (lone halves: within the compressed layout's bytes), and a forced bucket's result is
    the product; an unknown layout is refused."""
    w = pruned(1024, 512, sparsity)
    plan = make_plan(w, wgmma_layout=layout, **IGNORE)
    assert plan.provenance["options"]["wgmma_layout"] == layout
    assert any(b.kernel == "wgmma24" for b in plan.buckets) == (sparsity >= 0.5)
    slots_plan = make_plan(w, wgmma_layout="slots", **IGNORE)
    assert slots_plan.provenance["options"]["wgmma_layout"] == "slots"
    assert any(b.kernel == "wgmma24" for b in slots_plan.buckets) == (sparsity >= 0.5)
    if sparsity < 0.5:
        return
    packed = pack(w, plan)
    assert packed.wgmma24.layout == layout and packed.wgmma24.sized and torch.equal(packed.wgmma24.to_dense(), w)
    assert not pack(w, slots_plan).wgmma24.compressed
    exact = wgmma24_compressed_bytes(None, None, 1024, 512, chunk_words(w))
    grid = TileGrid.for_weight(w, (64, 64))
    est = wgmma24_compressed_bytes(grid.tile_nnz(w), grid.tile_sizes(), 1024, 512)
    # expected: the fullest chunk at 4 standard deviations, here one step of 256 slots over the counted one
    assert exact <= est <= 1.12 * exact
    if layout == "compressed":
        assert exact == packed.wgmma24.nbytes
    else:  # the lone halves' words in fewer slots, their masks and bases more header
        assert packed.wgmma24.bytes_read < pack(w, make_plan(w, wgmma_layout="compressed", **IGNORE)).wgmma24.bytes_read
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 512, generator=gen).to(torch.bfloat16)
    check_product(x, w, None, wgmma24_reference(x, packed.wgmma24))
    with pytest.raises(ValueError, match="wgmma_layout: expected one of"):
        make_plan(w, wgmma_layout="dense", **IGNORE)


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
@pytest.mark.parametrize("shape", [(1000, 512), (4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("sparsity", [0.7, 0.9])
@pytest.mark.parametrize("layout", ["compressed", "lone"])
def test_gpu_runtime_runs_the_kernel(shape, sparsity, layout, rng):
    """A layer whose buckets that offer the warpgroup 2:4 kernel run it (no dense copy; 11008x4096 at
    90% offers it only beside the row kernel, up to 16 tokens), its format in the compressed layout and
    with lone halves: at each end and the middle of those buckets, against the fp64 product, outputs
    poisoned; in a CUDA graph and under torch.compile."""
    from cross.kernels.launch import Wgmma24Args

    w = pruned(*shape, sparsity, seed=int(torch.randint(1 << 30, (1,), generator=rng))).cuda()
    check_candidates_run(w, "wgmma24", Wgmma24Args, rng, wgmma_layout=layout, **IGNORE)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["slots", "compressed", "lone"])
def test_gpu_runtime_propagates_nonfinite_inputs(layout, dtype, rng):
    """With nan_policy 'propagate' (the default) a layer whose buckets run the kernel gives Inf and NaN
    inputs the dense product's NaN and Inf, eagerly and in a CUDA graph; finite tokens as before; bf16
    and fp16."""
    from cross.kernels.launch import Wgmma24Args

    w = pruned(1000, 512, 0.7, seed=int(torch.randint(1 << 30, (1,), generator=rng))).to(dtype).cuda()
    lin = linear_of(w)
    offered = make_plan(w, wgmma_kernel=True, wgmma_layout=layout)
    plan = offered.with_buckets(replace(b, kernel="wgmma24", alternatives=()) if "wgmma24" in b.alternatives else b
                                for b in offered.buckets)
    sl = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense=False, measure=False)
    runs = [i for i, b in enumerate(sl.plan.buckets) if b.kernel == "wgmma24"]
    assert runs and all(isinstance(sl._kernels[i], Wgmma24Args) and sl._kernels[i].propagate for i in runs)
    wc, bias = w.cpu(), lin.bias.detach().float().cpu()
    with torch.no_grad():
        for n in sorted({sl.plan.buckets[i].n_min for i in runs} | {min(top(sl.plan.buckets[runs[-1]]), 300)}):
            x = nonfinite_inputs(n, 512, rng, dtype)
            assert_dense_nonfinite(sl(x.cuda()), dense_terms(x, wc) + bias)
        first = sl.plan.buckets[runs[0]]
        n = min(max(first.n_min, 16), top(first))
        static = torch.empty(n, 512, dtype=dtype, device="cuda")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = sl(static)
        x = nonfinite_inputs(n, 512, rng, dtype)
        static.copy_(x)
        out.fill_(0.0)
        graph.replay()
        assert_dense_nonfinite(out, dense_terms(x, wc) + bias)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
def test_gpu_measured_check_times_the_candidates():
    """The measured check times every bucket that offers the warpgroup 2:4 kernel; each runs what it timed
    fastest where that measured faster than dense."""
    check_measured_candidates(pruned(11008, 4096, 0.9).cuda(), "wgmma24", "wgmma24", **IGNORE)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
def test_gpu_measured_check_refuses_a_wrong_kernel(monkeypatch):
    """A warpgroup 2:4 kernel whose result disagrees with the dense product is not timed; its buckets fall back."""
    w = pruned(4096, 4096, 0.9).cuda()
    check_wrong_kernel_refused(monkeypatch, w, "wgmma24", "wgmma24", "warpgroup 2:4 kernel", **IGNORE)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
def test_gpu_auto_layout_keeps_the_layout_it_timed_faster(monkeypatch):
    """With wgmma_layout='auto' a layer ends with one concrete layout, the one whose buckets timed
    faster in sum (both sums in the provenance), holds its format in that layout where a bucket runs
    the kernel (the compressed one built once, for its timing: measure_weight), and gives the product
    at each bucket's top token count."""
    from cross.pack.wgmma24 import Wgmma24Weight

    builds = []
    real_build = Wgmma24Weight.from_dense.__func__
    monkeypatch.setattr(Wgmma24Weight, "from_dense", classmethod(
        lambda cls, *a, **kw: builds.append(kw.get("compressed", False)) or real_build(cls, *a, **kw)))
    w = pruned(11008, 4096, 0.5).cuda()  # a sparsity where the layouts contest (LAYOUT_CONTEST_BYTES)
    lin = linear_of(w)
    sl = cross.SparseLinear.from_dense(lin, **AUTO)
    assert builds == [False, True]  # the slots layout when packed, the compressed one for the contest
    sums = sl.plan.provenance["measured"]["wgmma_layouts_us"]
    layout = sl.plan.provenance["options"]["wgmma_layout"]
    assert set(sums) == {"slots", "compressed"} and layout == min(sums, key=lambda k: (sums[k], k != "slots"))
    if any(b.kernel == "wgmma24" and not b.fallback for b in sl.plan.buckets):
        assert sl.packed.wgmma24.compressed == (layout == "compressed")
    with torch.no_grad():
        for b in sl.plan.buckets:
            x = torch.randn(top(b), w.shape[1], dtype=torch.bfloat16, device="cuda")
            check_product(x, w, lin.bias, sl(x))


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="needs a compute capability 9.0 GPU")
def test_gpu_measured_check_times_the_alternatives():
    """The row kernel's buckets are timed against the warpgroup 2:4 kernel: each ends measured, with
    no alternatives left, running the faster (the reason names the other's time), and gives the
    product at its top token count."""
    w = pruned(11008, 4096, 0.9).cuda()
    offered = make_plan(w, **IGNORE)
    assert any(b.alternatives for b in offered.buckets)
    lin = linear_of(w)
    sl = cross.SparseLinear.from_dense(lin, **IGNORE)
    for a, b in zip(offered.buckets, sl.plan.buckets):
        if a.alternatives:
            assert b.measured and b.alternatives == () and b.kernel in (a.kernel, *a.alternatives)
            assert "fastest of those timed" in b.reason
    with torch.no_grad():
        for b in sl.plan.buckets:
            x = torch.randn(top(b), w.shape[1], dtype=torch.bfloat16, device="cuda")
            check_product(x, w, lin.bias, sl(x))


# ---------------------------------------------------------------------------------------- wgmma_layout="auto"


def test_auto_offers_where_either_layout_fits_and_packs_slots_until_measured():
    """'auto' offers the weight where the smaller of the two layouts' bytes is within WGMMA_MAX_BYTES,
    and packs the slots layout until the measured check chooses, where the layouts' bytes are close
    enough for a contest (LAYOUT_CONTEST_BYTES: 50%)."""
    w = pruned(1024, 512, 0.5)
    auto = make_plan(w, **AUTO)
    assert auto.provenance["options"]["wgmma_layout"] == "auto"
    assert [b.kernel for b in auto.buckets] == [b.kernel for b in make_plan(w, **IGNORE).buckets]
    assert any(b.kernel == "wgmma24" for b in auto.buckets)
    packed = pack(w, auto)
    assert packed.wgmma24 is not None and not packed.wgmma24.compressed
    with pytest.raises(ValueError, match="wgmma_layout: expected one of"):
        make_plan(w, **{**IGNORE, "wgmma_layout": "best"})


@pytest.mark.parametrize("sparsity, layout", [(0.9, "compressed"), (0.5, "auto")])
def test_auto_is_the_default_layout(sparsity, layout):
    """make_plan, sparsify_ and from_dense take 'auto' unless a layout is named: the compressed layout at
    90% (the layouts' bytes too far apart for a contest), 'auto' at 50% (left in slots where the measured
    check does not run); the product is the weight's."""
    assert WGMMA_LAYOUT_DEFAULT == "auto"
    w = pruned(1024, 512, sparsity)
    plan = make_plan(w, **IGNORE)
    assert plan.provenance["options"]["wgmma_layout"] == layout
    assert [b.kernel for b in plan.buckets] == [b.kernel for b in make_plan(w, **AUTO).buckets]
    lin = linear_of(w)
    sl = cross.SparseLinear.from_dense(lin, keep_dense=False, measure=False, **IGNORE)
    assert sl.plan.provenance["options"]["wgmma_layout"] == layout
    assert sl.packed.wgmma24.compressed == (layout == "compressed")
    model = torch.nn.Sequential(linear_of(w))
    report = cross.sparsify_(model, keep_dense=False, measure=False, progress=False, **IGNORE)
    assert report.layers["0"].summary["wgmma_layout"] == layout
    assert model[0].packed.wgmma24.compressed == (layout == "compressed")
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    with torch.no_grad():
        check_product(x, w, lin.bias, model[0](x))


@pytest.mark.parametrize("rival", ["compressed", "lone"])
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.9])
def test_auto_contests_only_where_the_layouts_bytes_are_close(monkeypatch, sparsity, rival):
    """'auto' stays 'auto' (the measured check times two layouts) where the slots layout's bytes are at
    most LAYOUT_CONTEST_BYTES times the compressed layout's, counted on the weight (so at 50%, not at 90%),
    and becomes AUTO_COMPRESSED elsewhere (the compressed layout, or its lone halves): the same buckets
    offered, no slots format packed."""
    import cross.partition.planner as planner_mod

    monkeypatch.setattr(planner_mod, "AUTO_COMPRESSED", rival)
    w = pruned(1024, 512, sparsity)
    grid = TileGrid.for_weight(w, (64, 64))
    nnz, size = grid.tile_nnz(w), grid.tile_sizes()
    ratio = _wgmma24_bytes("slots", w, nnz, size, grid) / _wgmma24_bytes("compressed", w, nnz, size, grid)
    layout = "auto" if ratio <= LAYOUT_CONTEST_BYTES else rival
    assert layout == {0.5: "auto", 0.9: rival}.get(sparsity, layout)
    auto = make_plan(w, **AUTO)
    assert auto.provenance["options"]["wgmma_layout"] == layout
    assert [b.kernel for b in auto.buckets] == [b.kernel for b in make_plan(w, **IGNORE).buckets]
    assert any(b.kernel == "wgmma24" for b in auto.buckets)
    packed = pack(w, auto)
    assert packed.wgmma24.layout == ("slots" if layout == "auto" else rival)
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    check_product(x, w, None, execute(x, packed))


def test_layout_memo_settles_after_agreeing_contests():
    """LayoutMemo asks for 'auto' (a contest) until the last LAYOUT_SETTLED contests of a weight's shape,
    dtype and sparsity (to 1%) kept the same layout, then for that layout; other kinds of weight, a named
    layout and plans without a contest are untouched."""
    from types import SimpleNamespace

    from cross.nn.sparsify import LAYOUT_SETTLED, LayoutMemo

    def plan(layout=None):
        measured = {} if layout is None else {"wgmma_layouts_us": {"slots": 1.0, "compressed": 2.0}}
        return SimpleNamespace(provenance={"options": {"wgmma_layout": layout or "compressed"}, "measured": measured})

    memo = LayoutMemo()
    a = {"shape": (4096, 4096), "dtype": "bfloat16", "sparsity": 0.5001}
    same = {**a, "sparsity": 0.4999}
    other = {**a, "shape": (4096, 11008)}
    for _ in range(LAYOUT_SETTLED - 1):
        memo.record(a, plan("slots"))
        memo.record(a, plan())  # no contest: not counted
    assert memo.layout_for(same, "auto") == "auto"
    memo.record(same, plan("slots"))
    assert memo.layout_for(a, "auto") == "slots" and memo.layout_for(same, "auto") == "slots"
    assert memo.layout_for(a, "compressed") == "compressed"
    assert memo.layout_for(other, "auto") == "auto" and memo.layout_for({**a, "sparsity": 0.6}, "auto") == "auto"
    memo.record(a, plan("compressed"))  # the last contests disagree: contest again
    assert memo.layout_for(a, "auto") == "auto"
    for _ in range(LAYOUT_SETTLED):
        memo.record(a, plan("compressed"))
    assert memo.layout_for(a, "auto") == "compressed"


def test_sparsify_takes_the_settled_layout_without_a_contest(monkeypatch):
    """sparsify_ asks for the layout its first LAYOUT_SETTLED contests of a weight's kind kept, for the
    rest of that kind: its later layers are planned in it and packed in it; each layer's product is its
    weight's. The contest is simulated (on the CPU the measured check does not run): each layer planned
    'auto' ends in the compressed layout, as a contest that kept it would leave it."""
    from cross.nn import sparsify as sparsify_mod
    from cross.nn.sparsify import LAYOUT_SETTLED

    real = cross.SparseLinear.from_dense.__func__
    asked = []

    def contested(cls, linear, *, plan, **kw):
        asked.append(plan.provenance["options"]["wgmma_layout"])
        if plan.provenance["options"]["wgmma_layout"] == "auto":
            plan = plan.with_buckets(plan.buckets, measured={"wgmma_layouts_us": {"slots": 2.0, "compressed": 1.0}},
                                     options={**plan.provenance["options"], "wgmma_layout": "compressed"})
        return real(cls, linear, plan=plan, **kw)

    monkeypatch.setattr(sparsify_mod.SparseLinear, "from_dense", classmethod(contested))
    n = LAYOUT_SETTLED + 2
    weights = [pruned(1024, 512, 0.5, seed=i) for i in range(n)]
    model = torch.nn.Sequential(*(linear_of(w) for w in weights))
    biases = [lin.bias.detach().clone() for lin in model]
    report = cross.sparsify_(model, keep_dense=False, measure=False, progress=False, **IGNORE)
    assert asked == ["auto"] * LAYOUT_SETTLED + ["compressed"] * (n - LAYOUT_SETTLED)
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    for i, w in enumerate(weights):
        assert report.layers[str(i)].summary["wgmma_layout"] == "compressed" and model[i].packed.wgmma24.compressed
        with torch.no_grad():
            check_product(x, w, biases[i], model[i](x))


def test_auto_stays_in_slots_without_the_measured_check():
    """With 'auto', where the measured check does not run (measure=False, or on the CPU) the layer keeps
    the slots layout it was packed in (a weight where the layouts contest), and its product is the weight's."""
    w = pruned(1024, 512, 0.5)
    lin = linear_of(w)
    for measure in (False, "auto"):  # "auto" does not time on the CPU
        sl = cross.SparseLinear.from_dense(lin, keep_dense=False, measure=measure, **AUTO)
        assert sl.plan.provenance["options"]["wgmma_layout"] == "auto"
        assert sl.packed.wgmma24 is not None and not sl.packed.wgmma24.compressed
        assert "measured" not in sl.plan.provenance
    model = torch.nn.Sequential(linear_of(w))
    report = cross.sparsify_(model, keep_dense=False, measure=False, progress=False, **AUTO)
    assert report.layers["0"].summary["wgmma_layout"] == "auto" and not model[0].packed.wgmma24.compressed
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    with torch.no_grad():
        check_product(x, w, lin.bias, model[0](x))


def test_for_layout_packs_as_the_runtime_does():
    """Wgmma24Weight.for_layout: each layout by its name, the compressed ones sized, the slots one fixed; the
    same weight back; an unknown layout refused."""
    w = pruned(512, 256, 0.7).to(torch.bfloat16)
    for layout in ("slots", "compressed", "lone"):
        sw = Wgmma24Weight.for_layout(w, layout)
        assert sw.layout == layout and sw.sized == (layout != "slots") and torch.equal(sw.to_dense(), w)
    with pytest.raises(ValueError, match="expected 'slots', 'compressed' or 'lone'"):
        Wgmma24Weight.for_layout(w, "auto")


def test_with_plan_builds_the_format_again_in_the_plans_layout():
    """A packed weight given a plan whose options name the other layout holds the format in that
    layout, and runs the same product; the same layout keeps the format it holds."""
    w = pruned(1024, 512, 0.9).to(torch.bfloat16)
    slots = pack(w, make_plan(w, **{**IGNORE, "wgmma_layout": "slots"}))
    plan = slots.plan.with_buckets([replace(b, fallback=False, alternatives=()) if b.kernel == "wgmma24" else b
                                    for b in slots.plan.buckets])
    same = slots.with_plan(plan)
    assert same.wgmma24 is slots.wgmma24
    compressed = slots.with_plan(plan.with_buckets(plan.buckets, options={**plan.provenance["options"],
                                                                           "wgmma_layout": "compressed"}))
    assert compressed.wgmma24.compressed and compressed.wgmma24.nbytes < slots.wgmma24.nbytes
    lone = compressed.with_plan(plan.with_buckets(plan.buckets, options={**plan.provenance["options"],
                                                                         "wgmma_layout": "lone"}))
    assert lone.wgmma24.layout == "lone" and lone.wgmma24.bytes_read < compressed.wgmma24.bytes_read
    assert slots.with_plan(plan, built=lone).wgmma24 is slots.wgmma24  # a format of another layout is not taken
    x = torch.randn(12, 512).to(torch.bfloat16)
    for other in (compressed, lone):
        torch.testing.assert_close(wgmma24_reference(x, other.wgmma24), wgmma24_reference(x, slots.wgmma24))


@pytest.mark.parametrize("rival", ["compressed", "lone"])
@pytest.mark.parametrize("winner", ["slots", "rival"])
def test_the_measured_check_keeps_the_faster_layout(monkeypatch, winner, rival):
    """With 'auto' the buckets offered the warpgroup 2:4 kernel are timed in the slots layout and in
    AUTO_COMPRESSED (the compressed layout, or its lone halves; each result checked first: the rival's
    format's too) and the faster layout's decisions and format are kept, named in the plan's options with
    both sums; the other buckets are timed once."""
    import cross.costmodel.profile as profile
    import cross.partition.planner as planner_mod
    from cross.runtime import measure as measure_mod

    monkeypatch.setattr(planner_mod, "AUTO_COMPRESSED", rival)
    faster = rival if winner == "rival" else "slots"

    w = pruned(1024, 512, 0.5).to(torch.bfloat16)  # a sparsity where the layouts contest (LAYOUT_CONTEST_BYTES)
    packed = pack(w, make_plan(w, **AUTO))
    offered = {i for i, b in enumerate(packed.plan.buckets) if "wgmma24" in (b.kernel, *b.alternatives)}
    assert offered
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    monkeypatch.setattr(measure_mod, "_capable", lambda kernel, device: True)
    real = measure_mod._plan_call

    def tagged(x, weight, kernels):
        call = real(x, weight, kernels)
        run = lambda: call()  # noqa: E731
        kernel = weight.plan.bucket_for(x.shape[0]).kernel
        run.tag = (kernel, None if kernel != "wgmma24" else weight.wgmma24.layout)
        return run

    monkeypatch.setattr(measure_mod, "_plan_call", tagged)
    timed = []

    def fake_time(fn, warmup_ms, rep_ms):
        tag = getattr(fn, "tag", None)
        timed.append(tag)
        if tag is None:
            return 10.0, "graph"  # dense
        if tag[0] == "wgmma24":
            return (6.0 if tag[1] == faster else 8.0), "graph"
        return 9.0, "graph"  # the tile and row kernels

    monkeypatch.setattr(profile, "call_time_us", fake_time)
    from cross.pack.wgmma24 import Wgmma24Weight

    builds = []
    real_build = Wgmma24Weight.from_dense.__func__
    monkeypatch.setattr(Wgmma24Weight, "from_dense", classmethod(
        lambda cls, *a, **kw: builds.append((kw.get("compressed"), kw.get("lone"))) or real_build(cls, *a, **kw)))
    buckets, _, (layout, sums), built = measure_mod._measure(packed, w, 0.03, {}, seed=0)
    assert layout == faster and set(sums) == {"slots", rival}
    assert sums[faster] < sums[rival if faster == "slots" else "slots"]
    assert ("wgmma24", rival) in timed and ("wgmma24", "slots") in timed
    for i in offered:
        assert (buckets[i].kernel, buckets[i].measured_us, buckets[i].fallback) == ("wgmma24", 6.0, False)
    plan = measure_mod._measured_plan(packed, buckets, {"graph"}, (layout, sums), 0.03)
    assert plan.provenance["options"]["wgmma_layout"] == faster
    assert plan.provenance["measured"]["wgmma_layouts_us"] == sums
    chosen = packed.with_plan(plan, built=built)
    assert chosen.wgmma24.layout == faster
    # the rival's format built once, for its timing, and kept from it where it won
    assert builds == [(True, rival == "lone")]
    assert chosen.wgmma24 is (built.wgmma24 if faster == rival else packed.wgmma24)
    n = max(b.n_max for i, b in enumerate(plan.buckets) if i in offered and b.n_max < 2**31 - 1)
    x = torch.randn(min(n, 64), 512).to(torch.bfloat16)
    check_product(x, w, None, execute(x, chosen))


def test_a_plan_not_auto_times_one_layout(monkeypatch):
    """Plans in a named layout are timed as before: no second pass, no layout in the result."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = pruned(1024, 512, 0.5).to(torch.bfloat16)  # a sparsity where 'auto' contests (LAYOUT_CONTEST_BYTES)
    packed = pack(w, make_plan(w, wgmma_layout="slots", **IGNORE))
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    monkeypatch.setattr(measure_mod, "_capable", lambda kernel, device: True)
    calls = []
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (calls.append(fn) or 9.0, "graph"))
    buckets, _, layout, _ = measure_mod._measure(packed, w, 0.03, {}, seed=0)
    once = len(calls)
    assert layout is None and once > 0
    calls.clear()
    auto = pack(w, make_plan(w, **AUTO))
    measure_mod._measure(auto, w, 0.03, {}, seed=0)
    assert len(calls) > once  # the offered buckets a second time


def test_a_plan_without_the_kernel_has_no_layouts_contest(monkeypatch):
    """With the layout 'auto' a plan that offers no bucket to the warpgroup 2:4 kernel (the kernel off, as
    by default) is timed once and keeps no layout in the result: it holds no 2:4 format."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = pruned(1024, 512, 0.9).to(torch.bfloat16)
    packed = pack(w, make_plan(w, wgmma_layout="auto"))
    assert packed.plan.provenance["options"]["wgmma_layout"] == "auto" and packed.wgmma24 is None
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    monkeypatch.setattr(measure_mod, "_capable", lambda kernel, device: True)
    calls = []
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (calls.append(fn) or 9.0, "graph"))
    buckets, _, layout, _ = measure_mod._measure(packed, w, 0.03, {}, seed=0)
    assert layout is None and calls
    plan = measure_mod._measured_plan(packed, buckets, {"graph"}, layout, 0.03)
    assert plan.provenance["options"]["wgmma_layout"] == "auto"
    assert "wgmma_layouts_us" not in plan.provenance["measured"]


@pytest.mark.parametrize("name, layout", [("cross+wgmma24", "slots"), ("cross+wgmma24c", "compressed"),
                                          ("cross+wgmma24l", "lone")])
def test_bench_note_names_the_layout(monkeypatch, name, layout):
    """The benchmark's note for a bucket the warpgroup 2:4 format runs names its layout (with 'auto',
    the one the measured check kept), and the bound call is the product. The kernel's candidate
    bucket is taken here as the measured check would take it on a GPU."""
    import cross.partition
    from cross.bench.methods import parse_method, prepare

    def taken(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        return plan.with_buckets(replace(b, fallback=False) if b.kernel == "wgmma24" else b for b in plan.buckets)

    monkeypatch.setattr(cross.partition, "make_plan", taken)
    w = pruned(1024, 512, 0.7)
    n = next(b.n_max for b in taken(w, wgmma_layout=layout, **IGNORE).buckets if b.kernel == "wgmma24")
    x = torch.randn(n, 512, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    bound = prepare(parse_method(name), w).bind(x)
    assert f"{layout} layout" in bound.note
    assert not any(f"{other} layout" in bound.note for other in ("slots", "compressed", "lone") if other != layout)
    check_product(x, w, None, bound.fn())
