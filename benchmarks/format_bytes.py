"""What the warpgroup 2:4 kernel's format would have to weigh for issue 3's 16-token targets, and what
candidate layouts weigh (CPU only; docs/perf-notes.md, "What the 16-token targets need in bytes").

Bytes a launch reads (as the runtime packs each layout), as a fraction of the dense bf16 weight, on the
kernel grid's uniform weights (``bench.weights.make_weight``, seed 0):
- slots: the slots layout, fixed records (the runtime's at 50-60%, where its bytes are within 1.1x);
- compressed: the compressed layout, sized records (``pack/wgmma24._compressed``), the runtime's at 70% and up;
- lone halves (built): the compressed layout's ``lone=True``, sized records: a group's lone nonzero at
  positions 0-2 as its 16-bit value, a 16-bit mask a thread and base a warp more (``pack/wgmma24._compressed``);
- lone halves (counted): the same idea counted from the weight's groups before it was built, record by
  record, rounded as now: every lone nonzero a half, a head word of 64 bits and three bases a warp;
- + overflow halves: also the overflow word of a group with exactly three nonzeros as a 16-bit value;
- values + bitmap: 2 bytes a nonzero and a bit an element (no metadata, no head words), a reference.

Budget: the bytes a 16-token launch could read and still meet the target if its consumers cost nothing,
from the linear fit of "copies only" (us) against the launch's MB over the two sparsities of one shape
in the measured split (``--floor``, default the H100's ``defaults_grid/floor16.csv``): MB <= (dense us /
target - intercept) / slope, as a fraction of dense ("none": the intercept alone is over the target).

    PYTHONPATH=src python benchmarks/format_bytes.py --out benchmarks/results/h100/format_bytes.md
"""

import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from cross.bench.weights import SHAPES, make_weight  # noqa: E402
from cross.pack.wgmma24 import CHUNK, GROUP, Wgmma24Weight  # noqa: E402

TARGETS = {0.5: 1.2, 0.7: 1.6, 0.9: 2.8}  # issue 3, N = 1, 8, 16
FLOOR = os.path.join(os.path.dirname(__file__), "results", "h100", "defaults_grid", "floor16.csv")


