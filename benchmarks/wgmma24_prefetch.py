"""The next layer's first weight bytes hinted into L2 by the layer before it (kernels/wgmma24.cu's
``prefetch``): a Llama-2-7B-shaped decoder layer's linear layers as the stacked model runs them (q, k,
v as one 12288x4096 weight, o 4096x4096, gate and up as one 22016x4096, down 4096x11008), each on the
warpgroup 2:4 kernel, chained through the elementwise work between them (an RMSNorm after o and after
down, SiLU(gate) x up before down; attention left out), for ``--layers`` layers. The chain is timed as
one CUDA graph (L2 flushed once before each replay, none between its kernels, as in a model's step)
with no prefetch, and with each layer's blocks, when done, prefetching the next layer's first
``--depths`` units per block (``launch.wgmma24_prefetch``) over the links named by ``--links``
("mlp": o -> gate/up -> down -> the next layer's q/k/v, with no attention in between; "all": also
q/k/v -> o). The same chain on cuBLAS (the dense weights) in the same run.

Each layer is checked against its fp32 product first (output poisoned with NaN, fresh inputs), and
the chain's output with every prefetch setting must equal the one without, bit for bit (the hint
changes no arithmetic).

    PYTHONPATH=src python benchmarks/wgmma24_prefetch.py --sparsity 0.7 --n 16 --depths 0,2,4,8
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import check, graph_us  # noqa: E402
from cross.kernels.launch import wgmma24_args, wgmma24_prefetch, wgmma24_run  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight  # noqa: E402

#: one decoder layer's linear layers, stacked as the model runs them: (name, out, in)
LAYER = (("qkv", 3 * 4096, 4096), ("o", 4096, 4096), ("gate_up", 2 * 11008, 4096), ("down", 4096, 11008))
#: the links whose first layer prefetches for the second: by the first layer's name
LINKS = {"mlp": ("o", "gate_up", "down"), "all": ("qkv", "o", "gate_up", "down")}


def rms_norm(h: torch.Tensor) -> torch.Tensor:
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype)


def build(args, gen):
    """The layers' dense weights (uniform random, pruned at ``args.sparsity``) and their formats."""
    layers = []
    for layer in range(args.layers):
        for name, m, k in LAYER:
            w = torch.randn(m, k, generator=gen, device="cuda") / k**0.5
            w = (w * (torch.rand(m, k, generator=gen, device="cuda") >= args.sparsity)).to(torch.bfloat16)
            packed = Wgmma24Weight.from_dense(w, 2, 2, compressed=args.layout == "compressed")
            layers.append(dict(name=name, layer=layer, w=w, run=wgmma24_args(packed), mb=packed.nbytes / 1e6))
    return layers


def check_layers(layers, n, gen) -> None:
    for lay in layers:
        m, k = lay["w"].shape
        x = torch.randn(n, k, generator=gen, device="cuda").to(torch.bfloat16)
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_run(x, lay["run"], None, y)
        bad = check(y, x.float() @ lay["w"].float().T)
        if bad:
            raise SystemExit(f"layer {lay['layer']} {lay['name']}: WRONG: {bad}")


def chain(layers, x, linear):
    """One pass: ``linear(i, h)`` runs layer i on h."""
    h = x
    for i in range(0, len(layers), len(LAYER)):
        qkv = linear(i, h)
        o = linear(i + 1, qkv[:, :4096].contiguous())  # the attention's stand-in: q
        h = rms_norm(h + o)
        gu = linear(i + 2, h)
        d = linear(i + 3, F.silu(gu[:, :11008]) * gu[:, 11008:])
        h = rms_norm(h + d)
    return h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--n", type=int, default=16, help="tokens")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--layout", choices=("slots", "compressed"), default="slots")
    p.add_argument("--depths", default="0,2,4,8", help="units per block prefetched (0: none); 'all': every unit")
    p.add_argument("--links", default="mlp,all")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = build(args, gen)
    check_layers(layers, args.n, gen)
    x = torch.randn(args.n, 4096, generator=gen, device="cuda").to(torch.bfloat16)
    outs = [torch.empty(args.n, lay["w"].shape[0], dtype=torch.bfloat16, device="cuda") for lay in layers]

    dense_us = graph_us(lambda: chain(layers, x, lambda i, h: F.linear(h, layers[i]["w"])))
    print(f"{args.layers} layers, {args.n} tokens, {args.sparsity:.0%}, {args.layout}: formats "
          f"{sum(lay['mb'] for lay in layers):.1f} MB, dense {sum(lay['w'].numel() * 2 for lay in layers) / 1e6:.1f} MB; "
          f"cuBLAS chain {dense_us:.2f} us", flush=True)
    rows, want = [], None
    for links in args.links.split(","):
        for depth in args.depths.split(","):
            if depth == "0" and want is not None:
                continue  # no prefetch: one row, whatever the links
            pf = [None] * len(layers)
            total = 0
            for i, lay in enumerate(layers[:-1] if depth != "0" else ()):
                if lay["name"] in LINKS[links]:
                    units = 1 << 30 if depth == "all" else int(depth)
                    pf[i] = wgmma24_prefetch(layers[i + 1]["run"], args.n, units)
                    total += int(pf[i][:, 1].sum())

            def linear(i, h):
                return wgmma24_run(h, layers[i]["run"], None, outs[i], pf[i])

            got = chain(layers, x, linear).clone()
            if want is None:
                want = got
            elif not torch.equal(got, want):
                raise SystemExit(f"links {links} depth {depth}: the chain's output differs from the one without prefetch")
            us = graph_us(lambda: chain(layers, x, linear))
            rec = dict(layers=args.layers, n=args.n, sparsity=args.sparsity, layout=args.layout,
                       links="none" if depth == "0" else links, depth=depth, prefetch_mb=round(total / 1e6, 2),
                       dense_us=round(dense_us, 2), cross_us=round(us, 2), speedup_vs_dense=round(dense_us / us, 3))
            rows.append(rec)
            print(f"links {rec['links']:>4} depth {depth:>3}: prefetched {total / 1e6:6.1f} MB, chain {us:8.2f} us, "
                  f"{dense_us / us:.3f}x of cuBLAS", flush=True)
    if args.out:
        start_csv(Path(args.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
