"""Wanda pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): score each weight by |W_ij| * ||X_j||_2, the size of its contribution to the output,
where X_j is input feature j over the calibration tokens; within each output row, prune the
lowest scores.

Pruning per output row (the paper's comparison group) gives every row the same nonzero count
but, unlike magnitude pruning, concentrates the kept weights on the input features with large
activations: the column-wise clustering real pruned LLM weights show.

This is the one-shot variant: the norms of every layer come from one forward pass of the dense
model, not from re-running each block on the output of the already pruned blocks before it.
A helper that makes realistic inputs for the pipeline, not part of the product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .._checks import PRUNE_DTYPES, check_weight
from .magnitude import FilterFn, check_sparsity, layer_sparsity, select_linears, smallest_mask

ForwardFn = Callable[[nn.Module, Any], Any]


def wanda_prune(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A new tensor with round(sparsity * K) weights of each row of `weight` (M x K) set to zero,
    those of the smallest |W_ij| * input_norms[j]; ties go to the lower column.

    input_norms: [K], the L2 norm of each input feature over the calibration tokens.
    """
    check_weight(weight, dtypes=PRUNE_DTYPES)
    sparsity = check_sparsity(sparsity)
    k = weight.shape[1]
    if not isinstance(input_norms, torch.Tensor) or tuple(input_norms.shape) != (k,):
        got = tuple(input_norms.shape) if isinstance(input_norms, torch.Tensor) else type(input_norms).__name__
        raise ValueError(f"input_norms: expected a tensor of shape ({k},) (one norm per input feature), got {got}")
    if bool((input_norms < 0).any()):
        raise ValueError("input_norms: expected nonnegative norms, got negative values")
    scores = weight.detach().abs().float() * input_norms.detach().float().to(weight.device)
    mask = smallest_mask(scores, round(sparsity * k))
    return weight.detach().masked_fill(mask, 0)


def _check_calibration(inputs: Any) -> None:
    batches = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if not batches or not all(isinstance(b, (torch.Tensor, Mapping)) for b in batches):
        kind = "an empty list" if not batches else type(inputs).__name__
        raise ValueError(
            f"calibration_inputs: expected a tensor, a dict of tensors, or a non-empty list of them, got {kind}"
        )


def _forward(model: nn.Module, inputs: Any) -> None:
    """Run each calibration batch: a tensor as model(x), a dict as model(**x) (HF models)."""
    for batch in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if isinstance(batch, Mapping):
            model(**batch)
        else:
            model(batch)


@torch.no_grad()
def wanda_prune_(
    model: nn.Module,
    calibration_inputs: Any,
    sparsity: float,
    filter_fn: FilterFn | None = None,
    forward_fn: ForwardFn | None = None,
) -> dict[str, float]:
    """Wanda-prune the selected nn.Linear weights in place; returns each layer's sparsity.

    calibration_inputs: what the model's forward takes (a tensor, or a dict of tensors for HF
    models), or a list of such batches; with `forward_fn(model, calibration_inputs)` anything
    that function understands. The model runs in eval mode (no dropout noise in the norms) and
    every module's train/eval mode and hooks are restored afterwards.
    """
    sparsity = check_sparsity(sparsity)
    linears = select_linears(model, filter_fn)
    for name, module in linears.items():
        check_weight(module.weight, name=f"{name}.weight", dtypes=PRUNE_DTYPES)
    if calibration_inputs is None:
        raise ValueError("calibration_inputs: expected the inputs of a forward pass, got None")
    if forward_fn is None:
        _check_calibration(calibration_inputs)
        forward_fn = _forward

    sum_sq: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Linear, args: tuple) -> None:
            if args[0].shape[-1] != module.in_features:  # the module's own call says what is wrong
                return
            x = args[0].detach().reshape(-1, module.in_features).float()
            if x.shape[0] == 0:  # no tokens (an expert no token was routed to): not seen
                return
            s = x.square().sum(dim=0)
            sum_sq[name] = sum_sq[name] + s if name in sum_sq else s

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in linears.items()]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        forward_fn(model, calibration_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    unseen = [name for name in linears if name not in sum_sq]
    if unseen:
        raise ValueError(
            f"expected every selected nn.Linear to see calibration tokens, got none for {unseen} "
            f"(leave them out with filter_fn)"
        )
    for name, module in linears.items():
        module.weight.copy_(wanda_prune(module.weight, sum_sq[name].sqrt(), sparsity))
    return layer_sparsity(linears)
