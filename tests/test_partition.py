"""Partition: classification and bands, make_plan's invariants over a table of weights and modes,
balance quality (intra- and inter-batch), Plan files."""

import dataclasses
import json
import math
import struct

import numpy as np
import pytest
import torch

from cross.costmodel import H100, CostModel, TileTable, default_cost_model
from cross.partition import DEFAULT_BUCKETS, Plan, bands, classify, make_plan, simulate_makespan
from cross.partition.balance import alternate_order, convert_swing
from cross.partition.plan import PLAN_FORMAT
from cross.partition.planner import WIN_MARGIN, _map_bucket, design_tokens, item_cost
from cross.tiling import SPARSE_KINDS, TileGrid, TileKind
from weights import STRUCTURES, random_weight, structured_weight

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70), (64, 64)]
TILE_SHAPES = [(16, 32), (32, 64), (64, 64), (128, 64)]
DENSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
BALANCES = ["none", "intra", "full"]
UNIT_MODES = ["split", "mixed"]
N_PROGRAMS = [1, 3, 7, 264]
ALL_KINDS = (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX)
ALLOWED = {"dense_bitmap": (TileKind.DENSE, TileKind.BITMAP), "all": ALL_KINDS, "sparse_only": SPARSE_KINDS,
           "dense_only": (TileKind.DENSE,), "bitmap_only": (TileKind.BITMAP,)}


# ---------------------------------------------------------------------------- classify / bands
def random_counts(rng, grid: TileGrid):
    """nnz per tile spread over all densities, with some empty and some full tiles."""
    size = grid.tile_sizes()
    frac = torch.rand(grid.shape, generator=rng, dtype=torch.float64).numpy()
    frac[frac < 0.1] = 0.0
    frac[frac > 0.9] = 1.0
    return np.round(frac * size).astype(np.int64), size


