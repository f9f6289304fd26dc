"""Plan kernels against the fp64 dense product.

Without a GPU, the portable Triton kernel runs under Triton's interpreter at tiny shapes (fp16 and
fp32: the interpreter's bf16 arithmetic is wrong, upstream triton issue 11584). With a GPU
(`-m gpu`), both backends run over shapes, dtypes, densities and structures, outputs poisoned
with NaN before every launch.
"""

import numpy as np
import pytest
import torch

from cross.kernels import plan_matmul
from cross.kernels.launch import cuda_eligible
from cross.pack import pack
from cross.partition import make_plan
from cross.tiling import TileKind

HAS_GPU = torch.cuda.is_available()
TOL = {torch.float32: 2e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # fp32 runs as tf32 on tensor cores


def make_weight(shape, density, structure, dtype, gen, device="cpu"):
    m, k = shape
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)
    if structure == "empty_rows":
        w[: m // 2] = 0
    elif structure == "one_dense_tile":
        w.zero_()
        w[: min(m, 64), : min(k, 64)] = torch.randn(min(m, 64), min(k, 64), generator=gen)
    elif structure == "all_zero":
        w.zero_()
    elif structure == "column_bands":  # column thirds at density 1, 0.5 and 0.03
        band = torch.tensor([1.0, 0.5, 0.03]).repeat_interleave(-(-k // 3))[:k]
        w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < band)
    return w.to(dtype).to(device)


def check(x, w, bias, y):
    ref = x.double() @ w.double().T
    if bias is not None:
        ref += bias.double()
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) outputs"
    tol = TOL[x.dtype]
    scale = max(ref.abs().max().item(), 1e-3)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * scale)


def run_all_buckets(w, x_gen, dtype, device, backend, tile_shape, kinds, n_values, bias=True, programs=7):
    plan = make_plan(w, tile_shape=tile_shape, allowed_kinds=kinds, n_programs=programs)
    packed = pack(w, plan)
    if backend == "cuda" and not cuda_eligible(packed, torch.device(device)):
        pytest.skip("the cuda backend needs K % 8 == 0")
    b = torch.randn(w.shape[0], generator=x_gen).to(dtype).to(device) if bias else None
    for n in n_values:
        bucket = packed.bucket_for(n)
        x = torch.randn(n, w.shape[1], generator=x_gen).to(dtype).to(device)
        out = torch.full((n, w.shape[0]), float("nan"), dtype=dtype, device=device)
        y = plan_matmul(x, packed, bucket, b, out=out, backend=backend)
        check(x, w, b, y)
    return packed


KINDS = {"bitmap": (TileKind.BITMAP,), "dense": (TileKind.DENSE,), "hybrid": (TileKind.DENSE, TileKind.BITMAP),
         "index": (TileKind.INDEX,), "all": (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX)}


