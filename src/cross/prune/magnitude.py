"""Magnitude pruning: zero the weights of smallest |w|, per layer or under one global threshold.

A helper that makes realistic unstructured-sparse inputs for the rest of the pipeline, not part of
the product. Counts are exact (round(sparsity * numel) pruned) and ties are broken by position,
so a given weight always prunes the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from numbers import Real

import torch
from torch import nn

from .._checks import PRUNE_DTYPES, check_weight

FilterFn = Callable[[nn.Module, str], bool]
SCOPES = ("layer", "global")


def check_sparsity(sparsity) -> float:
    """A fraction in [0, 1): 1 would remove the whole layer, which is no longer a pruned weight."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def select_linears(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, nn.Linear]:
    """The nn.Linear modules of `model` that `filter_fn(module, fqn)` accepts (all when None).

    filter_fn takes the module first and its fully qualified name second, as torchao's sparsify_.
    A weight held by several Linears is selected once (under the first name); a Linear whose weight
    another kind of module also holds (an LM head tied to its input embedding) is left out with a
    warning: pruning it would prune the embedding table too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    others = {id(p) for m in model.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    linears, seen, tied = {}, set(), []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (filter_fn is not None and not filter_fn(module, name)):
            continue
        if id(module.weight) in others:
            tied.append(name)
        elif id(module.weight) not in seen:
            seen.add(id(module.weight))
            linears[name] = module
    if tied:
        warnings.warn(f"pruning leaves out {tied}: their weights are also held by other modules (a head tied to an "
                      "embedding?), which pruning would change too", stacklevel=4)  # the pruning call's caller
    if not linears:
        total = sum(isinstance(m, nn.Linear) for m in model.modules())
        raise ValueError(f"expected at least one nn.Linear selected by filter_fn, got none (the model has {total})")
    return linears


def smallest_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask of the n_prune smallest scores along the last dim, ties to the lower index.

    A stable sort gives the deterministic tie-break that topk does not promise. NaN scores sort
    last, so NaN weights are kept.
    """
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :n_prune]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, order, True)


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A new tensor with the round(sparsity * numel) smallest-|w| entries of `weight` set to zero.

    Zeros already there count among them (they have the smallest |w|), so the result has exactly
    that many zeros unless the weight started with more.
    """
    check_weight(weight, dtypes=PRUNE_DTYPES)
    n_prune = round(check_sparsity(sparsity) * weight.numel())
    mask = smallest_mask(weight.detach().abs().flatten().float(), n_prune)
    return weight.detach().masked_fill(mask.view_as(weight), 0)


def layer_sparsity(linears: dict[str, nn.Linear]) -> dict[str, float]:
    """Fraction of zeros in each layer's weight: what the pruning functions report back."""
    return {name: float((m.weight == 0).sum()) / m.weight.numel() for name, m in linears.items()}


@torch.no_grad()
def magnitude_prune_(
    model: nn.Module, sparsity: float, scope: str = "layer", filter_fn: FilterFn | None = None
) -> dict[str, float]:
    """Magnitude-prune the selected nn.Linear weights in place; returns each layer's sparsity.

    scope="layer": each layer loses the same fraction. scope="global": one threshold over all
    selected layers together, so layers of small weights lose more than layers of large ones
    (the pattern real global pruning leaves behind).
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    linears = select_linears(model, filter_fn)
    for name, module in linears.items():
        check_weight(module.weight, name=f"{name}.weight", dtypes=PRUNE_DTYPES)
    if scope == "layer":
        for module in linears.values():
            module.weight.copy_(magnitude_prune(module.weight, sparsity))
    else:
        device = next(iter(linears.values())).weight.device
        scores = torch.cat([m.weight.abs().flatten().float().to(device) for m in linears.values()])
        mask = smallest_mask(scores, round(sparsity * scores.numel()))
        sizes = [m.weight.numel() for m in linears.values()]
        for module, layer_mask in zip(linears.values(), mask.split(sizes)):
            module.weight.masked_fill_(layer_mask.view_as(module.weight).to(module.weight.device), 0)
    return layer_sparsity(linears)
