"""The measured check of a plan's buckets: the recorded decision follows the times, survives a
save, and on a GPU takes back a plan that the cost model wrongly predicted to win."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import cross
from cross import SparseLinear
from cross.costmodel import CostModel, GPUSpec
from cross.pack import pack
from cross.partition import Plan, make_plan
from cross.runtime import measure_plan

from weights import random_weight

#: Dense launches cost 1 ms: the plan is predicted to win every bucket.
WINNING = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0))


@pytest.fixture
def plan(rng):
    return make_plan(random_weight((130, 200), 0.3, rng), cost_model=WINNING)


@pytest.mark.parametrize("plan_us, dense_us, fallback", [(10.0, 20.0, False), (20.0, 10.0, True),
                                                         (10.0, 10.2, True), (10.0, 10.4, False)])
def test_measurement_decides(plan, plan_us, dense_us, fallback):
    b = plan.buckets[0].with_measurement(plan_us, dense_us, margin=0.03)
    assert (b.fallback, b.measured_us, b.measured_dense_us) == (fallback, plan_us, dense_us)
    assert b.reason.startswith("measured") == fallback
    assert (b.predicted_us, b.dense_us) == (plan.buckets[0].predicted_us, plan.buckets[0].dense_us)


def test_measured_times_come_in_pairs(plan):
    b = plan.buckets[0]
    for bad in ({"measured_us": 3.0}, {"measured_dense_us": 3.0}, {"measured_us": float("nan"), "measured_dense_us": 1.0},
                {"measured_us": -1.0, "measured_dense_us": 1.0}):
        with pytest.raises(ValueError, match="measured times"):
            replace(b, **bad)


def test_alternatives_are_kernels_other_than_the_buckets(plan):
    b = plan.buckets[0]
    assert b.alternatives == () and replace(b, alternatives=["rows"]).alternatives == ("rows",)
    for bad in (("tiles",), ("rows", "rows"), ("cusparse",)):
        with pytest.raises(ValueError, match="expected alternatives among"):
            replace(b, alternatives=bad)
    with pytest.raises(TypeError, match="expected alternatives as a sequence"):
        replace(b, alternatives="rows")
    with pytest.raises(ValueError, match="no alternatives in a measured bucket"):
        replace(b.with_measurement(5.0, 8.0, 0.03), alternatives=("rows",))
    # the measurement keeps one kernel, names the others' times, and empties the alternatives
    timed = replace(b, alternatives=("rows",)).with_measurement(5.0, 8.0, 0.03, kernel="rows", others={"tiles": 6.0})
    assert (timed.kernel, timed.alternatives, timed.fallback) == ("rows", (), False)
    assert timed.reason == "the row kernel, fastest of those timed (5.0 us; tile 6.0 us)"


def test_measured_plan_round_trips(plan, tmp_path):
    measured = plan.with_buckets([b.with_measurement(5.0 + i, 8.0, 0.03) for i, b in enumerate(plan.buckets)],
                                 measured={"device": "test"})
    loaded = Plan.load(measured.save(tmp_path / "plan.safetensors"))
    assert [(b.fallback, b.measured_us, b.measured_dense_us, b.reason) for b in loaded.buckets] == \
        [(b.fallback, b.measured_us, b.measured_dense_us, b.reason) for b in measured.buckets]
    assert loaded.provenance["measured"] == {"device": "test"}
    assert [b.fallback for b in loaded.buckets] == [5.0 + i >= 8.0 / 1.03 for i in range(len(plan.buckets))]
    assert "measured 5.0 us vs dense 8.0 us" in loaded.summary()


def test_with_buckets_keeps_the_work_lists(plan, rng):
    other = make_plan(random_weight((130, 200), 0.3, rng), cost_model=WINNING, n_programs=3)
    with pytest.raises(ValueError, match="other work lists"):
        plan.with_buckets(other.buckets)
    with pytest.raises(ValueError, match="other work lists"):
        plan.with_buckets(plan.buckets[:-1])


def test_packed_weight_takes_the_new_decisions(rng):
    w = random_weight((130, 200), 0.3, rng)
    packed = pack(w, make_plan(w, cost_model=WINNING))
    flipped = packed.plan.with_buckets([replace(b, fallback=True) for b in packed.plan.buckets])
    moved = packed.with_plan(flipped)
    assert moved.plan is flipped and all(pb.plan.fallback for pb in moved.buckets)
    assert moved.tiles is packed.tiles and all(a.items is b.items for a, b in zip(moved.buckets, packed.buckets))
    with pytest.raises(ValueError, match="another layout"):
        packed.with_plan(make_plan(random_weight((130, 264), 0.3, rng), cost_model=WINNING))


def test_measuring_needs_a_gpu(rng):
    w = random_weight((64, 64), 0.5, rng)
    linear = nn.Linear(64, 64)
    with torch.no_grad():
        linear.weight.copy_(w)
    with pytest.raises(ValueError, match="measure"):
        SparseLinear.from_dense(linear, measure="yes")
    with pytest.raises(ValueError, match="measure"):
        cross.sparsify_(nn.Sequential(linear), measure=2, progress=False)
    if torch.cuda.is_available():
        return
    with pytest.raises(ValueError, match="measure=True: expected a weight on a CUDA device"):
        SparseLinear.from_dense(linear, measure=True)
    with pytest.raises(ValueError, match="expected a packed weight on a CUDA device"):
        measure_plan(pack(w, make_plan(w)), w)
    # 'auto' on the CPU: the cost model's choice stands, nothing is timed
    sparse = SparseLinear.from_dense(linear, cost_model=WINNING)
    assert not any(b.measured for b in sparse.plan.buckets) and "measured" not in sparse.plan.provenance


def _gpu_linear(m, k, density, rng):
    linear = nn.Linear(k, m, bias=True, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(random_weight((m, k), density, rng, torch.bfloat16))
    return linear.cuda()


@pytest.mark.gpu
def test_gpu_decisions_follow_the_times_and_every_bucket_computes_the_product(rng):
    """A half-dense weight predicted to win everywhere: every bucket is timed on the GPU, each keeps
    its plan exactly where the plan measured the margin faster than cuBLAS (and says 'measured' where
    it falls back), and the layer computes the product in every bucket, fallen back or not. Which
    buckets win is the GPU's business (the benchmarks report it): on the H100 the plan kernel ran the
    2048-token bucket ~17x slower than cuBLAS, and the fake-clock tests above cover both ways."""
    linear = _gpu_linear(2048, 2048, 0.5, rng)
    sparse = SparseLinear.from_dense(linear, cost_model=WINNING, measure=True)
    buckets = sparse.plan.buckets
    assert all(b.measured for b in buckets), "every bucket was predicted to win: each must be timed"
    for b in buckets:
        assert b.measured_us > 0 and b.measured_dense_us > 0
        assert b.fallback == (b.measured_us * 1.03 >= b.measured_dense_us)
        assert not b.fallback or b.reason.startswith("measured")
    assert (sparse.dense_weight is not None) == any(b.fallback for b in buckets)  # kept for the fallbacks
    assert sparse.plan.provenance["measured"]["flush"] == "read"
    for n in (1, 17, 70, 130, 600, 2048):
        x = torch.randn(n, 2048, generator=rng).to(torch.bfloat16).cuda()
        with torch.no_grad():
            y = sparse(x).double()
        ref = x.double() @ linear.weight.detach().double().T + linear.bias.detach().double()
        assert float((y - ref).norm() / ref.norm()) < 2e-2, n


@pytest.mark.gpu
def test_gpu_measured_bucket_records_its_times(rng):
    """98% sparse 11008x4096 with a one-token bucket: the bucket is timed, its decision follows the
    times, the dense time is kept per shape for the other layers, and the layer computes the product
    (on the H100 and H200 the plan ran this bucket 1.34-1.37x faster than cuBLAS: kept)."""
    linear = _gpu_linear(11008, 4096, 0.02, rng)
    dense_times: dict = {}
    sparse = SparseLinear.from_dense(linear, cost_model=WINNING, measure=True, dense_times=dense_times,
                                     buckets=((1, 1), (2, 2048)))
    first = sparse.plan.buckets[0]
    assert first.measured and first.fallback == (first.measured_us * 1.03 >= first.measured_dense_us)
    key = (11008, 4096, 1, str(torch.bfloat16), str(linear.weight.device))
    assert dense_times[key] == first.measured_dense_us
    x = torch.randn(1, 4096, generator=rng).to(torch.bfloat16).cuda()
    with torch.no_grad():
        y = sparse(x).double()
    ref = x.double() @ linear.weight.detach().double().T + linear.bias.detach().double()
    assert float((y - ref).norm() / ref.norm()) < 2e-2


@pytest.mark.gpu
def test_gpu_sparsify_swaps_the_layers_the_gpu_measured_a_win_for(rng):
    """sparsify_ on the GPU: a layer is swapped exactly where its bucket measured the margin faster
    than cuBLAS (one bucket at 2048 tokens: half-dense, the plan lost there by far on the H100), the
    dense product timed once per shape, and the model computes what it did."""
    from cross.nn.sparsify import SPARSE

    model = nn.Sequential(_gpu_linear(1024, 1024, 0.5, rng), nn.ReLU(), _gpu_linear(1024, 1024, 0.5, rng))
    x = torch.randn(64, 1024, generator=rng).to(torch.bfloat16).cuda()
    with torch.no_grad():
        want = model(x).double()
    report = cross.sparsify_(model, cost_model=WINNING, progress=False, buckets=((1, 2048),))
    for name in ("0", "2"):
        facts = report.layers[name].summary["buckets"][0]
        won = facts["measured_us"] * 1.03 < facts["measured_dense_us"]
        assert (report.layers[name].action == SPARSE) == won
        assert isinstance(model[int(name)], SparseLinear) == won
    assert np.isclose(report.layers["0"].summary["buckets"][0]["measured_dense_us"],
                      report.layers["2"].summary["buckets"][0]["measured_dense_us"])  # timed once per shape
    with torch.no_grad():
        got = model(x).double()
    assert float((got - want).norm() / want.norm()) < 2e-2


def test_report_shows_the_measured_speedup(rng):
    """A layer whose plan carries GPU timings (as sparsify_ records them on a GPU) gets a 'measured'
    column in the report: dense over plan at the first bucket; layers without timings show '-'."""
    from cross.nn.linear import bucket_facts, plan_facts
    from cross.nn.sparsify import NO_WIN, SPARSE, LayerReport, SparsifyReport

    linear = nn.Linear(200, 130)
    with torch.no_grad():
        linear.weight.copy_(random_weight((130, 200), 0.3, rng))
    plan = make_plan(linear.weight.detach(), cost_model=WINNING)
    timed = plan.with_buckets([b.with_measurement(8.0, 10.0, 0.03) for b in plan.buckets])
    sparse = SparseLinear.from_dense(linear, plan=timed)
    untimed = {"shape": (130, 200), "sparsity": 0.7, "nbytes": 104000, "dense_nbytes": 104000,
               **plan_facts(plan), "buckets": bucket_facts(plan, dense_kept=True)}
    report = SparsifyReport({"a": LayerReport("a", SPARSE, sparse.summary()), "b": LayerReport("b", NO_WIN, untimed)})
    header, *lines = report.table().splitlines()
    assert "measured N1 " in header
    assert lines[1].split()[5] == "1.25" and lines[2].split()[5] == "-"
    assert "| measured N1 |" in report.to_markdown()
    plain = SparsifyReport({"b": LayerReport("b", NO_WIN, untimed)})
    assert "measured" not in plain.table().splitlines()[0]
    assert plain.measured_check() == "no layer timed"
    slow = plan.with_buckets([b.with_measurement(12.0, 10.0, 0.03) for b in plan.buckets])
    lost = {**untimed, "buckets": bucket_facts(slow, dense_kept=True)}
    both = SparsifyReport({"a": LayerReport("a", SPARSE, sparse.summary()), "b": LayerReport("b", NO_WIN, lost)})
    assert both.measured_check().startswith("N1: 130x200 1 of 2 kept (tile), measured 0.83-1.25x | ")
    # every later bucket timed: layer a's plan runs there, b's does not
    assert both.measured_check().count("130x200 1 of 2 taken (tile), measured 0.83-1.25x") == len(plan.buckets) - 1


def test_measured_check_names_a_near_win_taken(rng):
    """A later bucket timed as a near win and taken is reported after the first bucket."""
    from cross.nn.linear import bucket_facts, plan_facts
    from cross.nn.sparsify import SPARSE, LayerReport, SparsifyReport

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    plan = make_plan(w, cost_model=WINNING, buckets=((1, 1), (2, 64)))
    near = replace(plan.buckets[1], fallback=True, kernel="rows", predicted_us=plan.buckets[1].dense_us * 1.02,
                   alternatives=())
    timed = plan.with_buckets([plan.buckets[0].with_measurement(8.0, 10.0, 0.03), near.with_measurement(9.0, 10.0, 0.03)])
    facts = {"shape": (256, 256), "sparsity": 0.7, "nbytes": 1, "dense_nbytes": 2, **plan_facts(timed),
             "buckets": bucket_facts(timed, dense_kept=True)}
    report = SparsifyReport({"a": LayerReport("a", SPARSE, facts)})
    assert report.measured_check() == ("N1: 256x256 1 of 1 kept (tile), measured 1.25-1.25x | "
                                       "N2-64: 256x256 1 of 1 taken (row), measured 1.11-1.11x")


def test_measured_check_counts_the_kernels_that_run():
    """Where the layers of a shape run different kernels in a bucket, the check counts each (most
    first); layers whose plan does not run there are not counted; a bucket no layer runs names none."""
    from cross.nn.sparsify import NO_WIN, SPARSE, LayerReport, SparsifyReport

    def facts(kernel, fallback=False):
        bucket = {"n_min": 1, "n_max": 1, "measured_us": 8.0, "measured_dense_us": 10.0, "runs": "plan",
                  "kernel": kernel, "fallback": fallback}
        later = {**bucket, "n_min": 2, "n_max": 16}
        return {"shape": (64, 128), "buckets": [bucket, later]}

    layers = {"a": LayerReport("a", SPARSE, facts("rows")), "b": LayerReport("b", SPARSE, facts("wgmma24")),
              "c": LayerReport("c", SPARSE, facts("wgmma24")), "d": LayerReport("d", NO_WIN, facts("rows"))}
    check = SparsifyReport(layers).measured_check()
    assert check.startswith("N1: 64x128 3 of 4 kept (warpgroup 2:4 2, row 1), measured 1.25-1.25x | ")
    assert "N2-16: 64x128 3 of 4 taken (warpgroup 2:4 2, row 1)" in check
    none = SparsifyReport({"d": LayerReport("d", NO_WIN, facts("rows"))}).measured_check()
    assert none == "N1: 64x128 0 of 1 kept, measured 1.25-1.25x | N2-16: 64x128 0 of 1 taken, measured 1.25-1.25x"
    # the 2:4 kernel's layout, where the layer names it (with 'auto', the one the check kept)
    laid = {name: LayerReport(name, SPARSE, {**facts("wgmma24"), "wgmma_layout": layout})
            for name, layout in (("a", "compressed"), ("b", "compressed"), ("c", "slots"), ("d", "auto"))}
    assert SparsifyReport(laid).measured_check().startswith(
        "N1: 64x128 4 of 4 kept (warpgroup 2:4 compressed 2, warpgroup 2:4 1, warpgroup 2:4 slots 1)")


def test_measured_times_summed_per_bucket():
    """The timed layers' times summed per bucket: a plan that runs counts its time, a bucket that
    falls back (or a layer left dense) counts cuBLAS's on both sides, an untimed bucket counts
    nothing but is among the layers; a bucket no layer timed is left out."""
    from cross.nn.sparsify import NO_WIN, SPARSE, LayerReport, SparsifyReport

    def facts(plan_us, dense_us, fallback=False, runs="plan"):
        timed = {"n_min": 1, "n_max": 1, "measured_us": plan_us, "measured_dense_us": dense_us, "runs": runs,
                 "kernel": "rows", "fallback": fallback}
        untimed = {**timed, "n_min": 2, "n_max": 16, "measured_us": None, "measured_dense_us": None}
        return {"shape": (64, 128), "buckets": [timed, untimed]}

    layers = {"a": LayerReport("a", SPARSE, facts(8.0, 10.0)),
              "b": LayerReport("b", SPARSE, facts(12.0, 11.0, fallback=True, runs="dense")),
              "c": LayerReport("c", NO_WIN, facts(9.0, 20.0)),
              "d": LayerReport("d", SPARSE, facts(30.0, 25.0, fallback=True))}  # no dense copy: the plan runs
    assert SparsifyReport(layers).measured_by_bucket() == {
        (1, 1): {"dense_us": 66.0, "run_us": 8.0 + 11.0 + 20.0 + 30.0, "timed": 4, "layers": 4}}
    assert SparsifyReport({"c": LayerReport("c", NO_WIN, facts(None, None))}).measured_by_bucket() == {}
    # per shape at a token count: medians of what the same layers count, only of the bucket holding it
    assert SparsifyReport(layers).measured_by_shape(1) == {(64, 128): {"dense_us": 15.5, "run_us": 15.5, "timed": 4}}
    assert SparsifyReport(layers).measured_by_shape(5) == {}  # that bucket was not timed


def test_measuring_times_only_predicted_wins_and_each_dense_shape_once(rng, monkeypatch):
    """The timing loop with a fake clock (the GPU timer replaced; the kernel path runs on the
    interpreter): buckets predicted to fall back are not timed, each timed bucket runs its plan
    once, the dense time of a shape is taken twice around the first plan of the shape and then
    reused, and the decision uses the margin."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    mixed = CostModel(spec=GPUSpec(name="small batches win", dense_launch_us=20.0))
    w = random_weight((256, 256), 0.1, rng)
    packed = pack(w, make_plan(w, cost_model=mixed, buckets=((1, 16), (17, 64), (65, 2048))))
    predicted_wins = [not b.fallback for b in packed.plan.buckets]
    assert any(predicted_wins) and not all(predicted_wins)
    calls = []

    def fake_time(fn, warmup_ms, rep_ms):
        y = fn()
        is_plan = "execute" in fn.__code__.co_names  # the plan's closure calls execute, the dense one F.linear
        calls.append(("plan" if is_plan else "dense", tuple(y.shape)))
        return (30.0 if is_plan else 10.0), "graph"

    monkeypatch.setattr(profile, "call_time_us", fake_time)
    cache: dict = {}
    buckets, how, _ = measure_mod._measure_buckets(packed, w, 0.03, cache, seed=0)
    timed = [b.measured for b in buckets]
    assert timed == predicted_wins and how == {"graph"}
    assert all(b.fallback and b.reason.startswith("measured 30.0 us") for b, t in zip(buckets, timed) if t)
    # dense first (a process's first timings can read fast: a fast dense time errs safe), the plan
    # twice, dense again
    assert len(cache) == sum(timed) and [c[0] for c in calls] == ["dense", "plan", "plan", "dense"] * sum(timed)
    n_design = [b.n_design for b in packed.plan.buckets if not b.fallback]
    assert [c[1] for c in calls[1::4]] == [(n, 256) for n in n_design]  # each at its bucket's design count
    calls.clear()
    again, _, _ = measure_mod._measure_buckets(packed, w, 0.03, cache, seed=0)
    assert [c[0] for c in calls] == ["plan", "plan"] * sum(timed)  # a second weight of this shape: its plans only
    assert [b.measured_dense_us for b in again] == [b.measured_dense_us for b in buckets]


