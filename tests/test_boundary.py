"""The op boundary (runtime.check_input, SparseLinear.forward, runtime.execute): what it rejects, what
it accepts, and that what runs is what the layer's summary says.

- Rejected, with "expected X, got Y": a non-tensor, a wrong last dimension, another dtype, another
  device, a bias of another shape, dtype or device, and (SparseLinear) an input needing grad.
- Accepted: any strides. Nothing requires a contiguous input: execute reshapes X to 2-D, the
  reference executor copies it, and the kernel operator copies an X whose last dimension is not
  unit-stride (the kernels take the row stride only) and a strided bias. Sliced, transposed,
  expanded and offset inputs give the contiguous input's result; outputs are contiguous, like
  nn.Linear's.
- No silent fallback: a bucket runs the dense product only where its plan falls back and the dense
  copy is kept, exactly where summary() says runs == 'dense'; everywhere else the plan runs, on the
  CPU through the reference executor, whose result is the fp64 product within the rounding of an
  fp32 accumulation (no silent numerical change).
"""

import types

import pytest
import torch
from torch import nn

import cross.runtime.dispatch as dispatch
from cross import SparseLinear
from cross.costmodel import CostModel, GPUSpec
from cross.pack import pack
from cross.partition import make_plan
from cross.runtime import KernelFallbackWarning, check_input, execute
from cross.tiling import TileKind
from strategies import mismatch

HAS_GPU = torch.cuda.is_available()
#: Dense products cost a millisecond more than predicted: every bucket's plan wins.
WINNING = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0))
#: Dense launches cost 20 us: on a 256x256 weight at 10% density the plan wins up to 128 tokens only.
MIXED = CostModel(spec=GPUSpec(name="small batches win", dense_launch_us=20.0))
#: A token count in each default bucket (1, 2, 3-4, 5-8, 9-16, 17-64, 65-128, 129-512, 513-).
TOKENS = [1, 2, 3, 5, 9, 17, 65, 129, 513]


def pruned_linear(m, k, density, dtype, rng, bias=True) -> nn.Linear:
    linear = nn.Linear(k, m, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(m, k, generator=rng) < density)
    return linear.to(dtype)


@pytest.fixture
def layer(rng):
    """A 130 x 200 fp16 SparseLinear (partial edge tiles) whose plan runs in every bucket."""
    linear = pruned_linear(130, 200, 0.3, torch.float16, rng)
    return linear, SparseLinear.from_dense(linear, cost_model=WINNING)


# ---------------------------------------------------------------------------------------- rejected
REJECTED = {
    "a list": (lambda k: [[0.0] * k], None, TypeError, "expected a torch.Tensor"),
    "a 0-d tensor": (lambda k: torch.tensor(1.0, dtype=torch.float16), None, ValueError, "expected last dimension"),
    "last dim K - 1": (lambda k: torch.zeros(3, k - 1, dtype=torch.float16), None, ValueError, "expected last dimension 200"),
    "last dim K + 1": (lambda k: torch.zeros(2, 3, k + 1, dtype=torch.float16), None, ValueError, "got shape (2, 3, 201)"),
    "K in another dim": (lambda k: torch.zeros(k, 3, dtype=torch.float16), None, ValueError, "expected last dimension"),
    "float32": (lambda k: torch.zeros(3, k), None, TypeError, "expected dtype float16 (the weight's), got float32"),
    "bfloat16": (lambda k: torch.zeros(3, k, dtype=torch.bfloat16), None, TypeError, "got bfloat16"),
    "float64": (lambda k: torch.zeros(3, k, dtype=torch.float64), None, TypeError, "got float64"),
    "int64": (lambda k: torch.zeros(3, k, dtype=torch.int64), None, TypeError, "got int64"),
    "another device": (lambda k: torch.zeros(3, k, dtype=torch.float16, device="meta"), None, ValueError,
                       "expected device cpu (the weight's), got meta"),
    "bias of M - 1": (lambda k: torch.zeros(3, k, dtype=torch.float16), lambda m: torch.zeros(m - 1, dtype=torch.float16),
                      ValueError, "bias: expected shape (130,)"),
    "bias 2-d": (lambda k: torch.zeros(3, k, dtype=torch.float16), lambda m: torch.zeros(1, m, dtype=torch.float16),
                 ValueError, "bias: expected shape (130,)"),
    "bias float32": (lambda k: torch.zeros(3, k, dtype=torch.float16), lambda m: torch.zeros(m), TypeError,
                     "bias: expected dtype float16"),
    "bias on another device": (lambda k: torch.zeros(3, k, dtype=torch.float16),
                               lambda m: torch.zeros(m, dtype=torch.float16, device="meta"), ValueError, "on meta"),
}