@pytest.mark.skipif(HAS_GPU, reason="interpreter tier: runs where there is no GPU")
@pytest.mark.parametrize("shape", [(40, 96), (17, 33), (64, 64)])
@pytest.mark.parametrize("density", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("structure", ["uniform", "empty_rows", "one_dense_tile"])
@pytest.mark.parametrize("kinds", ["bitmap", "hybrid"])
def test_interpreter_kernel(shape, density, structure, kinds, rng):
    w = make_weight(shape, density, structure, torch.float16, rng)
    run_all_buckets(w, rng, torch.float16, "cpu", "triton", (16, 32), KINDS[kinds], (1, 5, 17))


@pytest.mark.skipif(HAS_GPU, reason="interpreter tier: runs where there is no GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_dtypes_and_dense_tiles(dtype, rng):
    w = make_weight((50, 70), 0.5, "uniform", dtype, rng)
    run_all_buckets(w, rng, dtype, "cpu", "triton", (32, 32), KINDS["dense"], (3,), bias=False)


@pytest.mark.skipif(HAS_GPU, reason="interpreter tier: runs where there is no GPU")
@pytest.mark.parametrize("shape", [(40, 96), (17, 33)])
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
@pytest.mark.parametrize("structure", ["uniform", "empty_rows"])
@pytest.mark.parametrize("kinds", ["index", "all"])
def test_interpreter_index_tiles(shape, density, structure, kinds, rng):
    """INDEX tiles (entries taken 32 at a time: 1 to 17 chunks per 16x32 tile here)."""
    w = make_weight(shape, density, structure, torch.float16, rng)
    packed = run_all_buckets(w, rng, torch.float16, "cpu", "triton", (16, 32), KINDS[kinds], (1, 5, 17))
    if kinds == "index" and density < 1.0:
        assert packed.has_index


@pytest.mark.skipif(HAS_GPU, reason="interpreter tier: runs where there is no GPU")
def test_interpreter_dense_bitmap_and_index_tiles_in_one_tile_row(rng):
    """Every tile-row runs a BITMAP and an INDEX section, the lower ones a DENSE section too."""
    w = make_weight((40, 96), 1.0, "column_bands", torch.float16, rng)
    packed = run_all_buckets(w, rng, torch.float16, "cpu", "triton", (16, 32), KINDS["all"], (1, 5, 17), programs=2)
    kinds = packed.plan.kinds
    assert (kinds[:, 1:] == [TileKind.BITMAP, TileKind.INDEX]).all() and (kinds[1:, 0] == TileKind.DENSE).all()


@pytest.mark.skipif(HAS_GPU, reason="interpreter tier: runs where there is no GPU")
@pytest.mark.parametrize("kinds", ["hybrid", "index"])
def test_interpreter_nan_propagation_through_empty_tiles(kinds, rng):
    """Non-finite inputs give the dense product's Inf and NaN: Inf where a nonzero weight meets an Inf
    (and no zero does), NaN where a zero does, also a zero of an EMPTY tile or of an INDEX tile."""
    w = make_weight((32, 64), 0.3, "uniform", torch.float16, rng)
    w[:16, 32:] = 0  # one EMPTY tile for 16x32 tiles
    w[16:, 40] = 0  # column 40 meets only zeros in rows 16-31: its Inf reaches them as NaN
    w[16:, 8] = 1.0  # column 8 meets nonzeros only in rows 16-31: its Inf reaches them as Inf
    w[:16, 8] = 0
    plan = make_plan(w, tile_shape=(16, 32), n_programs=3, allowed_kinds=KINDS[kinds])
    assert (plan.kinds == TileKind.EMPTY).sum() == 1
    assert (plan.kinds == TileKind.INDEX).sum() == (3 if kinds == "index" else 0)
    packed = pack(w, plan)
    x = torch.randn(5, 64, generator=rng).to(torch.float16)
    x[1, 40] = float("inf")
    x[2, 5] = float("nan")
    x[3, 8] = float("inf")
    y = plan_matmul(x, packed, packed.bucket_for(5), backend="triton")
    ref = (x.double()[:, None, :] * w.double()[None]).sum(-1)  # IEEE products (a CPU GEMM may skip zeros)
    assert torch.isnan(ref[1]).all() and torch.isnan(ref[2]).all() and torch.isinf(ref[3, 16:]).all()
    assert torch.isnan(ref[3, :16]).all() and torch.isfinite(ref[[0, 4]]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    torch.testing.assert_close(y[[0, 4]].double(), ref[[0, 4]], rtol=3e-3, atol=3e-3 * float(ref[[0, 4]].abs().max()))


# ---------------------------------------------------------------------------------- GPU tier
@pytest.mark.gpu
def test_gpu_cuda_backend_is_available():
    """On an sm_80+ GPU the CUDA kernels must be there (the cuda-backend tests below would skip)."""
    from cross.kernels import cuda_backend

    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the CUDA backend needs sm_80+")
    assert cuda_backend.available(), "cuda-python is missing: pip install '.[gpu]' (cuda-python>=12)"


def _backends():
    out = ["triton"]
    if HAS_GPU:
        from cross.kernels import cuda_backend

        if cuda_backend.available():
            out.append("cuda")
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(64, 64), (100, 300), (130, 70), (1000, 1000), (4096, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("structure", ["uniform", "empty_rows", "one_dense_tile"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_kernel(backend, shape, density, structure, dtype, rng):
    if backend not in _backends():
        pytest.skip(f"backend {backend} is not available here")
    w = make_weight(shape, density, structure, dtype, rng, "cuda")
    run_all_buckets(w, rng, dtype, "cuda", backend, (64, 64), KINDS["hybrid"], (1, 7, 16, 17, 100, 129, 1000), programs=264)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("tile_shape", [(64, 128), (32, 64)])
@pytest.mark.parametrize("kinds", ["bitmap", "dense"])
def test_gpu_tile_shapes_and_kinds(backend, tile_shape, kinds, rng):
    if backend not in _backends() or (backend == "cuda" and tile_shape[0] != 64):
        pytest.skip(f"backend {backend} is not available here or needs 64-row tiles")
    # K not a multiple of the tile's columns (a part tile at the end); the CUDA kernel needs K % 8 == 0
    k = 520 if backend == "cuda" else 517
    w = make_weight((333, k), 0.3, "uniform", torch.bfloat16, rng, "cuda")
    run_all_buckets(w, rng, torch.bfloat16, "cuda", backend, tile_shape, KINDS[kinds], (1, 16, 64, 128, 300), programs=50)


#: CUDA builds of the BITMAP decode: chosen per tile (default: at one token the sparsest tiles on
#: CUDA cores), or forced one way
DECODES = {"per-tile": "", "scatter": "-DDECODE_REGS=0 -DDECODE_CORES=0",
           "registers": "-DDECODE_REGS=1 -DREGS_MIN_NNZ=0 -DDECODE_CORES=0",
           "cp-async": "-DBULK_COPY=0",  # per-thread copies instead of bulk copies
           "cores": "-DDECODE_CORES=1 -DCORES_MAX_NNZ=4097"}  # at one token, every BITMAP tile on CUDA cores


@pytest.mark.gpu
@pytest.mark.parametrize("decode", list(DECODES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_cuda_bitmap_decodes(decode, dtype, rng, monkeypatch):
    """Tile-rows of densities around the register decode's threshold (11%), so the default build
    runs both decodes in one launch; token counts on both sides of the 16-token tile."""
    if "cuda" not in _backends():
        pytest.skip("the cuda backend is not available here")
    from cross.kernels import cuda_backend

    monkeypatch.setenv(cuda_backend.DEFINES_ENV, DECODES[decode])
    cuda_backend._kernel.cache_clear()
    try:
        bands = torch.tensor([0.02, 0.08, 0.1, 0.13, 0.35, 0.6, 0.9, 1.0])
        density = bands[torch.randperm(8, generator=rng)].repeat_interleave(64)[:, None]
        w = torch.randn(512, 328, generator=rng) * (torch.rand(512, 328, generator=rng) < density)
        w = w.to(dtype).cuda()
        run_all_buckets(w, rng, dtype, "cuda", "cuda", (64, 64), KINDS["bitmap"], (1, 7, 16, 17, 64), programs=50)
    finally:
        cuda_backend._kernel.cache_clear()


@pytest.mark.gpu
def test_gpu_cuda_cores_nan_propagation(rng, monkeypatch):
    """The one-token CUDA-core path skips zeros; an Inf or NaN in X must still poison every output
    the dense product poisons (0 x Inf), so such tiles take the mma path."""
    if "cuda" not in _backends():
        pytest.skip("the cuda backend is not available here")
    from cross.kernels import cuda_backend

    monkeypatch.setenv(cuda_backend.DEFINES_ENV, DECODES["cores"])
    cuda_backend._kernel.cache_clear()
    try:
        w = make_weight((256, 512), 0.05, "uniform", torch.bfloat16, rng, "cuda")
        packed = pack(w, make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=16))
        for bad in (float("inf"), float("nan")):
            x = torch.randn(1, 512, generator=rng).to(torch.bfloat16).cuda()
            x[0, 100] = bad
            y = plan_matmul(x, packed, packed.bucket_for(1), backend="cuda")
            ref = x.float() @ w.float().T
            assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    finally:
        cuda_backend._kernel.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("density", [0.05, 0.5])
def test_gpu_cuda_default_build_at_one_token(density, rng):
    """Without profiling defines, one-token launches of a weight with BITMAP tiles under the
    threshold take the CUDA-core build (others the plain one), and both match the reference."""
    if "cuda" not in _backends():
        pytest.skip("the cuda backend is not available here")
    from cross.kernels import cuda_backend
    from cross.kernels.launch import kernel_args

    w = make_weight((320, 640), density, "uniform", torch.bfloat16, rng, "cuda")
    packed = pack(w, make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=24))
    assert kernel_args(packed, packed.bucket_for(1), "cuda").cores == int(density < cuda_backend.CORES_MAX_DENSITY)
    run_all_buckets(w, rng, torch.bfloat16, "cuda", "cuda", (64, 64), KINDS["bitmap"], (1, 2, 16), programs=24)


@pytest.mark.gpu
def test_gpu_triton_fp32(rng):
    w = make_weight((200, 300), 0.4, "uniform", torch.float32, rng, "cuda")
    run_all_buckets(w, rng, torch.float32, "cuda", "triton", (64, 64), KINDS["hybrid"], (1, 33), programs=20)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_deterministic(backend, rng):
    """Split tile-rows are summed in slot order by the last arrival: bitwise equal across runs."""
    if backend not in _backends():
        pytest.skip(f"backend {backend} is not available here")
    w = make_weight((2048, 4096), 0.3, "uniform", torch.bfloat16, rng, "cuda")
    plan = make_plan(w, n_programs=264)
    packed = pack(w, plan)
    x = torch.randn(16, 4096, generator=rng).to(torch.bfloat16).cuda()
    bucket = packed.bucket_for(16)
    assert bucket.n_slots > 0, "the test needs split tile-rows"
    first = plan_matmul(x, packed, bucket, backend=backend)
    for _ in range(20):
        assert torch.equal(plan_matmul(x, packed, bucket, backend=backend), first)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(64, 64), (130, 70), (1000, 1000)])
@pytest.mark.parametrize("density", [0.005, 0.05, 0.3])
@pytest.mark.parametrize("kinds", ["index", "all"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_triton_index_tiles(shape, density, kinds, dtype, rng):
    """INDEX tiles run on the Triton backend (the CUDA kernel has no INDEX path)."""
    w = make_weight(shape, density, "uniform", dtype, rng, "cuda")
    packed = run_all_buckets(w, rng, dtype, "cuda", "triton", (64, 64), KINDS[kinds], (1, 16, 17, 129), programs=132)
    if kinds == "index":
        assert packed.has_index and not cuda_eligible(packed, torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_nan_propagation(backend, rng):
    if backend not in _backends():
        pytest.skip(f"backend {backend} is not available here")
    w = make_weight((256, 512), 0.3, "uniform", torch.bfloat16, rng, "cuda")
    w[:64, 64:128] = 0
    plan = make_plan(w, n_programs=16)
    assert (plan.kinds == TileKind.EMPTY).any()
    packed = pack(w, plan)
    x = torch.randn(5, 512, generator=rng).to(torch.bfloat16).cuda()
    x[1, 100] = float("inf")
    x[3, 7] = float("nan")
    y = plan_matmul(x, packed, packed.bucket_for(5), backend=backend)
    ref = x.float() @ w.float().T
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))


@pytest.mark.parametrize("programs", [1, 5, 40])
def test_cuda_heads_match_the_unit_tables(programs):
    """The CUDA kernel's per-block heads repeat, for each (parity, block), what the unit tables say."""
    from cross.kernels.launch import cuda_heads

    gen = torch.Generator().manual_seed(programs)
    w = make_weight((200, 300), 0.3, "empty_rows", torch.float32, gen)
    packed = pack(w, make_plan(w, tile_shape=(64, 64), n_programs=programs))
    for bucket in packed.buckets:
        heads = cuda_heads(packed.row_sections, bucket.items, bucket.unit_ptr, bucket.unit_order)
        n_units = bucket.plan.n_units
        assert heads.shape == (2, n_units, 12) and heads.dtype == torch.int32
        for parity in range(2):
            for b in range(n_units):
                unit = int(bucket.unit_order[parity, b])
                first, end = int(bucket.unit_ptr[unit]), int(bucket.unit_ptr[unit + 1])
                expect = [first, end, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0]
                if first < end:
                    rec = bucket.items[first].tolist()
                    expect[2:6] = rec
                    expect[6:9] = packed.row_sections[rec[0], 1:4].tolist()
                assert heads[parity, b].tolist() == expect


@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_one_tile_items_plan(backend, rng):
    """The work list `cross profile` times the per-item latency with (every tile its own item, a
    tile-row's tiles on different units, so every item ends in the split-row exchange) computes
    the product."""
    from cross.costmodel.profile import max_items_per_unit, one_tile_items

    if backend == "cuda" and not HAS_GPU:
        pytest.skip("needs a GPU")
    device, dtype, tile = ("cuda", torch.bfloat16, (64, 64)) if HAS_GPU else ("cpu", torch.float16, (16, 32))
    w = make_weight((tile[0] * 6, tile[1] * 3), 0.3, "uniform", dtype, rng, device)
    plan = one_tile_items(make_plan(w, tile_shape=tile, allowed_kinds=(TileKind.BITMAP,), n_programs=7))
    b = plan.buckets[0]
    assert b.n_units == 6 and np.all(b.items[:, 2] - b.items[:, 1] == 1) and len(b.items) == 18
    unit = np.repeat(np.arange(b.n_units), np.diff(b.unit_ptr))
    for row in range(6):
        assert len(set(unit[b.items[:, 0] == row].tolist())) == 3, "a tile-row's tiles on different units"
    assert max_items_per_unit(b) == 3
    packed = pack(w, plan)
    if backend == "cuda" and not cuda_eligible(packed, torch.device(device)):
        pytest.skip("no cuda backend here")
    x = torch.randn(1, w.shape[1], generator=rng).to(dtype).to(device)
    out = torch.full((1, w.shape[0]), float("nan"), dtype=dtype, device=device)
    check(x, w, None, plan_matmul(x, packed, packed.bucket_for(1), None, out=out, backend=backend))
