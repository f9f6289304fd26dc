"""Cost model: the roofline's shape, measured tables (interpolation, validation), files."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cross.costmodel import H100, CostModel, GPUSpec, TileTable, block_n_for, default_cost_model
from cross.costmodel.model import TABLE_FORMAT
from cross.costmodel.roofline import (
    MAX_BLOCK_N,
    MIN_BLOCK_N,
    PLAN_KERNEL_MIN_STAGES,
    PLAN_KERNEL_SMEM_EXTRA,
    PLAN_KERNEL_STAGES,
    REGISTER_BOUND_BLOCK_N,
    plan_kernel_smem,
    plan_kernel_stages,
    plan_kernel_vals_bytes,
)
from cross.tiling import TileKind

TILE_SHAPES = [(16, 32), (32, 64), (64, 64), (128, 64)]
N_TOKENS = [1, 3, 16, 17, 128, 130, 512, 2048]
SPARSE = [TileKind.BITMAP, TileKind.INDEX]
DENSITY = np.linspace(0.0, 1.0, 257)


def kind_id(k):
    return TileKind(k).name


# ---------------------------------------------------------------------------- roofline
@pytest.mark.parametrize("n_tokens", N_TOKENS)
@pytest.mark.parametrize("tile_shape", TILE_SHAPES, ids=str)
@pytest.mark.parametrize("kind", SPARSE, ids=kind_id)
def test_roofline_sparse_cost_grows_with_density(kind, tile_shape, n_tokens):
    cm = default_cost_model()
    us = cm.predict(kind, tile_shape, DENSITY, n_tokens)
    assert us.shape == DENSITY.shape and np.all(np.isfinite(us)) and np.all(us > 0)
    assert np.all(np.diff(us) >= 0), "cost must not fall as density rises"
    if kind == TileKind.INDEX or n_tokens <= 16:  # per-nonzero work, or a memory-bound tile
        assert us[-1] > us[0]
    scalars = [cm.predict(kind, tile_shape, float(d), n_tokens) for d in DENSITY[::32]]
    assert all(isinstance(s, float) for s in scalars)
    np.testing.assert_array_equal(scalars, us[::32])


@pytest.mark.parametrize("n_tokens", N_TOKENS)
@pytest.mark.parametrize("tile_shape", TILE_SHAPES, ids=str)
def test_roofline_dense_and_empty_ignore_density(tile_shape, n_tokens):
    cm = default_cost_model()
    dense = cm.predict(TileKind.DENSE, tile_shape, DENSITY, n_tokens)
    empty = cm.predict(TileKind.EMPTY, tile_shape, DENSITY, n_tokens)
    assert np.all(dense == dense[0]) and dense[0] > 0
    assert np.all(empty == empty[0]) and empty[0] > 0
    for kind in (TileKind.DENSE, *SPARSE):
        assert np.all(empty <= cm.predict(kind, tile_shape, DENSITY, n_tokens)), f"EMPTY dearer than {kind.name}"


@pytest.mark.parametrize("kind", [TileKind.DENSE, *SPARSE], ids=kind_id)
def test_roofline_cost_grows_with_tokens(kind):
    cm = default_cost_model()
    for density in (0.1, 0.5, 0.9):
        us = [cm.predict(kind, (64, 64), density, n) for n in N_TOKENS]
        assert all(b >= a for a, b in zip(us, us[1:])), (density, us)


def test_dense_product_prediction():
    cm = default_cost_model()
    us = [cm.dense_us(4096, 4096, n) for n in N_TOKENS]
    assert all(b >= a for a, b in zip(us, us[1:]))
    # decode is memory-bound: 32 MiB of bf16 at 65% of 3 TB/s, plus the launch
    assert us[0] == pytest.approx(4096 * 4096 * 2 / (3.0e12 * 0.65) * 1e6 + H100.dense_launch_us)
    assert cm.launch_us == H100.launch_us and cm.n_programs == H100.n_units * H100.programs_per_unit


@pytest.mark.parametrize("small_us, large_us, wide_us", [(13.9, 37.4, 37.4), (12.3, 26.7, 30.0)], ids=["h100", "h200"])
def test_dense_calibration_reproduces_its_points(small_us, large_us, wide_us):
    """The cuBLAS fit of `cross profile` predicts, at N = 1, the three weights it was timed on, also
    where they stream faster than the spec's copy bandwidth (H200: 11008x4096 in 26.7 us, ~1.7x of
    3.0 TB/s) and where the transpose of one runs slower than it (H200: 4096x11008 in 30.0 us)."""
    from cross.costmodel.profile import DENSE_SHAPES, _calibrate_dense
    from cross.costmodel.roofline import dense_matmul_us

    times = np.array([[small_us, 50.0], [large_us, 50.0 * DENSE_SHAPES[1][0] / DENSE_SHAPES[0][0]],
                      [wide_us, 50.0 * DENSE_SHAPES[1][0] / DENSE_SHAPES[0][0]]])  # N = 1 and 2048
    spec = _calibrate_dense(H100, times, (1, 2048))
    for r, (rows, cols) in enumerate(DENSE_SHAPES):
        assert dense_matmul_us(spec, rows, cols, 1) == pytest.approx(times[r, 0], rel=1e-6)
    # rows no longer than the calibration's pay nothing for their width: the fit below 4096 columns
    # is the two-weight one
    assert dense_matmul_us(spec, 768, 3072, 1) == pytest.approx(dense_matmul_us(replace(spec, dense_col_us=0.0),
                                                                                768, 3072, 1))


@pytest.mark.parametrize("n_tokens, next_pow2", [(0, 1), (1, 1), (2, 2), (15, 16), (16, 16), (17, 32), (32, 32),
                                                  (33, 64), (64, 64), (65, 128), (128, 128), (129, 256), (2048, 2048),
                                                  (2**31 - 1, 2**31)])
def test_block_n_for(n_tokens, next_pow2):
    """The next power of two, clamped to the kernels' token tiles [MIN_BLOCK_N, MAX_BLOCK_N]."""
    assert MIN_BLOCK_N >= 16 and MAX_BLOCK_N & (MAX_BLOCK_N - 1) == 0 and MAX_BLOCK_N >= MIN_BLOCK_N
    assert block_n_for(n_tokens) == min(MAX_BLOCK_N, max(MIN_BLOCK_N, next_pow2))


