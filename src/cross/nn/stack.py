"""stack_siblings_ / unstack_siblings_: linear layers that read the same input, run as one.

An attention block's q, k and v projections read the same hidden state, and so do an MLP's gate and
up projections. Stacked along the output features they are one weight ([sum of out_features,
in_features]) and one product: one launch, one fixed cost and one pass over the input instead of
three or two. Most of a sparse kernel's time at a few tokens is fixed cost, so stacking helps the
sparse model more than the dense one, and it helps both: on the H100 (bf16, one token, 90%) q, k, v
stacked run 11.4 us sparse against 3 x 8.5 us apart, and cuBLAS 39.8 us against 3 x 19.3
(``benchmarks/results/h100/kernels_stacked.csv``).

``stack_siblings_`` replaces each sibling by a ``SiblingLinear``: the first of a group (its lead)
holds the stacked layer as its child ``stacked`` (an ``nn.Linear``, which ``sparsify_`` then
treats like any other), and every sibling returns its columns of the stacked product, a view. The
lead computes the product on the first sibling's call and hands it to the others that are called
with the same input tensor (the same object, unchanged: its version counter is checked) during the
same call of the module that holds the group (its scope: the siblings' parent, whose forward hooks
drop the product when it returns). A sibling called with another tensor, or twice with one,
computes the product again, so the outputs are always those of the siblings' own weights; siblings
found reading different inputs (cross-attention's k and v read the encoder's states) are reported
by a ``SiblingInputWarning``, because stacking them costs time. Two limits:
- tensors made under ``torch.inference_mode`` have no version counter: a change in place to the
  input between the siblings' calls goes unseen there (no known model does that);
- under ``torch.compile`` the trace cannot check the input for changes in place, so each sibling's
  call traces the whole stacked product and takes its rows; ``cross.compile`` (``nn/compile.py``)
  merges those identical calls in the compiled graph, so the siblings share one product there too.
  Under a plain ``torch.compile`` each sibling runs the whole stacked layer: stacking then costs time.
Above ``APART_ABOVE_TOKENS`` tokens (a prefill) a stacked ``nn.Linear``, and a stacked SparseLinear
whose plan falls back to cuBLAS on its dense copy there, run each sibling's own rows of the weight
(``forward_rows`` for the SparseLinear), as the layers apart do: the stacked dense product measured
~2% slower than the layers apart in a 512-token prefill on the H100
(``benchmarks/results/h100/model_stacked_wgmma60.md``). At a few tokens stacking is one cuBLAS call
that beats three (at one token 39.8 us against 3 x 19.3).
Cross-attention blocks (``encoder_attn``, ``crossattention``, ``cross_attn``, T5's
``EncDecAttention``) are not stacked by name.

The model's state dict changes with it (the lead's ``stacked.weight`` in place of the siblings'
weights): ``unstack_siblings_`` gives the separate ``nn.Linear`` layers back, exactly. ``cross.save``
records the groups, and ``cross.load`` stacks the model it loads into the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .linear import SparseLinear

#: The groups of sibling names found by ``stack_siblings_`` (children of one module): Hugging Face
#: Llama / Mistral / Qwen / Gemma attention and MLP, BERT's self-attention, T5's attention and gated
#: MLP, DistilBERT's attention
SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"),
                 ("q", "k", "v"), ("wi_0", "wi_1"), ("q_lin", "k_lin", "v_lin"))
#: Parents not stacked by name: their siblings read different inputs (queries from the decoder, keys
#: and values from the encoder)
CROSS_ATTENTION = ("encoder_attn", "crossattention", "cross_attn", "EncDecAttention")


#: Above this many tokens (rows of the input), siblings whose stacked layer runs cuBLAS (an nn.Linear, or a
#: SparseLinear falling back to its dense copy) run their own rows of its weight; at or below, the stacked
#: call. Measured: stacked faster at 1-16 tokens, slower at 512; the threshold between is not measured.
APART_ABOVE_TOKENS = 64


class SiblingInputWarning(UserWarning):
    """Stacked siblings were called with different inputs: each call ran the whole stacked layer."""


class SiblingLinear(nn.Module):
    """One of several linear layers with one input, computed as its rows ``[lo, hi)`` of their
    stacked product. Built by ``stack_siblings_``. The group's first sibling holds ``stacked``; the
    others refer to it (``lead``) without holding it, so the model holds the stacked weight once."""

    def __init__(self, lead: SiblingLinear | None, index: int, bounds: Sequence[int], stacked: nn.Module | None = None):
        super().__init__()
        if (lead is None) == (stacked is None):
            raise ValueError("expected either the stacked layer (the group's first sibling) or the lead (the others)")
        self.index = int(index)
        self.bounds = tuple(int(b) for b in bounds)
        if stacked is not None:
            self.stacked = stacked
            # (input, stacked output, (input version, weight versions), siblings yet to take it, weight objects)
            self._cache = None
            self._group = "siblings"  # their names, for messages (stack_siblings_ sets them)
            self._warned = False
        object.__setattr__(self, "_lead", self if lead is None else lead)  # not a child: held once, by the model

    @property
    def lead(self) -> SiblingLinear:
        return self._lead

    @property
    def in_features(self) -> int:
        return self.lead.stacked.in_features

    @property
    def out_features(self) -> int:
        return self.bounds[self.index + 1] - self.bounds[self.index]

    @property
    def weight(self) -> torch.Tensor:
        """This sibling's rows of the stacked weight (a view; on the meta device where the stacked
        layer is a SparseLinear, whose ``weight`` holds no values)."""
        return self.lead.stacked.weight[self.bounds[self.index]:self.bounds[self.index + 1]]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.lead.stacked.bias
        return None if b is None else b[self.bounds[self.index]:self.bounds[self.index + 1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lead._part(self.index, x)

    def _part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds[index], self.bounds[index + 1]
        stacked = self.stacked
        n = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
        if n > APART_ABOVE_TOKENS:  # cuBLAS at a prefill's size: each sibling its own rows, as apart
            if type(stacked) is nn.Linear:
                return nn.functional.linear(x, stacked.weight[lo:hi], None if stacked.bias is None else stacked.bias[lo:hi])
            if isinstance(stacked, SparseLinear) and stacked.runs_dense_copy(n):
                return stacked.forward_rows(x, lo, hi)
        if torch.compiler.is_compiling():  # the whole product, shared by cross.compile's pass (module docstring)
            return self.stacked(x)[..., lo:hi]
        version = (None if x.is_inference() else x._version, *self._weight_versions())
        objects = self._weight_objects()
        cache = self._cache
        if (cache is not None and cache[0] is x and cache[2] == version and index in cache[3]
                and all(a is b for a, b in zip(cache[4], objects))):
            out, waiting = cache[1], cache[3] - {index}
        else:
            if cache is not None and cache[0] is not x and not self._warned:
                self._warned = True
                warnings.warn(f"{self._group}: stacked siblings called with different inputs, so each call ran the "
                              "whole stacked layer (slower than the layers apart): unstack_siblings_, or "
                              "stack_siblings_ with groups= that leave them out", SiblingInputWarning, stacklevel=5)
            out, waiting = self.stacked(x), frozenset(range(len(self.bounds) - 1)) - {index}
        self._cache = (x, out, version, waiting, objects) if waiting else None
        return out[..., lo:hi]

    def _weight_objects(self) -> tuple:
        """What the stacked product was made from: a new weight (a cast, a device move, sparsify_)
        makes the shared product stale."""
        st = self.stacked
        return (st, st.weight, st.bias) if type(st) is nn.Linear else (st, getattr(st, "packed", None), st.bias)

    def _weight_versions(self) -> tuple:
        """The stacked nn.Linear's parameters' version counters (changes in place, such as
        load_state_dict's copies)."""
        st = self.stacked
        if type(st) is not nn.Linear:
            return ()
        return (st.weight._version, None if st.bias is None else st.bias._version)

    def __getstate__(self):
        state = super().__getstate__()
        if "_cache" in state:  # copies and pickles hold no product (nor an autograd graph)
            state = {**state, "_cache": None}
        return state

    def extra_repr(self) -> str:
        return f"rows {self.bounds[self.index]}:{self.bounds[self.index + 1]} of the stacked layer, sibling {self.index}"


def _end_scope(scope: nn.Module, *_) -> None:
    """Drop the stacked products of the groups ``scope`` holds (its forward pre-hook and hook: the
    product is shared within one call of the scope only)."""
    for name in scope._cross_sibling_leads:
        scope.get_submodule(name)._cache = None


def _siblings_ok(layers: Sequence[nn.Module]) -> str | None:
    """Why ``layers`` cannot be stacked, or None."""
    if not all(type(m) is nn.Linear for m in layers):
        kinds = sorted({type(m).__name__ for m in layers})
        return f"expected nn.Linear layers (stack before sparsify_), got {', '.join(kinds)}"
    first = layers[0]
    if len({id(m) for m in layers}) < len(layers):
        return "expected distinct layers, got one layer twice"
    for m in layers[1:]:
        if m.in_features != first.in_features:
            return f"expected one in_features, got {first.in_features} and {m.in_features}"
        if m.weight.dtype != first.weight.dtype or m.weight.device != first.weight.device:
            return (f"expected one dtype and device, got {first.weight.dtype} on {first.weight.device} and "
                    f"{m.weight.dtype} on {m.weight.device}")
        if (m.bias is None) != (first.bias is None):
            return "expected all with a bias or all without"
        if m.weight.requires_grad != first.weight.requires_grad:
            return "expected the same requires_grad on every weight"
    return None


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (parent, attribute) holding each module, by the module's id."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        if fqn:
            parent_name, _, name = fqn.rpartition(".")
            places = out.setdefault(id(module), [])
            parent = model.get_submodule(parent_name)
            if not any(p is parent and n == name for p, n in places):
                places.append((parent, name))
    return out


def _found_groups(model: nn.Module) -> list[list[str]]:
    """The fully qualified names of each group of SIBLING_NAMES children that can be stacked; a
    layer held in more than one place (shared, tied) is left alone."""
    holders = _holders(model)
    groups = []
    for fqn, module in model.named_modules():
        if any(c in part for part in fqn.split(".") for c in CROSS_ATTENTION):
            continue
        for names in SIBLING_NAMES:
            layers = [getattr(module, n, None) for n in names]
            if any(not isinstance(m, nn.Module) for m in layers) or _siblings_ok(layers) is not None:
                continue
            if any(len(holders[id(m)]) > 1 for m in layers):
                continue
            groups.append([f"{fqn}.{n}" if fqn else n for n in names])
    return groups


@torch.no_grad()
def stack_siblings_(model: nn.Module, groups: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """Replace, in place, each group of sibling ``nn.Linear`` layers (layers that read the same
    input) by ``SiblingLinear`` views of one stacked ``nn.Linear`` (see the module's docstring).

    groups: the fully qualified names of each group, in the order their rows are stacked; None (the
        default): every q_proj / k_proj / v_proj, gate_proj / up_proj, query / key / value (and
        T5's q / k / v and wi_0 / wi_1, DistilBERT's q_lin / k_lin / v_lin) found as children of
        one module (``SIBLING_NAMES``), where they are nn.Linear layers of one input
        width, dtype, device and bias setting, each held in one place only.
    Call it before ``sparsify_`` (which then plans the stacked layers) and, for a fair comparison,
    on the dense model that the sparse one is timed against: stacking speeds up cuBLAS too.
    Returns the groups stacked. Every group is checked before any is stacked: on an error the model
    is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if groups is None:
        groups = _found_groups(model)
    else:
        groups = [list(g) for g in groups]
        for g in groups:
            if len(g) < 2 or not all(isinstance(n, str) for n in g):
                raise ValueError(f"groups: expected groups of two or more layer names, got {g!r}")
    _stack(model, groups)
    return [list(g) for g in groups]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """An nn.Linear holding ``weight`` and ``bias`` (no initialisation drawn first), with ``like``'s
    requires_grad flags and training mode."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, like.weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias, like.bias.requires_grad)
    return linear.train(like.training)


def _scope(model: nn.Module, names: Sequence[str]) -> str:
    """The name of the innermost module holding every one of ``names`` (their common parent)."""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _stack(model: nn.Module, groups: list[list[str]]) -> list[tuple[nn.Module, str, nn.Module]]:
    """stack_siblings_'s work: every group checked, then stacked; returns (parent, attribute, the
    layer it held) for each place changed, for ``_restore``."""
    resolved, seen = [], set()
    for names in groups:
        try:
            layers = [model.get_submodule(n) for n in names]
        except AttributeError as e:
            raise ValueError(f"groups: {names}: {e}") from None
        why = _siblings_ok(layers)
        if why is not None:
            raise ValueError(f"groups: {names}: {why}")
        if seen & {id(m) for m in layers}:
            raise ValueError(f"groups: {names}: expected each layer in one group, got one in two")
        seen |= {id(m) for m in layers}
        resolved.append((names, layers))
    holders = _holders(model)
    changed = []
    for names, layers in resolved:
        bounds = [0]
        for m in layers:
            bounds.append(bounds[-1] + m.out_features)
        first = layers[0]
        stacked = _linear(torch.cat([m.weight for m in layers]),
                          None if first.bias is None else torch.cat([m.bias for m in layers]), first)
        lead = SiblingLinear(None, 0, bounds, stacked).train(first.training)
        lead._group = " / ".join(names)
        members = [lead] + [SiblingLinear(lead, i, bounds).train(m.training) for i, m in enumerate(layers) if i]
        for layer, member in zip(layers, members):
            for parent, name in holders[id(layer)]:
                setattr(parent, name, member)
                changed.append((parent, name, layer))
        scope_name = _scope(model, names)
        scope = model.get_submodule(scope_name)
        lead_name = names[0][len(scope_name) + 1:] if scope_name else names[0]
        if not hasattr(scope, "_cross_sibling_leads"):
            scope._cross_sibling_leads = ()
            scope.register_forward_pre_hook(_end_scope)
            scope.register_forward_hook(_end_scope)
        scope._cross_sibling_leads += (lead_name,)
    return changed


def _drop_scopes(model: nn.Module) -> None:
    """Remove the scope hooks and names ``_stack`` gave the modules of ``model``."""
    for module in model.modules():
        if hasattr(module, "_cross_sibling_leads"):
            del module._cross_sibling_leads
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for key in [k for k, fn in hooks.items() if fn is _end_scope]:
                    del hooks[key]


def _restore(model: nn.Module, changed: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Undo ``_stack``: the very layers it replaced, back in their places."""
    if not changed:
        return
    for parent, name, layer in changed:
        setattr(parent, name, layer)
    _drop_scopes(model)


def sibling_groups(model: nn.Module) -> list[list[str]]:
    """The fully qualified names of each group of stacked siblings in ``model``, in the order of
    their rows (``stack_siblings_``'s ``groups``, to stack another model the same way)."""
    groups: dict[int, dict[int, str]] = {}
    for fqn, module in model.named_modules():
        if isinstance(module, SiblingLinear):
            groups.setdefault(id(module.lead), {})[module.index] = fqn
    return [[names[i] for i in sorted(names)] for names in groups.values()]


@torch.no_grad()
def unstack_siblings_(model: nn.Module) -> int:
    """Replace, in place, every ``SiblingLinear`` of ``model`` by an ``nn.Linear`` with its rows of
    the stacked weight (decoded exactly where ``sparsify_`` made the stacked layer a SparseLinear).
    Returns how many modules were replaced."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    holders = _holders(model)
    members = [m for m in model.modules() if isinstance(m, SiblingLinear)]
    dense: dict[int, nn.Linear] = {}  # by the lead's id: its stacked layer as an nn.Linear
    for member in members:
        lead = member.lead
        if id(lead) not in dense:
            stacked = lead.stacked
            dense[id(lead)] = stacked.to_dense_linear() if isinstance(stacked, SparseLinear) else stacked
        whole = dense[id(lead)]
        lo, hi = member.bounds[member.index], member.bounds[member.index + 1]
        linear = _linear(whole.weight[lo:hi].clone(), None if whole.bias is None else whole.bias[lo:hi].clone(),
                         whole).train(member.training)
        for parent, name in holders.get(id(member), []):
            setattr(parent, name, linear)
    _drop_scopes(model)
    return len(members)
