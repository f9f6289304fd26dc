"""What a layer's kernel costs inside a chain of layers, as in a model's decode step, against its
isolated timing.

A chain of Llama-2-7B MLP blocks (gate and up 11008x4096, down 4096x11008, the SiLU-gate product and
the residual add between them; every block its own weights) is captured in one CUDA graph and
replayed with L2 flushed before each replay. Each linear and elementwise op is also timed alone
(graph replay, L2 flushed). The excess of a block is its time in the chain minus the sum of its ops'
isolated times; the per-launch cost of the plan kernel inside a model is the sparse chain's excess
over the dense chain's, per linear. Variants: cuBLAS; the forced CUDA plan kernel (all tiles BITMAP);
the same kernel compiled to exit at once (-DABLATE=8), which isolates launching from working.
--flush chooses how the isolated timings empty L2 (costmodel.profile.FLUSHES).

    PYTHONPATH=src python benchmarks/in_model_chain.py --sparsities 0.7,0.9 --ns 1,16 --layers 4 --flush read,write
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from cross.bench.timing import check, graph_us
from cross.bench.weights import make_weight
from cross.kernels import cuda_backend
from cross.kernels.launch import kernel_args, launch
from cross.pack import pack
from cross.partition import make_plan
from cross.tiling import TileKind

SHAPES = {"gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008)}


def build_layers(n_layers: int, sparsity: float, programs: int, gen: torch.Generator, dev):
    layers = []
    for _ in range(n_layers):
        layer = {}
        for name, (m, k) in SHAPES.items():
            w = make_weight(m, k, sparsity, "uniform", gen).to(dev)
            packed = pack(w, make_plan(w, allowed_kinds=(TileKind.BITMAP,), n_programs=programs))
            layer[name] = (w, packed)
        layers.append(layer)
    return layers


def variant_fn(kind: str, n: int):
    """lin(x, (w, packed)) for one variant, with kernel arguments resolved once per weight."""
    if kind == "dense":
        return lambda x, wp: F.linear(x, wp[0])
    cache = {}

    def lin(x, wp):
        key = id(wp[1])
        if key not in cache:
            cache[key] = kernel_args(wp[1], wp[1].bucket_for(n), "cuda")
        return launch(x, cache[key])

    return lin


def block(x, layer, lin):
    g = lin(x, layer["gate"])
    u = lin(x, layer["up"])
    h = F.silu(g) * u
    return x + lin(h, layer["down"])


def timings(layers, lin, n: int, dev, rep_ms: int, flush: str) -> tuple[float, float]:
    """(chain us per block, sum of the isolated times of one block's ops averaged over the blocks)."""
    x0 = torch.randn(n, 4096, device=dev, dtype=torch.bfloat16)

    def chain():
        x = x0
        for layer in layers:
            x = block(x, layer, lin)
        return x

    chain_us = graph_us(chain, rep_ms=rep_ms, flush=flush) / len(layers)
    iso = 0.0
    h = torch.randn(n, 11008, device=dev, dtype=torch.bfloat16)
    g, u = h.clone(), h.clone()
    for layer in layers:
        iso += graph_us(lambda: lin(x0, layer["gate"]), rep_ms=rep_ms, flush=flush)
        iso += graph_us(lambda: lin(x0, layer["up"]), rep_ms=rep_ms, flush=flush)
        iso += graph_us(lambda: lin(h, layer["down"]), rep_ms=rep_ms, flush=flush)
    iso /= len(layers)
    iso += graph_us(lambda: F.silu(g) * u, rep_ms=rep_ms, flush=flush) + graph_us(lambda: x0 + x0, rep_ms=rep_ms, flush=flush)
    return chain_us, iso


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", default="0.7,0.9")
    ap.add_argument("--ns", default="1,16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--programs-per-sm", default="6", help="comma-separated: plans made for this many programs per SM")
    ap.add_argument("--rep-ms", type=int, default=200)
    ap.add_argument("--flush", default="read", help="comma-separated: read, write")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    n_sm = torch.cuda.get_device_properties(dev).multi_processor_count
    gen = torch.Generator().manual_seed(0)
    print(f"# {torch.cuda.get_device_name(dev)}, bf16, {args.layers} MLP blocks per chain, "
          f"command: benchmarks/in_model_chain.py {' '.join(sys.argv[1:])}", flush=True)
    print(f"{'sp':>4} {'pps':>3} {'N':>3} {'flush':>5} {'variant':>6} {'chain us':>9} {'isolated':>9} {'excess':>7} {'per launch vs dense':>19}")
    for sp in (float(s) for s in args.sparsities.split(",")):
        for pps in (int(p) for p in args.programs_per_sm.split(",")):
            layers = build_layers(args.layers, sp, pps * n_sm, gen, dev)
            for n in (int(v) for v in args.ns.split(",")):
                x = torch.randn(n, 4096, device=dev, dtype=torch.bfloat16)
                for name in ("gate", "down"):  # every plan kernel is checked before it is timed
                    w, packed = layers[0][name]
                    xi = x if name == "gate" else torch.randn(n, 11008, device=dev, dtype=torch.bfloat16)
                    bad = check(launch(xi, kernel_args(packed, packed.bucket_for(n), "cuda")), xi.float() @ w.float().T)
                    if bad:
                        raise SystemExit(f"plan kernel wrong on {name} at {sp}: {bad}")
                for flush in args.flush.split(","):
                    rows = {}
                    for variant, defines in (("dense", ""), ("plan", ""), ("exit", "-DABLATE=8")):
                        os.environ[cuda_backend.DEFINES_ENV] = defines
                        cuda_backend._kernel.cache_clear()
                        kind = "dense" if variant == "dense" else "plan"
                        chain_us, iso = timings(layers, variant_fn(kind, n), n, dev, args.rep_ms, flush)
                        rows[variant] = chain_us - iso
                        rel = "" if variant == "dense" else f"{(rows[variant] - rows['dense']) / 3:19.1f}"
                        print(f"{sp:4.2f} {pps:3d} {n:3d} {flush:>5} {variant:>6} {chain_us:9.1f} {iso:9.1f} "
                              f"{chain_us - iso:7.1f} {rel}", flush=True)
                os.environ[cuda_backend.DEFINES_ENV] = ""
                cuda_backend._kernel.cache_clear()


if __name__ == "__main__":
    main()