@pytest.mark.parametrize("max_nnz, vals, vals_large_n", [(0, 1024, 1024), (1, 1024, 1024), (512, 1024, 1024),
                                                         (513, 2048, 2048), (1100, 3072, 4096), (2176, 5120, 8192),
                                                         (4096, 8192, 8192)])
def test_plan_kernel_vals_bytes(max_nnz, vals, vals_large_n):
    """The largest sparse tile's values in 16-byte chunks, rounded up to 1 KB at token tiles up to
    REGISTER_BOUND_BLOCK_N and to a power of two above; the whole tile with DENSE tiles."""
    assert plan_kernel_vals_bytes((64, 64), False, max_nnz) == vals
    assert plan_kernel_vals_bytes((64, 64), False, max_nnz, REGISTER_BOUND_BLOCK_N) == vals
    for block_n in (2 * REGISTER_BOUND_BLOCK_N, MAX_BLOCK_N):
        assert plan_kernel_vals_bytes((64, 64), False, max_nnz, block_n) == vals_large_n
        assert plan_kernel_vals_bytes((64, 64), True, max_nnz, block_n) == 8192
    assert plan_kernel_vals_bytes((64, 64), True, max_nnz) == 8192


@pytest.mark.parametrize("block_n", [16, 32, 64])
@pytest.mark.parametrize("vals", [1024, 3072, 5120, 8192])
def test_plan_kernel_stages_fit_the_blocks_per_unit(block_n, vals):
    """The default depth where the spec's blocks per unit fit with it; else, in the builds bounded in
    registers, the most stages that fit them; else the default depth, and the planner counts fewer
    resident programs."""
    spec = H100
    fewest = PLAN_KERNEL_MIN_STAGES if block_n <= REGISTER_BOUND_BLOCK_N else PLAN_KERNEL_STAGES
    fit = [s for s in range(fewest, PLAN_KERNEL_STAGES + 1)
           if spec.programs_per_unit * (plan_kernel_smem((64, 64), block_n, vals, s) + PLAN_KERNEL_SMEM_EXTRA)
           <= spec.smem_per_unit]
    stages = plan_kernel_stages((64, 64), block_n, vals, spec.programs_per_unit, spec.smem_per_unit)
    assert stages == (max(fit) if fit else PLAN_KERNEL_STAGES)
    assert plan_kernel_smem((64, 64), block_n, vals) == plan_kernel_smem((64, 64), block_n, vals, stages)
    per_unit = spec.resident_programs((64, 64), block_n, vals) // spec.n_units
    assert (per_unit == spec.programs_per_unit) == bool(fit)


