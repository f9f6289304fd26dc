"""pack + the reference executor: every bucket's work list computes X @ W^T + b (checked against an
fp64 dense product), the kernel tables agree with the plan, non-finite inputs behave as the
plan's nan_policy says, and runtime.execute validates its inputs."""

import numpy as np
import pytest
import torch

from cross.pack import pack
from cross.partition import make_plan
from cross.partition.balance import SECTION_ORDER
from cross.runtime import execute, reference_matmul
from cross.runtime.reference import decode_executed_tiles
from cross.tiling import TileGrid, TileKind
from weights import STRUCTURES, random_weight, structured_weight

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70), (64, 64)]
DENSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
N_TOKENS = [1, 3, 17, 130]
BALANCES = ["none", "intra", "full"]
UNIT_MODES = ["split", "mixed"]
ALL_KINDS = (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX)


def rel_tol(dtype) -> float:
    """Allowed ||Y - Y_ref|| / ||Y_ref||. The reference multiplies exactly representable inputs and
    accumulates in fp32 (error ~ sqrt(K) * 6e-8 << 1e-5), then rounds once to the output dtype
    (error <= eps / 2 per element): fp32 1e-5, fp16 / bf16 their eps, tighter than eps * sqrt(K)."""
    return 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps


def random_x(n, k, rng, dtype):
    return (torch.randn(n, k, generator=rng)).to(dtype)


def dense_reference(x, weight, bias):
    y = x.double() @ weight.double().T
    return y + bias.double() if bias is not None else y


def assert_matches(y, ref, dtype, what="", scale=None):
    """Same NaN / +-Inf positions as the fp64 product; finite entries within the dtype's tolerance of
    ``scale`` (the product of the absolute values, where given: a sum that cancels to nearly zero is
    still rounded at the size of its terms), else of the product itself."""
    assert y.dtype == dtype and y.shape == ref.shape, what
    y64 = y.double()
    assert torch.equal(y64.isnan(), ref.isnan()), f"{what}: NaN positions differ"
    assert torch.equal(y64.isinf(), ref.isinf()) and torch.equal(y64[ref.isinf()], ref[ref.isinf()]), f"{what}: Inf positions differ"
    fin = ref.isfinite()
    size = torch.linalg.norm((ref if scale is None else scale)[fin])
    err = torch.linalg.norm(y64[fin] - ref[fin])
    assert err <= rel_tol(dtype) * size, f"{what}: error {err} vs norm {size}"


def check_all_buckets(weight, plan, rng, dtype, n_tokens=N_TOKENS):
    """pack, then every bucket's work list (fallback buckets included) on fresh inputs of each N."""
    packed = pack(weight, plan)
    tiles = decode_executed_tiles(packed)
    for n in n_tokens:
        x = random_x(n, weight.shape[1], rng, dtype)
        for bias in (None, torch.randn(weight.shape[0], generator=rng).to(dtype)):
            ref = dense_reference(x, weight, bias)
            scale = dense_reference(x.abs(), weight.abs(), None if bias is None else bias.abs())
            for pb in packed.buckets:
                # odd N: tiles decoded once and passed in (the caller's cache); even N: decoded inside
                y = reference_matmul(x, packed, bias, bucket=pb, tiles=tiles if n % 2 else None)
                assert_matches(y, ref, dtype, f"N={n} bucket [{pb.plan.n_min}, {pb.plan.n_max}] bias={bias is not None}",
                               scale)
    return packed


def _nnz(weight, tile_shape):
    return TileGrid.for_weight(weight, tile_shape).tile_nnz(weight)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_dense_over_shapes(shape, density, dtype, rng):
    weight = random_weight(shape, density, rng, dtype)
    plan = make_plan(weight, tile_shape=(32, 64), n_programs=7, allowed_kinds=ALL_KINDS)
    check_all_buckets(weight, plan, rng, dtype)


