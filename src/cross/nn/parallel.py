"""Tensor parallelism: SparseLinear (or nn.Linear) shards over a torch.distributed process group.

Column-parallel splits the weight's output rows: rank r holds W[b_r:b_{r+1}] and computes
Y[..., b_r:b_{r+1}] (optionally all-gathered into the whole Y). Row-parallel splits the input
columns: rank r holds W[:, b_r:b_{r+1}], computes a partial Y from X[..., b_r:b_{r+1}], and the
partials are summed with an all-reduce (the bias is added once, after it).

Where to cut. With non-uniform sparsity equal rows are unequal work, so the ``"cost"`` policy
cuts where every rank gets the same *predicted* time: each tile is classified as the planner
classifies it and costed by the same cost model (``cross.costmodel``), a tile-row's (or
tile-column's) cost is the sum of its tiles', and the cumulative cost is cut into equal parts at
tile boundaries (64 by default), so every shard's tiles are tiles of the whole weight (a weight
with fewer tiles than ranks along the split is cut between single rows). ``"rows"`` cuts equal
numbers of tiles (Megatron's equal split). ``predict_shards`` plans every shard and reports the
predicted time of each rank for a given split, so the two can be compared.

Models. ``tensor_parallel_`` shards the attention and MLP blocks of Hugging Face Llama-style models
Megatron-style: q/k/v and gate/up column-parallel without gathering, o and down row-parallel on
the split input, so each block needs one all-reduce. Two constraints shape the cuts:
- Attention shards whole key/value groups (one kv head and the query heads sharing it), because a
  rank must hold complete heads. The cost policy balances q, k, v and o together over groups, so a
  rank may get more heads than another (``"rows"`` gives equal groups). Head boundaries come first:
  they are tile-aligned only where the group's rows are a multiple of the tile.
- gate, up and down share one cut of the intermediate channels (act(gate) * up is elementwise, down
  reads the same channels); the cost of a channel block is gate's rows plus up's rows plus down's
  columns.
Every rank must hold the same full model before sharding; the cuts of group rank 0 are broadcast,
so ranks agree even if their cost models differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .._checks import check_tile_shape, check_weight
from ..costmodel import block_n_for, default_cost_model
from ..partition import classify, make_plan
from ..partition.classify import DEFAULT_KINDS
from ..partition.planner import item_cost
from ..tiling import TileGrid, TileKind
from .linear import SparseLinear

SPLIT_POLICIES = ("cost", "rows")
STYLES = ("column", "row")
#: The default balance point: the top of the small-batch decode bucket (DEFAULT_BUCKETS[4] is 9-16).
DEFAULT_TOKENS = 16
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------- where to cut
def linear_costs(weight: torch.Tensor, dim: int, *, n_tokens: int = DEFAULT_TOKENS, cost_model=None,
                 tile_shape=(64, 64), nan_policy: str = "propagate", allowed_kinds=DEFAULT_KINDS) -> np.ndarray:
    """Predicted microseconds of each output row (dim=0) or input column (dim=1) of ``weight``.

    Tiles are classified and costed at ``n_tokens`` tokens as ``make_plan`` does; a tile-row
    (tile-column) costs the sum of its tiles, plus one work item per tile-row, and that cost is
    spread evenly over the rows (columns) of the tile. EMPTY tiles cost what checking them costs
    under nan_policy='propagate' and nothing under 'ignore'. Returns float64 [M] or [K].
    """
    weight = check_weight(weight.detach())
    if dim not in (0, 1):
        raise ValueError(f"dim: expected 0 (output rows) or 1 (input columns), got {dim!r}")
    if nan_policy not in ("propagate", "ignore"):
        raise ValueError(f"nan_policy: expected 'propagate' or 'ignore', got {nan_policy!r}")
    grid = TileGrid.for_weight(weight, check_tile_shape(tile_shape))
    cm = cost_model or default_cost_model()
    cls = classify(grid.tile_nnz(weight), grid.tile_sizes(), grid.tile_shape, int(n_tokens), cm, allowed_kinds)
    tile_us = cls.cost_of(cls.kinds)
    if nan_policy == "ignore":
        tile_us[cls.kinds == TileKind.EMPTY] = 0.0
    if dim == 0:
        token_tiles = -(-max(1, int(n_tokens)) // block_n_for(int(n_tokens)))
        per_tile = tile_us.sum(axis=1) + item_cost(cm, int(n_tokens), token_tiles, cm.n_programs)
        sizes = np.minimum(grid.tile_rows, grid.rows - grid.tile_rows * np.arange(grid.n_tile_rows))
    else:
        per_tile = tile_us.sum(axis=0)
        sizes = np.minimum(grid.tile_cols, grid.cols - grid.tile_cols * np.arange(grid.n_tile_cols))
    return np.repeat(per_tile / sizes, sizes)


def _cut(unit_costs: np.ndarray, n_parts: int, policy: str) -> np.ndarray:
    """Bounds in units: equal counts, or the unit boundaries nearest to equal shares of the cumulative
    cost (each part keeps at least one unit), whichever gives the lighter heaviest part."""
    n = unit_costs.size
    equal = np.round(np.arange(n_parts + 1) * n / n_parts).astype(np.int64)
    cum = np.concatenate([[0.0], np.cumsum(unit_costs)])
    if policy == "rows" or cum[-1] <= 0:
        return equal
    bounds = [0]
    for r in range(1, n_parts):
        lo, hi = bounds[-1] + 1, n - (n_parts - r)
        target = cum[-1] * r / n_parts
        bounds.append(lo + int(np.argmin(np.abs(cum[lo:hi + 1] - target))))
    bounds = np.array(bounds + [n], dtype=np.int64)
    heaviest = lambda b: float(np.diff(cum[b]).max())  # noqa: E731
    return bounds if heaviest(bounds) <= heaviest(equal) else equal


def split_bounds(costs, n_parts: int, *, policy: str = "cost", unit: int = 64) -> tuple[int, ...]:
    """Cut a sequence of per-row (or per-column) ``costs`` into ``n_parts`` contiguous parts.

    Cuts fall on multiples of ``unit`` (the last unit may be partial). 'cost': every part gets as
    close to the same total cost as the units allow; 'rows': equal numbers of units. Returns the
    n_parts + 1 bounds, from 0 to len(costs).
    """
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"policy: expected one of {SPLIT_POLICIES}, got {policy!r}")
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 1 or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise ValueError(f"costs: expected a 1-D sequence of finite non-negative costs, got shape {costs.shape}")
    if int(n_parts) < 1 or int(unit) < 1:
        raise ValueError(f"n_parts and unit: expected >= 1, got {n_parts} and {unit}")
    n_parts, unit = int(n_parts), int(unit)
    starts = np.arange(0, costs.size, unit)
    if starts.size < n_parts:
        raise ValueError(f"expected at least {n_parts} units of {unit} to cut into {n_parts} parts, "
                         f"got {starts.size} ({costs.size} rows)")
    bounds = _cut(np.add.reduceat(costs, starts), n_parts, policy)
    return tuple(int(min(b * unit, costs.size)) for b in bounds)


def _unit_for(size: int, n_parts: int, tile: int) -> int:
    """The tile where there are enough tiles for every part, else single rows."""
    return tile if -(-size // tile) >= n_parts else 1


def shard_bounds(weight: torch.Tensor, n_parts: int, dim: int, *, policy: str = "cost",
                 n_tokens: int = DEFAULT_TOKENS, cost_model=None, tile_shape=(64, 64), nan_policy: str = "propagate",
                 allowed_kinds=DEFAULT_KINDS) -> tuple[int, ...]:
    """Bounds of an ``n_parts``-way split of ``weight``'s output rows (dim=0: column-parallel) or
    input columns (dim=1: row-parallel). Cuts are tile-aligned where the weight has at least one
    tile per part along ``dim``, and fall between single rows otherwise."""
    weight = check_weight(weight.detach())
    tile_shape = check_tile_shape(tile_shape)
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"policy: expected one of {SPLIT_POLICIES}, got {policy!r}")
    if dim not in (0, 1):
        raise ValueError(f"dim: expected 0 (output rows) or 1 (input columns), got {dim!r}")
    size = weight.shape[dim]
    costs = (linear_costs(weight, dim, n_tokens=n_tokens, cost_model=cost_model, tile_shape=tile_shape,
                          nan_policy=nan_policy, allowed_kinds=allowed_kinds) if policy == "cost" else np.zeros(size))
    return split_bounds(costs, n_parts, policy=policy, unit=_unit_for(size, int(n_parts), tile_shape[dim]))


def _check_bounds(bounds, size: int, name: str = "bounds") -> tuple[int, ...]:
    bounds = tuple(int(b) for b in bounds)
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != size or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"{name}: expected strictly increasing bounds from 0 to {size}, got {bounds}")
    return bounds


@dataclass(frozen=True)
class ShardTimes:
    """Predicted time of every rank's shard at one token count (``predict_shards``).

    ``load_us`` is what the cost split balances: the sum of the shard's tile costs (linear_costs).
    ``plan_us`` is the planner's prediction for the shard on its own GPU: launch plus the critical
    path over the GPU's programs, which also depends on how the shard's tiles divide among the
    programs (with a few tiles per program a shard one tile larger can take a tile longer), a
    granularity no row cut controls.
    """

    bounds: tuple[int, ...]
    load_us: tuple[float, ...]  # sum of the shard's tile costs (and work items, for row cuts)
    plan_us: tuple[float, ...]  # the shard's plan: launch + critical path over the GPU's programs
    dense_us: tuple[float, ...]  # the shard's dense product
    fallback: tuple[bool, ...]  # the plan is not predicted to beat dense: the shard runs dense

    @property
    def run_us(self) -> tuple[float, ...]:
        """What each rank runs: the dense product where its plan falls back (with the dense copy kept)."""
        return tuple(d if f else p for p, d, f in zip(self.plan_us, self.dense_us, self.fallback))

    @property
    def spread(self) -> float:
        """Slowest over fastest rank's plan time (1.0: perfectly even)."""
        return max(self.plan_us) / max(min(self.plan_us), 1e-12)