def test_plan_kernel_stages_h100_cases():
    """A 50% BITMAP weight's 5 KB of values at 16 tokens: 3 stages fit 6 blocks (4 fit 5); 90%: 4
    stages; 64-token tiles keep 4 stages (their registers hold 4 blocks)."""
    assert plan_kernel_stages((64, 64), 16, 5120) == 3
    assert plan_kernel_stages((64, 64), 16, 2048) == 4
    assert plan_kernel_stages((64, 64), 64, 3072) == 4
    assert H100.resident_programs((64, 64), 16, 5120) == 6 * H100.n_units


# ---------------------------------------------------------------------------- tables
def random_table(rng, kind=TileKind.BITMAP, tile_shape=(64, 64), density=(0.0, 0.25, 0.5, 1.0), n_tokens=(1, 16, 128)):
    us = torch.rand(len(n_tokens), len(density), generator=rng, dtype=torch.float64).numpy() * 10
    return TileTable(kind, tile_shape, np.array(density, dtype=float), np.array(n_tokens, dtype=float), us)


def test_table_exact_at_grid_points(rng):
    t = random_table(rng)
    for i, n in enumerate(t.n_tokens):
        for j, d in enumerate(t.density):
            assert t.predict(d, int(n)) == pytest.approx(t.us[i, j], rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(t.predict(t.density, int(n)), t.us[i], rtol=1e-12)


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_table_linear_between_grid_points(frac, rng):
    t = random_table(rng)
    # in density, at a measured token count
    for i, n in enumerate(t.n_tokens):
        for j in range(t.density.size - 1):
            d = (1 - frac) * t.density[j] + frac * t.density[j + 1]
            assert t.predict(d, int(n)) == pytest.approx((1 - frac) * t.us[i, j] + frac * t.us[i, j + 1], rel=1e-12)
    # in log2(n_tokens), at a measured density: 4 lies half-way from 1 to 16
    for j, d in enumerate(t.density):
        assert t.predict(d, 4) == pytest.approx(0.5 * t.us[0, j] + 0.5 * t.us[1, j], rel=1e-12)
    # both at once: bilinear
    d = (1 - frac) * t.density[1] + frac * t.density[2]
    row = lambda i: (1 - frac) * t.us[i, 1] + frac * t.us[i, 2]  # noqa: E731
    w = (math.log2(45) - 4) / 3
    assert t.predict(d, 45) == pytest.approx((1 - w) * row(1) + w * row(2), rel=1e-12)


def test_table_clamped_outside(rng):
    t = random_table(rng, density=(0.2, 0.6), n_tokens=(4, 64))
    assert t.predict(0.0, 4) == pytest.approx(t.us[0, 0]) and t.predict(1.0, 4) == pytest.approx(t.us[0, 1])
    assert t.predict(0.2, 1) == pytest.approx(t.us[0, 0]) and t.predict(0.2, 2) == pytest.approx(t.us[0, 0])
    assert t.predict(0.6, 10**6) == pytest.approx(t.us[1, 1]) and t.predict(0.0, 10**6) == pytest.approx(t.us[1, 0])


def test_table_single_point(rng):
    t = random_table(rng, density=(0.5,), n_tokens=(16,))
    for d in (0.0, 0.5, 1.0):
        for n in (1, 16, 4096):
            assert t.predict(d, n) == pytest.approx(t.us[0, 0])


def _table_kwargs(**over):
    kw = dict(kind=TileKind.BITMAP, tile_shape=(64, 64), density=np.array([0.0, 0.5, 1.0]),
              n_tokens=np.array([1.0, 16.0]), us=np.ones((2, 3)))
    kw.update(over)
    return kw


TABLE_ERRORS = {
    "us_shape": (dict(us=np.ones((3, 2))), r"expected us of shape \(len\(n_tokens\), len\(density\)\) = \(2, 3\), got \(3, 2\)"),
    "us_1d": (dict(us=np.ones(6)), r"expected us of shape .* got \(6,\)"),
    "density_2d": (dict(density=np.ones((1, 3))), "expected us of shape"),
    "density_not_increasing": (dict(density=np.array([0.0, 0.5, 0.5])), "expected strictly increasing density and n_tokens"),
    "n_tokens_decreasing": (dict(n_tokens=np.array([16.0, 1.0])), "expected strictly increasing density and n_tokens"),
    "us_nan": (dict(us=np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]])), "expected finite non-negative times"),
    "us_inf": (dict(us=np.full((2, 3), np.inf)), "expected finite non-negative times"),
    "us_negative": (dict(us=-np.ones((2, 3))), "expected finite non-negative times"),
    "n_tokens_zero": (dict(n_tokens=np.array([0.0, 16.0])), "expected density in \\[0, 1\\] and n_tokens >= 1"),
    "density_above_one": (dict(density=np.array([0.0, 0.5, 1.5])), "expected density in \\[0, 1\\] and n_tokens >= 1"),
    "density_negative": (dict(density=np.array([-0.1, 0.5, 1.0])), "expected density in \\[0, 1\\]"),
    "empty_grid": (dict(density=np.zeros(0), us=np.ones((2, 0))), "expected at least one density and one token count"),
    "tile_shape": (dict(tile_shape=(64, 48)), r"expected powers of two >= 16, got \(64, 48\)"),
}