@pytest.mark.parametrize("tile_shape", [(16, 32), (64, 64), (128, 64)], ids=str)
@pytest.mark.parametrize("density", [0.1, 0.5, 0.95])
def test_matches_dense_over_tile_shapes(tile_shape, density, rng):
    weight = random_weight((130, 300), density, rng)
    plan = make_plan(weight, tile_shape=tile_shape, n_programs=7, allowed_kinds=ALL_KINDS)
    check_all_buckets(weight, plan, rng, torch.float32)


@pytest.mark.parametrize("unit_mode", UNIT_MODES)
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("n_programs", [1, 3, 264])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_matches_dense_over_structures_and_modes(structure, n_programs, balance, unit_mode, rng):
    weight = structured_weight(structure, rng)
    plan = make_plan(weight, tile_shape=(32, 64), balance=balance, unit_mode=unit_mode, n_programs=n_programs,
                     allowed_kinds=ALL_KINDS)
    check_all_buckets(weight, plan, rng, torch.float32, n_tokens=(1, 17))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_matches_dense_over_structures_and_dtypes(structure, dtype, rng):
    weight = structured_weight(structure, rng, dtype)
    plan = make_plan(weight, tile_shape=(64, 64), n_programs=7, allowed_kinds=ALL_KINDS)
    check_all_buckets(weight, plan, rng, dtype, n_tokens=(3, 130))


def test_every_kind_in_one_weight(rng):
    """DENSE, BITMAP, INDEX and EMPTY tiles side by side (decode bucket of the roofline)."""
    parts = [random_weight((64, 64), d, rng) for d in (1.0, 0.5, 0.02, 0.0)]
    weight = torch.cat(parts, dim=1)
    plan = make_plan(weight, tile_shape=(64, 64), n_programs=3, allowed_kinds=ALL_KINDS)
    assert plan.kinds.tolist() == [[TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX, TileKind.EMPTY]]
    check_all_buckets(weight, plan, rng, torch.float32)