def test_a_dense_time_that_reads_slow_once_does_not_judge_the_shape(rng, monkeypatch):
    """The dense time cached for a shape is the faster of its two timings: a first reading 3x slow
    (as one cuBLAS timing read in a model build on the H100) must not make a plan that loses look
    like a win, for this layer or for the next layer of the same shape."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.1, rng)
    packed = pack(w, make_plan(w, cost_model=WINNING, buckets=((1, 16),)))
    dense_readings = iter([30.0, 10.0])

    def fake_time(fn, warmup_ms, rep_ms):
        fn()
        return (12.0 if "execute" in fn.__code__.co_names else next(dense_readings)), "graph"

    monkeypatch.setattr(profile, "call_time_us", fake_time)
    cache: dict = {}
    buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, cache, seed=0)
    assert list(cache.values()) == [10.0]
    assert buckets[0].measured_dense_us == 10.0 and buckets[0].fallback  # 12 us against 10: cuBLAS stays
    again, _, _ = measure_mod._measure_buckets(packed, w, 0.03, cache, seed=0)  # no dense reading left: cached
    assert again[0].measured_dense_us == 10.0 and again[0].fallback


@pytest.mark.parametrize("row_vs_dense, expect", [(0.99, ("tiles", ("rows",))), (1.2, ("tiles", ())),
                                                   (1e-3, ("rows", ()))])
def test_the_row_kernel_is_timed_beside_the_tile_kernel_it_nearly_matches(rng, monkeypatch, row_vs_dense, expect):
    """A bucket the prediction gives the tile kernel, where the row kernel wins or nearly wins but is
    predicted slower than the tiles, has the row kernel as its alternative (the measured check
    times both); a row kernel predicted far slower than dense is not; one predicted fastest runs."""
    from cross.costmodel.roofline import ROW_MAX_TOKENS

    monkeypatch.setattr(CostModel, "row_us", lambda self, rows, cols, entries, n: self.dense_us(rows, cols, n) * row_vs_dense)
    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    plan = make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 16), (17, 64)))
    small, large = plan.buckets[:2], plan.buckets[2]
    assert all(not b.fallback and (b.kernel, b.alternatives) == expect for b in small)
    assert large.n_min > ROW_MAX_TOKENS and (large.kernel, large.alternatives) == ("tiles", ())


@pytest.mark.parametrize("row_vs_tiles, alternatives", [(0.95, ("tiles",)), (0.5, ())])
def test_the_tile_kernel_is_timed_beside_the_row_kernel_close_ahead(rng, monkeypatch, row_vs_tiles, alternatives):
    """A bucket the row kernel runs has the tile kernel as its alternative where the tile kernel is
    predicted to win too and within ALT_MARGIN behind; not where it is far behind."""
    from cross.partition.planner import ALT_MARGIN

    assert 1 / 0.95 - 1 < ALT_MARGIN < 1 / 0.5 - 1
    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    buckets = ((1, 4), (5, 16))
    tiles = {b.n_design: b.predicted_us for b in make_plan(w, cost_model=WINNING, buckets=buckets, row_kernel=False).buckets}
    monkeypatch.setattr(CostModel, "row_us", lambda self, rows, cols, entries, n: tiles[n] * row_vs_tiles)
    plan = make_plan(w, cost_model=WINNING, buckets=buckets)
    assert all((b.kernel, b.fallback, b.alternatives) == ("rows", False, alternatives) for b in plan.buckets)


def _near_win_plan(plan: Plan) -> Plan:
    """``plan`` with its first bucket a near win (falls back, its row kernel predicted 2% slower
    than dense) and the others falling back on the tile kernel, none with alternatives."""
    first = replace(plan.buckets[0], fallback=True, kernel="rows", predicted_us=plan.buckets[0].dense_us * 1.02,
                    alternatives=())
    rest = [replace(b, fallback=True, alternatives=()) for b in plan.buckets[1:]]
    return plan.with_buckets([first, *rest])


def test_near_wins_are_timed_and_taken_where_they_measure_faster(rng, monkeypatch):
    """A bucket the row kernel nearly wins is timed (where a kernel runs it) and runs the row
    kernel if it measured the margin faster; other fallback buckets are not timed."""
    import cross.costmodel.profile as profile
    from cross.partition.planner import is_near_win
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)  # the row format holds 16-bit values
    plan = _near_win_plan(make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 64))))
    assert [is_near_win(b) for b in plan.buckets] == [True, False]
    packed = pack(w, plan)
    assert packed.rows is not None  # built for the check
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    timed = []

    def fake_time(fn, warmup_ms, rep_ms):
        is_plan = "execute" in fn.__code__.co_names
        timed.append("plan" if is_plan else "dense")
        return (9.0 if is_plan else 10.0), "graph"

    monkeypatch.setattr(profile, "call_time_us", fake_time)
    buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert timed == ["dense", "plan", "plan", "dense"]
    assert (buckets[0].measured, buckets[0].fallback, buckets[0].kernel) == (True, False, "rows")
    assert buckets[1] is plan.buckets[1]
    assert not is_near_win(buckets[0].with_measurement(12.0, 10.0, 0.03))  # measured: never timed again


def test_slice_candidates_are_timed_and_taken_where_they_measure_faster(rng, monkeypatch):
    """The slice kernel's candidates (no prediction) are timed like near wins: the one that measured
    the margin faster runs the slice kernel, the one that did not falls back, measured."""
    import cross.costmodel.profile as profile
    from cross.partition.planner import is_near_win
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.2, rng).to(torch.bfloat16)
    plan = make_plan(w, buckets=((1, 4), (5, 16), (17, 64)), row_kernel=False, slice_kernel=True)
    assert [(b.kernel, is_near_win(b)) for b in plan.buckets] == [("slices", True), ("slices", True), ("tiles", False)]
    packed = pack(w, plan)
    assert packed.slices is not None  # built for the check
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    plan_times = iter([9.0, 9.0, 11.0, 11.0])
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (
        next(plan_times) if "execute" in fn.__code__.co_names else 10.0, "graph"))
    buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert [(b.kernel, b.measured, b.fallback) for b in buckets[:2]] == [("slices", True, False), ("slices", True, True)]
    assert buckets[2].fallback == plan.buckets[2].fallback and not buckets[2].measured


def test_a_kernel_that_disagrees_with_dense_is_not_taken(rng, monkeypatch):
    """Before a bucket is timed its result is compared with the dense product's: a wrong one is not
    timed, the bucket falls back (whatever the prediction), and a PlanCheckWarning names the kernel."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.1, rng)
    packed = pack(w, make_plan(w, cost_model=WINNING, buckets=((1, 16), (17, 64))))
    assert not any(b.fallback for b in packed.plan.buckets)
    real = measure_mod.execute
    monkeypatch.setattr(measure_mod, "execute", lambda x, *a, **kw: real(x, *a, **kw) * (1.5 if x.shape[0] > 16 else 1))
    timed = []
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (
        timed.append(fn) or (4.0 if "execute" in fn.__code__.co_names else 5.0), "graph"))
    with pytest.warns(measure_mod.PlanCheckWarning, match="256x256 at 64 tokens: the tile kernel's result disagrees"):
        buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert (buckets[0].measured, buckets[0].fallback) == (True, False)  # right, and timed faster
    assert (buckets[1].measured, buckets[1].fallback) == (False, True) and "disagreed" in buckets[1].reason
    assert len(timed) == 4  # the first bucket's dense, plan, plan, dense; nothing of the second


