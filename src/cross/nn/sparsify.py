"""sparsify_ / unsparsify_: swap a model's nn.Linear instances for SparseLinear and back, in place.

Module instances are replaced on their parents (setattr); no library class is patched. A layer
is swapped only when its plan is predicted to win in some token-count bucket (or the caller forces
the plan with keep_dense=False); the report says what happened to every layer and why. With a
``tp_group``, Llama-style blocks are first sharded over the group (``parallel.tensor_parallel_``)
and each rank's parts are then planned like any other layer.
"""

from __future__ import annotations

import statistics
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import dtype_name
from ..partition import DEFAULT_BUCKETS
from ..partition.plan import KERNEL_NAMES, bucket_name
from ..partition.planner import WGMMA_LAYOUT_DEFAULT, check_buckets, design_tokens, is_near_win
from ..runtime import ReferencePathWarning
from .linear import (KEEP_DENSE, SparseLinear, bucket_facts, check_measure, measures, plan_facts, plan_linear,
                     wgmma_options)
from .parallel import SPLIT_POLICIES, ShardedLinear, tensor_parallel_
from .stack import _holders, stack_siblings_

SPARSE = "sparse"
NO_WIN = "dense: no win (predicted or measured)"
SKIP_FILTER = "skipped: filter"
SKIP_SPARSITY = "skipped: sparsity below min"
ACTIONS = (SPARSE, NO_WIN, SKIP_FILTER, SKIP_SPARSITY)
#: With wgmma_layout 'auto', once this many layers of one shape, dtype and sparsity (to 1%) had the layouts'
#: contest keep the same layout, the rest of them take that layout without one (``LayoutMemo``). In the
#: Llama-2-7B-shaped decoder at 50% all 32 layers of each shape kept the same layout, and the contests
#: doubled sparsify_'s time (217 s against 109 s, H100: benchmarks/results/h100/layout_half/).
LAYOUT_SETTLED = 2


class LayoutMemo:
    """The layouts' contests of a sparsify_ run: the layout each contest kept, by weight shape, dtype and
    sparsity (to 1%), and the layout a layer of such a weight is asked for: the settled one where the
    last LAYOUT_SETTLED contests of its kind all kept it, else what was asked ('auto': a contest)."""

    def __init__(self, settled: int = LAYOUT_SETTLED):
        self.settled, self.kept = settled, {}

    @staticmethod
    def key(facts: dict) -> tuple:
        return facts["shape"], facts["dtype"], round(facts["sparsity"], 2)

    def layout_for(self, facts: dict, asked: str) -> str:
        last = self.kept.get(self.key(facts), [])[-self.settled:]
        if asked != "auto" or len(last) < self.settled or len(set(last)) > 1:
            return asked
        return last[0]

    def record(self, facts: dict, plan) -> None:
        """The layout ``plan``'s contest kept, where its measured check held one (both layouts' sums)."""
        if "wgmma_layouts_us" in plan.provenance.get("measured", {}):
            self.kept.setdefault(self.key(facts), []).append(plan.provenance["options"]["wgmma_layout"])


@dataclass(frozen=True)
class LayerReport:
    """What sparsify_ did with one nn.Linear. ``summary`` is SparseLinear.summary() for swapped
    layers, the plan's facts for layers that stayed dense, and shape/sparsity only for skipped ones."""

    fqn: str
    action: str
    summary: dict

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.summary["shape"])

    @property
    def sparsity(self) -> float:
        return float(self.summary["sparsity"])

    @property
    def nbytes(self) -> int:
        return int(self.summary["nbytes"])

    @property
    def dense_nbytes(self) -> int:
        return int(self.summary["dense_nbytes"])

    @property
    def nbytes_by_format(self) -> dict[str, int]:
        """``nbytes`` by what holds them (SparseLinear.nbytes_by_format; a dense layer's are 'dense'
        and 'bias')."""
        return dict(self.summary.get("nbytes_by_format") or {"dense": self.nbytes})


