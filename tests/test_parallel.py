"""Tensor parallelism on the CPU: the cut (pure functions), and sharded layers and a sharded Llama
run by 2 and 3 gloo processes against the single-process result.

Weights have a density that ramps along the split dimension (from empty to full), so equal rows are
unequal work. The processes are spawned once per world size (module-scoped fixture); each runs
every case and saves its outputs, and the tests below compare them: a spawn costs seconds, a
comparison nothing.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (lazily, below)

from cross.costmodel import CostModel, GPUSpec, block_n_for
from cross.nn import (ColumnParallelLinear, RowParallelLinear, SparseLinear, linear_costs, plan_tensor_parallel,
                      predict_shards, shard_bounds, sparsify_, split_bounds, unsparsify_)
from cross.nn.parallel import DEFAULT_TOKENS
from cross.nn.sparsify import SKIP_FILTER, SPARSE
from cross.partition.planner import item_cost
from test_nn import WINNING, assert_close_fp32, assert_matches, make_linear, random_weight, seeded

WORLD_SIZES = [2, 3]
POLICIES = ["cost", "rows"]
#: Ragged shapes (not multiples of 64): a column-parallel and a row-parallel layer.
COLUMN_SHAPE, ROW_SHAPE = (461, 300), (300, 461)
TOKENS = [1, 17, 70]  # three default buckets
#: One program and no launch cost: the predicted time of a shard is its tiles' and work items' (on
#: the H100 defaults these small shards are launch cost plus a tile or two per program).
SMALL_GPU = CostModel(spec=GPUSpec(name="one program, no launch cost", n_units=1, programs_per_unit=1, launch_us=0.0,
                                   item_us=0.01))


# ---------------------------------------------------------------------------------------- helpers
def ramp_mask(shape, dim, generator, reverse=False) -> torch.Tensor:
    """Kept entries, with a probability rising linearly along `dim` from 0 to 1 (falling with reverse)."""
    density = torch.linspace(1.0, 0.0, shape[dim]) if reverse else torch.linspace(0.0, 1.0, shape[dim])
    density = density[:, None] if dim == 0 else density[None, :]
    return torch.rand(shape, generator=generator) < density


def ramp_weight(shape, dim, generator) -> torch.Tensor:
    """Density rising linearly along `dim` from 0 (empty) to 1 (full)."""
    return random_weight(shape, 1.0, generator) * ramp_mask(shape, dim, generator)


def layer_cases(seed: int) -> dict:
    """The layers and inputs every process and the parent build alike from `seed`."""
    g = torch.Generator().manual_seed(seed)
    column = make_linear(ramp_weight(COLUMN_SHAPE, 0, g), rng=g)
    row = make_linear(ramp_weight(ROW_SHAPE, 1, g), rng=g)
    xs = {n: (torch.randn(n, COLUMN_SHAPE[1], generator=g), torch.randn(n, ROW_SHAPE[1], generator=g))
          for n in TOKENS}
    return {"column": column, "row": row, "x": xs}


def tiny_llama(seed: int):
    """A 2-layer Llama (6 query heads of 64 sharing 3 key/value heads, intermediate 200), pruned with
    densities falling along every projection's split dimension: the first heads are the densest, so
    over 2 ranks the cost split gives rank 0 one key/value group of the three, an equal split two.
    (Heads of 64 keep each group's rows whole tiles, so the group costs follow the densities.)"""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=384, intermediate_size=200, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, vocab_size=100)
    model = seeded(torch.Generator().manual_seed(seed), lambda: transformers.LlamaForCausalLM(config)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if type(m) is nn.Linear and name != "lm_head":
                dim = 1 if name.endswith(("o_proj", "down_proj")) else 0
                m.weight.mul_(ramp_mask(m.weight.shape, dim, g, reverse=True))
    ids = torch.randint(100, (2, 9), generator=g)
    return model, ids


def llama_logits(model, ids) -> dict:
    """Logits of a prefill and of one cached decode step after it (the cache is the fourth argument,
    named `cache` from transformers 5 on and `past_key_values` before)."""
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        step = model(ids[:, -1:], None, None, cache, use_cache=True)
    return {"prefill": out.logits, "decode": step.logits}


# ---------------------------------------------------------------------------------- the processes
def worker(rank: int, world: int, init_file: str, out_dir: str, seed: int) -> None:
    torch.set_num_threads(1)  # several processes share the CI machine's two cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    group = dist.group.WORLD
    try:
        cases = layer_cases(seed)
        out: dict = {}
        with torch.inference_mode():
            for policy in POLICIES:
                col = ColumnParallelLinear.from_linear(cases["column"], group, policy=policy, cost_model=WINNING)
                part = ColumnParallelLinear.from_linear(cases["column"], group, policy=policy, gather_output=False,
                                                        cost_model=WINNING)
                row = RowParallelLinear.from_linear(cases["row"], group, policy=policy, cost_model=WINNING)
                split = RowParallelLinear.from_linear(cases["row"], group, bounds=row.bounds, input_is_parallel=True,
                                                      cost_model=WINNING)
                assert isinstance(col.local, SparseLinear) and not col.local.dense_kept
                lo, hi = row.shard
                out[policy] = {
                    "column_bounds": col.bounds, "row_bounds": row.bounds,
                    "column": {n: col(x) for n, (x, _) in cases["x"].items()},
                    "column_part": {n: part(x) for n, (x, _) in cases["x"].items()},
                    "row": {n: row(x) for n, (_, x) in cases["x"].items()},
                    "row_split_input": {n: split(x[..., lo:hi]) for n, (_, x) in cases["x"].items()},
                }
        for policy in POLICIES:
            model, ids = tiny_llama(seed)
            report = sparsify_(model, lambda m, fqn: not fqn.endswith("k_proj"), tp_group=group, tp_split=policy,
                               cost_model=WINNING, progress=False)
            out[policy]["llama"] = llama_logits(model, ids)
            out[policy]["llama_report"] = {n: (layer.action, layer.summary.get("shard"), layer.shape)
                                           for n, layer in report.layers.items()}
            assert unsparsify_(model) == report.n_swapped
            out[policy]["llama_unsparsified"] = llama_logits(model, ids)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier(group)  # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def seed():
    seed = int(os.environ.get("CROSS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"CROSS_TEST_SEED={seed}")
    return seed


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda w: f"world{w}")
def ranks(request, seed, tmp_path_factory):
    """Every rank's saved outputs, after one spawn of `world` gloo processes."""
    pytest.importorskip("transformers")
    world = request.param
    tmp = tmp_path_factory.mktemp(f"tp{world}")
    mp.spawn(worker, args=(world, str(tmp / "store"), str(tmp), seed), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def single(seed):
    """The single-process results the ranks are compared with: the layers whole, as SparseLinear,
    and the tiny Llama sparsified whole (and dense)."""
    cases = layer_cases(seed)
    out = {"cases": cases}
    with torch.inference_mode():
        for name, i in (("column", 0), ("row", 1)):
            whole = SparseLinear.from_dense(cases[name], cost_model=WINNING)
            out[name] = {n: whole(xs[i]) for n, xs in cases["x"].items()}
    model, ids = tiny_llama(seed)
    out["llama_dense"] = llama_logits(model, ids)
    sparsify_(model, lambda m, fqn: not fqn.endswith("k_proj"), cost_model=WINNING, progress=False)
    out["llama"] = llama_logits(model, ids)
    return out


# ------------------------------------------------------------------------ sharded layers vs whole
@pytest.mark.parametrize("policy", POLICIES)
def test_column_parallel_matches_whole_layer(ranks, single, policy):
    cases = single["cases"]
    linear = cases["column"]
    for r, out in enumerate(ranks):
        got = out[policy]
        bounds = got["column_bounds"]
        assert bounds == ranks[0][policy]["column_bounds"] and len(bounds) == len(ranks) + 1
        assert all(b % 64 == 0 for b in bounds[:-1]) and bounds[-1] == COLUMN_SHAPE[0]
        for n, (x, _) in cases["x"].items():
            assert_matches(got["column"][n], x, linear.weight, linear.bias)
            assert_close_fp32(got["column"][n], single["column"][n])
            lo, hi = bounds[r], bounds[r + 1]
            assert_matches(got["column_part"][n], x, linear.weight[lo:hi], linear.bias[lo:hi])


@pytest.mark.parametrize("policy", POLICIES)
def test_row_parallel_matches_whole_layer(ranks, single, policy):
    cases = single["cases"]
    linear = cases["row"]
    for out in ranks:
        got = out[policy]
        bounds = got["row_bounds"]
        assert bounds == ranks[0][policy]["row_bounds"] and all(b % 64 == 0 for b in bounds[:-1])
        for n, (_, x) in cases["x"].items():
            assert_matches(got["row"][n], x, linear.weight, linear.bias)
            assert_close_fp32(got["row"][n], single["row"][n])
            assert torch.equal(got["row_split_input"][n], got["row"][n])


def test_cost_split_differs_from_equal_rows(ranks):
    """On these ramps the cost split is not the equal one (else the tests above test one split)."""
    for name in ("column_bounds", "row_bounds"):
        assert ranks[0]["cost"][name] != ranks[0]["rows"][name]


@pytest.mark.parametrize("policy", POLICIES)
def test_sharded_llama_matches_unsharded(ranks, single, policy):
    """Logits (prefill and one cached decode step) of the sparsified Llama sharded over the ranks
    against the same model sparsified whole, within fp32 tolerance, on every rank; unsparsify_
    gives the dense model's back."""
    for out in ranks:
        for phase in ("prefill", "decode"):
            assert_close_fp32(out[policy]["llama"][phase], single["llama"][phase])
            assert_close_fp32(out[policy]["llama_unsparsified"][phase], single["llama_dense"][phase])


@pytest.mark.parametrize("policy", POLICIES)
def test_sharded_llama_report(ranks, policy):
    """Every projection is sharded, k_proj too though filtered (it stays a dense shard), and reported
    under its own name with the rank's part: head-aligned attention cuts, one cut for gate, up and
    down. lm_head stays whole."""
    world, first = len(ranks), ranks[0][policy]["llama_report"]
    for rank, out in enumerate(ranks):
        report = out[policy]["llama_report"]
        assert list(report) == list(first) and report["lm_head"] == (SPARSE, None, (100, 384))
        for name, (action, shard, shape) in report.items():
            if name == "lm_head":
                continue
            style = "row" if name.endswith(("o_proj", "down_proj")) else "column"
            assert shard == {"style": style, "rank": rank, "world": world, "bounds": first[name][1]["bounds"]}
            lo, hi = shard["bounds"][rank], shard["bounds"][rank + 1]
            assert shape == ((384, hi - lo) if style == "row" else (hi - lo, 384))
            assert action == (SKIP_FILTER if name.endswith("k_proj") else SPARSE)
        for i in range(2):
            attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
            q = report[f"{attn}.q_proj"][1]["bounds"]
            assert all(b % 128 == 0 for b in q)  # whole key/value groups of 2 query heads x 64
            bounds = {name.rpartition(".")[2]: shard["bounds"] for name, (_a, shard, _s) in report.items()
                      if name.startswith((attn, mlp))}
            assert bounds["k_proj"] == bounds["v_proj"] == tuple(b // 2 for b in q) and bounds["o_proj"] == q
            assert bounds["gate_proj"] == bounds["up_proj"] == bounds["down_proj"]


# -------------------------------------------------------------------------- the cut (no processes)
@pytest.mark.parametrize("n_parts", [2, 3, 4])
@pytest.mark.parametrize("dim", [0, 1])
def test_cost_split_evens_predicted_times(dim, n_parts, rng):
    """Cost-balanced shards of a weight whose density ramps along the split are predicted (each
    shard planned as its rank would) to take more even times than equal tile counts."""
    shape = (1000, 256) if dim == 0 else (256, 1000)
    weight = ramp_weight(shape, dim, rng)
    times = {}
    for policy in POLICIES:
        bounds = shard_bounds(weight, n_parts, dim, policy=policy, cost_model=SMALL_GPU)
        assert len(bounds) == n_parts + 1 and all(b % 64 == 0 for b in bounds[:-1]) and bounds[-1] == 1000
        times[policy] = predict_shards(weight, bounds, dim, cost_model=SMALL_GPU)
        assert times[policy].bounds == bounds and not any(times[policy].fallback)
    assert times["cost"].spread < times["rows"].spread
    assert max(times["cost"].plan_us) <= max(times["rows"].plan_us)  # the slowest rank sets the latency
    assert max(times["cost"].load_us) <= max(times["rows"].load_us)  # what the cut balances


@pytest.mark.parametrize("dim", [0, 1])
def test_linear_costs(dim, rng):
    weight = ramp_weight((333, 200) if dim == 0 else (200, 333), dim, rng)
    weight.narrow(dim, 0, 64).zero_()  # a tile-row (tile-column) of EMPTY tiles
    costs = linear_costs(weight, dim, cost_model=SMALL_GPU)
    assert costs.shape == (333,) and (costs > 0).all()
    tile_costs = costs[:320].reshape(5, 64)
    assert (tile_costs == tile_costs[:, :1]).all()  # spread evenly inside a tile
    assert tile_costs[-1, 0] > tile_costs[1, 0] > tile_costs[0, 0]  # denser tiles cost more; empty ones least
    # the same tiles either way; rows also carry one work item per tile-row
    rows, cols = linear_costs(weight, 0, cost_model=SMALL_GPU), linear_costs(weight, 1, cost_model=SMALL_GPU)
    n_tile_rows = -(-weight.shape[0] // 64)
    item = item_cost(SMALL_GPU, DEFAULT_TOKENS, -(-DEFAULT_TOKENS // block_n_for(DEFAULT_TOKENS)), SMALL_GPU.n_programs)
    assert rows.sum() == pytest.approx(cols.sum() + item * n_tile_rows)
    ignore = linear_costs(weight, dim, cost_model=SMALL_GPU, nan_policy="ignore")
    assert ignore.sum() < costs.sum()  # empty tiles are not checked


@pytest.mark.parametrize("costs, n_parts, unit, policy, expected", [
    ([1.0] * 10, 2, 1, "cost", (0, 5, 10)),
    ([1.0] * 10, 3, 1, "rows", (0, 3, 7, 10)),
    ([9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 1, "cost", (0, 1, 10)),
    ([9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 1, "rows", (0, 5, 10)),
    ([0.0] * 7, 2, 2, "cost", (0, 4, 7)),  # no cost: equal units
    ([5.0] * 3 + [1.0] * 7, 2, 2, "cost", (0, 2, 10)),  # cuts on multiples of the unit
    ([1.0] * 4 + [100.0], 4, 1, "cost", (0, 2, 3, 4, 5)),  # every part keeps a unit
], ids=["uniform", "rows", "heavy first", "heavy first rows", "zero", "units", "one part each"])
def test_split_bounds(costs, n_parts, unit, policy, expected):
    assert split_bounds(costs, n_parts, policy=policy, unit=unit) == expected


def test_split_bounds_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        split_bounds([1.0] * 4, 2, policy="heads")
    with pytest.raises(ValueError, match="at least 3 units of 2"):
        split_bounds([1.0] * 4, 3, unit=2)
    with pytest.raises(ValueError, match="non-negative"):
        split_bounds([1.0, -1.0], 2)
    with pytest.raises(ValueError, match="dim"):
        shard_bounds(torch.ones(4, 4), 2, 2)
    with pytest.raises(ValueError, match="strictly increasing bounds from 0 to 4"):
        predict_shards(torch.ones(4, 4), (0, 3, 3, 4), 0)


def test_few_tiles_split_between_rows(rng):
    """Fewer tiles than parts along the split: the cut falls between single rows."""
    weight = ramp_weight((100, 70), 0, rng)
    bounds = shard_bounds(weight, 3, 0, policy="rows")
    assert bounds == (0, 33, 67, 100)
    assert len(set(shard_bounds(weight, 3, 0, cost_model=SMALL_GPU))) == 4


def test_plan_tensor_parallel_llama(seed):
    """Head-aligned attention cuts (k/v at the query cut over the group size), one tile-aligned cut
    for gate, up and down; the cost policy gives rank 0 fewer of the dense first heads."""
    model, _ids = tiny_llama(seed)
    specs = {p: plan_tensor_parallel(model, 2, policy=p, cost_model=WINNING) for p in POLICIES}
    for policy, spec in specs.items():
        assert len(spec) == 2 * 7 and "lm_head" not in spec
        for i in range(2):
            attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
            q = spec[f"{attn}.q_proj"].bounds
            assert spec[f"{attn}.k_proj"].bounds == spec[f"{attn}.v_proj"].bounds == tuple(b // 2 for b in q)
            assert spec[f"{attn}.o_proj"].bounds == q and spec[f"{attn}.o_proj"].style == "row"
            assert spec[f"{mlp}.gate_proj"].bounds == spec[f"{mlp}.up_proj"].bounds == spec[f"{mlp}.down_proj"].bounds
            assert all(b % 64 == 0 for b in spec[f"{mlp}.gate_proj"].bounds[:-1])
            assert spec[f"{mlp}.down_proj"].style == "row" and spec[f"{mlp}.up_proj"].style == "column"
    q = "model.layers.0.self_attn.q_proj"
    assert specs["rows"][q].bounds == (0, 256, 384)  # 3 key/value groups: 2 and 1
    assert specs["cost"][q].bounds == (0, 128, 384)  # the densest group alone
    assert specs["rows"]["model.layers.0.mlp.gate_proj"].bounds == (0, 128, 200)


def test_plan_tensor_parallel_bad_models(seed):
    model, _ids = tiny_llama(seed)
    with pytest.raises(ValueError, match="at least 4 key/value heads for 4 ranks, got 3"):
        plan_tensor_parallel(model, 4, policy="rows")
    with pytest.raises(ValueError, match="Llama-style blocks"):
        plan_tensor_parallel(nn.Sequential(nn.Linear(4, 4)), 2)
    with pytest.raises(ValueError, match="policy"):
        plan_tensor_parallel(model, 2, policy="heads")


def test_sharding_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        ColumnParallelLinear.from_linear(nn.Linear(8, 8), None)
    with pytest.raises(ValueError, match="tp_split"):
        sparsify_(nn.Sequential(nn.Linear(3, 3)), tp_split="heads", progress=False)
