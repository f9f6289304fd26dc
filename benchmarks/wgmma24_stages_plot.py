"""wgmma24_stages.png from wgmma24_stages.csv (benchmarks/wgmma24_stages.sh): the warpgroup 2:4 kernel's
speed-up over cuBLAS against its pipeline's stages, a panel per shape and token count, a line per layout
and sparsity; the rows whose stages are the format's ("format") are placed at the stages
pack/wgmma24.stages gave them before the shallow pipeline (as many as fit, at most 8), and the default
now taken (4 in the slots layout, 3 compressed, up to 64 tokens) is marked in the title.

    python benchmarks/wgmma24_stages_plot.py benchmarks/results/h100/wgmma24_stages.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from cross.bench.report import speedup_figure  # noqa: E402
from cross.pack.wgmma24 import MAX_STAGES, STAGE_SMEM, Wgmma24Weight, record_bytes  # noqa: E402
from cross.pack.wgmma24 import CHUNK, token_tile  # noqa: E402


def format_stages(slots: int, ntok: int, compressed: bool) -> int:
    """The stages pack/wgmma24.stages gave a 2 x 2 block before the shallow pipeline."""
    return max(2, min(MAX_STAGES, STAGE_SMEM // (record_bytes(2, 2, slots, compressed) + ntok * CHUNK * 2)))


def panels_of(rows, slots_of) -> dict:
    """{(tokens, shape): {layout sparsity: [(stages, speed-up)]}}; ``slots_of(row)``: the word slots of
    the row's weight (to place the format's rows)."""
    panels: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        compressed = r["layout"] == "compressed"
        n = int(r["N"])
        stages = (format_stages(slots_of(r), token_tile(n), compressed) if r["stages"] == "format"
                  else int(r["stages"]))
        label = f"{r['layout']} {float(r['sparsity']):.0%}"
        panels[(f"{n} tokens", f"{r['shape']} {r['M']}x{r['K']}")][label].append((stages, float(r["speedup_vs_dense"])))
    return panels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="the PNG (default: beside the CSV)")
    args = ap.parse_args(argv)
    rows = list(csv.DictReader(args.csv.open()))
    slots: dict = {}

    def slots_of(r) -> int:  # the bench's weights are uniform random at the row's sparsity: pack one alike
        import torch

        key = (int(r["M"]), int(r["K"]), float(r["sparsity"]), r["layout"] == "compressed")
        if key not in slots:
            m, k, sp, compressed = key
            g = torch.Generator().manual_seed(0)
            w = torch.randn(m, k, generator=g)
            w[torch.rand(m, k, generator=g) < sp] = 0
            slots[key] = Wgmma24Weight.from_dense(w.to(torch.bfloat16), 2, 2, compressed=compressed).slots
        return slots[key]

    out = args.out or args.csv.with_suffix(".png")
    speedup_figure(panels_of(rows, slots_of), out, "warpgroup 2:4 kernel, bf16, against its pipeline's stages "
                   "(the default: 4 slots, 3 compressed, up to 64 tokens)", log=False, xlabel="stages")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
