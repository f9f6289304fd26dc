"""keep_dense="decode": no dense copy; buckets that fall back decode the packed weight per call.
The decode kernel (Triton; its interpreter without a GPU) must give exactly the packed weight, and
a decode-mode layer exactly the outputs of a layer that keeps a dense copy."""

import numpy as np
import pytest
import torch
from torch import nn

import cross
from cross import SparseLinear
from cross.costmodel import CostModel, GPUSpec
from cross.kernels.decode import decode_dense
from cross.pack.formats import TiledWeight
from cross.tiling import TileKind
from weights import random_weight

#: Dense launches cost 20 us: on a 256x256 weight at 10% density the plan wins up to 128 tokens only.
MIXED = CostModel(spec=GPUSpec(name="small batches win", dense_launch_us=20.0))
TOKENS = [1, 17, 65, 129, 513]
HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"


def mixed_kinds_weight(shape, tile, dtype, rng, density=0.4):
    """A weight with DENSE, BITMAP, INDEX and EMPTY tiles (random per tile) and its TiledWeight."""
    w = random_weight(shape, density, rng, dtype)
    ti, tj = -(-shape[0] // tile[0]), -(-shape[1] // tile[1])
    kinds = torch.randint(0, 4, (ti, tj), generator=rng).numpy().astype(np.uint8)  # EMPTY, DENSE, BITMAP, INDEX
    for i, j in zip(*np.nonzero(kinds == TileKind.EMPTY)):
        w[i * tile[0]:(i + 1) * tile[0], j * tile[1]:(j + 1) * tile[1]] = 0
    return w, TiledWeight.from_dense(w.to(DEVICE), kinds, tile)


@pytest.mark.parametrize("density", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, tile", [((130, 200), (64, 64)), ((64, 64), (64, 64)), ((70, 300), (64, 128)),
                                         ((1, 9), (64, 64))])
def test_decode_kernel_gives_the_packed_weight(shape, tile, dtype, density, rng):
    w, tiled = mixed_kinds_weight(shape, tile, dtype, rng, density)
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)  # poisoned: every element must be written
    got = decode_dense(tiled, out=out)
    assert got is out and torch.equal(got.cpu(), w)
    assert torch.equal(decode_dense(tiled).cpu(), w)


def test_decode_kernel_refuses_what_it_cannot_do(rng):
    _, tiled = mixed_kinds_weight((64, 64), (64, 64), torch.float16, rng)
    with pytest.raises(ValueError, match="out: expected a contiguous"):
        decode_dense(tiled, out=torch.empty(64, 65, dtype=torch.float16, device=DEVICE))


def test_decode_operator(rng):
    """torch.ops.cross.decode_dense, the operator a decode-mode layer calls on a GPU."""
    import cross.runtime.op  # noqa: F401  (registers the operators)

    w, t = mixed_kinds_weight((130, 200), (64, 64), torch.float16, rng)
    g = t.grid
    got = torch.ops.cross.decode_dense(t.values, t.meta, t.kinds, t.value_offset, t.meta_offset, t.nnz,
                                       [g.rows, g.cols, *g.tile_shape])
    assert torch.equal(got.cpu(), w)


def _linear(m, k, density, dtype, rng):
    linear = nn.Linear(k, m, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(random_weight((m, k), density, rng, dtype))
    return linear.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_decode_mode_computes_what_the_dense_copy_does(dtype, rng):
    linear = _linear(256, 256, 0.1, dtype, rng)
    kept = SparseLinear.from_dense(linear, cost_model=MIXED, measure=False)
    lean = SparseLinear.from_dense(linear, cost_model=MIXED, measure=False, keep_dense="decode")
    fallback = [b.fallback for b in lean.plan.buckets]
    assert any(fallback) and not all(fallback), "the test needs buckets of both kinds"
    assert kept.dense_weight is not None and lean.dense_weight is None and lean.decode_fallback
    assert lean.nbytes < lean.dense_nbytes < kept.nbytes
    assert lean.nbytes == lean.packed.nbytes + lean.bias.numel() * lean.bias.element_size()
    runs = [b["runs"] for b in lean.summary()["buckets"]]
    assert runs == ["dense" if f else "plan" for f in fallback] and lean.summary()["decode_fallback"]
    assert "decoded per call" in repr(lean)
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, 256, generator=rng).to(dtype).to(DEVICE)
            assert torch.equal(lean(x), kept(x)), n


def test_decode_mode_with_index_tiles(rng):
    """INDEX tiles decode too (on a GPU by the decode kernel's scatter)."""
    linear = _linear(256, 256, 0.02, torch.float16, rng)
    kept = SparseLinear.from_dense(linear, cost_model=MIXED, allowed_kinds=(TileKind.INDEX,), measure=False)
    lean = SparseLinear.from_dense(linear, cost_model=MIXED, allowed_kinds=(TileKind.INDEX,), keep_dense="decode",
                                   measure=False)
    assert lean.packed.has_index and lean.decode_fallback and any(b.fallback for b in lean.plan.buckets)
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, 256, generator=rng).to(torch.float16).to(DEVICE)
            assert torch.equal(lean(x), kept(x)), n


def test_decode_mode_through_sparsify_save_and_load(rng, tmp_path):
    model = nn.Sequential(_linear(256, 256, 0.1, torch.float32, rng), nn.ReLU(), _linear(256, 256, 0.1, torch.float32, rng))
    x = torch.randn(600, 256, generator=rng).to(DEVICE)  # the open-ended bucket: falls back under MIXED
    with torch.no_grad():
        want = model(x)
        report = cross.sparsify_(model, cost_model=MIXED, keep_dense="decode", measure=False, progress=False)
        assert report.n_swapped == 2 and report.nbytes < report.dense_nbytes
        assert all(layer.summary["decode_fallback"] for layer in report.layers.values())
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-4)
        cross.save(model, tmp_path / "lean")
        again = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).to(DEVICE)
        cross.load(tmp_path / "lean", again)
        assert again[0].decode_fallback and again[0].dense_weight is None
        assert torch.equal(again(x), model(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_decode_mode_on_the_gpu_eager_graph_and_compile(dtype, rng):
    """On the GPU the fallback buckets run the decode operator then cuBLAS: eager and inside a CUDA
    graph exactly as the layer that keeps a dense copy; under torch.compile (which may fuse the
    bias differently) within the dtype's tolerance of the fp64 product."""
    linear = _linear(1024, 768, 0.1, dtype, rng)
    kept = SparseLinear.from_dense(linear, cost_model=MIXED, measure=False)
    lean = SparseLinear.from_dense(linear, cost_model=MIXED, measure=False, keep_dense="decode")
    assert any(b.fallback for b in lean.plan.buckets)
    compiled = torch.compile(lean)
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(n, 768, generator=rng).to(dtype).cuda()
            want = kept(x)
            assert torch.equal(lean(x), want), n
            ref = x.double() @ linear.weight.double().T + linear.bias.double()
            tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
            close = dict(rtol=tol, atol=tol * ref.abs().max().item())
            torch.testing.assert_close(want.double(), ref, **close)  # so the exact comparisons compare with the product
            torch.testing.assert_close(compiled(x).double(), ref, **close)
            static = x.clone()
            lean(static)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = lean(static)
            static.copy_(torch.randn(n, 768, generator=rng).to(dtype).cuda())
            graph.replay()
            ref = static.double() @ linear.weight.double().T + linear.bias.double()
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
            assert torch.equal(out, kept(static)), n
