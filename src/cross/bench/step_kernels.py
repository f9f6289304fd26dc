"""Where a model step's GPU time goes, kernel by kernel: the step captured in a CUDA graph, a few
replays recorded by torch.profiler (CUPTI), each kernel named into a category (the 2:4 kernel, the row
kernel, the tile kernels, cuBLAS, attention, inductor's fused kernels, the rest), and per step: each
category's launches and time, the kernels' summed time against the step's span (the gaps between
kernels), and the linear layers' kernel (the 2:4 kernel, or cuBLAS in the dense model) by its
launch's place in a decoder layer. Beside the measured
check's times of the same layers, each timed alone, it tells whether a kernel is slower inside the
step than alone (``cross bench model --kernel-times``)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import torch

#: (category, substrings of the kernel names it holds), the first match wins; inductor's kernels by
#: their prefix first, since it names a fused kernel after its ops (one feeding the 2:4 op holds "wgmma24")
INDUCTOR = "inductor"
CATEGORIES = (
    ("warpgroup 2:4", ("wgmma24",)),
    ("row kernel", ("row_gemv", "row_decode")),
    ("tile kernels", ("plan_matmul", "slice_mma", "strip_mma", "sparse24_mma")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("cuBLAS", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
    (INDUCTOR, ("triton_",)),
)
OTHER = "other"
WGMMA24 = CATEGORIES[0][0]


def category(name: str) -> str:
    """The category of a kernel ``name`` (CATEGORIES; OTHER where none matches)."""
    low = name.lower()
    if low.startswith("triton_"):
        return INDUCTOR
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), OTHER)


def trace_kernels(trace: dict) -> list[tuple[str, float, float]]:
    """The kernels of a Chrome trace (torch.profiler's export): (name, start us, duration us), in
    start order."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    kernels = [(e["name"], float(e["ts"]), float(e["dur"])) for e in events
               if e.get("cat") == "kernel" and e.get("ph") == "X"]
    return sorted(kernels, key=lambda k: k[1])


def step_kernels(fn, reps: int = 5) -> tuple[list[tuple[str, float, float]], str]:
    """The kernels of ``reps`` calls of ``fn`` (one graph replay each; eagerly where the capture
    fails, or where the profiler records no kernel of a replay) and how they ran."""
    fn()
    torch.cuda.synchronize()
    run, how = fn, "eager"
    stream = torch.cuda.current_stream()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        run, how = graph.replay, "graph"
    except Exception:  # libraries raise their own error types when a call refuses capture
        torch.cuda.set_stream(stream)
    torch.cuda.synchronize()
    kernels = _profiled(run, reps)
    if not kernels and how == "graph":
        kernels, how = _profiled(fn, reps), "eager (no kernels recorded in the graph's replays)"
    return kernels, how


def _profiled(run, reps: int) -> list[tuple[str, float, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            run()
        torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            return trace_kernels(json.load(f))
    finally:
        os.remove(path)


def per_step(kernels: list[tuple[str, float, float]], reps: int, layers: int = 0, by_place: str = WGMMA24) -> dict:
    """Per step of ``reps`` identical steps' ``kernels``: launches and ms of each category, the kernels'
    summed ms ('busy'), the span from the first kernel's start to the last one's end ('span'), and,
    where category ``by_place`` has at least ``layers`` launches per step, its median us by the
    launch's place in a layer ('positions': [(place, launches, median us)], over the first ``layers``
    x n of them, with the kernel's short name most often there; 'past_layers': the launches after those,
    a model's head)."""
    if reps < 1 or not kernels or len(kernels) % reps:
        raise ValueError(f"{len(kernels)} kernels do not split into {reps} identical steps")
    per = len(kernels) // reps
    steps = [kernels[i * per:(i + 1) * per] for i in range(reps)]
    names = [k[0] for k in steps[0]]
    if any([k[0] for k in s] != names for s in steps):
        raise ValueError("the steps launched different kernels")
    out = {"categories": {}, "launches": per}
    for i, name in enumerate(names):
        cat = category(name)
        entry = out["categories"].setdefault(cat, [0, 0.0])
        entry[0] += 1
        entry[1] += statistics.median(s[i][2] for s in steps) / 1e3
    out["busy"] = sum(ms for _, ms in out["categories"].values())
    out["span"] = statistics.median((s[-1][1] + s[-1][2] - s[0][1]) / 1e3 for s in steps)
    idx = [i for i, name in enumerate(names) if category(name) == by_place]
    if layers and len(idx) >= layers:
        n = len(idx) // layers
        out["by_place"], out["past_layers"] = by_place, len(idx) - n * layers
        out["positions"] = [(p, layers, statistics.median(s[i][2] for s in steps for i in idx[:n * layers][p::n]),
                             statistics.mode(short_name(names[i]) for i in idx[:n * layers][p::n]))
                            for p in range(n)]
    return out


def short_name(name: str, width: int = 40) -> str:
    """A kernel's name without its return type, namespaces and template arguments, cut to ``width``."""
    name = name.split("<", 1)[0].split("(", 1)[0].strip()
    name = name.rsplit(" ", 1)[-1].rsplit("::", 1)[-1]
    return name if len(name) <= width else name[:width - 3] + "..."


def describe(summary: dict) -> str:
    """One line of per_step's summary."""
    cats = sorted(summary["categories"].items(), key=lambda kv: -kv[1][1])
    text = (f"{summary['launches']} kernels, {summary['busy']:.3f} ms of kernels in a {summary['span']:.3f} ms span: "
            + ", ".join(f"{cat} {ms:.3f} ms ({n} launches)" for cat, (n, ms) in cats))
    if "positions" in summary:
        text += f"; {summary['by_place']} by the launch's place in a layer: " + ", ".join(
            f"{p + 1}. {us:.2f} us ({name})" for p, _, us, name in summary["positions"])
        if summary["past_layers"]:
            text += f" (and {summary['past_layers']} after the layers)"
    return text