def _timed(layer: LayerReport, bucket: dict) -> tuple[float, float] | None:
    """A bucket's measured times (cuBLAS's, then what the layer runs there: its plan's where the plan
    runs, cuBLAS's where the bucket falls back or the layer stayed dense); None where it was not timed."""
    if bucket.get("measured_us") is None:
        return None
    plan_runs = layer.action == SPARSE and bucket["runs"] == "plan"
    return bucket["measured_dense_us"], bucket["measured_us"] if plan_runs else bucket["measured_dense_us"]


@dataclass(frozen=True)
class SparsifyReport:
    """Per layer (by fully qualified name, in model order) what sparsify_ did, and totals."""

    layers: dict[str, LayerReport] = field(default_factory=dict)

    def by_action(self, action: str) -> list[str]:
        return [name for name, layer in self.layers.items() if layer.action == action]

    @property
    def n_swapped(self) -> int:
        return len(self.by_action(SPARSE))

    @property
    def dense_nbytes(self) -> int:
        """Bytes of every nn.Linear sparsify_ looked at, as dense layers."""
        return sum(layer.dense_nbytes for layer in self.layers.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the same layers after sparsify_ (swapped ones as SparseLinear, the rest dense)."""
        return sum(layer.nbytes for layer in self.layers.values())

    def nbytes_by_format(self) -> dict[str, int]:
        """``nbytes`` by what holds them, summed over the layers: each sparse format by the kernel that
        reads it ('rows', 'tiles', 'slices', 'wgmma24'), 'tables' (the kernels' work lists), 'dense'
        (the dense copies the sparse layers keep for the token counts that fall back, and the layers
        left dense) and 'bias'; largest first."""
        total: dict[str, int] = {}
        for layer in self.layers.values():
            for part, n in layer.nbytes_by_format.items():
                total[part] = total.get(part, 0) + int(n)
        return dict(sorted(total.items(), key=lambda kv: -kv[1]))

    def speedup_by_bucket(self) -> dict[tuple[int, int], float]:
        """Predicted speed-up of all planned layers together per token-count bucket:
        sum of dense times over sum of the times each layer runs at (dense for layers kept dense).
        Skipped layers are not planned and not counted."""
        dense, actual = {}, {}
        for layer in self.layers.values():
            for b in layer.summary.get("buckets", ()):
                key = (b["n_min"], b["n_max"])
                run = b["run_us"] if layer.action == SPARSE else b["dense_us"]
                dense[key] = dense.get(key, 0.0) + b["dense_us"]
                actual[key] = actual.get(key, 0.0) + run
        return {key: dense[key] / max(actual[key], 1e-9) for key in dense}

    def measured_by_bucket(self) -> dict[tuple[int, int], dict]:
        """Per token-count bucket that some layer timed on the GPU (the measured check), the layers'
        measured times summed: 'dense_us' (cuBLAS on each layer's weight), 'run_us' (what each runs
        there: its plan's time where the plan runs, cuBLAS's where the bucket falls back to the dense
        product or the layer stayed dense), 'timed' (the layers counted) and 'layers' (all planned
        layers). Each time is one layer alone (``do_bench``-style, L2 flushed), so the ratio is the
        linear layers' own speed-up, not the model step's."""
        out: dict[tuple[int, int], dict] = {}
        for layer in self.layers.values():
            for b in layer.summary.get("buckets", ()):
                key = (b["n_min"], b["n_max"])
                entry = out.setdefault(key, {"dense_us": 0.0, "run_us": 0.0, "timed": 0, "layers": 0})
                entry["layers"] += 1
                if (timed := _timed(layer, b)) is None:
                    continue
                entry["dense_us"] += timed[0]
                entry["run_us"] += timed[1]
                entry["timed"] += 1
        return {key: entry for key, entry in out.items() if entry["timed"]}

    def measured_by_shape(self, n_tokens: int) -> dict[tuple[int, int], dict]:
        """Per weight shape, the measured check's times at the bucket holding ``n_tokens`` (each
        layer alone, L2 flushed), as measured_by_bucket counts them: medians of 'dense_us' and
        'run_us' over the shape's timed layers, and 'timed' (their count); shapes none was timed
        for are left out."""
        times: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for layer in self.layers.values():
            for b in layer.summary.get("buckets", ()):
                if b["n_min"] <= n_tokens <= b["n_max"] and (timed := _timed(layer, b)) is not None:
                    times.setdefault(layer.shape, []).append(timed)
        return {shape: {"dense_us": statistics.median(d for d, _ in v), "run_us": statistics.median(r for _, r in v),
                        "timed": len(v)} for shape, v in times.items()}

    def kernels_by_bucket(self) -> dict[tuple[int, int], dict[str, int]]:
        """Per token-count bucket, how many of the swapped layers run each kernel there (by name:
        'row', 'tile', 'warpgroup 2:4', ...; 'dense' where the bucket runs the dense product)."""
        runs: dict[tuple[int, int], dict[str, int]] = {}
        for layer in self.layers.values():
            if layer.action != SPARSE:
                continue
            for b in layer.summary.get("buckets", ()):
                what = "dense" if b["runs"] == "dense" else KERNEL_NAMES[b["kernel"]]
                counts = runs.setdefault((b["n_min"], b["n_max"]), {})
                counts[what] = counts.get(what, 0) + 1
        return runs

    def measured_check(self) -> str:
        """What the GPU timing decided (``SparseLinear.from_dense(measure=...)``), per bucket that
        some layer timed and per weight shape: at the first bucket the layers kept sparse of those
        timed, at the others the layers whose plan runs there (a predicted win confirmed, or a near
        win taken) of those timed, each with the range of their measured speed-ups (dense over
        plan); "no layer timed" where nothing was."""
        spans: dict[tuple[int, int], dict[str, list[tuple[float, str | None]]]] = {}
        first = self._first_bucket()
        for layer in self.layers.values():
            for b in layer.summary.get("buckets") or []:
                if b.get("measured_us") is None:
                    continue
                span = (b["n_min"], b["n_max"])
                runs = layer.action == SPARSE and (span == first or not b["fallback"])
                kernel = ("dense" if b["runs"] == "dense" else _kernel_name(b["kernel"], layer.summary)) if runs else None
                spans.setdefault(span, {}).setdefault("x".join(map(str, layer.shape)), []).append(
                    (b["measured_dense_us"] / b["measured_us"], kernel))
        if not spans:
            return "no layer timed"
        return " | ".join(
            f"{bucket_name(*span)}: " + "; ".join(
                f"{shape} {sum(k is not None for _, k in v)} of {len(v)} {'kept' if span == first else 'taken'}"
                f"{_kernel_counts([k for _, k in v if k is not None])}, "
                f"measured {min(r for r, _ in v):.2f}-{max(r for r, _ in v):.2f}x" for shape, v in shapes.items())
            for span, shapes in sorted(spans.items()))

    # ------------------------------------------------------------------ tables
    def _first_bucket(self) -> tuple[int, int] | None:
        for layer in self.layers.values():
            if layer.summary.get("buckets"):
                b = layer.summary["buckets"][0]
                return (b["n_min"], b["n_max"])
        return None

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows; a 'measured' column (dense over plan, timed on the GPU at the first
        bucket: ``SparseLinear.from_dense(measure=...)``) appears where some layer was timed."""
        first = self._first_bucket()
        span = f" {bucket_name(*first)}" if first else ""
        firsts = {name: (layer.summary.get("buckets") or [None])[0] for name, layer in self.layers.items()}
        timed = any(b is not None and b.get("measured_us") is not None for b in firsts.values())
        header = ["layer", "shape", "sparsity", "tiles E/D/B/I", f"speed-up{span}",
                  *([f"measured{span}"] if timed else []), "bytes/dense", "action"]
        rows = []
        for name, layer in self.layers.items():
            s, b = layer.summary, firsts[name]
            tiles = "/".join(str(s["tiles"][k]) for k in ("EMPTY", "DENSE", "BITMAP", "INDEX")) if "tiles" in s else "-"
            speedup = "-" if b is None else f"{b['speedup'] if layer.action == SPARSE else 1.0:.2f}"  # what runs
            action = layer.action
            if action == NO_WIN and b is not None:  # and what its plan was predicted to do there
                action += f"; plan {b['dense_us'] / max(b['predicted_us'], 1e-9):.2f}x{span}"
            measured = ("-" if b is None or b.get("measured_us") is None
                        else f"{b['measured_dense_us'] / b['measured_us']:.2f}")
            rows.append([name or "(root)", "x".join(map(str, layer.shape)), f"{layer.sparsity:.1%}", tiles, speedup,
                         *([measured] if timed else []), f"{layer.nbytes / layer.dense_nbytes:.2f}", action])
        return header, rows

    @staticmethod
    def _numeric(header: list[str]) -> set[int]:
        return {i for i, h in enumerate(header) if h.split(" ")[0] in ("sparsity", "speed-up", "measured", "bytes/dense")}

    def _totals(self) -> str:
        speed = ", ".join(f"{bucket_name(a, b)}: {v:.2f}x" for (a, b), v in self.speedup_by_bucket().items())
        if not self.layers:
            return "no nn.Linear layers"
        runs = " | ".join(f"{bucket_name(*span)} " + ", ".join(f"{kernel} {count}" for kernel, count in
                                                               sorted(counts.items(), key=lambda kv: -kv[1]))
                          for span, counts in self.kernels_by_bucket().items())
        return (f"{self.n_swapped} of {len(self.layers)} layers sparse; "
                f"{self.nbytes / 1e6:.2f} MB vs {self.dense_nbytes / 1e6:.2f} MB dense "
                f"({self.nbytes / max(self.dense_nbytes, 1):.2f}x: {self.nbytes_text()})"
                + (f"; predicted speed-up {speed}" if speed else "")
                + (f"\nthe sparse layers run, by bucket: {runs}" if runs else ""))

    def nbytes_text(self) -> str:
        """The bytes by part, readable: 'dense weights 2.10 MB, row format 0.66 MB, ...'."""
        names = {**{k: f"{v} format" for k, v in KERNEL_NAMES.items()}, "tables": "kernel tables", "dense": "dense weights"}
        return ", ".join(f"{names.get(part, part)} {n / 1e6:.2f} MB" for part, n in self.nbytes_by_format().items())

    def table(self) -> str:
        """A fixed-width table: one row per layer, then the totals."""
        header, rows = self._rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        right = self._numeric(header)
        fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()  # noqa: E731
        lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows), self._totals()]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        header, rows = self._rows()
        right = self._numeric(header)
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(r)) + " |" for r in rows]
        return "\n".join(lines + ["", self._totals()])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"SparsifyReport({self.n_swapped} of {len(self.layers)} nn.Linear layers sparse)"