@pytest.mark.parametrize("case", list(TABLE_ERRORS))
def test_table_validation(case):
    over, match = TABLE_ERRORS[case]
    with pytest.raises(ValueError, match=match):
        TileTable(**_table_kwargs(**over))


def test_table_accepts_plain_kind_and_list_tile_shape():
    """A table given as (int kind, [rows, cols]) must still be found by predict()."""
    t = TileTable(**_table_kwargs(kind=int(TileKind.BITMAP), tile_shape=[64, 64], us=np.full((2, 3), 7.0)))
    assert t.kind is TileKind.BITMAP and t.tile_shape == (64, 64)
    assert CostModel(tables=(t,)).predict(TileKind.BITMAP, (64, 64), 0.3, 8) == 7.0


@pytest.mark.parametrize("kind", [TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX], ids=kind_id)
@pytest.mark.parametrize("tile_shape", [(32, 64), (64, 64)], ids=str)
def test_tables_override_only_their_kind_and_shape(kind, tile_shape, rng):
    table = random_table(rng, kind=kind, tile_shape=tile_shape)
    measured = CostModel(tables=(table,), provenance={"device": "test"})
    roofline = default_cost_model()
    for k in TileKind:
        for shape in TILE_SHAPES:
            for n in (1, 16, 100, 2048):
                got = measured.predict(k, shape, DENSITY, n)
                want = table.predict(DENSITY, n) if (k, shape) == (kind, tile_shape) else roofline.predict(k, shape, DENSITY, n)
                np.testing.assert_array_equal(got, want, err_msg=f"{k.name} {shape} n={n}")


