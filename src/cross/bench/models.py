"""End-to-end latency of whole models, dense vs sparsified with cross (bf16, CUDA graphs, L2 flushed).

    bert     BERT-base encoder (transformers BertConfig, random weights): batch 8 x 128 and 1 x 128
    llama    a Llama-2-7B-shaped decoder (LlamaConfig, random weights): prefill of 512 tokens, and
             decode steps at batch 1, 8 and 16
    minilm   the real all-MiniLM-L6-v2, loaded and Wanda-pruned as `cross demo` does: the demo's 8
             sentences, with the agreement of its sentence embeddings

The random-weight models are magnitude-pruned per layer to the target sparsity. The dense model is
the pruned model itself, so both compute the same function; it is timed before and after the sparse
one and the two timings averaged, so that clock drift over the run does not pass for a speed-up or a
loss. Each forward is captured in a CUDA graph and the graph replayed with L2 flushed by a read before
each replay (plain event timing where the forward cannot be captured: the timing column says so).
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..cli.hf import agreement, not_a_head
from ..nn.sparsify import SKIP_FILTER
from ..partition.planner import WGMMA_LAYOUT_DEFAULT
from .kernels import ROW_OUT
from .timing import GRAPH, measure_us

FIELDS = ["model", "phase", "batch", "tokens", "sparsity", "dense_ms", "cross_ms", "speedup",
          "weight_bytes_dense", "weight_bytes_cross", "sparse_layers", "min_cosine", "timing",
          "dense_apart_ms", "command"]
MODELS = ("bert", "llama", "minilm")
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
LLAMA_LAYERS = 32
#: (phase, batch, sequence length) per model; MiniLM's length is that of its tokenized sentences
PHASES = {"bert": (("encoder", 8, 128), ("encoder", 1, 128)),
          "llama": (("prefill", 1, 512), ("decode", 1, 1), ("decode", 8, 1), ("decode", 16, 1)),
          "minilm": (("embed", 8, None),)}


@dataclass
class Workload:
    """A model ready to time: its phases, the inputs of a phase, and the rows whose cosine against
    the dense model's is reported."""

    label: str
    model: nn.Module
    phases: tuple[tuple[str, int, int], ...]
    inputs: Callable[[int, int], dict]  # (batch, sequence length) -> forward kwargs
    outputs: Callable[[Callable, dict], torch.Tensor]  # (the model or its compiled self, forward kwargs) -> [rows, features]


def label(name: str, llama_layers: int = LLAMA_LAYERS) -> str:
    return f"llama-{llama_layers}L" if name == "llama" else name


def phase_name(phase: tuple) -> str:
    """A phase as ``--phases`` names it: ``decode-16`` (the phase and its batch)."""
    return f"{phase[0]}-{phase[1]}"


PHASE_NAMES = tuple(dict.fromkeys(phase_name(p) for phases in PHASES.values() for p in phases))


def named_phases(phases, names) -> tuple:
    """The phases named (``phase_name``) among ``phases``; all of them for names None."""
    return tuple(p for p in phases if names is None or phase_name(p) in names)


def select_phases(wl: Workload, names) -> Workload:
    """The workload with only the phases named (``named_phases``). A model with none of the names
    among its phases is refused."""
    kept = named_phases(wl.phases, names)
    if not kept:
        raise ValueError(f"--phases: {wl.label} has none of {', '.join(names)}; its phases are "
                         f"{', '.join(map(phase_name, wl.phases))}")
    return replace(wl, phases=kept)


def prune_(model: nn.Module, sparsity: float) -> None:
    """Magnitude pruning per layer, heads excepted, on the model's device (fast enough for
    7B-shaped models)."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and not_a_head(mod, name):
                w = mod.weight
                k = int(round(sparsity * w.numel()))
                if k:
                    thr = w.abs().flatten().float().kthvalue(k).values
                    w.mul_(w.abs().float() > thr)


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the weights of every nn.Linear and SparseLinear (a SparseLinear's packed formats,
    kernel tables and any dense copy it keeps); biases not counted."""
    import cross

    total = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
        elif isinstance(mod, cross.SparseLinear):
            total += mod.nbytes - (mod.bias.numel() * mod.bias.element_size() if mod.bias is not None else 0)
    return total


def hidden_rows(run: Callable, x: dict) -> torch.Tensor:
    return run(**x).last_hidden_state.float().flatten(0, -2)