def test_disagreement():
    from cross.runtime.measure import AGREE, disagreement

    y = torch.tensor([[1.0, -2.0, float("inf"), float("nan")]])
    assert disagreement(y, y.clone()) == 0.0  # Inf and NaN where the dense product has them
    assert disagreement(y.bfloat16(), y) < 1e-2
    off = y.clone()
    off[0, 0] = 1.5
    assert disagreement(off, y) > AGREE
    for bad in (float("nan"), float("inf"), 0.0):
        wrong = y.clone()
        wrong[0, 1] = bad
        assert disagreement(wrong, y) > AGREE, bad
    assert disagreement(torch.zeros(0, 3), torch.zeros(0, 3)) == 0.0


def test_a_layer_drops_the_row_format_no_bucket_runs(rng):
    """A near win the check did not take falls back: where the tile formats are held and no
    bucket runs the row kernel, the layer does not keep the row format."""
    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    base = make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 64)))
    plan = _near_win_plan(base).with_buckets([_near_win_plan(base).buckets[0],
                                              replace(base.buckets[1], fallback=False)])
    linear = nn.Linear(256, 256, bias=False, dtype=torch.bfloat16)
    linear.weight.data = w
    layer = SparseLinear.from_dense(linear, plan=plan, measure=False)
    assert layer.packed.tiled is not None and layer.packed.rows is None
    x = torch.randn(3, 256).to(torch.bfloat16)
    ref = (x.float() @ w.float().T).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=2e-2, atol=2e-2)
        # the near win's plan forced without its row format: the tiles run it
        from cross.runtime.dispatch import execute
        torch.testing.assert_close(execute(x, layer.packed, force_plan=True), ref, rtol=2e-2, atol=2e-2)
        forced = SparseLinear.from_dense(linear, plan=plan, measure=False, keep_dense=False)  # the near win runs
        assert forced.packed.rows is not None
        torch.testing.assert_close(forced(x), ref, rtol=2e-2, atol=2e-2)


