"""cross.compile: torch.compile with the stacked siblings' repeated products merged in the compiled
graph (``nn/compile.py``). The pass on hand-made graphs, then inductor on the CPU: a stacked model
compiled runs one product per group of siblings, and gives the eager model's outputs."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

import cross
from cross.nn import SharedProducts, share_repeated_calls, sparsify_, stack_siblings_
from cross.nn.compile import compile_options
from cross.prune import magnitude_prune_
from test_nn import WINNING, seeded
from runtime_checks import check_product
from test_stack import Attention, Block, Mutating, reference

aten = torch.ops.aten
needs_inductor = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="inductor's CPU code needs a C++ compiler")


@pytest.fixture(autouse=True)
def uncached():
    """Inductor's caches off (a graph compiled before comes back without the passes run on it) and
    dynamo's compiled code dropped after each test."""
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


def traced(fn) -> torch.fx.GraphModule:
    return torch.fx.symbolic_trace(fn)


def calls(gm: torch.fx.GraphModule, *targets) -> int:
    return sum(n.op == "call_function" and n.target in targets for n in gm.graph.nodes)


def test_identical_pure_calls_merged(rng):
    def f(x, w):
        a = aten.mm.default(x, w)
        b = aten.mm.default(x, w)  # the same call: merged into a
        c = aten.mm.default(x, aten.t.default(w))  # another argument: kept
        d = aten.mm.default(x, aten.t.default(w))  # the same as c once the two t's are one
        z0, z1 = aten.add.Tensor(x, 0.0), aten.add.Tensor(x, -0.0)  # equal constants, not the same: kept
        return a + b + c + d, z0, z1

    gm = traced(f)
    x, w = torch.randn(4, 4, generator=rng), torch.randn(4, 4, generator=rng)
    want = f(x, w)
    assert share_repeated_calls(gm.graph) == 3  # b, the second t, d
    gm.recompile()
    assert calls(gm, aten.mm.default) == 2 and calls(gm, aten.t.default) == 1 and calls(gm, aten.add.Tensor) == 2
    for got, expected in zip(gm(x, w), want):
        torch.testing.assert_close(got, expected)


def test_random_calls_and_changes_in_place_are_not_merged(rng):
    def f(x, w):
        r1, r2 = aten.rand_like.default(x), aten.rand_like.default(x)  # two draws, not one
        a = aten.mm.default(x, w)
        aten.add_.Tensor(x, 1.0)  # x changed in place: the next product is another value
        b = aten.mm.default(x, w)
        return a, b, r1, r2

    gm = traced(f)
    assert share_repeated_calls(gm.graph) == 0
    gm.recompile()
    x, w = torch.randn(4, 4, generator=rng), torch.randn(4, 4, generator=rng)
    x0 = x.clone()
    a, b, r1, r2 = gm(x, w)
    torch.testing.assert_close(a, x0 @ w)
    torch.testing.assert_close(b, (x0 + 1) @ w)
    assert not torch.equal(r1, r2)


def test_compile_options_keep_the_mode_and_the_callers_pass():
    seen = []
    options = compile_options("max-autotune", {"post_grad_custom_post_pass": seen.append, "fx_graph_cache": False})
    assert options["max_autotune"] and options["fx_graph_cache"] is False
    shared = options["post_grad_custom_post_pass"]
    assert isinstance(shared, SharedProducts)
    gm = traced(lambda x: aten.neg.default(x) + aten.neg.default(x))
    shared(gm.graph)
    assert shared.removed == 1 and seen == [gm.graph]  # the caller's pass ran after this one
    assert shared.uuid() != SharedProducts().uuid()  # inductor's cache tells the two apart
    with pytest.raises(ValueError, match="expected the inductor backend"):
        cross.compile(torch.nn.Linear(2, 2), backend="eager")