def predict_shards(weight: torch.Tensor, bounds, dim: int, *, n_tokens: int = DEFAULT_TOKENS, cost_model=None,
                   tile_shape=(64, 64), **plan_options) -> ShardTimes:
    """Plan every shard of ``weight`` cut at ``bounds`` along ``dim`` (0: output rows, 1: input
    columns) as its rank would, and report each one's predicted time at ``n_tokens`` tokens.
    ``plan_options`` go to make_plan (nan_policy, allowed_kinds, balance, unit_mode, n_programs)."""
    weight = check_weight(weight.detach())
    if dim not in (0, 1):
        raise ValueError(f"dim: expected 0 (output rows) or 1 (input columns), got {dim!r}")
    bounds = _check_bounds(bounds, weight.shape[dim])
    cost = {k: plan_options[k] for k in ("nan_policy", "allowed_kinds") if k in plan_options}
    costs = linear_costs(weight, dim, n_tokens=n_tokens, cost_model=cost_model, tile_shape=tile_shape, **cost)
    load_us = tuple(float(costs[lo:hi].sum()) for lo, hi in zip(bounds, bounds[1:]))
    plan_us, dense_us, fallback = [], [], []
    for lo, hi in zip(bounds, bounds[1:]):
        shard = weight[lo:hi] if dim == 0 else weight[:, lo:hi]
        bucket = make_plan(shard, tile_shape=tile_shape, cost_model=cost_model, buckets=((1, int(n_tokens)),),
                           **plan_options).buckets[0]
        plan_us.append(float(bucket.predicted_us))
        dense_us.append(float(bucket.dense_us))
        fallback.append(bool(bucket.fallback))
    return ShardTimes(bounds, load_us, tuple(plan_us), tuple(dense_us), tuple(fallback))