def test_sparsify_measures_a_layer_whose_only_candidates_are_near_wins(rng):
    """sparsify_ passes over a layer predicted to win nowhere, unless the measured check will run
    and some bucket is a near win (it is timed rather than assumed lost)."""
    from cross.nn.sparsify import _no_win

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    plan = _near_win_plan(make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 64))))
    assert _no_win(plan, None) and not _no_win(plan, None, near=True)
    assert _no_win(plan, [8, 64], near=True) and not _no_win(plan, [2, 64], near=True)


def test_a_saved_layer_loads_without_building_a_row_format_no_bucket_runs(rng, tmp_path, monkeypatch):
    """A near win the check did not take, in a layer with its dense copy: loading the saved layer
    builds no row format (it would be dropped at once), and the loaded layer runs as the saved one."""
    import cross
    import cross.pack.packed as packed_mod

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    base = make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 64)))
    near = _near_win_plan(base).buckets[0].with_measurement(12.0, 10.0, 0.03)  # timed, not taken
    plan = base.with_buckets([near, replace(base.buckets[1], fallback=False)])
    linear = nn.Linear(256, 256, bias=False, dtype=torch.bfloat16)
    linear.weight.data = w
    model = nn.Sequential(SparseLinear.from_dense(linear, plan=plan, keep_dense=True, measure=False))
    assert model[0].dense_kept and model[0].packed.rows is None
    cross.save(model, tmp_path)
    built = []
    real = packed_mod.RowWeight.from_dense
    monkeypatch.setattr(packed_mod.RowWeight, "from_dense", lambda *a, **k: built.append(1) or real(*a, **k))
    loaded = cross.load(tmp_path)["0"]
    assert built == [] and loaded.packed.rows is None
    x = torch.randn(3, 256).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model[0](x))