def bert(sparsity: float) -> Workload:
    from transformers import BertConfig, BertModel

    cfg = BertConfig()  # BERT-base: 12 layers, hidden 768, intermediate 3072
    with torch.device("cuda"):
        model = BertModel(cfg).to(torch.bfloat16).eval()
    prune_(model, sparsity)

    def inputs(batch, seq):
        return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")}

    return Workload("bert", model, PHASES["bert"], inputs, hidden_rows)


def llama(sparsity: float, layers: int = LLAMA_LAYERS) -> Workload:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaModel(cfg).to(torch.bfloat16).eval()
    prune_(model, sparsity)

    # decode steps are timed as one new token per sequence without a KV cache: the linear layers,
    # which is what cross changes, do the same work as in a cached decode step
    def inputs(batch, seq):
        return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda"), "use_cache": False}

    return Workload(label("llama", layers), model, PHASES["llama"], inputs, hidden_rows)


def minilm(sparsity: float, model_dir: Path | None = None, device: str = "cuda") -> Workload:
    """all-MiniLM-L6-v2 as the demo loads and prunes it (Wanda, its calibration sentences), on the
    demo's evaluation sentences; the compared rows are the sentence embeddings."""
    from ..cli.demo import default_model_dir
    from ..cli.hf import EVAL_SENTENCES, calibration_batches, check_model_dir, dtype_for, embed, load_model, tokenize
    from ..prune import wanda_prune_

    device = torch.device(device)
    model_dir = check_model_dir(model_dir) if model_dir is not None else default_model_dir()
    model, tokenizer = load_model(model_dir, device, dtype_for(device), progress=False)
    wanda_prune_(model, calibration_batches(tokenizer, device), sparsity, filter_fn=not_a_head)
    batch = tokenize(tokenizer, EVAL_SENTENCES, device)
    phases = (("embed", len(EVAL_SENTENCES), batch["input_ids"].shape[1]),)
    return Workload("minilm", model, phases, lambda b, s: batch, embed)


def model_command(name: str, sparsity: float, *, llama_layers: int = LLAMA_LAYERS, force_plan: bool = False,
                  cost_model: Path | None = None, minilm_dir: Path | None = None, no_measure: bool = False,
                  decode_fallback: bool = False, slice_kernel: bool = False, wgmma_kernel="auto",
                  wgmma_layout: str = WGMMA_LAYOUT_DEFAULT, stack_siblings: bool = False, phases=None,
                  compile: bool = False, kernel_times: bool = False, nan_policy: str | None = None) -> str:
    """The command that measures one model at one sparsity again, into a folder of its own
    (kernels.ROW_OUT), so that it does not replace the grid's results; --wgmma-kernel or
    --no-wgmma-kernel where ``wgmma_kernel`` is True or False ('auto': neither), --wgmma-layout only
    where it is not the default, --nan-policy only where it was given."""
    parts = ["cross", "bench", "model", "--models", name, "--sparsities", f"{sparsity:g}"]
    if name == "llama" and llama_layers != LLAMA_LAYERS:
        parts += ["--llama-layers", str(llama_layers)]
    if name == "minilm" and minilm_dir is not None:
        parts += ["--minilm-dir", str(minilm_dir)]
    if force_plan:
        parts.append("--force-plan")
    if no_measure:
        parts.append("--no-measure")
    if decode_fallback:
        parts.append("--decode-fallback")
    if slice_kernel:
        parts.append("--slice-kernel")
    if wgmma_kernel is False:
        parts.append("--no-wgmma-kernel")
    else:
        parts += ["--wgmma-kernel"] * (wgmma_kernel is True)
        if wgmma_layout != WGMMA_LAYOUT_DEFAULT:
            parts += ["--wgmma-layout", wgmma_layout]
    if nan_policy is not None:
        parts += ["--nan-policy", nan_policy]
    if stack_siblings:
        parts.append("--stack-siblings")
    if phases is not None:
        parts += ["--phases", ",".join(phases)]
    if compile:
        parts.append("--compile")
    if kernel_times:
        parts.append("--kernel-times")
    if cost_model is not None:
        parts += ["--cost-model", str(cost_model)]
    return shlex.join(parts + ["--out", ROW_OUT])


#: warm-up and measuring time per model timing: a Llama decode step takes ~8 ms, so 400 ms
#: gives ~50 replays per median (50 ms gave ~6: the H100 results of 2026-11-24 were measured with 10 /
#: 50 ms and show 0.94-1.04x between identical modules)
MODEL_WARMUP_MS, MODEL_REP_MS = 25, 400
#: timings of each phase dropped before the first workload's (benchmarks/timing_drift.py: the first
#: three of a process read fast)
DISCARDED_TIMINGS = 4


