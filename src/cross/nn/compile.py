"""cross.compile: ``torch.compile`` for models with cross's layers, the stacked siblings sharing one product.

Under ``torch.compile`` a stacked sibling cannot check that its input is the one the product was made
from (``nn/stack.py``), so each sibling's call traces the whole stacked product and takes its rows.
In the graph inductor compiles, those calls are identical nodes: the same operator on the same
values (by then the graph is functional, so equal arguments are equal values; a change in place is a
new node). ``SharedProducts``, a pass run after inductor's own post-grad passes, keeps the first of
each set of identical pure calls and hands its result to the others' users, so the siblings run one
product, as they do in eager mode and in CUDA graphs. ``compile`` is ``torch.compile`` with that pass.

    model = cross.compile(model)                      # any torch.compile arguments: mode=, dynamic=, ...

A plain ``torch.compile`` gives the same outputs, with each sibling running the whole stacked layer.
(Not the ``cross compile`` command, which sparsifies a Hugging Face model and saves it.)
"""

from __future__ import annotations

import operator

import torch
from torch import nn

try:  # inductor's base class for a pass whose result its cache can key on
    from torch._inductor.custom_graph_pass import CustomGraphPass
except ImportError:  # pragma: no cover - older torch: a plain callable is taken
    CustomGraphPass = object


def _pure(target) -> bool:
    """An operator whose result depends on its arguments alone: no change in place, no randomness,
    no uninitialised memory."""
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    tags = set(target.tags)
    return (not target._schema.is_mutable and torch.Tag.nondeterministic_seeded not in tags
            and torch.Tag.nondeterministic_bitwise not in tags and not target.__name__.startswith(("empty", "new_empty")))


def _barrier(target) -> bool:
    """A node after which an earlier call may no longer equal a later one with the same arguments:
    a change in place, or anything this pass cannot see into (a higher-order operator)."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable
    return isinstance(target, torch._ops.HigherOrderOperator)


def _key(value):
    """A hashable stand-in for a node's arguments (nodes by identity, lists as tuples, floats by their
    bits)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, torch.fx.Node):
        return ("node", value)
    if isinstance(value, float):  # 0.0 and -0.0 are equal but not the same constant
        return ("float", value.hex())
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    hash(value)  # TypeError for anything unhashable: that node is left alone
    return (type(value).__name__, value)


def share_repeated_calls(graph: torch.fx.Graph) -> int:
    """Merge identical pure calls in ``graph`` (in place): a later call of the same operator on the
    same argument nodes and constants, with no change in place or opaque call between the two, is
    replaced by the earlier one. Returns the number of nodes removed."""
    seen: dict = {}
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if _barrier(node.target):
            seen.clear()
            continue
        if not _pure(node.target):
            continue
        try:
            key = (node.target, _key(node.args), _key(node.kwargs))
        except TypeError:
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            removed += 1
    return removed


class SharedProducts(CustomGraphPass):
    """Inductor's ``post_grad_custom_post_pass``: ``share_repeated_calls``. ``then``: a pass the
    caller had set there, run after this one."""

    def __init__(self, then=None):
        self.then = then
        self.removed = 0  # nodes removed over every graph this pass ran on

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.removed += share_repeated_calls(graph)
        if self.then is not None:
            self.then(graph)

    def uuid(self):
        then = getattr(self.then, "uuid", lambda: repr(self.then))()
        return ("cross.SharedProducts", 1, then)


def compile_options(mode: str | None = None, options: dict | None = None, dynamic: bool | None = None) -> dict:
    """Inductor's options for ``torch.compile(options=...)``: the mode's (``mode``), then ``options``,
    with a new ``SharedProducts`` as ``post_grad_custom_post_pass`` (one given in ``options`` runs
    after it)."""
    merged = dict(torch._inductor.list_mode_options(mode, dynamic)) if mode is not None else {}
    merged.update(options or {})
    merged["post_grad_custom_post_pass"] = SharedProducts(merged.get("post_grad_custom_post_pass"))
    return merged


def compile(model: nn.Module, *, mode: str | None = None, options: dict | None = None, **kwargs):
    """``torch.compile(model, ...)`` with ``SharedProducts`` added to inductor's post-grad passes, so
    that stacked siblings (``stack_siblings_``) share one product under compilation. ``mode`` and
    ``options`` may be given together (``compile_options``); the other arguments go to torch.compile
    unchanged. Only the inductor backend runs post-grad passes: another ``backend`` is refused."""
    if kwargs.get("backend", "inductor") != "inductor":
        raise ValueError(f"cross.compile: expected the inductor backend (its post-grad passes share the siblings' "
                         f"product), got backend={kwargs['backend']!r}; call torch.compile directly for another backend")
    return torch.compile(model, options=compile_options(mode, options, kwargs.get("dynamic")), **kwargs)