def _kernel_tagged_calls(measure_mod, monkeypatch):
    """The measured check's plan calls tagged with the kernel their weight runs at their token count."""
    real = measure_mod._plan_call

    def tagged(x, weight, kernels):
        call = real(x, weight, kernels)
        run = lambda: call()  # noqa: E731
        run.kernel = weight.plan.bucket_for(x.shape[0]).kernel
        return run

    monkeypatch.setattr(measure_mod, "_plan_call", tagged)


def test_alternatives_are_timed_and_the_fastest_taken(rng, monkeypatch):
    """A bucket with alternatives has each kernel checked and timed (each twice, between the dense
    timings), and runs the fastest where it measured the margin faster than dense; its format is
    built for the check (the row format here, which the weight did not hold)."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    base = make_plan(w, cost_model=WINNING, buckets=((1, 4), (5, 64)))
    plan = base.with_buckets([replace(base.buckets[0], fallback=True, alternatives=("rows",)), base.buckets[1]])
    packed = pack(w, plan)
    assert packed.rows is None
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    _kernel_tagged_calls(measure_mod, monkeypatch)
    times = {"tiles": 9.0, "rows": 7.0, None: 10.0}
    timed = []
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (
        timed.append(getattr(fn, "kernel", None)) or times[getattr(fn, "kernel", None)], "graph"))
    buckets, _, built = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert timed == [None, "tiles", "tiles", "rows", "rows", None] + [None, "tiles", "tiles", None]
    first = buckets[0]
    assert (first.kernel, first.fallback, first.measured_us, first.alternatives) == ("rows", False, 7.0, ())
    assert "row kernel, fastest of those timed (7.0 us; tile 9.0 us)" in first.reason
    assert buckets[1].kernel == "tiles" and buckets[1].measured_us == 9.0  # no alternatives: its kernel alone
    chosen = packed.with_plan(plan.with_buckets(buckets))
    assert chosen.rows is not None  # the format the check chose, built for the layer
    assert built.rows is not None and built.rows is not chosen.rows
    reused = packed.with_plan(plan.with_buckets(buckets), built=built)
    assert reused.rows is built.rows  # the format built for the timing, not built again
    x = torch.randn(3, 256).to(torch.bfloat16)
    from cross.runtime.dispatch import execute
    for weight in (chosen, reused):
        torch.testing.assert_close(execute(x, weight), (x.float() @ w.float().T).to(torch.bfloat16),
                                   rtol=2e-2, atol=2e-2)
    # the tile kernel faster: the row format built for the timing is not kept
    times.update(rows=8.0, tiles=7.0)
    buckets, _, built = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert buckets[0].kernel == "tiles" and built.rows is not None
    assert packed.with_plan(plan.with_buckets(buckets), built=built).rows is None
    # slower than dense by the margin, whichever is fastest: the bucket falls back, measured
    times.update(rows=9.8, tiles=9.9)
    buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert (buckets[0].kernel, buckets[0].fallback, buckets[0].alternatives) == ("rows", True, ())
    assert buckets[0].reason.startswith("measured 9.8 us is not 3% under dense 10.0 us; the row kernel")


@pytest.mark.parametrize("wrong", [("tiles",), ("tiles", "rows")])
def test_an_alternative_that_disagrees_is_not_taken(rng, monkeypatch, wrong):
    """Each kernel's result is checked before it is timed: a wrong one is left out with a
    PlanCheckWarning and the others compete; where all are wrong the bucket falls back, untimed."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.3, rng).to(torch.bfloat16)
    base = make_plan(w, cost_model=WINNING, buckets=((1, 4),))
    packed = pack(w, base.with_buckets([replace(base.buckets[0], alternatives=("rows",))]))
    real = measure_mod.execute

    def execute(x, weight, *a, **kw):
        y = real(x, weight, *a, **kw)
        return y * 1.5 if weight.plan.buckets[0].kernel in wrong else y

    monkeypatch.setattr(measure_mod, "execute", execute)
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    timed = []
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (timed.append(fn) or 5.0, "graph"))
    with pytest.warns(measure_mod.PlanCheckWarning, match="the tile kernel's result disagrees") as record:
        buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    b = buckets[0]
    if len(wrong) == 1:
        assert "the row kernel is timed instead" in str(record[0].message)
        assert (b.kernel, b.measured, b.alternatives) == ("rows", True, ()) and len(timed) == 4
    else:
        assert (b.fallback, b.measured, b.alternatives) == (True, False, ()) and not timed
        assert b.reason.startswith("its tile and row kernels disagreed with the dense product (errors 0.")
        assert b.reason.endswith("): not timed")
        assert all("the bucket falls back to the dense product" in str(r.message) for r in record)