def run_workload(wl: Workload, sparsity: float, *, command: str = "", cost_model=None, keep_dense="auto",
                 measure="auto", slice_kernel: bool = False, wgmma_kernel="auto",
                 wgmma_layout: str = WGMMA_LAYOUT_DEFAULT,
                 nan_policy: str = "propagate", stack_siblings: bool = False, compile: bool = False,
                 timer: Callable = measure_us, progress: bool = False,
                 discard_pass: bool = False, kernel_times: bool = False,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Time every phase dense, sparsified, and dense again; one row per phase. The model is left
    dense (unsparsified) afterwards. keep_dense, measure, slice_kernel, wgmma_kernel, wgmma_layout and
    nan_policy go to sparsify_, with the phases' token counts (``tokens``: a layer that wins at none
    of them stays dense); log, if given, gets the line of what the GPU timing of the plans decided
    (SparsifyReport.measured_check).

    stack_siblings: the siblings (q, k, v; gate, up) are stacked (``stack_siblings_``) before the
    dense model is timed, so that the dense and sparse models both run them as one layer (stacking
    speeds up cuBLAS too); the dense model as given is timed first and logged, timed again last (the
    model unstacked), and the two averaged in the row (``dense_apart_ms``; empty without stacking), so
    that the gain over the model as given can be read beside the fair comparison.

    compile: time the models compiled by ``cross.compile`` (torch.compile, inductor, dynamic=False, the
    stacked siblings' repeated products merged), dense and sparse alike; each phase and each state of
    the model (stacked, sparsified, ...) compiles on its first call, before its timing. The rows'
    cosines are then those of the compiled sparse model against the dense model run eagerly; log gets
    the number of repeated calls the compiled sparse model had merged.

    discard_pass: time every phase once more first and drop it. A process's first few CUDA-graph
    timings of a model can read ~13% faster than all later ones at the same clocks
    (benchmarks/timing_drift.py), which would make the first workload's dense and sparse columns
    differ with nothing swapped.

    kernel_times: after the dense and the sparse model's timings, log each phase's kernels per step
    (bench.step_kernels: a few graph replays under torch.profiler, by category, and the 2:4 kernel by
    its launch's place in a decoder layer), to set beside the measured check's times of the layers
    alone."""
    import cross

    run, shared, limits = wl.model, None, contextlib.nullcontext()
    if compile:
        from ..nn.compile import compile_options

        options = compile_options()
        shared = options["post_grad_custom_post_pass"]
        run = torch.compile(wl.model, options=options, dynamic=False)
        # every phase in every state of the model (apart, stacked, sparse, dense again) is a graph of its own
        limits = torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=1024)

    def ms(x):
        us, how = timer(lambda: run(**x), MODEL_WARMUP_MS, MODEL_REP_MS)
        return us / 1e3, how

    with torch.no_grad(), limits:
        inputs = {phase: wl.inputs(phase[1], phase[2]) for phase in wl.phases}
        if discard_pass:
            for x in inputs.values():
                for _ in range(DISCARDED_TIMINGS):
                    ms(x)
        if stack_siblings:
            apart = {phase: ms(x) for phase, x in inputs.items()}
            cross.stack_siblings_(wl.model)
        dense_bytes = linear_bytes(wl.model)
        dense = {phase: ms(x) for phase, x in inputs.items()}
        if kernel_times and log is not None:
            log_kernels(run, inputs, "dense", wl.model, log)
        if stack_siblings and log is not None:
            log("dense, siblings apart -> stacked: " + "; ".join(
                f"{phase[0]} {phase[1]}x{phase[2]} {apart[phase][0]:.3f} -> {dense[phase][0]:.3f} ms" for phase in inputs))
        want = {phase: wl.outputs(wl.model, x) for phase, x in inputs.items()}
        # the token counts the phases call the layers with: a layer is swapped where it wins at one of them
        tokens = tuple(sorted({phase[1] * phase[2] for phase in wl.phases}))
        start = time.perf_counter()
        report = cross.sparsify_(wl.model, not_a_head, tokens=tokens, progress=progress, cost_model=cost_model,
                                 keep_dense=keep_dense, measure=measure, slice_kernel=slice_kernel,
                                 wgmma_kernel=wgmma_kernel, wgmma_layout=wgmma_layout, nan_policy=nan_policy)
        if log is not None:  # the build's time too: the measured check is most of it on a GPU
            log(f"sparsify_: {len(report.layers)} layers in {time.perf_counter() - start:.0f} s; weights "
                f"{report.nbytes_text()}; measured check: {report.measured_check()}")
            if line := measured_sums_line(report, tokens):
                log(line)
        cross_bytes = linear_bytes(wl.model)
        merged = shared.removed if shared is not None else 0
        sparse = {phase: ms(x) for phase, x in inputs.items()}
        if kernel_times and log is not None:
            for phase in inputs:
                if line := measured_shapes_line(report, phase[1] * phase[2]):
                    log(f"{phase_name(phase)}: {line}")
            log_kernels(run, inputs, "cross", wl.model, log)
        cosine = {phase: agreement(wl.outputs(run, x), want[phase])["min_cosine"] for phase, x in inputs.items()}
        if shared is not None and log is not None:
            log(f"cross.compile: {shared.removed - merged} repeated calls merged in the sparse model's graphs "
                f"(none where inductor's cache had the graph)")
        cross.unsparsify_(wl.model)
        again = {phase: ms(x) for phase, x in inputs.items()}
        if stack_siblings:  # the model as given again: its two timings averaged, as the dense ones are
            cross.unstack_siblings_(wl.model)
            apart_again = {phase: ms(x) for phase, x in inputs.items()}
    if compile:
        torch._dynamo.reset()  # the compiled graphs go with the workload
    planned = len(report.layers) - len(report.by_action(SKIP_FILTER))
    rows = []
    for phase in wl.phases:
        d = (dense[phase][0] + again[phase][0]) / 2
        s, how = sparse[phase]
        timings = {dense[phase][1], how, again[phase][1]}
        apart_ms = ""
        if stack_siblings:
            apart_ms = round((apart[phase][0] + apart_again[phase][0]) / 2, 4)
            timings |= {apart[phase][1], apart_again[phase][1]}
        rows.append(dict(model=wl.label, phase=phase[0], batch=phase[1], tokens=phase[1] * phase[2], sparsity=sparsity,
                         dense_ms=round(d, 4), cross_ms=round(s, 4), speedup=round(d / s, 3),
                         weight_bytes_dense=dense_bytes, weight_bytes_cross=cross_bytes,
                         sparse_layers=f"{report.n_swapped}/{planned}", min_cosine=round(cosine[phase], 6),
                         timing=GRAPH if timings == {GRAPH} else "; ".join(sorted(timings - {GRAPH})),
                         dense_apart_ms=apart_ms, command=command))
    return rows


def table_notes(stack_siblings: bool, compiled: bool, min_cosine: float) -> list[str]:
    """What a model table's columns mean (model.md's notes after the device and the command): how
    dense is timed, what the models are, stacking and compiling where the rows used them."""
    return ["dense = the pruned model itself (both compute the same function), timed before and after the sparse "
            "model and averaged; CUDA-graph replay, L2 flushed by a 256 MB read before each",
            "Llama decode: one new token per sequence without a KV cache (the linear layers do the work of a "
            "cached decode step); bert and llama have random weights, magnitude-pruned per layer; minilm is the "
            "real all-MiniLM-L6-v2, Wanda-pruned as `cross demo` does",
            *(["siblings stacked: the dense model is stacked the same way (the speed-up column); "
               "dense apart: the dense model as given, siblings apart, timed first and last in the same run and averaged"]
              if stack_siblings else []),
            *(["compiled (`--compile`; the figure's \"compiled\" lines): both models run through cross.compile "
               "(torch.compile, inductor, dynamic=False), each phase compiled before its timing; min cosine is the "
               "compiled sparse model's against the dense model run eagerly"] if compiled else []),
            "weights: bytes of every linear layer's weight (a sparsified layer: packed formats, kernel tables and "
            "any dense copy it keeps); min cosine: of the outputs (MiniLM: sentence embeddings; the others: "
            f"hidden states per token) against the dense model's; MiniLM must reach {min_cosine}"]


def model_rows(raw) -> list[dict]:
    """Rows of a model CSV (report.read_csv) with their numbers parsed, as run_workload makes them."""
    rows = []
    for r in raw:
        row = {k: r.get(k, "") for k in FIELDS}
        for k in ("batch", "tokens", "weight_bytes_dense", "weight_bytes_cross"):
            row[k] = int(row[k])
        for k in ("sparsity", "dense_ms", "cross_ms", "speedup", "min_cosine"):
            row[k] = float(row[k])
        row["dense_apart_ms"] = float(row["dense_apart_ms"]) if row["dense_apart_ms"] not in (None, "") else ""
        rows.append(row)
    return rows


def measured_before(kept: list[dict], model: str, sparsity: float, phases, command: str) -> list[dict] | None:
    """The rows of ``kept`` (model_rows) of ``model`` (its label) at ``sparsity`` that ``command``
    measured, one per phase of ``phases`` ((phase, batch, sequence)) in their order, the last where
    there are several; None where a phase has none (the workload is measured again, whole)."""
    found = []
    for phase, batch, _ in phases:
        match = [r for r in kept if (r["model"], r["phase"], r["batch"], r["command"]) == (model, phase, batch, command)
                 and abs(r["sparsity"] - sparsity) < 1e-9]
        if not match:
            return None
        found.append(match[-1])
    return found


#: graph replays of a step that --kernel-times records
KERNEL_TIME_REPS = 5


def log_kernels(run: Callable, inputs: dict, side: str, model: nn.Module, log: Callable[[str], None]) -> None:
    """Log the kernels of one step of each phase of ``inputs`` (bench.step_kernels), ``side`` naming
    the model ('dense', 'cross'), the linear layers' kernel (cuBLAS in the dense model, the 2:4 kernel
    in the sparse one) by its place in each of the model's decoder layers (its config's
    num_hidden_layers; none without one)."""
    from .step_kernels import WGMMA24, describe, per_step, step_kernels

    layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    for phase, x in inputs.items():
        try:
            kernels, how = step_kernels(lambda: run(**x), KERNEL_TIME_REPS)
        except Exception as e:  # a diagnostic: the profiler failing must not cost the run its timings
            log(f"kernels per step, {phase_name(phase)} {side}: not recorded ({type(e).__name__}: {e})")
            continue
        try:
            text = describe(per_step(kernels, KERNEL_TIME_REPS, layers, WGMMA24 if side == "cross" else "cuBLAS"))
        except ValueError as e:
            text = f"not split into steps ({e})"
        log(f"kernels per step, {phase_name(phase)} {side} ({how}): {text}")


def measured_shapes_line(report, n_tokens: int) -> str:
    """The measured check's times per weight shape at ``n_tokens`` (SparsifyReport.measured_by_shape:
    medians, each layer alone), or '' where none was timed: beside --kernel-times' times in the step."""
    shapes = report.measured_by_shape(n_tokens)
    return ("alone, as the measured check timed them (median per shape, dense -> cross): " + "; ".join(
        f"{'x'.join(map(str, shape))} {e['dense_us']:.2f} -> {e['run_us']:.2f} us ({e['timed']} layers)"
        for shape, e in shapes.items())) if shapes else ""