def record_counts(w: torch.Tensor, rows: int = 256):
    """Per record (a row block of ``rows`` rows and a chunk of 64 columns) the groups with 1, 2, 3 and 4
    nonzeros: [records, 4] (int64)."""
    m, k = w.shape
    rb, nc = -(-m // rows), -(-k // CHUNK)
    nz = torch.zeros(rb * rows, nc * CHUNK, dtype=torch.int64)
    nz[:m, :k] = (w.view(torch.int16) & 0x7FFF) != 0
    per_group = nz.view(rb, rows, nc, CHUNK // GROUP, GROUP).sum(-1)  # [rb, rows, nc, 16]
    return torch.stack([(per_group == c).sum((1, 3)) for c in (1, 2, 3, 4)], -1).view(-1, 4)


def halves_bytes(counts: torch.Tensor, overflow_halves: bool, lone_halves: bool = True, rows: int = 256) -> int:
    """Bytes a launch reads of the compressed layout with lone nonzeros as 16-bit values (and, with
    ``overflow_halves``, a three-nonzero group's overflow too): per record the metadata (1/16 of its dense
    bytes), 8-byte head words, a warp's three 16-bit bases in 8 bytes, the 32-bit words, then the
    halves (rounded to 4 bytes), the record rounded to 16 (as ``Wgmma24Weight.bytes_read``: the records'
    sizes, not their table).
    Neither kind of halves: the compressed layout as built (4-byte head words and bases)."""
    threads = rows // 64 // 2 * 128  # two m-tiles per warpgroup, as the default block
    n1, n2, n3, n4 = counts.unbind(-1)
    full = n2 + n3 + n4 + (0 if lone_halves else n1) + (n4 if overflow_halves else n3 + n4)  # 2:4 and overflow words
    halves = (n1 if lone_halves else 0) + (n3 if overflow_halves else 0)
    extra = 8 if lone_halves or overflow_halves else 4  # a head word's and a warp's bases' bytes
    head = rows * CHUNK * 2 // 16 + extra * threads + extra * (threads // 32)
    rec = head + 4 * full + 4 * -(-halves // 2)
    return int((-(-rec // 16) * 16).sum())


def budgets(path: str) -> dict:
    """{shape: ({sparsity: dense us}, intercept, slope)} from a measured 16-token split (two sparsities a
    shape: the copies-only time against the launch's MB, a line through both)."""
    rows = list(csv.DictReader(open(path)))
    out = {}
    for shape in {r["shape"] for r in rows}:
        pts = sorted((float(r["mb"]), float(r["copies_only_us"])) for r in rows if r["shape"] == shape)
        (mb0, t0), (mb1, t1) = pts[0], pts[-1]
        slope = (t1 - t0) / (mb1 - mb0)
        dense = {float(r["sparsity"]): float(r["dense_us"]) for r in rows if r["shape"] == shape}
        out[shape] = (dense, t0 - slope * mb0, slope)
    return out


def dense_fit(path: str) -> tuple[float, float] | None:
    """cuBLAS's line (intercept us, slope us per dense MB) through the split's shapes (their mean dense
    times; None with fewer than two shapes)."""
    rows = list(csv.DictReader(open(path)))
    pts = {}
    for r in rows:
        pts.setdefault(r["shape"], []).append((2 * int(r["M"]) * int(r["K"]) / 1e6, float(r["dense_us"])))
    if len(pts) < 2:
        return None
    (mb0, t0), (mb1, t1) = sorted((v[0][0], sum(t for _, t in v) / len(v)) for v in pts.values())[:: len(pts) - 1]
    slope = (t1 - t0) / (mb1 - mb0)
    return t0 - slope * mb0, slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-qkvo,llama-up,llama-down")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--floor", default=FLOOR, help="a measured 16-token split (wgmma24_floor.py's csv)")
    ap.add_argument("--out", default="", help="also write the table here (markdown)")
    args = ap.parse_args()
    fits = budgets(args.floor) if args.floor else {}
    head = ("| shape | sparsity | slots | compressed | lone halves (built) | lone halves (counted) "
            "| + overflow halves | values + bitmap | budget for the target (copies only) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [f"Bytes a launch reads / dense bf16 (uniform weights, seed 0); budget from `{os.path.relpath(args.floor)}`",
             "", head]
    print("\n".join(lines), flush=True)
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        dense = 2 * m * k
        for sp in (float(s) for s in args.sparsities.split(",")):
            w = make_weight(m, k, sp, "uniform", torch.Generator().manual_seed(0))
            slots = Wgmma24Weight.from_dense(w).bytes_read  # fixed records, as the runtime packs them
            comp = Wgmma24Weight.from_dense(w, compressed=True, sized=True).bytes_read
            built = Wgmma24Weight.from_dense(w, compressed=True, sized=True, lone=True).bytes_read
            counts = record_counts(w)
            lone, both = halves_bytes(counts, False), halves_bytes(counts, True)
            bitmap = 2 * int(((w.view(torch.int16) & 0x7FFF) != 0).sum()) + m * k // 8
            budget = "not measured"
            if shape in fits and sp in TARGETS:
                dense_at, a, b = fits[shape]  # cuBLAS at this sparsity's run where the split has one, else their mean
                t = dense_at.get(sp, sum(dense_at.values()) / len(dense_at)) / TARGETS[sp]
                budget = (f"{TARGETS[sp]}x: {t:.2f} us, " + (f"{(t - a) / b * 1e6 / dense:.3f}" if t > a else "none")
                          + f" (fit {a:.2f} us + {b * 1e3:.0f} ns/MB)")
            row = (f"| {shape} {m}x{k} | {sp:.0%} | {slots / dense:.3f} | {comp / dense:.3f} | {built / dense:.3f} "
                   f"| {lone / dense:.3f} "
                   f"| {both / dense:.3f} | {bitmap / dense:.3f} | {budget} |")
            lines.append(row)
            print(row, flush=True)
    cublas = dense_fit(args.floor) if args.floor else None
    if cublas:
        notes = [f"cuBLAS at the split's tokens: {cublas[0]:.2f} us + {cublas[1] * 1e3:.0f} ns per dense MB (the line "
                 "through its mean times on the split's shapes). The kernel's ceiling with no weight bytes at all "
                 "(dense us / the copies-only intercept):"]
        for shape, (dense_at, a, _) in sorted(fits.items()):
            notes += [f"- {shape}, {sp:.0%}: {us:.2f} / {a:.2f} = {us / a:.2f}x" for sp, us in sorted(dense_at.items())]
        lines += [""] + notes
        print("\n".join(notes))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
