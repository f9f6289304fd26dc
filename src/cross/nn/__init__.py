"""nn: SparseLinear, the in-place model conversion sparsify_ / unsparsify_, saved compiled models
(save / load), sibling layers stacked into one (stack_siblings_), torch.compile with
the siblings' product shared (compile), and tensor parallelism over torch.distributed (parallel)."""

from .compile import SharedProducts, compile, share_repeated_calls
from .linear import SparseLinear
from .parallel import (ColumnParallelLinear, RowParallelLinear, ShardedLinear, ShardSpec, ShardTimes, linear_costs,
                       plan_tensor_parallel, predict_shards, shard_bounds, split_bounds, tensor_parallel_)
from .serialize import PlanDeviceWarning, load, save
from .stack import SiblingInputWarning, SiblingLinear, stack_siblings_, unstack_siblings_
from .sparsify import LayerReport, SparsifyReport, fused_paths_off, fused_paths_on, sparsify_, unsparsify_

__all__ = ["SparseLinear", "sparsify_", "unsparsify_", "SparsifyReport", "LayerReport", "save", "load",
           "fused_paths_off", "fused_paths_on", "SiblingLinear", "SiblingInputWarning", "stack_siblings_", "unstack_siblings_",
           "compile", "SharedProducts", "share_repeated_calls",
           "PlanDeviceWarning", "ColumnParallelLinear", "RowParallelLinear", "ShardedLinear", "ShardSpec", "ShardTimes",
           "linear_costs", "split_bounds", "shard_bounds", "predict_shards", "plan_tensor_parallel", "tensor_parallel_"]