def _kernel_name(kernel: str, summary: dict) -> str:
    """The kernel's name, the warpgroup 2:4 kernel's with its format's layout where the layer says it
    ('warpgroup 2:4 compressed': with wgmma_layout 'auto', the layout the measured check kept)."""
    layout = summary.get("wgmma_layout")
    return f"{KERNEL_NAMES[kernel]} {layout}" if kernel == "wgmma24" and layout in ("slots", "compressed", "lone") \
        else KERNEL_NAMES[kernel]


def _kernel_counts(kernels: list[str]) -> str:
    """What the layers counted as running a bucket run there: " (row)" where they all run one kernel,
    " (row 40, warpgroup 2:4 24)" where they differ (most first), "" where none runs."""
    if not kernels:
        return ""
    counts = sorted(((kernels.count(k), k) for k in set(kernels)), key=lambda c: (-c[0], c[1]))
    return f" ({counts[0][1]})" if len(counts) == 1 else " (" + ", ".join(f"{k} {n}" for n, k in counts) + ")"


def _occurrences(model: nn.Module, want) -> dict[int, tuple[str, nn.Module, list[tuple[nn.Module, str]]]]:
    """Modules matching ``want`` by identity: (first fully qualified name, module, every (parent,
    attribute) holding it). A module shared by several parents is swapped everywhere at once."""
    holders = _holders(model)
    found: dict[int, tuple[str, nn.Module, list]] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):  # model order, every path
        if fqn and want(module) and id(module) not in found:
            found[id(module)] = (fqn, module, holders[id(module)])
    return found


