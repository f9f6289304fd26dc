"""What ``keep_dense="decode"`` costs a fallback bucket: the weight decoded to a dense temporary, from
its tile formats (``decode_dense``, all tiles BITMAP, the plan kernel's 64x64 tiles) and from its
row format (``decode_rows``, what a layer that dropped its tiles decodes), against the dense
product it then feeds (cuBLAS at --tokens tokens), in the same run. Each decode is checked to give
exactly the weight before it is timed (CUDA-graph replay, L2 flushed).

    PYTHONPATH=src python benchmarks/decode_bench.py --shapes llama-up,llama-qkvo --sparsities 0.5,0.7,0.9
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from kernels import SHAPES  # noqa: E402

from cross.bench.timing import graph_us  # noqa: E402
from cross.kernels.decode import decode_dense, decode_rows  # noqa: E402
from cross.pack.formats import TiledWeight  # noqa: E402
from cross.pack.rows import RowWeight  # noqa: E402
from cross.tiling import TileKind  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama-up,llama-qkvo")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("decode_bench: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}, bf16, CUDA-graph replay, L2 flushed; us")
    print(f"{'shape':>11} {'sp':>5} {'tiles':>8} {'rows':>8} {'dense product':>14}")
    for shape in args.shapes.split(","):
        m, k = SHAPES[shape]
        x = torch.randn(args.tokens, k, generator=gen, device="cuda").to(torch.bfloat16)
        for sp in (float(v) for v in args.sparsities.split(",")):
            w = torch.randn(m, k, generator=gen, device="cuda")
            w = torch.where(torch.rand(m, k, generator=gen, device="cuda") >= sp, w, 0.0).to(torch.bfloat16)
            kinds = np.full((-(-m // 64), -(-k // 64)), TileKind.BITMAP, dtype=np.uint8)
            tiled, rows = TiledWeight.from_dense(w, kinds, (64, 64)), RowWeight.from_dense(w)
            out = torch.empty_like(w)
            for name, fn in (("tiles", lambda: decode_dense(tiled, out=out)), ("rows", lambda: decode_rows(rows, out=out))):
                out.fill_(float("nan"))
                if not torch.equal(fn().view(torch.int16), w.view(torch.int16)):
                    raise SystemExit(f"{shape} {sp}: the {name} decode does not give the weight")
            t_us = graph_us(lambda: decode_dense(tiled, out=out))
            r_us = graph_us(lambda: decode_rows(rows, out=out))
            d_us = graph_us(lambda: F.linear(x, w))
            print(f"{shape:>11} {sp:>5} {t_us:>8.1f} {r_us:>8.1f} {d_us:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
