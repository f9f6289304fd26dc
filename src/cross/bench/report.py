"""What the benchmarks write: CSV rows, break-even sparsities, figures and markdown summaries.

Everything here works on plain row dicts (as run_kernels returns them or as read back from a CSV),
so reports can be drawn again from the CSV of an earlier run, or of several runs appended.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..cli.tables import markdown_table

GEOMEAN = "all (geomean)"
#: how a cross row's note starts where its plan fell back, so that it timed cuBLAS itself
FALLBACK_NOTE = "the plan falls back to cuBLAS at this N"
BREAKEVEN_FIELDS = ["distribution", "shape", "method", "N", "breakeven_sparsity", "lowest_sparsity",
                    "highest_sparsity", "max_speedup", "points"]


# ---------------------------------------------------------------------- CSV
def start_csv(path: Path, fields: Sequence[str], rows: Iterable[Mapping] = ()) -> Path:
    """A new CSV at ``path`` with the header and ``rows`` (columns it lacks are left empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def append_row(path: Path, row: Mapping, fields: Sequence[str]) -> None:
    """One row more, written at once: a run cut short keeps what it measured."""
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore").writerow(row)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text, kind=float):
    return kind(text) if text not in (None, "") else None


def kernel_rows(raw: Iterable[Mapping]) -> list[dict]:
    """Rows of a kernels CSV with their numbers parsed; CSVs written before the status column
    existed hold measured rows only, which count as ok."""
    rows = []
    for r in raw:
        rows.append({**r, "N": int(r["N"]), "sparsity": float(r["sparsity"]),
                     "speedup_vs_dense": _number(r.get("speedup_vs_dense")), "us": _number(r.get("us")),
                     "distribution": r.get("distribution") or "uniform", "status": r.get("status") or "ok"})
    return rows


# ---------------------------------------------------------------------- break-even
def breakeven(points: Iterable[tuple[float, float]], threshold: float = 1.0) -> float | None:
    """The lowest measured sparsity at which the method is faster than ``threshold`` times dense
    and from which it stays at or above it: the speed-up there is > threshold and at every higher
    sparsity >= threshold (a tie with dense is no win, and does not end a run of wins). None if no
    such sparsity was measured. Where one sparsity has several points, the smallest counts; a NaN
    counts as below."""
    worst: dict[float, float] = {}
    for s, v in points:
        worst[s] = min(worst.get(s, math.inf), v) if not math.isnan(v) else -math.inf
    found = None
    for s in sorted(worst, reverse=True):
        if not worst[s] >= threshold:
            break
        if worst[s] > threshold:
            found = s
    return found


def _ok_points(rows, fallback_as_dense: bool = False) -> dict[tuple, dict[float, list[tuple[str, float]]]]:
    """(distribution, method, N) -> sparsity -> [(shape, speed-up)] over the measured rows.
    fallback_as_dense: a row whose plan fell back to cuBLAS counts as exactly 1.0, not as the ratio
    of two timings of the same cuBLAS call (noise of a few percent either way)."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "ok" and r["method"] != "dense" and r["speedup_vs_dense"] is not None:
            fell_back = fallback_as_dense and str(r.get("note") or "").startswith(FALLBACK_NOTE)
            out[(r["distribution"], r["method"], r["N"])][r["sparsity"]].append(
                (r["shape"], 1.0 if fell_back else r["speedup_vs_dense"]))
    return out


def geomean_curves(rows, fallback_as_dense: bool = False) -> dict[tuple[str, str, int], list[tuple[float, float]]]:
    """(distribution, method, N) -> [(sparsity, geometric-mean speed-up over the shapes)], a point
    only where every shape of that distribution was measured (a failed shape leaves a gap rather
    than a mean over fewer shapes). fallback_as_dense as in _ok_points."""
    shapes: dict[str, set] = defaultdict(set)
    for r in rows:
        shapes[r["distribution"]].add(r["shape"])
    curves = {}
    for (dist, method, n), by_sparsity in _ok_points(rows, fallback_as_dense).items():
        pts = [(s, math.exp(sum(math.log(v) for _, v in vals) / len(vals)))
               for s, vals in sorted(by_sparsity.items()) if {shape for shape, _ in vals} == shapes[dist]]
        if pts:
            curves[(dist, method, n)] = pts
    return curves


def breakeven_rows(rows) -> list[dict]:
    """Break-even per distribution, method and N: over the geometric mean of the shapes
    (shape 'all (geomean)'), then per shape. Rows where cross fell back to cuBLAS count as 1.0x:
    the runtime ran the dense product there, so they are neither a win nor a loss."""
    def entry(dist, shape, method, n, pts):
        be = breakeven(pts)
        return dict(distribution=dist, shape=shape, method=method, N=n, breakeven_sparsity="" if be is None else be,
                    lowest_sparsity=min(s for s, _ in pts), highest_sparsity=max(s for s, _ in pts),
                    max_speedup=round(max(v for _, v in pts), 3), points=len(pts))

    out = [entry(dist, GEOMEAN, method, n, pts) for (dist, method, n), pts in geomean_curves(rows, fallback_as_dense=True).items()]
    for (dist, method, n), by_sparsity in _ok_points(rows, fallback_as_dense=True).items():
        per_shape = defaultdict(list)
        for s, vals in by_sparsity.items():
            for shape, v in vals:
                per_shape[shape].append((s, v))
        out += [entry(dist, shape, method, n, sorted(pts)) for shape, pts in per_shape.items()]
    return out


def breakeven_cell(row: Mapping) -> str:
    """'70%'; '<= 50%' where the method wins already at the lowest sparsity measured; 'never
    (max 0.85x)' where it never wins from some sparsity on."""
    if row["breakeven_sparsity"] in ("", None):
        return f"never (max {float(row['max_speedup']):.2f}x)"
    be = float(row["breakeven_sparsity"])
    return f"<= {be:.0%}" if be <= float(row["lowest_sparsity"]) else f"{be:.0%}"


def breakeven_markdown(be_rows: Sequence[Mapping], figure: str | None = None) -> str:
    """One table per distribution (methods x N) of the break-even over the shapes' geometric mean."""
    lines = ["# Break-even sparsity", "",
             "The break-even sparsity of a method at a token count N is the lowest measured sparsity at "
             "which the method is faster than dense cuBLAS and from which it stays at or above 1.0x: at every "
             "higher sparsity measured. Where `cross` falls back to cuBLAS it counts as 1.0x (no win, no "
             "loss). `<= s`: it wins already at the lowest sparsity measured; `never`: no such sparsity "
             "(with its best speed-up). Tables use the geometric mean of the speed-up "
             "over the shapes of each distribution (a sparsity where some shape failed is left out); "
             "breakeven.csv also has every shape on its own. sparse-2:4 runs at 50% only: its cell says "
             "whether it beats dense there.", ""]
    geo = [r for r in be_rows if r["shape"] == GEOMEAN]
    for dist in dict.fromkeys(r["distribution"] for r in geo):
        ns = sorted({int(r["N"]) for r in geo if r["distribution"] == dist})
        methods = list(dict.fromkeys(r["method"] for r in geo if r["distribution"] == dist))
        cell = {(r["method"], int(r["N"])): breakeven_cell(r) for r in geo if r["distribution"] == dist}
        lines += [f"## {dist}", "", markdown_table(["method", *(f"N = {n}" for n in ns)],
                                                   [[m, *(cell.get((m, n), "-") for n in ns)] for m in methods]), ""]
    if figure:
        lines += [f"![speed-up over cuBLAS against sparsity]({figure})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- tables and figures
def speedup_table(rows) -> str:
    """Markdown: one line per (distribution, shape, N), one column per (method, sparsity)."""
    measured = [r for r in rows if r["method"] != "dense"]
    methods = list(dict.fromkeys(r["method"] for r in measured))
    sparsities = sorted({r["sparsity"] for r in measured})
    cells: dict = defaultdict(dict)
    for r in measured:
        text = f"{r['speedup_vs_dense']:.2f}x" if r["status"] == "ok" else r["status"].split(":")[0]
        cells[(r["distribution"], r["shape"], r["N"])][(r["method"], r["sparsity"])] = text
    header = ["distribution", "shape", "N", *(f"{m} {s:.0%}" for m in methods for s in sparsities)]
    body = [[dist, shape, str(n), *(v.get((m, s), "") for m in methods for s in sparsities)]
            for (dist, shape, n), v in cells.items()]
    return markdown_table(header, body, code_first=False)


def floor_table(rows, copy_bytes_per_s: float, max_tokens: int = 16) -> str:
    """Markdown: at N <= ``max_tokens``, how close each measured method comes to streaming its own
    weight bytes at ``copy_bytes_per_s`` (the GPU's measured copy rate): floor us = weight bytes /
    rate, fraction = floor / measured time; and its bytes against the dense weight's. Rows where
    the runtime fell back to cuBLAS are left out (their time is the dense weight's)."""
    if not copy_bytes_per_s > 0:
        raise ValueError(f"copy_bytes_per_s: expected a positive rate, got {copy_bytes_per_s}")
    dense_bytes = {(r["distribution"], r["shape"], r["sparsity"]): _number(r.get("weight_bytes"))
                   for r in rows if r["method"] == "dense"}
    body = []
    for r in rows:
        nbytes = _number(r.get("weight_bytes"))
        dense = dense_bytes.get((r["distribution"], r["shape"], r["sparsity"]))
        fell_back = FALLBACK_NOTE in (r.get("note") or "")
        if r["N"] > max_tokens or r["status"] != "ok" or fell_back or not nbytes or not r["us"] or not dense:
            continue
        floor_us = nbytes / copy_bytes_per_s * 1e6
        body.append([r["distribution"], r["shape"], str(r["N"]), f"{r['sparsity']:.0%}", r["method"],
                     f"{nbytes / dense:.2f}", f"{r['us']:.1f}", f"{floor_us:.1f}", f"{floor_us / r['us']:.2f}"])
    header = ["distribution", "shape", "N", "sparsity", "method", "bytes / dense", "us", "floor us", "of floor"]
    return markdown_table(header, body, code_first=False)


def times_axis(ax) -> None:
    """``ax``'s y axis in log scale, labelled 2x, 0.5x on the ticks matplotlib labels (its minor ticks
    too where the axis spans under a decade or so), not 2 x 10^0."""
    from matplotlib.ticker import LogFormatter

    class Times(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}x" if super().__call__(x, pos) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Times())
    ax.yaxis.set_minor_formatter(Times(labelOnlyBase=False))


def speedup_figure(panels: Mapping[tuple[str, str], Mapping[str, Sequence[tuple[float, float]]]], path: Path,
                   title: str, log: bool = True, ylabel: str = "speed-up over cuBLAS",
                   xlabel: str = "sparsity") -> Path:
    """A grid of panels keyed (row title, column title), each with lines {label: [(sparsity,
    speed-up)]} (or another ``xlabel``) and a horizontal line at 1.0; one colour per label across
    panels; Agg backend."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(dict.fromkeys(r for r, _ in panels))
    cols = list(dict.fromkeys(c for _, c in panels))
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = "tab10" if len(labels) <= 10 else "tab20"
    fig = Figure(figsize=(3.2 * len(cols) + 2.0, 2.8 * len(rows) + 0.7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=True)
    cmap = colormaps[palette]
    handles = {}
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            for label, pts in panels.get((row, col), {}).items():
                pts = sorted(pts)
                (handles[label],) = ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", lw=1.2,
                                            ms=3 if len(pts) > 1 else 6,  # a lone point (2:4 at 50%) must show
                                            color=cmap(labels.index(label) % cmap.N), label=label)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_title(", ".join(t for t in (row, col) if t), fontsize=9)
            if log:
                times_axis(ax)
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / fig.get_figwidth(), 0.96))  # the legend's room on the right
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def kernel_figure(rows, path: Path, title: str, per_shape: bool = False) -> Path:
    """Figure 1: speed-up against sparsity, a row of panels per distribution, a panel per N; one
    line per method (geometric mean over the shapes), or per shape and method with per_shape."""
    panels: dict = defaultdict(dict)
    if per_shape:
        for r in sorted(rows, key=lambda r: r["N"]):
            if r["status"] == "ok" and r["method"] != "dense":
                line = panels[(r["distribution"], f"N = {r['N']}")].setdefault(f"{r['shape']} {r['method']}", [])
                line.append((r["sparsity"], r["speedup_vs_dense"]))
    else:
        for (dist, method, n), pts in sorted(geomean_curves(rows).items(), key=lambda kv: kv[0][2]):
            panels[(dist, f"N = {n}")][method] = pts
    return speedup_figure(panels, path, title)


def write_kernel_report(rows, out: Path, title: str) -> list[Path]:
    """breakeven.csv and breakeven.md, the figure (kernels_fig1.png) and the table of every
    speed-up (kernels_fig1_table.md) from parsed kernel rows."""
    be = breakeven_rows(rows)
    figure = kernel_figure(rows, out / "kernels_fig1.png", title)
    md = out / "breakeven.md"
    md.write_text(breakeven_markdown(be, figure.name))
    table = out / "kernels_fig1_table.md"
    table.write_text(f"# Speed-up over cuBLAS\n\n{title}\n\n{speedup_table(rows)}\n")
    return [start_csv(out / "breakeven.csv", BREAKEVEN_FIELDS, be), md, figure, table]


# ---------------------------------------------------------------------- models
MODEL_HEADER = ["model", "phase", "batch", "tokens", "sparsity", "dense ms", "cross ms", "speed-up", "MB dense",
                "MB cross", "sparse layers", "min cosine", "timing"]


def write_model_report(rows: Sequence[Mapping], out: Path, notes: Sequence[str]) -> list[Path]:
    """model.png (speed-up against sparsity, a panel per model, a line per phase and batch, ", compiled"
    where the row's command compiled the models) and model.md (the notes, the table and the figure)."""
    panels: dict = defaultdict(dict)
    for r in rows:
        compiled = ", compiled" if "--compile" in str(r.get("command", "")).split() else ""
        line = panels[("", str(r["model"]))].setdefault(f"{r['phase']}, batch {r['batch']}{compiled}", [])
        line.append((float(r["sparsity"]), float(r["speedup"])))
    figure = speedup_figure(panels, out / "model.png", "whole models, bf16: dense (pruned) vs cross.sparsify_",
                            log=False, ylabel="speed-up over dense")
    body = [[r["model"], r["phase"], str(r["batch"]), str(r["tokens"]), f"{float(r['sparsity']):.0%}",
             f"{float(r['dense_ms']):.3f}", f"{float(r['cross_ms']):.3f}", f"{float(r['speedup']):.2f}x",
             f"{int(r['weight_bytes_dense']) / 1e6:.1f}", f"{int(r['weight_bytes_cross']) / 1e6:.1f}",
             str(r["sparse_layers"]), f"{float(r['min_cosine']):.6f}", str(r["timing"])] for r in rows]
    header = MODEL_HEADER
    if any(r.get("dense_apart_ms") not in (None, "") for r in rows):  # stacked siblings: the model as given too
        header = [*MODEL_HEADER, "dense apart ms", "vs dense apart"]
        for line, r in zip(body, rows):
            apart = r.get("dense_apart_ms")
            line += ["", ""] if apart in (None, "") else [
                f"{float(apart):.3f}", f"{float(apart) / float(r['cross_ms']):.2f}x"]
    md = out / "model.md"
    md.write_text("\n".join(["# Whole models: dense vs cross", "", *[f"- {n}" for n in notes], "",
                             markdown_table(header, body, code_first=False), "",
                             f"![speed-up against sparsity]({figure.name})", ""]))
    return [figure, md]