class WeightSource:
    """The nn.Parameter that sparsify_ swapped layers were made from, one object shared by every
    SparseLinear made from that Parameter (weights tied between modules, or to an embedding), so
    that unsparsify_ gives them one Parameter again. The reference is weak (the dense weight is not
    kept alive); copies and pickles keep the sharing but not the reference."""

    def __init__(self, param: torch.Tensor | None):
        self._ref = None if param is None else weakref.ref(param)

    def param(self) -> torch.Tensor | None:
        return None if self._ref is None else self._ref()

    def __getstate__(self):
        return {"_ref": None}


def _weight_sparsity(weight: torch.Tensor) -> float:
    if weight.is_meta:  # no values: unknown (planning refuses it, plan_linear)
        return float("nan")
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def _dense_facts(linear: nn.Linear) -> dict:
    w, b = linear.weight, linear.bias
    nbytes = w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
    by_format = {"dense": w.numel() * w.element_size(), **({"bias": b.numel() * b.element_size()} if b is not None else {})}
    return {"shape": tuple(w.shape), "dtype": dtype_name(w.dtype), "sparsity": _weight_sparsity(w.detach()),
            "bias": b is not None, "nbytes": nbytes, "nbytes_by_format": by_format, "dense_nbytes": nbytes}


def _shard_facts(places) -> dict:
    """The split of a layer that is one rank's part of a ShardedLinear (empty for whole layers)."""
    parent = places[0][0]
    return {"shard": parent.shard_facts()} if isinstance(parent, ShardedLinear) else {}