class Products(SharedProducts):
    """Counts the matrix products left in each graph inductor compiles (run after cross's pass)."""

    def __init__(self):
        super().__init__()
        self.products = []

    def __call__(self, graph):
        self.products.append(sum(n.op == "call_function" and n.target in (aten.mm.default, aten.addmm.default)
                                 for n in graph.nodes))

    def uuid(self):
        return None  # never cached


@needs_inductor
def test_compiled_stacked_siblings_run_one_product(rng):
    """q, k, v and gate, up stacked: compiled by cross.compile, a Block runs 4 products (q+k+v, o,
    gate+up, down); by a plain torch.compile 7 (each sibling the whole stacked layer); both give the
    eager Block's outputs."""
    model = seeded(rng, Block)
    dense = copy.deepcopy(model)
    stack_siblings_(model)
    x = torch.randn(5, 24, generator=rng)
    with torch.no_grad():
        want = dense(x)
        for compiled, products in ((cross.compile, 4), (torch.compile, 7)):
            torch._dynamo.reset()
            count = Products()
            run = compiled(model, dynamic=False, options={"post_grad_custom_post_pass": count})
            torch.testing.assert_close(run(x), want, rtol=1e-5, atol=1e-5)
            assert count.products == [products]


@needs_inductor
def test_compiled_sparse_stacked_model_and_input_changed_in_place(rng):
    """A stacked sparsified Block compiled by cross.compile gives the eager model's outputs (the CPU runs
    the plans' reference executor); siblings whose input changes in place between their calls are not
    merged."""
    model = seeded(rng, Block)
    magnitude_prune_(model, 0.7)
    sparsify_(model, stack_siblings=True, progress=False, cost_model=WINNING)
    x = torch.randn(3, 24, generator=rng)
    mutating = seeded(rng, Mutating)
    stack_siblings_(mutating)
    with torch.no_grad():
        torch._dynamo.reset()
        torch.testing.assert_close(cross.compile(model, dynamic=False)(x), model(x), rtol=1e-5, atol=1e-5)
        y = torch.randn(2, 24, generator=rng)
        y0 = y.clone()
        q, k, v = cross.compile(mutating, dynamic=False)(y)
    torch.testing.assert_close(q.double(), reference([mutating.q_proj], y0)[0], rtol=1e-5, atol=1e-5)
    for sibling, out in ((mutating.k_proj, k), (mutating.v_proj, v)):
        torch.testing.assert_close(out.double(), reference([sibling], -y0)[0], rtol=1e-5, atol=1e-5)


class CrossCalls(Products):
    """Counts the calls of cross's operators left in each compiled graph."""

    def __call__(self, graph):
        self.products.append(sum(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                                 and n.target.namespace == "cross" for n in graph.nodes))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 16])
def test_gpu_compiled_stacked_sparse_siblings(tokens, rng):
    """Stacked sparse q, k, v on the GPU's kernels, compiled by cross.compile: one call of a cross
    operator for the three (three under a plain torch.compile), each sibling against the fp64 product
    of its own pruned weight, the outputs poisoned and the compiled code run again."""
    attn = seeded(rng, lambda: Attention(d=512, kv=128)).cuda().to(torch.bfloat16)
    magnitude_prune_(attn, 0.8)
    weights = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    sparsify_(attn, stack_siblings=True, progress=False, keep_dense=False, measure=False)
    siblings = torch.nn.ModuleList([attn.q_proj, attn.k_proj, attn.v_proj])
    x = torch.randn(tokens, 512, generator=rng).cuda().to(torch.bfloat16)
    with torch.inference_mode():
        for compiled, calls_left in ((cross.compile, 1), (torch.compile, 3)):
            torch._dynamo.reset()
            count = CrossCalls()
            run = compiled(lambda x: [m(x) for m in siblings], dynamic=False,
                           options={"post_grad_custom_post_pass": count})
            outs = run(x)
            assert count.products == [calls_left]
            for y in outs:
                y.fill_(float("nan"))
            del outs, y  # the poisoned memory goes back to the allocator, for the next outputs
            outs = run(x)
            for (w, b), y in zip(weights, outs):
                check_product(x, w, b, y)