def measured_sums_line(report, tokens) -> str:
    """The linear layers' times as the measured check took them, per token count of ``tokens``
    (``SparsifyReport.measured_by_bucket``: each layer alone, summed; dense -> what runs), or '' where
    no layer was timed: beside the model step's times, how much of the step the linear layers are."""
    sums = report.measured_by_bucket()
    parts = []
    for n in tokens:
        e = next((e for (lo, hi), e in sums.items() if lo <= n <= hi), None)
        if e is not None:
            parts.append(f"{n} token{'s' if n > 1 else ''} {e['dense_us'] / 1e3:.3f} -> {e['run_us'] / 1e3:.3f} ms "
                         f"({e['dense_us'] / e['run_us']:.2f}x, {e['timed']} of {e['layers']} layers)")
    return ("the linear layers as the measured check timed them (each alone, summed; dense -> cross): "
            + "; ".join(parts)) if parts else ""


HEADER = (f"{'model':>10} {'phase':>8} {'batch':>5} {'tok':>5} {'sp':>4} {'dense_ms':>9} {'cross_ms':>9} {'speedup':>7} "
          f"{'MB dense':>9} {'MB cross':>9} {'sparse':>8} {'cosine':>9}")


def format_row(r: dict) -> str:
    return (f"{r['model']:>10} {r['phase']:>8} {r['batch']:>5} {r['tokens']:>5} {r['sparsity']:>4g} {r['dense_ms']:9.3f} "
            f"{r['cross_ms']:9.3f} {r['speedup']:7.2f} {r['weight_bytes_dense'] / 1e6:9.1f} "
            f"{r['weight_bytes_cross'] / 1e6:9.1f} {r['sparse_layers']:>8} {r['min_cosine']:9.6f}"
            + ("" if r["timing"] == GRAPH else f"  ({r['timing']})")
            + (f"  (dense apart {r['dense_apart_ms']:.3f} ms: {r['dense_apart_ms'] / r['cross_ms']:.2f}x)"
               if r.get("dense_apart_ms") not in (None, "") else ""))