def test_an_alternative_this_gpu_cannot_run_is_not_built(rng, monkeypatch):
    """An alternative whose kernel cannot run on the device (here the warpgroup 2:4 kernel, which
    needs compute capability 9.0) gets no format built and no timing; the bucket's kernel is timed."""
    import cross.costmodel.profile as profile
    from cross.runtime import measure as measure_mod

    w = random_weight((256, 256), 0.1, rng).to(torch.bfloat16)
    base = make_plan(w, cost_model=WINNING, buckets=((1, 4),))
    packed = pack(w, base.with_buckets([replace(base.buckets[0], alternatives=("wgmma24",))]))
    monkeypatch.setattr(measure_mod, "gpu_kernel_args", lambda packed, i, cache: "kernel arguments")
    built = []
    monkeypatch.setattr(measure_mod, "_with_kernel", lambda held, i, kernel: built.append(kernel))
    monkeypatch.setattr(profile, "call_time_us", lambda fn, warmup_ms, rep_ms: (5.0, "graph"))
    buckets, _, _ = measure_mod._measure_buckets(packed, w, 0.03, {}, seed=0)
    assert not built and (buckets[0].kernel, buckets[0].measured, buckets[0].alternatives) == ("tiles", True, ())
    assert "fastest of those timed" not in buckets[0].reason