# ------------------------------------------------------------------------------------ modules
def _as_group(group):
    """``group`` itself, or the default group for None (torch.distributed's convention)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("tensor parallelism: expected an initialised torch.distributed process group "
                           "(torch.distributed.init_process_group), got none")
    return dist.group.WORLD if group is None else group


def _group_rank(group) -> tuple[int, int]:
    group = _as_group(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: expected a process group this process belongs to")
    return rank, dist.get_world_size(group)


def _comm_device(group) -> torch.device:
    """Where small host-side agreements travel: NCCL only moves CUDA tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_bounds(bounds_list: list[tuple[int, ...]], group) -> list[tuple[int, ...]]:
    """Every rank adopts group rank 0's bounds (same lengths on every rank: the same model)."""
    group = _as_group(group)
    flat = torch.tensor([b for bounds in bounds_list for b in bounds], dtype=torch.int64, device=_comm_device(group))
    dist.broadcast(flat, src=dist.get_process_group_ranks(group)[0], group=group)
    values, out, at = flat.tolist(), [], 0
    for bounds in bounds_list:
        out.append(tuple(values[at:at + len(bounds)]))
        at += len(bounds)
    return out


def _linear_shard(linear: nn.Linear, dim: int, lo: int, hi: int, bias: bool) -> nn.Linear:
    """An nn.Linear holding a copy of rows (dim=0) or columns (dim=1) lo:hi of ``linear``, and the
    matching part of its bias if ``bias`` (a copy: the shard does not keep the whole weight alive)."""
    w = linear.weight.detach()
    w = w[lo:hi] if dim == 0 else w[:, lo:hi]
    keep_bias = bias and linear.bias is not None
    shard = nn.Linear(w.shape[1], w.shape[0], bias=keep_bias, device="meta", dtype=w.dtype)
    grad = linear.weight.requires_grad
    shard.weight = nn.Parameter(w.clone(memory_format=torch.contiguous_format), requires_grad=grad)
    if keep_bias:
        b = linear.bias.detach()
        shard.bias = nn.Parameter((b[lo:hi] if dim == 0 else b).clone(), requires_grad=grad)
    return shard


