"""The runtime operator on a GPU: eager, torch.compile and CUDA-graph replay all equal the fp64
reference of the pruned weight, for every backend that can run here."""

import pytest
import torch
import torch.nn as nn

from cross import SparseLinear
from cross.costmodel import CostModel, GPUSpec
from cross.runtime.dispatch import bucket_index, gpu_kernel_args

pytestmark = pytest.mark.gpu

# a cost model under which the plan always wins: the operator, not the dense fallback, runs
ALWAYS_PLAN = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1e4))


def sparse_layer(m, k, density, dtype, rng, bias=True):
    linear = nn.Linear(k, m, bias=bias)
    with torch.no_grad():
        w = torch.randn(m, k, generator=rng) * (torch.rand(m, k, generator=rng) < density)
        linear.weight.copy_(w)
    linear = linear.to(dtype).cuda()
    return linear, SparseLinear.from_dense(linear, cost_model=ALWAYS_PLAN, measure=False)  # not timed: the plan runs


def reference(linear, x):
    y = x.double() @ linear.weight.double().T
    return y + linear.bias.double() if linear.bias is not None else y


def assert_close(y, ref, dtype):
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 16, 33, 200, 1000])
def test_eager(dtype, n, rng):
    linear, sparse = sparse_layer(1024, 768, 0.3, dtype, rng)
    assert not any(b.fallback for b in sparse.plan.buckets)
    x = torch.randn(n, 768, generator=rng).to(dtype).cuda()
    with torch.no_grad():
        y = sparse(x)
    ran = bucket_index(sparse.packed, n)
    assert gpu_kernel_args(sparse.packed, ran, sparse._kernels) is not None, f"no GPU kernel for bucket {ran}"
    assert_close(y, reference(linear, x), dtype)


def test_leading_dims_and_no_bias(rng):
    linear, sparse = sparse_layer(512, 256, 0.5, torch.bfloat16, rng, bias=False)
    x = torch.randn(2, 3, 256, generator=rng).to(torch.bfloat16).cuda()
    with torch.no_grad():
        y = sparse(x)
    assert y.shape == (2, 3, 512)
    assert_close(y.reshape(6, 512), reference(linear, x.reshape(6, 256)), torch.bfloat16)


def test_torch_compile(rng):
    linear, sparse = sparse_layer(768, 512, 0.3, torch.bfloat16, rng)
    model = nn.Sequential(sparse, nn.GELU())
    compiled = torch.compile(model, fullgraph=True)
    for n in (4, 16):
        x = torch.randn(n, 512, generator=rng).to(torch.bfloat16).cuda()
        with torch.no_grad():
            y = compiled(x)
        ref = torch.nn.functional.gelu(reference(linear, x))
        assert_close(y, ref, torch.bfloat16)


def test_cuda_graph_replay(rng):
    linear, sparse = sparse_layer(1024, 1024, 0.3, torch.bfloat16, rng)
    x = torch.randn(8, 1024, generator=rng).to(torch.bfloat16).cuda()
    with torch.no_grad():
        sparse(x)  # compile the kernel and resolve its arguments outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = sparse(x)
        for _ in range(3):
            x.copy_(torch.randn(8, 1024, generator=rng).to(torch.bfloat16))
            y.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert_close(y, reference(linear, x), torch.bfloat16)