# ---------------------------------------------------------------------------- tables
@pytest.mark.parametrize("nan_policy", ["propagate", "ignore"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_tables_agree_with_plan(structure, nan_policy, rng):
    weight = structured_weight(structure, rng)
    plan = make_plan(weight, tile_shape=(32, 64), nan_policy=nan_policy, n_programs=7, allowed_kinds=ALL_KINDS)
    packed = pack(weight, plan)
    tw = packed.tiled
    ti = plan.grid.shape[0]
    rows = np.repeat(np.arange(ti), np.diff(plan.tile_ptr))
    t = packed.tiles.numpy()
    assert t.shape == (plan.tile_col.size, 4) and packed.tiles.dtype == torch.int32
    np.testing.assert_array_equal(t[:, 0], plan.tile_col)
    for p, (r, c) in enumerate(zip(rows, plan.tile_col)):
        kind = plan.tile_kind[p]
        assert int(tw.kinds[r, c]) == kind
        assert t[p, 1] == (int(tw.value_offset[r, c]) if kind != TileKind.EMPTY else 0)
        assert t[p, 2] == (int(tw.meta_offset[r, c]) if kind in (TileKind.BITMAP, TileKind.INDEX) else 0)
        assert t[p, 3] == int(tw.nnz[r, c])
    # row_sections: where each kind's run of a tile-row starts, then the row's end
    sections = packed.row_sections.numpy()
    assert sections.shape == (ti, len(SECTION_ORDER) + 1)
    for r in range(ti):
        kinds = plan.tile_kind[plan.tile_ptr[r] : plan.tile_ptr[r + 1]].tolist()
        start = plan.tile_ptr[r]
        for s, kind in enumerate(SECTION_ORDER):
            assert sections[r, s] == start, (r, kind)
            start += kinds.count(kind)
        assert sections[r, -1] == start == plan.tile_ptr[r + 1]
    # decoded executed tiles are the weight's tiles
    padded = plan.grid.tiles(weight)
    decoded = decode_executed_tiles(packed)
    for p, (r, c) in enumerate(zip(rows, plan.tile_col)):
        assert torch.equal(decoded[p].nan_to_num(7.0), padded[r, c].nan_to_num(7.0))
    # per bucket: the plan's items with a partial-sum slot for tile-rows split over several items
    for pb, bp in zip(packed.buckets, plan.buckets):
        items = pb.items.numpy()
        np.testing.assert_array_equal(items[:, :3], bp.items)
        np.testing.assert_array_equal(pb.unit_ptr.numpy(), bp.unit_ptr)
        np.testing.assert_array_equal(pb.unit_order.numpy(), bp.unit_order)
        parts = np.bincount(items[:, 0], minlength=ti)
        np.testing.assert_array_equal(pb.row_parts.numpy()[:, 1], parts)
        assert pb.n_slots == parts[parts > 1].sum()
        slots = []
        for r in range(ti):
            mine = items[items[:, 0] == r, 3]
            if parts[r] == 1:
                assert mine.tolist() == [-1] and pb.row_parts[r, 0] == -1
            else:
                first = int(pb.row_parts[r, 0])
                assert mine.tolist() == list(range(first, first + parts[r]))
                slots.extend(mine.tolist())
        assert sorted(slots) == list(range(pb.n_slots))
    assert packed.nbytes > tw.nbytes and packed.shape == plan.shape and packed.dtype == weight.dtype


def test_pack_rejects_other_weights(rng):
    weight = structured_weight("one_dense_tile", rng)
    plan = make_plan(weight, tile_shape=(64, 64))
    with pytest.raises(ValueError, match=r"pack: expected a weight of shape \(130, 70\) for this plan, got \(130, 71\)"):
        pack(torch.zeros(130, 71), plan)
    with pytest.raises(ValueError, match=r"pack: expected a weight of shape \(130, 70\) for this plan, got \(70, 130\)"):
        pack(weight.T.contiguous(), plan)
    other = weight.clone()
    other[0, 0] = 1.0  # a tile the plan calls EMPTY
    with pytest.raises(ValueError, match="nonzeros in tiles the plan marks EMPTY"):
        pack(other, plan)
    nan = weight.clone()
    nan[129, 69] = float("nan")
    with pytest.raises(ValueError, match="nonzeros in tiles the plan marks EMPTY"):
        pack(nan, plan)
    with pytest.raises(ValueError, match="expected a 2-D tensor"):
        pack(weight[0], plan)
    packed = pack(weight, plan)
    for n in (0, plan.buckets[-1].n_max + 1):
        with pytest.raises(ValueError, match=f"n_tokens: expected 1..{plan.buckets[-1].n_max}, got {n}"):
            packed.bucket_for(n)
    # fewer nonzeros than planned is fine: a planned DENSE tile may hold zeros
    fewer = weight.clone()
    fewer[64:70] = 0
    check_all_buckets(fewer, plan, rng, torch.float32, n_tokens=(5,))


# ---------------------------------------------------------------------------- non-finite inputs
NAN_WEIGHTS = ["one_dense_tile", "nan_inf", "empty_tile_row", "uniform"]


def _nan_weight(name, rng):
    if name == "uniform":
        return random_weight((100, 200), 0.3, rng)
    if name == "empty_tile_row":  # rows 32..63: one tile-row of EMPTY tiles (32-row tiles)
        w = random_weight((100, 200), 0.5, rng)
        w[32:64] = 0
        return w
    return structured_weight(name, rng)


def _poisoned_x(n, k, rng):
    x = random_x(n, k, rng, torch.float32)
    flat = x.view(-1)
    pos = torch.randperm(flat.numel(), generator=rng)[:4]
    flat[pos[0]], flat[pos[1]], flat[pos[2]] = float("nan"), float("inf"), float("-inf")
    flat[pos[3]] = 0.0  # a zero meeting an Inf weight gives NaN in the dense product
    return x


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("name", NAN_WEIGHTS)
def test_nonfinite_inputs_propagate_like_dense(name, n, rng):
    weight = _nan_weight(name, rng)
    plan = make_plan(weight, tile_shape=(32, 64), nan_policy="propagate", n_programs=7, allowed_kinds=ALL_KINDS)
    assert (plan.kinds == TileKind.EMPTY).any() or name == "uniform"
    packed = pack(weight, plan)
    x = _poisoned_x(n, weight.shape[1], rng)
    bias = torch.randn(weight.shape[0], generator=rng)
    ref = dense_reference(x, weight, bias)
    assert ref.isnan().any()
    for pb in packed.buckets:
        y = reference_matmul(x, packed, bias, bucket=pb)
        assert_matches(y, ref, torch.float32, f"bucket {pb.plan.n_min}")


@pytest.mark.parametrize("n", [1, 17])
@pytest.mark.parametrize("name", ["one_dense_tile", "nan_inf", "empty_tile_row"])
def test_nonfinite_inputs_ignored_by_empty_tiles(name, n, rng):
    """nan_policy='ignore' skips EMPTY tiles: outputs of all-empty tile-rows are the bias, finite;
    everything the dense product computes finitely is unchanged."""
    weight = _nan_weight(name, rng)
    plan = make_plan(weight, tile_shape=(32, 64), nan_policy="ignore", n_programs=7, allowed_kinds=ALL_KINDS)
    packed = pack(weight, plan)
    x = _poisoned_x(n, weight.shape[1], rng)
    x[:, -1] = float("nan")  # a NaN in every token, so every all-empty tile-row would see one
    bias = torch.randn(weight.shape[0], generator=rng)
    ref = dense_reference(x, weight, bias)
    empty_rows = np.repeat((plan.kinds == TileKind.EMPTY).all(axis=1), plan.tile_shape[0])[: weight.shape[0]]
    for pb in packed.buckets:
        y = reference_matmul(x, packed, bias, bucket=pb)
        if empty_rows.any():
            assert torch.equal(y[:, torch.from_numpy(empty_rows)], bias[empty_rows].expand(n, -1))
        fin = ref.isfinite()
        err = torch.linalg.norm(y.double()[fin] - ref[fin])
        assert err <= rel_tol(torch.float32) * torch.linalg.norm(ref[fin])
    expect_empty = {"one_dense_tile": 130 - 64, "empty_tile_row": 32, "nan_inf": 0}[name]
    assert empty_rows.sum() == expect_empty


# ---------------------------------------------------------------------------- runtime.execute
@pytest.fixture
def packed_f32(rng):
    weight = random_weight((100, 70), 0.4, rng)
    return weight, pack(weight, make_plan(weight, tile_shape=(32, 64)))


@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3), (2, 0), (4, 1, 3)], ids=str)
def test_execute_leading_dims(lead, packed_f32, rng):
    weight, packed = packed_f32
    x = torch.randn(*lead, 70, generator=rng)
    bias = torch.randn(100, generator=rng)
    y = execute(x, packed, bias)
    assert y.shape == (*lead, 100) and y.dtype == x.dtype
    if x.numel():
        ref = dense_reference(x.reshape(-1, 70), weight, bias).reshape(*lead, 100)
        assert_matches(y, ref, torch.float32)


def test_execute_dense_fallback(packed_f32, rng):
    """A fallback bucket runs the dense product when given the dense weight, the plan otherwise or
    when forced; all three agree."""
    weight, packed = packed_f32
    assert packed.bucket_for(5).plan.fallback  # a 100x70 weight never beats dense on the roofline
    x = torch.randn(5, 70, generator=rng)
    bias = torch.randn(100, generator=rng)
    ref = dense_reference(x, weight, bias)
    for kw in (dict(dense_weight=weight), dict(), dict(dense_weight=weight, force_plan=True)):
        assert_matches(execute(x, packed, bias, **kw), ref, torch.float32, str(list(kw)))