@torch.no_grad()
def sparsify_(model: nn.Module, filter_fn=None, *, min_sparsity: float = 0.0, tokens=None, progress: bool = True,
              stack_siblings: bool = False, tp_group=None, tp_split: str = "cost",
              **from_dense_kwargs) -> SparsifyReport:
    """Replace, in place, every ``nn.Linear`` of ``model`` (exact type: subclasses such as
    MultiheadAttention's out_proj or quantized linears keep their own semantics and are left alone)
    by ``SparseLinear.from_dense(linear, **from_dense_kwargs)`` (its defaults: on a GPU the measured check
    keeps a bucket's fastest kernel only where it beats cuBLAS; on a compute capability 9.0 GPU the
    buckets of at most 16 tokens are offered to the warpgroup 2:4 kernel too).

    filter_fn(module, fqn) -> bool: torchao's signature (module first, fully qualified name second);
        a layer it rejects is skipped.
    min_sparsity: layers whose weight has a smaller fraction of zeros are skipped.
    tokens: the token counts (rows of the layers' inputs: batch x sequence) the model will be called
        with, e.g. ``(1,)`` for batch-1 decode or ``(1024,)`` for an encoder at batch 8 x 128; a
        layer is swapped only where its plan wins at one of them. None (the default): a win at any
        token count swaps it, and a layer that wins only at counts the model never sees holds its
        dense copy and its packed weight for nothing.
    A layer whose plan falls back to dense in every bucket (of ``tokens``) stays the same nn.Linear
    object (no predicted win, or on a GPU no measured win: ``measure``, see
    ``SparseLinear.from_dense``), unless keep_dense=False forces its plan. No dense module is kept for
    unsparsify_: it rebuilds each layer from the packed weight, exactly.
    stack_siblings: stack the layers that read the same input (q, k, v; gate, up) into one layer
        first (``stack_siblings_``; its layers are then planned, filtered and reported under the
        name '<first sibling>.stacked', e.g. 'model.layers.0.self_attn.q_proj.stacked': a filter_fn
        that should leave k_proj alone must reject that name, or stack with groups= that leave it
        out). Under torch.compile the siblings do not share the stacked product (see
        ``cross.nn.stack``): stack for eager and CUDA-graph runs. Compare the result with the dense model stacked the same way:
        stacking speeds up the dense product too.
    tp_group: a torch.distributed process group to shard Hugging Face Llama-style models over, in
        Megatron style (q/k/v and gate/up column-parallel, o and down row-parallel; see
        ``cross.nn.parallel``), before planning; every rank calls sparsify_ on the same whole
        model and keeps its parts. The parts are planned, filtered and reported under the layer's
        name like whole layers (their summary adds 'shard'); a part that is not swapped stays an
        nn.Linear shard, so the model is sharded either way. None (the default): no sharding (a
        model already sharded with ``tensor_parallel_`` has its parts planned the same way).
    tp_split: 'cost' (each rank gets the same predicted time at the first bucket's design token
        count) or 'rows' (equal numbers of heads and tiles).
    progress: a progress bar over the layers where stderr is a terminal; False: none.
    With wgmma_layout 'auto' (the default) the measured check times the warpgroup 2:4 format's two layouts
    where their bytes are close (``make_plan``); once LAYOUT_SETTLED layers of one shape, dtype and
    sparsity (to 1%) kept the same layout, the rest of them take it without the contest (each is still
    timed against dense in it).
    Warns with cross.runtime.ReferencePathWarning where sparse layers are left on the CPU (they run
    on the reference executor there), and with a UserWarning where there is no nn.Linear to look at.
    Returns a SparsifyReport (print it, or ``.table()`` / ``.to_markdown()``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if type(model) is nn.Linear:
        raise ValueError("model: expected a module containing nn.Linear layers, got an nn.Linear itself "
                         "(it cannot be replaced in place): use SparseLinear.from_dense(linear)")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity: expected a fraction in [0, 1], got {min_sparsity!r}")
    if tokens is not None:
        try:
            tokens = tuple(tokens)
        except TypeError:
            raise TypeError(f"tokens: expected a sequence of token counts, e.g. (1,) or (128, 1024), got "
                            f"{tokens!r}") from None
        if not tokens or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in tokens):
            raise ValueError(f"tokens: expected token counts (integers >= 1), got {tokens!r}")
        given = from_dense_kwargs.get("buckets")
        buckets = check_buckets(DEFAULT_BUCKETS if given is None else given)
        if max(tokens) > buckets[-1][1]:
            raise ValueError(f"tokens: {max(tokens)} is beyond the last bucket of buckets={buckets}: extend "
                             "the buckets or leave that count out")
    if "plan" in from_dense_kwargs:
        raise ValueError("plan: expected no plan for sparsify_ (one plan fits one weight); use SparseLinear.from_dense")
    keep_dense = from_dense_kwargs.pop("keep_dense", "auto")
    if keep_dense not in KEEP_DENSE:
        raise ValueError(f"keep_dense: expected one of {KEEP_DENSE}, got {keep_dense!r}")
    measure = from_dense_kwargs.pop("measure", "auto")
    check_measure(measure)  # the value; each layer's device is checked below
    dense_times: dict = {}  # the dense product's time per shape, measured once for all layers
    layouts = LayoutMemo()  # the layouts' contests' choices, by shape and sparsity
    if stack_siblings and tp_group is not None:
        raise ValueError("stack_siblings: expected no tp_group too (sharding splits the siblings apart)")
    if tp_split not in SPLIT_POLICIES:
        raise ValueError(f"tp_split: expected one of {SPLIT_POLICIES}, got {tp_split!r}")
    if tp_group is not None:
        cost = {k: from_dense_kwargs[k] for k in ("cost_model", "tile_shape", "nan_policy", "allowed_kinds")
                if k in from_dense_kwargs}
        buckets = from_dense_kwargs.get("buckets") or DEFAULT_BUCKETS
        tensor_parallel_(model, tp_group, policy=tp_split, n_tokens=design_tokens(*buckets[0]), **cost)

    if stack_siblings:
        stack_siblings_(model)
    layers: dict[str, LayerReport] = {}
    sources: dict[int, WeightSource] = {}  # by the weight Parameter's id: one per Parameter (tied weights)
    on_cpu: list[str] = []  # sparse layers that will run on the reference executor
    found = _occurrences(model, lambda m: type(m) is nn.Linear)
    if not found:
        already = sum(isinstance(m, SparseLinear) for m in model.modules())
        warnings.warn(f"sparsify_: nothing to do: {type(model).__name__} holds no nn.Linear layers"
                      + (f" ({already} SparseLinear already: sparsify_ ran on it before)" if already else
                         " (subclasses of nn.Linear, such as MultiheadAttention's out_proj, are left alone)"),
                      stacklevel=3)
    for fqn, linear, places in tqdm(found.values(), desc="sparsify_", unit="layer", disable=None if progress else True):
        shard = _shard_facts(places)
        if shard:  # report and filter a rank's part under the layer's own name
            fqn = fqn.rpartition(".")[0]
        facts = {**_dense_facts(linear), **shard}
        if filter_fn is not None and not filter_fn(linear, fqn):
            layers[fqn] = LayerReport(fqn, SKIP_FILTER, facts)
            continue
        if facts["sparsity"] < min_sparsity:
            layers[fqn] = LayerReport(fqn, SKIP_SPARSITY, facts)
            continue
        try:
            check_measure(measure, linear.weight.device)
            options = wgmma_options(from_dense_kwargs, linear.weight.device, measure, keep_dense)
            if options["wgmma_kernel"]:
                options["wgmma_layout"] = layouts.layout_for(facts, options.get("wgmma_layout", WGMMA_LAYOUT_DEFAULT))
            plan = plan_linear(linear.weight, **options)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{fqn}: {e}") from e
        # a near win counts where the measured check will time it
        if _no_win(plan, tokens, measures(measure, linear.weight.device, keep_dense)) and keep_dense is not False:
            facts.update(plan_facts(plan), buckets=bucket_facts(plan, dense_kept=True))
            layers[fqn] = LayerReport(fqn, NO_WIN, facts)
            continue
        sparse = SparseLinear.from_dense(linear, plan=plan, keep_dense=keep_dense, measure=measure,
                                         dense_times=dense_times)
        layouts.record(facts, sparse.plan)
        if _no_win(sparse.plan, tokens) and keep_dense is not False:  # the GPU measured no win
            facts.update(plan_facts(sparse.plan), buckets=bucket_facts(sparse.plan, dense_kept=True))
            layers[fqn] = LayerReport(fqn, NO_WIN, facts)
            continue
        source = sources.get(id(linear.weight))
        if source is None or source.param() is not linear.weight:
            source = sources[id(linear.weight)] = WeightSource(linear.weight)
        sparse._weight_source = source
        for parent, name in places:
            setattr(parent, name, sparse)
        layers[fqn] = LayerReport(fqn, SPARSE, {**sparse.summary(), **shard})
        if sparse.packed.device.type == "cpu":
            on_cpu.append(fqn)
    fused_paths_off(model)
    if on_cpu:
        first = on_cpu[0] + (", ..." if len(on_cpu) > 1 else "")
        warnings.warn(f"sparsify_: {len(on_cpu)} sparse layer(s) on the CPU ({first}) run their plans on the "
                      "reference executor: correct, and slower than the dense product (the kernels, and the "
                      "speed-ups the plans predict, are a GPU's: sparsify the model on its GPU). Silence with "
                      "warnings.filterwarnings('ignore', category=cross.runtime.ReferencePathWarning)",
                      ReferencePathWarning, stacklevel=3)  # past the no_grad decorator, at the caller
    return SparsifyReport(layers)


def fused_paths_off(model: nn.Module) -> None:
    """Turn off torch's fused inference paths that would read a SparseLinear's ``weight``.

    nn.TransformerEncoderLayer, in eval mode, runs itself as one fused op from ``linear1.weight``
    and ``linear2.weight`` (bypassing the modules), and nn.TransformerEncoder, given a padding mask,
    reads its first layer's and runs its layers on nested tensors. Where those are SparseLinear the
    layer gets a no-op forward pre-hook (the fused path is not taken when a hook is attached) and
    the encoder ``use_nested_tensor = False``, so each calls its Linears as modules on plain tensors.
    sparsify_ and load call it on the model they are given; call it on the encoder after putting
    SparseLinear layers into one by other means (by hand, or sparsify_ on a part of it).
    ``fused_paths_on`` undoes both where no SparseLinear is left."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _ffn_sparse(module):
            if getattr(module, "_cross_fused_off", None) is None:
                module._cross_fused_off = module.register_forward_pre_hook(_modules_not_fused)
        elif isinstance(module, nn.TransformerEncoder) and _sparse_layers(module) and getattr(
                module, "use_nested_tensor", False):
            module.use_nested_tensor = False
            module._cross_nested_was = True