@pytest.mark.parametrize("entry", ["check_input", "execute", "SparseLinear"])
@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected(case, entry, layer):
    make_x, make_bias, error, message = REJECTED[case]
    _, sparse = layer
    x = make_x(200)
    bias = None if make_bias is None else make_bias(130)
    if entry == "SparseLinear" and bias is not None:
        sparse.bias = bias  # a bias swapped in after construction meets the same check
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        if entry == "check_input":
            check_input(x, sparse.packed, bias)
        elif entry == "execute":
            execute(x, sparse.packed, bias)
        else:
            with torch.no_grad():
                sparse(x)


def test_input_that_needs_grad_is_rejected(layer):
    _, sparse = layer
    x = torch.zeros(3, 200, dtype=torch.float16, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(x)
    with torch.no_grad():
        assert sparse(x).shape == (3, 130)
    with torch.inference_mode():
        assert sparse(x.detach()).shape == (3, 130)


# ---------------------------------------------------------------------------------------- layouts
def _layouts(n, k, dtype, rng, device="cpu"):
    """Inputs of logical shape [..., k] with other strides than a contiguous tensor's (made on the
    device: copying a strided tensor there would make it contiguous)."""
    def randn(*shape):
        return torch.randn(*shape, generator=rng).to(dtype).to(device)

    base, wide = randn(n, 2 * k), randn(3, n, k + 5)
    return {
        "every other column": base[:, ::2],
        "transposed": randn(k, n).T,
        "rows expanded (stride 0)": randn(1, k).expand(n, k),
        "columns expanded (stride 0 along K)": randn(n, 1).expand(n, k),
        "storage offset": base[1:, 3 : 3 + k],
        "padded rows, 3-d": wide[..., :k],
        "permuted 3-d": randn(k, 2, n).permute(2, 1, 0),
        "1-d strided": base[0, ::2],
    }


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("keep_dense", [False, True], ids=["plan", "dense fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_non_contiguous_inputs_work(dtype, keep_dense, bias, rng):
    linear = pruned_linear(130, 200, 0.3, dtype, rng, bias=bias)
    cm = WINNING if not keep_dense else CostModel()  # the default roofline falls back at this size
    sparse = SparseLinear.from_dense(linear, cost_model=cm, keep_dense=keep_dense)
    assert all(b["runs"] == ("dense" if keep_dense else "plan") for b in sparse.summary()["buckets"])
    with torch.no_grad():
        for name, x in _layouts(5, 200, dtype, rng).items():
            assert not x.is_contiguous(), name
            y = sparse(x)
            assert y.is_contiguous(), name
            assert mismatch(y, x, linear.weight, linear.bias) == "", name
            if not keep_dense:  # the plan copies X: bit for bit the contiguous result (BLAS may sum in another order)
                assert torch.equal(y, sparse(x.contiguous())), name


def test_strided_bias_works(layer, rng):
    linear, sparse = layer
    bias = torch.randn(260, generator=rng).to(torch.float16)[::2]
    x = torch.randn(7, 200, generator=rng).to(torch.float16)
    assert mismatch(execute(x, sparse.packed, bias), x, linear.weight, bias) == ""


def test_kernel_operator_takes_any_strides(rng):
    """The kernel operator (Triton; its interpreter without a GPU) on a sliced X and a strided bias:
    the same result as on contiguous copies. The kernels themselves take X's row stride only, so
    without the operator's copy they would read a sliced X as if packed."""
    from cross.kernels.launch import kernel_args
    from cross.runtime.op import call

    device = "cuda" if HAS_GPU else "cpu"
    w = (torch.randn(64, 64, generator=rng) * (torch.rand(64, 64, generator=rng) < 0.5)).half().to(device)
    packed = pack(w, make_plan(w, tile_shape=(64, 64), n_programs=4, cost_model=WINNING))
    args = kernel_args(packed, packed.buckets[0], "triton")
    x = torch.randn(3, 128, generator=rng).half().to(device)[:, ::2]
    bias = torch.randn(128, generator=rng).half().to(device)[::2]
    y = call(x, args, bias)
    assert torch.equal(y, call(x.contiguous(), args, bias.contiguous()))
    assert mismatch(y, x, w, bias) == ""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_non_contiguous_inputs_on_gpu(dtype, rng):
    linear = pruned_linear(256, 192, 0.3, dtype, rng).cuda()
    sparse = SparseLinear.from_dense(linear, cost_model=WINNING, measure=False)  # not timed: the plan runs
    ran = dispatch.bucket_index(sparse.packed, 20)
    assert sparse._kernels[ran] is not None, f"no GPU kernel for bucket {ran}"
    with torch.no_grad():
        for name, x in _layouts(20, 192, dtype, rng, "cuda").items():
            assert not x.is_contiguous(), name
            y = sparse(x)
            assert mismatch(y, x, linear.weight, linear.bias) == "", name
            assert torch.equal(y, sparse(x.contiguous())), name


# ---------------------------------------------------------------------------------------- what runs
@pytest.fixture
def spy(monkeypatch):
    """Counts of the dense product (F.linear) and the reference executor inside runtime.execute."""
    ran = {"dense": 0, "plan": 0}
    real_linear, real_reference = dispatch.F.linear, dispatch.reference_matmul

    def dense(*args, **kwargs):
        ran["dense"] += 1
        return real_linear(*args, **kwargs)

    def reference(*args, **kwargs):
        ran["plan"] += 1
        return real_reference(*args, **kwargs)

    monkeypatch.setattr(dispatch, "F", types.SimpleNamespace(linear=dense))
    monkeypatch.setattr(dispatch, "reference_matmul", reference)
    return ran


@pytest.mark.parametrize("keep_dense", ["auto", True, False])
def test_what_runs_is_what_summary_says(keep_dense, spy, rng):
    """Per bucket, exactly one path runs, the one summary() names; the plan path is the reference
    executor on the CPU and agrees with the fp64 product like the dense product does."""
    linear = pruned_linear(256, 256, 0.1, torch.float32, rng)
    sparse = SparseLinear.from_dense(linear, cost_model=MIXED, keep_dense=keep_dense)
    fallback = [b.fallback for b in sparse.plan.buckets]
    assert fallback == [False] * 7 + [True] * 2, "the cost model no longer gives a mixed plan"
    runs = [b["runs"] for b in sparse.summary()["buckets"]]
    assert runs == ["dense" if f and sparse.dense_kept else "plan" for f in fallback]
    assert sparse.dense_kept == (keep_dense is True or (keep_dense == "auto" and any(fallback)))
    with torch.no_grad():
        for n, expected in zip(TOKENS, runs):
            spy.update(dense=0, plan=0)
            x = torch.randn(n, 256, generator=rng)
            y = sparse(x)
            assert spy == {"dense": int(expected == "dense"), "plan": int(expected == "plan")}, f"N={n}"
            assert mismatch(y, x, linear.weight, linear.bias) == "", f"N={n}"


def test_force_plan_runs_the_plan_where_it_falls_back(spy, rng):
    linear = pruned_linear(256, 256, 0.1, torch.float32, rng)
    packed = pack(linear.weight.detach(), make_plan(linear.weight.detach(), cost_model=MIXED))
    x = torch.randn(600, 256, generator=rng)
    with torch.no_grad():
        execute(x, packed, linear.bias, dense_weight=linear.weight)
        assert spy == {"dense": 1, "plan": 0}
        y = execute(x, packed, linear.bias, dense_weight=linear.weight, force_plan=True)
        assert spy == {"dense": 1, "plan": 1}
        execute(x, packed, linear.bias)  # no dense copy: the plan, fallback or not
        assert spy == {"dense": 1, "plan": 2}
    assert mismatch(y, x, linear.weight, linear.bias) == ""


def test_no_tokens_run_nothing(layer, spy):
    linear, sparse = layer
    with torch.no_grad():
        y = sparse(torch.zeros(0, 4, 200, dtype=torch.float16))
    assert y.shape == (0, 4, 130) and y.dtype == torch.float16
    assert spy == {"dense": 0, "plan": 0}


@pytest.mark.gpu
def test_gpu_plan_without_a_kernel_runs_the_reference_executor(spy, rng, monkeypatch):
    """A bucket no kernel backend takes (here: none offered) still runs its plan, on the reference
    executor, on the GPU, and the layer says so once."""
    import cross.kernels.launch as launch

    monkeypatch.setattr(launch, "default_backend", lambda packed, device: None)
    linear = pruned_linear(128, 128, 0.05, torch.float16, rng).cuda()
    with pytest.warns(KernelFallbackWarning, match="no kernel backend accepts it"):
        sparse = SparseLinear.from_dense(linear, cost_model=WINNING, measure=False, row_kernel=False)
    assert all(k is None for k in sparse._kernels.values())
    x = torch.randn(5, 128, generator=rng).half().cuda()
    with torch.no_grad():
        y = sparse(x)
    assert spy == {"dense": 0, "plan": 1}
    assert mismatch(y, x, linear.weight, linear.bias) == ""


@pytest.mark.gpu
def test_gpu_index_tiles_run_the_triton_kernel(spy, rng):
    """INDEX tiles run on the GPU through the Triton backend (the CUDA kernel has no INDEX path),
    not on the reference executor, and without a KernelFallbackWarning."""
    import warnings

    linear = pruned_linear(128, 128, 0.02, torch.float16, rng).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        sparse = SparseLinear.from_dense(linear, cost_model=WINNING, allowed_kinds=(TileKind.INDEX,), measure=False)
    assert sparse.packed.has_index and sparse._kernels[0].backend == "triton"
    x = torch.randn(5, 128, generator=rng).half().cuda()
    with torch.no_grad():
        y = sparse(x)
    assert spy == {"dense": 0, "plan": 0}
    assert mismatch(y, x, linear.weight, linear.bias) == ""


def test_a_plan_without_a_gpu_kernel_warns(rng):
    """On a GPU, buckets whose plan no kernel can run go to the reference executor: the
    user is told once, at construction, with a warning category that can be silenced; buckets that
    fall back to a kept dense copy do not count. (The packed weight's device is faked as CUDA, as
    the check only reads it; `test_gpu_plan_without_a_kernel_runs_the_reference_executor` covers
    the real GPU.)"""
    import warnings

    from cross.runtime.dispatch import warn_without_kernel

    w = (torch.randn(128, 128, generator=rng) * (torch.rand(128, 128, generator=rng) < 0.02)).half()
    plan = make_plan(w, cost_model=MIXED, allowed_kinds=(TileKind.INDEX,))
    packed = pack(w, plan)
    assert packed.has_index and any(b.fallback for b in plan.buckets) and not all(b.fallback for b in plan.buckets)
    fake = types.SimpleNamespace(device=torch.device("cuda"), buckets=packed.buckets, shape=packed.shape)
    no_kernels = {i: None for i in range(len(packed.buckets))}
    with pytest.warns(KernelFallbackWarning, match="no kernel backend accepts it.*token counts 1, 2, 3-4, ") as record:
        bad = warn_without_kernel(fake, no_kernels, falls_back=True)
    assert bad == [i for i, b in enumerate(plan.buckets) if not b.fallback] and len(record) == 1
    with pytest.warns(KernelFallbackWarning, match=r"token counts 1, 2, 3-4, 5-8, 9-16, 17-64, 65-128, 129-512, 513 and more run"):
        assert warn_without_kernel(fake, no_kernels, falls_back=False) == list(range(len(plan.buckets)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_without_kernel(fake, {i: object() for i in no_kernels}, falls_back=False) == []
        assert warn_without_kernel(packed, no_kernels, falls_back=False) == []  # the CPU path is the reference
        warnings.filterwarnings("ignore", category=KernelFallbackWarning)
        assert warn_without_kernel(fake, no_kernels, falls_back=False)  # silenced, still reported