def _local_module(shard: nn.Linear, sparse: bool, from_dense_kwargs: dict) -> nn.Module:
    return SparseLinear.from_dense(shard, **from_dense_kwargs) if sparse else shard


class ShardedLinear(nn.Module):
    """One rank's part of a linear layer split over ``group``: ``local`` (an nn.Linear or a
    SparseLinear) holds the rank's part of the weight; ``bounds`` (world + 1 ints) says where every
    rank's part starts and ends along the split dimension. Subclasses say which dimension."""

    dim: int

    def __init__(self, local: nn.Module, bounds, group, full_features: tuple[int, int]):
        super().__init__()
        if not isinstance(local, (nn.Linear, SparseLinear)):
            raise TypeError(f"local: expected an nn.Linear or SparseLinear, got {type(local).__name__}")
        group = _as_group(group)
        self.rank, self.world = _group_rank(group)
        out_features, in_features = full_features
        bounds = _check_bounds(bounds, full_features[self.dim])
        if len(bounds) != self.world + 1:
            raise ValueError(f"bounds: expected {self.world + 1} bounds for a group of {self.world}, got {len(bounds)}")
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        want = (hi - lo, in_features) if self.dim == 0 else (out_features, hi - lo)
        got = (local.out_features, local.in_features)
        if got != want:
            raise ValueError(f"local: expected a {want[0]}x{want[1]} shard for rank {self.rank}, got {got[0]}x{got[1]}")
        self.local = local
        self.bounds = bounds
        self.group = group
        self.in_features, self.out_features = in_features, out_features

    @property
    def shard(self) -> tuple[int, int]:
        """This rank's [start, stop) along the split dimension."""
        return self.bounds[self.rank], self.bounds[self.rank + 1]

    def shard_facts(self) -> dict:
        return {"style": STYLES[self.dim], "rank": self.rank, "world": self.world, "bounds": self.bounds}

    @staticmethod
    def _bounds_for(linear, group, bounds, dim, policy, n_tokens, from_dense_kwargs):
        world = _group_rank(group)[1]
        if bounds is None:
            cost = {k: from_dense_kwargs[k] for k in ("cost_model", "tile_shape", "nan_policy", "allowed_kinds")
                    if k in from_dense_kwargs}
            bounds = shard_bounds(linear.weight, world, dim, policy=policy, n_tokens=n_tokens, **cost)
        return _broadcast_bounds([_check_bounds(bounds, linear.weight.shape[dim])], group)[0]