# ---------------------------------------------------------------------------- files
def measured_model(rng):
    tables = (random_table(rng, TileKind.BITMAP, (64, 64)), random_table(rng, TileKind.DENSE, (64, 64), density=(0.0, 1.0)),
              random_table(rng, TileKind.INDEX, (32, 64), n_tokens=(1, 2, 4, 8)))
    spec = GPUSpec(name="test GPU", n_units=7, programs_per_unit=2, bandwidth=1.0e12)
    provenance = {"device": "NVIDIA H100 80GB HBM3", "driver": "570.00", "torch": "2.13.0", "triton": "3.6.0",
                  "created": "2025-01-01T00:00:00+00:00"}
    return CostModel(spec, tables, provenance, item_us_by_tokens=((1, 3.5), (64, 9.0), (2048, 20.0)))


def assert_same_model(a: CostModel, b: CostModel):
    assert a.spec == b.spec and a.provenance == b.provenance and len(a.tables) == len(b.tables)
    assert a.item_us_by_tokens == b.item_us_by_tokens
    for s, t in zip(a.tables, b.tables):
        assert (s.kind, s.tile_shape) == (t.kind, t.tile_shape)
        for name in ("density", "n_tokens", "us"):
            np.testing.assert_array_equal(getattr(s, name), getattr(t, name))


@pytest.mark.parametrize("which", ["roofline", "measured"])
def test_save_load_round_trip(which, tmp_path, rng):
    cm = default_cost_model() if which == "roofline" else measured_model(rng)
    path = cm.save(tmp_path / "sub" / "model.json")
    loaded = CostModel.load(path)
    assert_same_model(cm, loaded)
    assert loaded.source == cm.source
    if which == "measured":
        assert loaded.source == "measured on NVIDIA H100 80GB HBM3 (2025-01-01T00:00:00+00:00)"
        assert loaded.n_programs == 14
    else:
        assert loaded.source == "roofline (H100-SXM (defaults))"
    for kind in TileKind:
        for shape in ((64, 64), (32, 64)):
            for n in (1, 5, 128, 4096):
                np.testing.assert_array_equal(loaded.predict(kind, shape, DENSITY, n), cm.predict(kind, shape, DENSITY, n))
    assert [loaded.item_latency(n) for n in (1, 8, 64, 9000)] == [cm.item_latency(n) for n in (1, 8, 64, 9000)]
    assert json.loads(path.read_text())["format"] == TABLE_FORMAT


def test_item_latency(rng):
    """The measured per-item latency: linear in log2 N between measured token counts, clamped at the
    ends; without a measurement, the spec's item_us at every N. Bad tables are refused."""
    cm = measured_model(rng)
    assert cm.item_latency(1) == 3.5 and cm.item_latency(64) == 9.0 and cm.item_latency(2048) == 20.0
    assert cm.item_latency(8) == pytest.approx(3.5 + 0.5 * (9.0 - 3.5))  # log2 8 = 3, halfway from 0 to 6
    assert cm.item_latency(1 << 20) == 20.0
    assert CostModel(GPUSpec(item_us=1.25)).item_latency(777) == 1.25
    for bad in (((64, 1.0), (1, 2.0)), ((0, 1.0),), ((1, -1.0),), ((1, float("nan")),)):
        with pytest.raises(ValueError, match="item_us_by_tokens"):
            CostModel(item_us_by_tokens=bad)


def _write(path, text):
    path.write_text(text)
    return path