@pytest.mark.parametrize("swing_band", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("allowed", list(ALLOWED))
@pytest.mark.parametrize("n_tokens", [1, 16, 128, 2048])
@pytest.mark.parametrize("tile_shape", [(32, 64), (64, 64)], ids=str)
def test_classify_picks_argmin_and_marks_swing(tile_shape, n_tokens, allowed, swing_band, rng):
    grid = TileGrid(300, 1000, *tile_shape)
    nnz, size = random_counts(rng, grid)
    cm = default_cost_model()
    kinds_allowed = ALLOWED[allowed]
    c = classify(nnz, size, tile_shape, n_tokens, cm, kinds_allowed, swing_band)
    density = nnz / size
    assert c.kinds.shape == c.swing.shape == grid.shape
    sparse_allowed = [k for k in kinds_allowed if k in SPARSE_KINDS]
    for i, j in np.ndindex(*grid.shape):
        cost = {k: cm.predict(k, tile_shape, density[i, j], n_tokens) for k in kinds_allowed}
        chosen = TileKind(int(c.kinds[i, j]))
        if nnz[i, j] == 0:
            assert chosen == TileKind.EMPTY and not c.swing[i, j]
            continue
        assert chosen in kinds_allowed and cost[chosen] == min(cost.values()), (i, j, cost, chosen)
        if TileKind.DENSE in kinds_allowed and sparse_allowed:
            best_sparse = min(cost[k] for k in sparse_allowed)
            within = abs(cost[TileKind.DENSE] - best_sparse) <= swing_band * min(cost[TileKind.DENSE], best_sparse)
            assert c.swing[i, j] == within, (i, j, cost)
            assert cost[TileKind(int(c.best_sparse[i, j]))] == best_sparse
        else:
            assert not c.swing[i, j]
    assert np.array_equal(c.cost_of(c.kinds)[nnz > 0], np.stack([c.costs[k] for k in kinds_allowed]).min(0)[nnz > 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(allowed=(TileKind.EMPTY, TileKind.DENSE)), "EMPTY is implied"),
    (dict(allowed=()), "expected at least one tile kind"),
    (dict(swing_band=-0.1), "swing_band: expected >= 0, got -0.1"),
])
def test_classify_errors(kwargs, match):
    nnz = np.ones((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match=match):
        classify(nnz, nnz * 4096, (64, 64), 16, default_cost_model(), **kwargs)


@pytest.mark.parametrize("sparse_kind", [TileKind.BITMAP, TileKind.INDEX], ids=lambda k: k.name)
@pytest.mark.parametrize("n_tokens", [1, 4, 16])
@pytest.mark.parametrize("tile_shape", [(32, 64), (64, 64), (128, 64)], ids=str)
def test_bands_small_n(tile_shape, n_tokens, sparse_kind):
    """Decode is memory-bound: compressed tiles win at low density, dense tiles at full density,
    and the bands are ordered sparse -> swing -> dense along density."""
    b = bands(default_cost_model(), tile_shape, n_tokens, sparse_kind)
    band = b["band"]
    assert band[0] == "sparse" and b["sparse_us"][-1] > b["dense_us"][-1]
    # a full BITMAP tile moves 2 + 1/8 bytes per element against 2: within the default 10% swing band
    assert band[-1] == ("swing" if sparse_kind == TileKind.BITMAP else "dense")
    assert bands(default_cost_model(), tile_shape, n_tokens, sparse_kind, swing_band=0.05)["band"][-1] == "dense"
    rank = np.array([{"sparse": 0, "swing": 1, "dense": 2}[x] for x in band])
    assert np.all(np.diff(rank) >= 0)
    swing = np.abs(b["dense_us"] - b["sparse_us"]) <= 0.1 * np.minimum(b["dense_us"], b["sparse_us"])
    np.testing.assert_array_equal(band == "swing", swing)


def test_sparse_band_narrows_with_tokens():
    """Prefill is compute-bound: the density under which BITMAP beats DENSE falls as N grows."""
    cm = default_cost_model()
    edge = [b["density"][b["band"] == "sparse"].max(initial=0.0) for b in (bands(cm, (64, 64), n) for n in (1, 16, 128, 2048))]
    assert all(b <= a for a, b in zip(edge, edge[1:])) and edge[-1] < edge[0]


# ---------------------------------------------------------------------------- make_plan invariants
def tile_costs(plan: Plan, nnz, n, cm):
    """Predicted cost of every tile under the plan's kinds at n tokens (from the cost model)."""
    size = plan.grid.tile_sizes()
    out = np.zeros(plan.kinds.shape)
    for k in TileKind:
        sel = plan.kinds == k
        if sel.any():
            out[sel] = cm.predict(k, plan.tile_shape, nnz[sel] / size[sel], n)
    return out


def check_plan(plan: Plan, nnz: np.ndarray, *, n_programs, balance="full", unit_mode="split", nan_policy="propagate",
               cm=None, buckets=DEFAULT_BUCKETS):
    cm = cm or default_cost_model()
    ti, tj = plan.grid.shape
    assert plan.kinds.shape == nnz.shape == (ti, tj)
    np.testing.assert_array_equal(plan.kinds == TileKind.EMPTY, nnz == 0)
    executed = (plan.kinds != TileKind.EMPTY) | (nan_policy == "propagate")
    assert [(b.n_min, b.n_max) for b in plan.buckets] == list(buckets)
    assert plan.buckets[0].n_min == 1 and all(a.n_max + 1 == b.n_min for a, b in zip(plan.buckets, plan.buckets[1:]))

    rows = np.repeat(np.arange(ti), np.diff(plan.tile_ptr))
    for b in plan.buckets:
        where = f"bucket [{b.n_min}, {b.n_max}]"
        u = b.n_units
        assert 1 <= u <= n_programs, where
        # every executed tile exactly once, derived from the items alone
        count = np.zeros((ti, tj), dtype=np.int64)
        for row, start, stop in b.items:
            assert plan.tile_ptr[row] <= start <= stop <= plan.tile_ptr[row + 1], where
            assert np.all(rows[start:stop] == row)
            np.add.at(count, (row, plan.tile_col[start:stop]), 1)
        np.testing.assert_array_equal(count, executed.astype(np.int64), err_msg=where)
        assert set(b.items[:, 0].tolist()) == set(range(ti)), f"{where}: a tile-row without an item"
        # units: offsets over the items, and two permutations of them
        assert b.unit_ptr[0] == 0 and b.unit_ptr[-1] == len(b.items) and np.all(np.diff(b.unit_ptr) >= 0)
        assert all(sorted(o.tolist()) == list(range(u)) for o in b.unit_order)
        if balance != "full":
            np.testing.assert_array_equal(b.unit_order[0], b.unit_order[1])
        # split mode: no unit runs both dense and non-dense tiles
        unit_of_item = np.repeat(np.arange(u), np.diff(b.unit_ptr))
        if unit_mode == "split" and u >= 2:
            for unit in range(u):
                its = b.items[unit_of_item == unit]
                kinds = {int(plan.tile_kind[p]) == TileKind.DENSE for s, e in its[:, 1:] for p in range(s, e)}
                assert len(kinds) <= 1, f"{where}: unit {unit} mixes dense and sparse tiles"
        # predicted loads: the unit's tile costs at the bucket's design token count (sparse tiles
        # scaled in a plan with DENSE tiles) plus one item's charge per item
        costs = tile_costs(plan, nnz, b.n_design, cm)[rows, plan.tile_col]
        if (plan.kinds == TileKind.DENSE).any():
            costs = np.where(plan.tile_kind == TileKind.DENSE, costs, costs * cm.spec.mixed_sparse_scale)
        token_tiles = math.ceil(b.n_design / b.block_n)
        item = item_cost(cm, b.n_design, token_tiles, n_programs)
        expect = -item * (np.diff(b.unit_ptr) > 0)  # a unit's first item is in the fixed cost
        for unit, (row, start, stop) in zip(unit_of_item, b.items):
            expect[unit] += costs[start:stop].sum() + item
        np.testing.assert_allclose(b.unit_us, expect, rtol=1e-9, atol=1e-12, err_msg=where)
        predicted = cm.launch_us + n_programs * simulate_makespan(b.unit_us / token_tiles, b.unit_order, token_tiles)
        assert b.predicted_us == pytest.approx(predicted, rel=1e-9)
        assert b.dense_us == pytest.approx(cm.dense_us(*plan.shape, b.n_design))
        assert b.fallback == (b.predicted_us * (1 + WIN_MARGIN) >= b.dense_us)
        assert bool(b.reason) == b.fallback
        assert b.n_design == design_tokens(b.n_min, b.n_max) and b.block_n >= 16


def _nnz(weight, tile_shape):
    return TileGrid.for_weight(weight, tile_shape).tile_nnz(weight)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("tile_shape", TILE_SHAPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_plan_over_shapes_and_densities(shape, tile_shape, density, rng):
    weight = random_weight(shape, density, rng)
    plan = make_plan(weight, tile_shape=tile_shape, n_programs=7)
    check_plan(plan, _nnz(weight, tile_shape), n_programs=7)
    assert plan.dtype == "float32" and plan.shape == shape and plan.tile_shape == tile_shape


@pytest.mark.parametrize("nan_policy", ["propagate", "ignore"])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("tile_shape", [(32, 64), (64, 64)], ids=str)
def test_plan_over_structures(structure, tile_shape, nan_policy, rng):
    weight = structured_weight(structure, rng)
    plan = make_plan(weight, tile_shape=tile_shape, nan_policy=nan_policy, n_programs=7)
    check_plan(plan, _nnz(weight, tile_shape), n_programs=7, nan_policy=nan_policy)


MODE_WEIGHTS = ["uniform_70", "nonuniform", "one_dense_tile", "empty_rows"]


def mode_weight(name, rng):
    if name == "uniform_70":
        return random_weight((200, 300), 0.7, rng)
    if name == "nonuniform":  # full, 90%, 50%, 5% and empty row-blocks
        parts = [random_weight((64, 320), d, rng) for d in (1.0, 0.9, 0.5, 0.05, 0.0)]
        return torch.cat(parts)[:300]
    return structured_weight(name, rng)


@pytest.mark.parametrize("n_programs", N_PROGRAMS)
@pytest.mark.parametrize("unit_mode", UNIT_MODES)
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("name", MODE_WEIGHTS)
def test_plan_over_modes(name, balance, unit_mode, n_programs, rng):
    weight = mode_weight(name, rng)
    plan = make_plan(weight, tile_shape=(64, 64), balance=balance, unit_mode=unit_mode, n_programs=n_programs,
                     allowed_kinds=ALL_KINDS)
    check_plan(plan, _nnz(weight, (64, 64)), n_programs=n_programs, balance=balance, unit_mode=unit_mode)
    opts = plan.provenance["options"]
    assert (opts["balance"], opts["unit_mode"], opts["n_programs"]) == (balance, unit_mode, n_programs)
    if balance == "none" or unit_mode == "mixed" or n_programs == 1:
        assert plan.provenance["swing_converted"] == 0


@pytest.mark.parametrize("buckets", [((1, 1),), ((1, 3), (4, 5)), ((1, 16), (17, 100000))], ids=str)
def test_plan_custom_buckets(buckets, rng):
    weight = random_weight((130, 70), 0.5, rng)
    plan = make_plan(weight, tile_shape=(32, 64), buckets=buckets, n_programs=3)
    check_plan(plan, _nnz(weight, (32, 64)), n_programs=3, buckets=buckets)
    for lo, hi in buckets:
        for n in {lo, (lo + hi) // 2, hi}:
            assert (plan.bucket_for(n).n_min, plan.bucket_for(n).n_max) == (lo, hi)


@pytest.mark.parametrize("n", [0, -1, 101, 10**9])
def test_bucket_for_outside_range(n, rng):
    plan = make_plan(random_weight((64, 64), 0.5, rng), buckets=((1, 16), (17, 100)))
    with pytest.raises(ValueError, match=f"n_tokens: expected 1..100, got {n}"):
        plan.bucket_for(n)


def test_plan_from_counts_equals_plan_from_weight(rng):
    weight = random_weight((130, 300), 0.6, rng, torch.bfloat16)
    a = make_plan(weight, tile_shape=(32, 64), n_programs=7)
    b = make_plan(nnz=_nnz(weight, (32, 64)), shape=(130, 300), dtype="bfloat16", tile_shape=(32, 64), n_programs=7)
    assert_same_plan(a, b, provenance=False)


MAKE_PLAN_ERRORS = [
    (dict(balance="greedy"), ValueError, r"balance: expected one of \('none', 'intra', 'full'\), got 'greedy'"),
    (dict(unit_mode="shared"), ValueError, r"unit_mode: expected one of \('split', 'mixed'\), got 'shared'"),
    (dict(nan_policy="raise"), ValueError, "nan_policy: expected 'propagate' or 'ignore', got 'raise'"),
    (dict(buckets=((1, 16), (18, 64))), ValueError, "buckets: expected contiguous token ranges from 1"),
    (dict(buckets=((2, 16),)), ValueError, "buckets: expected contiguous token ranges from 1"),
    (dict(buckets=()), ValueError, "buckets: expected at least one token range"),
    (dict(cost_model="h100"), TypeError, r"cost_model: expected a cross.costmodel.CostModel .* got str"),
    (dict(n_programs=0), ValueError, r"n_programs: expected an integer >= 1 \(or None: the cost model's\), got 0"),
    (dict(allowed_kinds="INDEX"), TypeError, "allowed_kinds: expected a sequence of TileKind"),
    (dict(allowed_kinds=TileKind.INDEX), TypeError, "allowed_kinds: expected a sequence of TileKind"),
    (dict(tile_shape=(64, 40)), ValueError, "expected powers of two >= 16"),
    (dict(tile_shape=(64, 16)), ValueError, r"expected at least 32 tile columns for a plan .* got \(64, 16\)"),
    (dict(weight=torch.zeros(4, 4, 4)), ValueError, "expected a 2-D tensor"),
    (dict(weight=torch.zeros(4, 4, dtype=torch.int64)), TypeError, "expected dtype in"),
    (dict(weight=None), ValueError, "expected a weight, or nnz per tile together with shape"),
    (dict(weight=None, nnz=np.zeros((2, 2)), shape=(64, 64)), ValueError, r"nnz: expected shape \(1, 1\), got \(2, 2\)"),
]


@pytest.mark.parametrize("kwargs, exc, match", MAKE_PLAN_ERRORS)
def test_make_plan_errors(kwargs, exc, match):
    kwargs = {"weight": torch.ones(64, 64), **kwargs}
    with pytest.raises(exc, match=match):
        make_plan(kwargs.pop("weight"), **kwargs)


def _replace_bucket(plan, **changes):
    b = dataclasses.replace(plan.buckets[0], **changes)
    return dict(buckets=(b, *plan.buckets[1:]))


PLAN_CORRUPTIONS = {
    "item_dropped": (lambda p: _replace_bucket(p, items=p.buckets[0].items[1:], unit_ptr=np.maximum(p.buckets[0].unit_ptr - 1, 0)),
                     "expected every executed tile in exactly one work item|every tile-row"),
    "item_doubled": (lambda p: _replace_bucket(p, items=np.vstack([p.buckets[0].items, p.buckets[0].items[:1]]),
                                               unit_ptr=np.r_[p.buckets[0].unit_ptr[:-1], p.buckets[0].unit_ptr[-1] + 1]),
                     "expected every executed tile in exactly one work item"),
    "unit_order_repeats": (lambda p: _replace_bucket(p, unit_order=np.zeros_like(p.buckets[0].unit_order)), "two permutations"),
    "unit_ptr_short": (lambda p: _replace_bucket(p, unit_ptr=p.buckets[0].unit_ptr[:-1]), "expected unit_ptr to be offsets"),
    "block_n": (lambda p: _replace_bucket(p, block_n=24), "expected block_n a power of two >= 16, got 24"),
    "tile_kind": (lambda p: dict(tile_kind=np.where(p.tile_kind == TileKind.DENSE, TileKind.BITMAP, TileKind.DENSE)),
                  "expected tile_kind to agree with kinds"),
    "tile_col": (lambda p: dict(tile_col=p.tile_col + 100), "expected tile columns in"),
    "bucket_gap": (lambda p: dict(buckets=p.buckets[1:]), "expected buckets to cover token counts contiguously from 1"),
    "nan_policy": (lambda p: dict(nan_policy="skip"), "nan_policy: expected"),
    "kinds_shape": (lambda p: dict(kinds=p.kinds[:1]), "expected kinds/swing of shape"),
}


@pytest.mark.parametrize("case", list(PLAN_CORRUPTIONS))
def test_plan_validation_rejects(case, rng):
    plan = make_plan(mode_weight("nonuniform", rng), tile_shape=(64, 64), n_programs=7)
    change, match = PLAN_CORRUPTIONS[case]
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(plan, **change(plan))


# ---------------------------------------------------------------------------- balance quality
def test_item_latency_spreads_scattered_sparse_tiles():
    """128 tile-rows of 7 DENSE tiles and one nearly empty BITMAP tile each, on 64 units: with items
    free, cost balancing gives the 128 one-tile sparse items to a few units (their tiles weigh
    little); charged per item, the sparse stream gets more units and its longest chain of items
    shrinks at least 3x, and every unit's load counts its items."""
    tile_ptr = np.arange(129) * 8
    tile_kind = np.tile(np.array([TileKind.DENSE] * 7 + [TileKind.BITMAP], dtype=np.uint8), 128)
    tile_cost = np.where(tile_kind == TileKind.DENSE, 1.0, 0.05)
    chains = {}
    for item in (0.0, 1.0):
        items, unit_ptr, loads, _ = _map_bucket(tile_ptr, tile_kind, tile_cost, 64, "split", "full", item)
        unit = np.repeat(np.arange(unit_ptr.size - 1), np.diff(unit_ptr))
        sparse = tile_kind[items[:, 1]] == TileKind.BITMAP
        per_unit = np.bincount(unit[sparse])
        chains[item] = (per_unit.max(), np.count_nonzero(per_unit))
        expect = np.bincount(unit, [tile_cost[a:b].sum() + item for _, a, b in items], minlength=unit_ptr.size - 1)
        np.testing.assert_allclose(loads, expect - item * (np.diff(unit_ptr) > 0), rtol=1e-12)
    assert chains[1.0][0] * 3 <= chains[0.0][0], chains
    assert chains[1.0][1] > chains[0.0][1], chains


def test_hybrid_weighed_against_single_kind_twins():
    """One full tile in a weight of 30%-dense tiles would put every tile in the kernel variant that
    stages whole tiles; where sparse tiles cost more there, the planner keeps the all-sparse twin,
    whose buckets are then those of a plan allowed no DENSE tiles. Half full and half 2%-dense
    tile-rows stay hybrid: each twin would run half its tiles in the wrong kind."""
    nnz = np.full((64, 16), 1200)
    nnz[5, 5] = 64 * 64
    cm = CostModel(spec=dataclasses.replace(FAST_LAUNCH.spec, mixed_sparse_scale=1.5))
    plan = make_plan(nnz=nnz, shape=(4096, 1024), cost_model=cm, n_programs=128)
    assert plan.provenance["kinds_chosen"] == "all sparse" and not (plan.kinds == TileKind.DENSE).any()
    twin = make_plan(nnz=nnz, shape=(4096, 1024), cost_model=cm, n_programs=128, allowed_kinds=(TileKind.BITMAP,))
    assert [b.predicted_us for b in plan.buckets] == pytest.approx([b.predicted_us for b in twin.buckets], rel=1e-12)
    check_plan(plan, nnz, n_programs=128, cm=cm)
    halves = np.full((64, 64), 64 * 64)
    halves[32:] = 80
    cm = FAST_LAUNCH
    plan = make_plan(nnz=halves, shape=(4096, 4096), cost_model=cm, n_programs=256)
    assert plan.provenance["kinds_chosen"] == "hybrid"
    assert (plan.kinds[:32] == TileKind.DENSE).mean() > 0.9 and (plan.kinds[32:] == TileKind.BITMAP).all()  # swing tiles may convert
    for kinds in ((TileKind.BITMAP,), (TileKind.DENSE,)):
        twin = make_plan(nnz=halves, shape=(4096, 4096), cost_model=cm, n_programs=256, allowed_kinds=kinds)
        assert twin.buckets[0].predicted_us > plan.buckets[0].predicted_us, kinds
    check_plan(plan, halves, n_programs=256, cm=cm)


def test_balance_uniform_1024(rng):
    """A uniform 70% matrix: cost-balanced units within 10% of the mean, in every bucket."""
    weight = random_weight((1024, 1024), 0.7, rng)
    nnz = _nnz(weight, (64, 64))
    for balance in ("intra", "full"):
        plan = make_plan(nnz=nnz, shape=(1024, 1024), tile_shape=(64, 64), balance=balance, n_programs=32,
                         cost_model=FAST_LAUNCH)
        for b in plan.buckets:
            assert b.n_units == 32
            assert b.unit_us.max() / b.unit_us.mean() <= 1.10, (balance, b.n_min, b.unit_us)
        assert not plan.buckets[0].fallback, "decode of a 70% matrix should beat dense"


def nonuniform_weight(rng):
    """Half the row-blocks 95% sparse, half 30% sparse (the seed's Figure 2 extremes)."""
    return torch.cat([random_weight((256, 1024), 0.05, rng), random_weight((256, 1024), 0.7, rng)])


#: the roofline with free work items: tests of how tile costs are balanced, where on a GPU of 4-7
#: programs an item's latency would outweigh the tiny weights' tiles
TILES_ONLY = CostModel(spec=dataclasses.replace(H100, item_us=0.0))
#: a GPU whose plan kernel starts about as fast as cuBLAS and whose work items cost little (the
#: H100 roofline's 13 us against 9 us, and 3.9 us per item, keep every small test weight dense):
#: tests of plans that win on small weights
FAST_LAUNCH = CostModel(spec=dataclasses.replace(H100, launch_us=4.0, dense_launch_us=5.0, item_us=0.1))


def test_cost_balance_beats_equal_counts(rng):
    """Equal tile counts put whole 30%-sparse rows on some units and 95%-sparse rows on others;
    cost balancing evens them out. With 5 units over 8 tile-rows of 16 tiles (INDEX tiles ~7x
    cheaper than BITMAP ones at decode) the heaviest unit must shrink by 15% or more, in every bucket."""
    weight = nonuniform_weight(rng)
    kw = dict(tile_shape=(64, 64), n_programs=5, allowed_kinds=ALL_KINDS, cost_model=TILES_ONLY)
    none = make_plan(weight, balance="none", **kw)
    intra = make_plan(weight, balance="intra", **kw)
    for a, b in zip(none.buckets, intra.buckets):
        assert b.unit_us.max() * 1.15 <= a.unit_us.max(), (b.n_min, a.unit_us, b.unit_us)
        assert b.predicted_us < a.predicted_us


def interleaved_weight(rng):
    """Row-blocks alternating 95% and 30% sparse, 8 x 8 tiles of 64 x 64."""
    w = torch.cat([random_weight((256, 512), 0.05, rng), random_weight((256, 512), 0.7, rng)])
    return w.reshape(8, 64, 512)[[0, 4, 1, 5, 2, 6, 3, 7]].reshape(512, 512)


@pytest.mark.parametrize("n_programs", [5, 7, 24, 32])
@pytest.mark.parametrize("name", ["interleaved", "nonuniform", "uniform"])
def test_cost_balance_never_worse_than_equal_counts(name, n_programs, rng):
    """On one stream of units ('mixed'), balancing by cost must not leave a heavier unit than equal
    tile counts, work items included: an item costs as much as a few decode tiles, so a cut by
    tile cost alone that splits tile-rows can lose (32 programs over 64 tiles did, 1.56 vs 1.06)."""
    weight = {"interleaved": interleaved_weight, "nonuniform": nonuniform_weight,
              "uniform": lambda r: random_weight((512, 1024), 0.7, r)}[name](rng)
    kw = dict(tile_shape=(64, 64), n_programs=n_programs, unit_mode="mixed", allowed_kinds=ALL_KINDS)
    none, intra = make_plan(weight, balance="none", **kw), make_plan(weight, balance="intra", **kw)
    for a, b in zip(none.buckets, intra.buckets):
        assert b.unit_us.max() <= a.unit_us.max() * (1 + 1e-12), (b.n_min, a.unit_us.max(), b.unit_us.max())


def test_alternate_order_pairs_heaviest_with_lightest():
    loads = np.array([1.0, 4.0, 2.0, 3.0])
    order = alternate_order(loads)
    np.testing.assert_array_equal(order, [[0, 1, 2, 3], [1, 0, 3, 2]])
    # naive: program 1 runs the 4.0 unit on all 16 token tiles; alternated: every program runs 8 x (4 + 1)
    assert simulate_makespan(loads, np.stack([order[0]] * 2), 16) == 64.0
    assert simulate_makespan(loads, order, 16) == 40.0
    assert simulate_makespan(loads, order, 1) == 4.0  # one token tile: nothing to alternate
    np.testing.assert_array_equal(alternate_order(loads, alternate=False), [[0, 1, 2, 3]] * 2)
    np.testing.assert_array_equal(alternate_order(loads, interleave=np.array([3, 2, 1, 0])), [[3, 2, 1, 0], [2, 3, 0, 1]])


def test_inter_batch_alternation_exact(rng):
    """Five identical full tiles on four units: one unit holds two tiles (load 2c, c a tile's
    cost; every unit has one item, which the fixed cost holds), the others one (c). Over T = 16
    token tiles the naive order costs 16 x 2c; paired with a light unit the heavy one costs
    8 x 3c: the saving is exactly 8c, a quarter of the makespan, in every bucket."""
    weight = random_weight((64, 320), 1.0, rng)
    cm = TILES_ONLY
    plan = make_plan(weight, tile_shape=(64, 64), n_programs=4, balance="full", unit_mode="mixed", cost_model=cm)
    for b in plan.buckets:
        c = cm.predict(TileKind.DENSE, (64, 64), 1.0, b.n_design)
        np.testing.assert_allclose(np.sort(b.unit_us), [c] * 3 + [2 * c], rtol=1e-12)  # one item per unit
        naive = simulate_makespan(b.unit_us, np.stack([b.unit_order[0]] * 2), 16)
        alternated = simulate_makespan(b.unit_us, b.unit_order, 16)
        assert naive == pytest.approx(16 * 2 * c)
        assert alternated == pytest.approx(8 * 3 * c)
        assert naive - alternated == pytest.approx(8 * c)
        assert alternated <= 0.9 * naive


@pytest.mark.parametrize("n_programs", [5, 7])
def test_inter_batch_alternation_nonuniform(n_programs, rng):
    """On an uneven matrix: the naive order costs 16 Lmax over T = 16 token tiles; alternating unit a
    with its partner costs 8 (L_a + L_partner(a)) per program. Pairing the heaviest unit with the
    lightest, no program can exceed 8 max(Lmax + Lmin, L2 + L3) (a pair without the heaviest unit
    sums to at most the second and third largest), so the saving is at least
    8 min(Lmax - Lmin, 2 Lmax - L2 - L3), strictly positive when the heaviest unit stands alone.
    Any other pairing (e.g. the heaviest with the second heaviest) breaks the bound."""
    plan = make_plan(nonuniform_weight(rng), tile_shape=(64, 64), n_programs=n_programs, balance="full",
                     allowed_kinds=ALL_KINDS)
    for b in plan.buckets:
        loads = b.unit_us
        s = np.sort(loads)[::-1]
        bound = 8 * max(s[0] + s[-1], s[1] + s[2])
        naive = simulate_makespan(loads, np.stack([b.unit_order[0]] * 2), 16)
        alternated = simulate_makespan(loads, b.unit_order, 16)
        assert naive == pytest.approx(16 * s[0])
        assert alternated <= bound * (1 + 1e-12), (b.n_min, loads)
        if s[0] > s[1]:
            assert alternated < naive
    # at decode the 95%- and 30%-sparse rows differ most: the saving there is several percent
    b = plan.buckets[0]
    assert simulate_makespan(b.unit_us, b.unit_order, 16) <= 0.98 * simulate_makespan(b.unit_us, np.stack([b.unit_order[0]] * 2), 16)


def swing_case(heavy: str):
    """16 tiles of 64x64 at decode on 2 units (one dense, one sparse). 'dense': 12 full tiles
    (DENSE, but in the swing band) and 4 at 30% (BITMAP, not swing): the dense unit is ~3x
    heavier. 'sparse': 12 tiles at 88% (BITMAP, swing) and 4 full ones."""
    nnz = np.full((1, 16), 4096)
    if heavy == "dense":
        nnz[0, 12:] = round(0.3 * 4096)
    else:
        nnz[0, :12] = round(0.88 * 4096)
    return classify(nnz, np.full_like(nnz, 4096), (64, 64), 16, default_cost_model())


def split_makespan(kinds, cls, n_units):
    cost = cls.cost_of(kinds)
    dense, sparse = cost[kinds == TileKind.DENSE].sum(), cost[kinds != TileKind.DENSE].sum()
    return min(max(dense / ud, sparse / (n_units - ud)) for ud in range(1, n_units))


@pytest.mark.parametrize("heavy", ["dense", "sparse"])
def test_convert_swing_lowers_split_makespan(heavy):
    cls = swing_case(heavy)
    before = split_makespan(cls.kinds, cls, 2)
    swing = cls.swing.copy()
    kinds, converted = convert_swing(cls.kinds, cls.costs, swing, cls.best_sparse, 2)
    after = split_makespan(kinds, cls, 2)
    changed = kinds != cls.kinds
    assert converted == changed.sum() > 0
    assert np.all(cls.swing[changed]), "only swing tiles may change kind"
    from_kind = TileKind.DENSE if heavy == "dense" else TileKind.BITMAP
    assert np.all(cls.kinds[changed] == from_kind)
    # balanced within one conversion: ~0.62 of the makespan (dense heavy), ~0.71 (sparse heavy)
    assert after <= 0.75 * before, (before, after)
    # no further single conversion of a remaining swing tile lowers it
    for t in np.flatnonzero(cls.swing & ~changed):
        trial = kinds.copy()
        trial.flat[t] = TileKind.DENSE if trial.flat[t] != TileKind.DENSE else cls.best_sparse.flat[t]
        assert split_makespan(trial, cls, 2) >= after * (1 - 1e-9)
    assert np.array_equal(convert_swing(cls.kinds, cls.costs, cls.swing.copy(), cls.best_sparse, 1)[0], cls.kinds)


def test_make_plan_converts_swing_tiles_in_split_mode(rng):
    w = torch.cat([torch.ones(64 * 12, 64), random_weight((64 * 4, 64), 0.3, rng)]).reshape(16, 64, 64)
    w = torch.cat(list(w), dim=1)  # 16 tiles in one tile-row: as swing_case("dense")
    for balance, expect_converted in (("none", False), ("intra", True), ("full", True)):
        plan = make_plan(w, tile_shape=(64, 64), balance=balance, n_programs=2)
        assert (plan.provenance["swing_converted"] > 0) == expect_converted
        check_plan(plan, _nnz(w, (64, 64)), n_programs=2, balance=balance)


def expensive_sparse_model():
    tables = tuple(TileTable(k, (64, 64), np.array([0.0, 1.0]), np.array([1.0, 4096.0]), np.full((2, 2), 1e3))
                   for k in SPARSE_KINDS)
    return CostModel(tables=tables, provenance={"device": "test"})


@pytest.mark.parametrize("density", [0.05, 0.5, 0.9])
def test_fallback_when_sparse_tiles_are_dear(density, rng):
    weight = random_weight((512, 512), density, rng)
    cm = expensive_sparse_model()
    plan = make_plan(weight, tile_shape=(64, 64), cost_model=cm, allowed_kinds=SPARSE_KINDS, n_programs=32)
    assert plan.fully_dense_fallback
    for b in plan.buckets:
        assert b.fallback and b.speedup == 1.0 and "is not 3% under dense" in b.reason
    check_plan(plan, _nnz(weight, (64, 64)), n_programs=32, cm=cm)
    assert plan.provenance["cost_model"] == cm.source == "measured on test (?)"
    if density == 0.05:  # the roofline's tiles (with a fast launch) have this decode plan win
        assert not make_plan(weight, tile_shape=(64, 64), allowed_kinds=SPARSE_KINDS, n_programs=32,
                             cost_model=FAST_LAUNCH).buckets[0].fallback


# ---------------------------------------------------------------------------- files
def assert_same_plan(a: Plan, b: Plan, provenance=True):
    ha, hb = a.to_header(), b.to_header()
    if not provenance:
        ha.pop("provenance"), hb.pop("provenance")
    assert ha == hb
    for name in ("kinds", "swing", "tile_ptr", "tile_col", "tile_kind"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for x, y in zip(a.buckets, b.buckets):
        for name in ("items", "unit_ptr", "unit_order", "unit_us"):
            u, v = getattr(x, name), getattr(y, name)
            assert u.dtype == v.dtype and np.array_equal(u, v), name


@pytest.mark.parametrize("name", ["nonuniform", "uniform_70", "one_dense_tile", "empty_rows"])
@pytest.mark.parametrize("nan_policy", ["propagate", "ignore"])
def test_plan_save_load_round_trip(name, nan_policy, tmp_path, rng):
    plan = make_plan(mode_weight(name, rng), tile_shape=(64, 64), nan_policy=nan_policy, n_programs=7)
    loaded = Plan.load(plan.save(tmp_path / "a" / "plan.safetensors"))
    assert_same_plan(plan, loaded)
    assert loaded.summary() == plan.summary()


def test_all_zero_plan_round_trip(tmp_path):
    plan = make_plan(torch.zeros(130, 70), tile_shape=(64, 64), nan_policy="ignore", n_programs=3)
    assert plan.tile_col.size == 0
    assert_same_plan(plan, Plan.load(plan.save(tmp_path / "zero.safetensors")))


def _saved(tmp_path, rng):
    plan = make_plan(mode_weight("nonuniform", rng), tile_shape=(64, 64), n_programs=7, cost_model=FAST_LAUNCH)
    assert not plan.buckets[0].fallback  # the corruptions below flip a bucket's fallback
    path = plan.save(tmp_path / "plan.safetensors")
    raw = path.read_bytes()
    return plan, raw, 8 + struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header length, JSON, data


def _load_bytes(tmp_path, data: bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    return Plan.load(path)


def _flip(raw: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(raw)
    b[pos] ^= mask
    return bytes(b)


CORRUPT_FILES = {
    "flip_middle_of_data": (lambda raw, hl: _flip(raw, (hl + len(raw)) // 2), r"checksum mismatch in '.*': the file is corrupted"),
    "flip_middle_of_file": (lambda raw, hl: _flip(raw, len(raw) // 2, 0xFF), "corrupted|unreadable"),
    "flip_shape_digit": (lambda raw, hl: raw.replace(b'[300, 320]', b'[300, 321]', 1), "checksum mismatch in the header"),
    "flip_dtype": (lambda raw, hl: raw.replace(b'float32', b'float16', 1), "checksum mismatch in the header"),
    "flip_fallback": (lambda raw, hl: raw.replace(b'fallback\\": false', b'fallback\\": true ', 1), "checksum mismatch in the header"),
    "truncated_half": (lambda raw, hl: raw[: len(raw) // 2], "expected a safetensors file, got an unreadable one"),
    "truncated_in_data": (lambda raw, hl: raw[:-1], "expected a safetensors file, got an unreadable one"),
    "truncated_in_header": (lambda raw, hl: raw[:100], "expected a safetensors file, got an unreadable one"),
    "empty": (lambda raw, hl: b"", "expected a safetensors file, got an unreadable one"),
    "zeros": (lambda raw, hl: bytes(len(raw)), "expected a safetensors file, got an unreadable one"),
}


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_corrupted_plan_file_rejected(case, tmp_path, rng):
    _, raw, header_end = _saved(tmp_path, rng)
    damaged = CORRUPT_FILES[case][0](raw, header_end)
    assert damaged != raw
    with pytest.raises(ValueError, match=CORRUPT_FILES[case][1]):
        _load_bytes(tmp_path, damaged)


def test_random_bit_flips_never_load_a_different_plan(tmp_path, rng):
    """Any single-bit flip is rejected with a ValueError, or (a flip in a float's 17th digit, JSON
    padding) loads the very same plan."""
    plan, raw, _ = _saved(tmp_path, rng)
    positions = torch.randint(8, len(raw), (60,), generator=rng).tolist()
    bits = torch.randint(0, 8, (60,), generator=rng).tolist()
    for pos, bit in zip(positions, bits):
        try:
            loaded = _load_bytes(tmp_path, _flip(raw, pos, 1 << bit))
        except ValueError as e:
            assert "bad.safetensors" in str(e) and ("expected" in str(e) or "corrupted" in str(e)), str(e)
        else:
            assert_same_plan(plan, loaded)


def _resave_with_header(tmp_path, raw, edit):
    """The file re-written with an edited (and re-checksummed) header: what another writer makes."""
    from safetensors.numpy import load, save_file

    from cross.partition.plan import _header_digest

    header = json.loads(json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]["cross.plan"])
    edit(header)
    header["header_sha256"] = _header_digest(header)
    path = tmp_path / "other.safetensors"
    save_file(load(raw), str(path), metadata={"cross.plan": json.dumps(header)})
    return path


@pytest.mark.parametrize("fmt", ["cross.plan/7", "cross.plan/0", None])
def test_other_format_version_rejected(fmt, tmp_path, rng):
    _, raw, _ = _saved(tmp_path, rng)
    path = _resave_with_header(tmp_path, raw, lambda h: h.update(format=fmt))
    with pytest.raises(ValueError, match=f"expected plan format 'cross.plan/1' or 'cross.plan/2' or 'cross.plan/3' or 'cross.plan/4' or "
                                         f"'cross.plan/5' or '{PLAN_FORMAT}', got {fmt!r}"):
        Plan.load(path)


def test_version_1_plans_still_load(tmp_path, rng):
    """A plan written before buckets carried measured times: same fields less those two."""
    plan, raw, _ = _saved(tmp_path, rng)

    def as_version_1(h):
        h.update(format="cross.plan/1")
        for b in h["buckets"]:
            del b["measured_us"], b["measured_dense_us"]

    loaded = Plan.load(_resave_with_header(tmp_path, raw, as_version_1))
    assert [b.predicted_us for b in loaded.buckets] == [b.predicted_us for b in plan.buckets]
    assert not any(b.measured for b in loaded.buckets)


def test_re_checksummed_header_still_validated(tmp_path, rng):
    """A consistent file whose header disagrees with its arrays fails the Plan's own validation."""
    _, raw, _ = _saved(tmp_path, rng)
    path = _resave_with_header(tmp_path, raw, lambda h: h.update(shape=[300, 1000]))
    with pytest.raises(ValueError, match="expected kinds/swing of shape"):
        Plan.load(path)


def test_not_a_plan_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, dtype=np.float32)}, str(tmp_path / "x.safetensors"), metadata={"other": "1"})
    with pytest.raises(ValueError, match=r"expected a 'cross.plan' header, got keys \['other'\]"):
        Plan.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        Plan.load(tmp_path / "missing.safetensors")