class ColumnParallelLinear(ShardedLinear):
    """Y[..., lo:hi] = X @ W[lo:hi]^T + b[lo:hi] on each rank; with gather_output, all ranks' parts
    are all-gathered into the whole Y (uneven parts are padded for the collective)."""

    dim = 0

    def __init__(self, local: nn.Module, bounds, group, in_features: int, *, gather_output: bool = True):
        super().__init__(local, bounds, group, (int(bounds[-1]), int(in_features)))
        self.gather_output = bool(gather_output)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group, *, bounds=None, policy: str = "cost", gather_output: bool = True,
                    sparse: bool = True, n_tokens: int = DEFAULT_TOKENS, **from_dense_kwargs) -> "ColumnParallelLinear":
        """This rank's shard of ``linear`` (the same whole layer on every rank). bounds=None cuts by
        ``policy`` at ``n_tokens`` (see shard_bounds); group rank 0's bounds are used everywhere.
        sparse=True makes the shard a SparseLinear (``from_dense_kwargs`` go to from_dense), False
        keeps it an nn.Linear (dense tensor parallelism)."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        bounds = cls._bounds_for(linear, group, bounds, 0, policy, n_tokens, from_dense_kwargs)
        rank, _world = _group_rank(group)
        shard = _linear_shard(linear, 0, bounds[rank], bounds[rank + 1], bias=True)
        return cls(_local_module(shard, sparse, from_dense_kwargs), bounds, group, linear.in_features,
                   gather_output=gather_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        if not self.gather_output or self.world == 1:
            return y
        sizes = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        padded = nn.functional.pad(y, (0, max(sizes) - y.shape[-1])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[..., :s] for p, s in zip(parts, sizes)], dim=-1)

    def extra_repr(self) -> str:
        lo, hi = self.shard
        return (f"rank {self.rank} of {self.world}: output rows {lo}:{hi} of {self.out_features}, "
                f"in_features={self.in_features}, gather_output={self.gather_output}")


class RowParallelLinear(ShardedLinear):
    """Y = sum over ranks of X[..., lo:hi] @ W[:, lo:hi]^T (an all-reduce), plus the bias once.

    input_is_parallel: the input is already this rank's slice X[..., lo:hi] (the output of a
    column-parallel layer without gathering); otherwise the whole X comes in and is sliced here.
    """

    dim = 1

    def __init__(self, local: nn.Module, bounds, group, out_features: int, bias: torch.Tensor | None = None, *,
                 input_is_parallel: bool = False):
        super().__init__(local, bounds, group, (int(out_features), int(bounds[-1])))
        if getattr(local, "bias", None) is not None:
            raise ValueError("local: expected a shard without bias (the bias is added once, after the all-reduce)")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias: expected shape ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("bias", bias)
        self.input_is_parallel = bool(input_is_parallel)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group, *, bounds=None, policy: str = "cost",
                    input_is_parallel: bool = False, sparse: bool = True, n_tokens: int = DEFAULT_TOKENS,
                    **from_dense_kwargs) -> "RowParallelLinear":
        """This rank's shard of ``linear``'s input columns; arguments as ColumnParallelLinear.from_linear."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        bounds = cls._bounds_for(linear, group, bounds, 1, policy, n_tokens, from_dense_kwargs)
        rank, _world = _group_rank(group)
        shard = _linear_shard(linear, 1, bounds[rank], bounds[rank + 1], bias=False)
        bias = None if linear.bias is None else linear.bias.detach().to(linear.weight.dtype).clone()
        return cls(_local_module(shard, sparse, from_dense_kwargs), bounds, group, linear.out_features, bias,
                   input_is_parallel=input_is_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            lo, hi = self.shard
            x = x[..., lo:hi]
        y = self.local(x)
        if self.world > 1:
            dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        lo, hi = self.shard
        return (f"rank {self.rank} of {self.world}: input columns {lo}:{hi} of {self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}, "
                f"input_is_parallel={self.input_is_parallel}")


# ------------------------------------------------------------------------------ Llama models
@dataclass(frozen=True)
class ShardSpec:
    """How one layer is split: 'column' (output rows, not gathered) or 'row' (input columns, input
    already split), at ``bounds``."""

    style: str
    bounds: tuple[int, ...]


def _llama_blocks(model: nn.Module):
    """(fqn, module, kind) of every Llama-style attention (q/k/v/o_proj and head_dim) and MLP
    (gate/up/down_proj) block whose projections are plain nn.Linear layers."""
    for fqn, module in model.named_modules():
        for kind, names in (("attention", ATTENTION), ("mlp", MLP)):
            if all(type(getattr(module, n, None)) is nn.Linear for n in names):
                yield fqn, module, kind


def _attention_specs(module: nn.Module, fqn: str, n_ranks: int, policy: str, cost) -> dict[str, ShardSpec]:
    q, k, v, o = (getattr(module, n) for n in ATTENTION)
    hd = getattr(module, "head_dim", None)
    if not isinstance(hd, int) or hd < 1:
        raise ValueError(f"{fqn}: expected an attention module with an int head_dim, got {hd!r}")
    if (q.out_features % hd or k.out_features % hd or q.out_features % k.out_features
            or v.out_features != k.out_features or o.in_features != q.out_features):
        raise ValueError(f"{fqn}: expected q/k/v/o shapes of whole heads of {hd} (q {q.out_features}, k "
                         f"{k.out_features}, v {v.out_features}, o input {o.in_features})")
    n_kv, rep = k.out_features // hd, q.out_features // k.out_features
    if n_kv < n_ranks:
        raise ValueError(f"{fqn}: expected at least {n_ranks} key/value heads for {n_ranks} ranks, got {n_kv} "
                         "(replicating key/value heads is not supported)")
    group_rows = rep * hd
    costs = np.zeros(q.out_features)
    if policy == "cost":
        kv = (cost(k.weight, 0) + cost(v.weight, 0)).reshape(n_kv, hd).sum(axis=1)
        costs = cost(q.weight, 0) + cost(o.weight, 1) + np.repeat(kv / group_rows, group_rows)
    q_bounds = split_bounds(costs, n_ranks, policy=policy, unit=group_rows)
    kv_bounds = tuple(b // rep for b in q_bounds)
    prefix = f"{fqn}." if fqn else ""
    return {f"{prefix}q_proj": ShardSpec("column", q_bounds), f"{prefix}k_proj": ShardSpec("column", kv_bounds),
            f"{prefix}v_proj": ShardSpec("column", kv_bounds), f"{prefix}o_proj": ShardSpec("row", q_bounds)}


def _mlp_specs(module: nn.Module, fqn: str, n_ranks: int, policy: str, cost, tile: int) -> dict[str, ShardSpec]:
    gate, up, down = (getattr(module, n) for n in MLP)
    inter = gate.out_features
    if up.out_features != inter or down.in_features != inter:
        raise ValueError(f"{fqn}: expected gate/up outputs and down inputs of one size, got "
                         f"{gate.out_features}, {up.out_features}, {down.in_features}")
    costs = cost(gate.weight, 0) + cost(up.weight, 0) + cost(down.weight, 1) if policy == "cost" else np.zeros(inter)
    bounds = split_bounds(costs, n_ranks, policy=policy, unit=_unit_for(inter, n_ranks, tile))
    prefix = f"{fqn}." if fqn else ""
    return {f"{prefix}gate_proj": ShardSpec("column", bounds), f"{prefix}up_proj": ShardSpec("column", bounds),
            f"{prefix}down_proj": ShardSpec("row", bounds)}


def plan_tensor_parallel(model: nn.Module, n_ranks: int, *, policy: str = "cost", n_tokens: int = DEFAULT_TOKENS,
                         cost_model=None, tile_shape=(64, 64), nan_policy: str = "propagate",
                         allowed_kinds=DEFAULT_KINDS) -> dict[str, ShardSpec]:
    """The split of every Llama-style attention and MLP block of ``model`` over ``n_ranks`` ranks,
    by fully qualified layer name, without changing the model (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"policy: expected one of {SPLIT_POLICIES}, got {policy!r}")
    if int(n_ranks) < 1:
        raise ValueError(f"n_ranks: expected >= 1, got {n_ranks}")
    tile_shape = check_tile_shape(tile_shape)
    cm = cost_model or (default_cost_model() if policy == "cost" else None)

    def cost(weight, dim):
        return linear_costs(weight, dim, n_tokens=n_tokens, cost_model=cm, tile_shape=tile_shape,
                            nan_policy=nan_policy, allowed_kinds=allowed_kinds)

    specs: dict[str, ShardSpec] = {}
    for fqn, module, kind in _llama_blocks(model):
        if kind == "attention":
            specs.update(_attention_specs(module, fqn, int(n_ranks), policy, cost))
        else:
            specs.update(_mlp_specs(module, fqn, int(n_ranks), policy, cost, max(tile_shape)))
    if not specs:
        raise ValueError("model: expected Llama-style blocks (nn.Linear q/k/v/o_proj with head_dim, or "
                         "gate/up/down_proj) to shard, found none")
    return specs


@torch.no_grad()
def tensor_parallel_(model: nn.Module, group, *, policy: str = "cost", n_tokens: int = DEFAULT_TOKENS,
                     cost_model=None, tile_shape=(64, 64), nan_policy: str = "propagate",
                     allowed_kinds=DEFAULT_KINDS) -> dict[str, ShardSpec]:
    """Shard, in place, the Llama-style attention and MLP blocks of ``model`` over ``group``
    (Megatron style, see the module docstring); each layer becomes a ColumnParallelLinear or
    RowParallelLinear holding this rank's part as an nn.Linear (dense tensor parallelism;
    ``cross.sparsify_(model, tp_group=group)`` shards and then sparsifies the parts).

    Every rank must hold the same whole model; group rank 0's split is used on all ranks. Other
    layers (embeddings, lm_head) stay whole on every rank. Head counts in the model's config are
    not changed: the attention modules read them from the tensor shapes, so caches that are
    allocated from the config (static caches) do not fit a sharded model; the default dynamic
    cache does. Returns the split that was applied, by layer name.
    """
    group = _as_group(group)
    rank, world = _group_rank(group)
    specs = plan_tensor_parallel(model, world, policy=policy, n_tokens=n_tokens, cost_model=cost_model,
                                 tile_shape=tile_shape, nan_policy=nan_policy, allowed_kinds=allowed_kinds)
    agreed = _broadcast_bounds([s.bounds for s in specs.values()], group)
    specs = {fqn: ShardSpec(s.style, b) for (fqn, s), b in zip(specs.items(), agreed)}
    for fqn, spec in specs.items():
        parent_name, _, name = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, name)
        lo, hi = spec.bounds[rank], spec.bounds[rank + 1]
        if spec.style == "column":
            sharded = ColumnParallelLinear(_linear_shard(linear, 0, lo, hi, bias=True), spec.bounds, group,
                                           linear.in_features, gather_output=False)
        else:
            bias = None if linear.bias is None else linear.bias.detach().clone()
            sharded = RowParallelLinear(_linear_shard(linear, 1, lo, hi, bias=False), spec.bounds, group,
                                        linear.out_features, bias, input_is_parallel=True)
        setattr(parent, name, sharded)
    return specs