BAD_FILES = {
    "truncated": (lambda good: good[: len(good) // 2], "expected JSON, got a parse error"),
    "not_json": (lambda good: "cost model\n", "expected JSON, got a parse error"),
    "byte_flip": (lambda good: good.replace("{", "[", 1), "expected JSON, got a parse error"),
    "other_format": (lambda good: good.replace(TABLE_FORMAT, "cross.costmodel/2"), "expected format 'cross.costmodel/1', got 'cross.costmodel/2'"),
    "no_format": (lambda good: json.dumps({k: v for k, v in json.loads(good).items() if k != "format"}), "expected format 'cross.costmodel/1', got None"),
    "a_list": (lambda good: "[1, 2]", "expected format 'cross.costmodel/1', got 'list'"),
    "a_plan": (lambda good: json.dumps({"format": "cross.plan/1"}), "got 'cross.plan/1'"),
    "unknown_spec_field": (lambda good: good.replace('"n_units"', '"n_sms"'), r"cost model spec: unexpected fields \['n_sms'\]"),
    "unknown_kind": (lambda good: good.replace('"BITMAP"', '"SPARSE"'), "expected kind in .*got 'SPARSE'"),
    "bad_table": (lambda good: good.replace('"n_tokens": [', '"n_tokens": [0.0, ', 1), "expected us of shape"),
    "bad_item_table": (lambda good: good.replace('"item_us_by_tokens": [', '"item_us_by_tokens": [[4096, 1.0], ', 1), "item_us_by_tokens"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_rejected(case, tmp_path, rng):
    good = measured_model(rng).save(tmp_path / "good.json").read_text()
    damage, match = BAD_FILES[case]
    with pytest.raises(ValueError, match=match):
        CostModel.load(_write(tmp_path / "bad.json", damage(good)))


def test_composition_scale_makes_the_planner_reproduce_a_measurement():
    """cross profile scales each kind's tile costs per N so that the planner's prediction for the
    measured weight equals the measured time above the fixed cost."""
    from cross.costmodel.profile import _composition_scale
    from cross.partition import make_plan

    model = CostModel(spec=H100)
    rng = np.random.default_rng(0)
    nnz = rng.integers(300, 1500, size=(8, 6))
    shape, n_tokens = (512, 384), (1, 16, 128)
    predicted = np.array([make_plan(nnz=nnz, shape=shape, dtype="bfloat16", cost_model=model, allowed_kinds=(TileKind.BITMAP,),
                                    buckets=((1, n),), n_programs=20, row_kernel=False).buckets[0].predicted_us
                          - model.spec.launch_us
                          for n in n_tokens])
    measured = predicted * np.array([0.5, 1.0, 3.0])
    scale = _composition_scale(model, nnz, shape, TileKind.BITMAP, (64, 64), n_tokens, measured, 20)
    np.testing.assert_allclose(scale, [0.5, 1.0, 3.0], rtol=1e-9)


def test_timing_rejects_an_unknown_flush():
    from cross.costmodel.profile import replay_time_us

    with pytest.raises(ValueError, match=r"flush: expected one of \('read', 'write'\), got 'none'"):
        replay_time_us(lambda: None, flush="none")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("flush", ["read", "write"])
def test_graph_timing_grows_with_the_bytes_moved(flush):
    """A copy of 256 MB takes longer than one of 1 MB under either flush, and both are positive."""
    from cross.costmodel.profile import graph_time_us

    big, small = (torch.empty(n, dtype=torch.uint8, device="cuda") for n in (256 << 20, 1 << 20))
    big_dst, small_dst = torch.empty_like(big), torch.empty_like(small)
    t_big = graph_time_us(lambda: big_dst.copy_(big), flush=flush)
    t_small = graph_time_us(lambda: small_dst.copy_(small), flush=flush)
    assert 0 < t_small < t_big
    assert t_big > 2 * (256 << 20) / 5e12 * 1e6  # a read plus a write of 256 MB no faster than 5 TB/s (H200: 4.8 peak)