def fused_paths_on(model: nn.Module) -> None:
    """Undo ``fused_paths_off`` where the Linears are plain again."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and not _ffn_sparse(module):
            handle = getattr(module, "_cross_fused_off", None)
            if handle is not None:
                handle.remove()
                del module._cross_fused_off
        elif isinstance(module, nn.TransformerEncoder) and getattr(module, "_cross_nested_was", False) and not (
                _sparse_layers(module)):
            module.use_nested_tensor = True
            del module._cross_nested_was


def _ffn_sparse(layer: nn.Module) -> bool:
    """A TransformerEncoderLayer whose feed-forward Linears (what its fused path reads) include a
    SparseLinear."""
    return isinstance(layer.linear1, SparseLinear) or isinstance(layer.linear2, SparseLinear)


def _sparse_layers(encoder: nn.TransformerEncoder) -> bool:
    return any(_ffn_sparse(layer) for layer in encoder.layers)


def _modules_not_fused(module, args):
    return None


def _no_win(plan, tokens, near: bool = False) -> bool:
    """Every bucket falls back to dense (of those that cover ``tokens``, where given); ``near``: a
    near win (``planner.is_near_win``, which the measured check times) is not counted as one."""
    buckets = plan.buckets if tokens is None else [plan.bucket_for(n) for n in tokens]
    return all(b.fallback and not (near and is_near_win(b)) for b in buckets)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a.detach(), b.detach())


def unsparsify_(model: nn.Module) -> int:
    """Replace, in place, every SparseLinear of ``model`` by an equivalent nn.Linear (weights
    decoded exactly from the packed form). Layers that sparsify_ made from one weight Parameter
    (tied weights) get one Parameter again: the original where the model still holds it (a weight
    tied to an embedding) with the same values. Returns how many modules were replaced."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, SparseLinear):
        raise ValueError("model: expected a module containing SparseLinear layers, got a SparseLinear itself: "
                         "use its to_dense_linear()")
    found = _occurrences(model, lambda m: isinstance(m, SparseLinear))
    held = {id(p): p for p in model.parameters()}
    tied: dict[int, nn.Parameter] = {}  # by WeightSource: the Parameter its layers share
    for _fqn, sparse, places in found.values():
        dense = sparse.to_dense_linear()
        source = getattr(sparse, "_weight_source", None)
        if source is not None:
            weight = tied.get(id(source))
            if weight is None:
                original = source.param()  # None once no module holds it
                weight = original if original is not None and held.get(id(original)) is original else None
            if weight is not None and _same_values(weight, dense.weight):
                dense.weight = weight
            tied.setdefault(id(source), dense.weight)
        for parent, name in places:
            setattr(parent, name, dense)
    fused_paths_on(model)
    return len(found)
