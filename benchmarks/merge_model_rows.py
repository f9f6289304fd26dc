"""A model table (model.csv, model.md, model.png) from a base table and the rows of later runs: each
later row replaces the base's row of the same model, phase, batch and sparsity (or joins the table
where the base has none), --drop takes a phase's rows out, and the report is written again from the
result, with each command that measured its rows and how many. Every row keeps its own command, so
a table whose rows come from several configurations (e.g. the decoder's decode rows compiled, its
prefill rows eager) says which is which; the figure marks compiled rows' lines.

    python benchmarks/merge_model_rows.py benchmarks/results/h100/model.csv \\
        benchmarks/results/h100/model_compiled_wgmma{50,60,70,80,90}.csv \\
        --drop llama-32L:decode-8 --device "NVIDIA H100 80GB HBM3" --out benchmarks/results/h100
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without PYTHONPATH
from cross.bench.models import FIELDS, model_rows, table_notes  # noqa: E402
from cross.bench.report import read_csv, start_csv, write_model_report  # noqa: E402
from cross.cli.demo import MIN_COSINE  # noqa: E402


#: a model command's sparsity argument (`--sparsities 0.7` or `--llama-sparsities 0.7`)
SPARSITY = re.compile(r"(--(?:llama-)?sparsities) \S+")


def _key(r) -> tuple:
    return r["model"], r["phase"], int(r["batch"]), round(float(r["sparsity"]), 6)


def _drop_spec(text: str) -> tuple[str, str, int]:
    """'llama-32L:decode-8' -> ('llama-32L', 'decode', 8)."""
    model, sep, phase = text.partition(":")
    name, dash, batch = phase.rpartition("-")
    if not (sep and dash and model and name and batch.isdigit()):
        raise argparse.ArgumentTypeError(f"--drop {text!r}: expected MODEL:PHASE-BATCH, e.g. llama-32L:decode-8")
    return model, name, int(batch)


def merge(base: list[dict], later: list[list[dict]], drop=()) -> list[dict]:
    """The base's rows with each later table's rows in their place (the last table wins), less the
    phases in ``drop`` ((model, phase, batch)); ordered by model, sparsity and phase, each in the order
    it first appears (the base's first)."""
    rows = {_key(r): r for r in base}
    for table in later:
        rows.update({_key(r): r for r in table})
    dropped = set(drop)
    missing = dropped - {k[:3] for k in rows}
    if missing:
        raise ValueError("--drop: no rows of " + ", ".join(f"{m}:{p}-{b}" for m, p, b in sorted(missing)))
    kept = [r for k, r in rows.items() if k[:3] not in dropped]
    models = list(dict.fromkeys(r["model"] for r in kept))
    phases = list(dict.fromkeys((r["model"], r["phase"], int(r["batch"])) for r in kept))
    return sorted(kept, key=lambda r: (models.index(r["model"]), float(r["sparsity"]),
                                       phases.index((r["model"], r["phase"], int(r["batch"])))))


def notes(rows: list[dict], device: str) -> list[str]:
    """model.md's notes: the device, each command with the number of its rows, and what the columns mean
    (stacking and compiling where any row used them)."""
    runs = defaultdict(list)  # a command with its sparsity as <s> -> the sparsities of its rows, a row each
    for r in rows:
        runs[SPARSITY.sub(r"\1 <s>", r["command"])].append(float(r["sparsity"]))
    words = {w for c in runs for w in c.split()}
    return [f"device: {device}, bf16; each row's own command is in model.csv; the rows by command, <s> their sparsity:",
            *[f"{len(sp)} row{'s' if len(sp) > 1 else ''} at {', '.join(f'{s:.0%}' for s in dict.fromkeys(sp))}: `{c}`"
              for c, sp in runs.items()],
            *table_notes("--stack-siblings" in words, "--compile" in words, MIN_COSINE)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the model.csv whose rows are kept where no later run replaces them")
    p.add_argument("later", type=Path, nargs="+", help="model CSVs whose rows replace the base's")
    p.add_argument("--drop", type=_drop_spec, action="append", default=[], metavar="MODEL:PHASE-BATCH",
                   help="a phase whose rows leave the table (repeatable), e.g. llama-32L:decode-8")
    p.add_argument("--device", required=True, help="the GPU every row was measured on, as the runs named it")
    p.add_argument("--out", type=Path, required=True, help="the folder for model.csv, model.md and model.png")
    args = p.parse_args(argv)
    rows = merge(model_rows(read_csv(args.base)), [model_rows(read_csv(path)) for path in args.later], args.drop)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [start_csv(args.out / "model.csv", FIELDS, rows), *write_model_report(rows, args.out, notes(rows, args.device))]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
