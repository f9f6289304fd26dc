"""End-to-end latency of whole models, dense vs sparsified with cross (bf16, CUDA graphs, L2 flushed).

Models are built from transformers configs with random weights (no downloads), every encoder /
decoder nn.Linear magnitude-pruned per layer to the target sparsity; the dense model is the pruned
model itself, so both compute the same function. Each forward is captured in a CUDA graph and the
graph replayed under triton.testing.do_bench.

    PYTHONPATH=src python benchmarks/model.py --out benchmarks/results/h100
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch

import cross
from cross.costmodel.profile import graph_time_us

FIELDS = ["model", "phase", "batch", "tokens", "sparsity", "dense_ms", "cross_ms", "speedup",
          "weight_bytes_dense", "weight_bytes_cross"]


def prune_(model: torch.nn.Module, sparsity: float) -> None:
    """Magnitude pruning per layer, on the model's device (fast enough for 7B-shaped models)."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name and "pooler" not in name:
                w = mod.weight
                k = int(round(sparsity * w.numel()))
                if k:
                    thr = w.abs().flatten().float().kthvalue(k).values
                    w.mul_(w.abs().float() > thr)


def graph_ms(fn) -> float:
    return graph_time_us(fn, warmup_ms=10, rep_ms=50) / 1e3


def linear_bytes(model) -> int:
    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
        elif isinstance(mod, cross.SparseLinear):
            total += mod.nbytes - (mod.bias.numel() * mod.bias.element_size() if mod.bias is not None else 0)
    return total


def bert(sparsity):
    from transformers import BertConfig, BertModel

    cfg = BertConfig()  # BERT-base: 12 layers, hidden 768, intermediate 3072
    with torch.device("cuda"):
        model = BertModel(cfg).to(torch.bfloat16).eval()
    prune_(model, sparsity)
    phases = [("encoder", 8, 128), ("encoder", 1, 128)]

    def inputs(batch, seq):
        return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")}

    return model, phases, inputs


def llama(sparsity, layers):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaModel(cfg).to(torch.bfloat16).eval()
    prune_(model, sparsity)
    # decode steps are timed as one new token per sequence without a KV cache: the linear layers,
    # which is what cross changes, do the same work as in a cached decode step
    phases = [("prefill", 1, 512), ("decode", 1, 1), ("decode", 16, 1)]

    def inputs(batch, seq):
        return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda"), "use_cache": False}

    return model, phases, inputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bert,llama")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--llama-sparsities", default="0.5,0.7")
    ap.add_argument("--llama-layers", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    print(f"# {torch.cuda.get_device_name()}, bf16, cost model: {cross.costmodel.default_cost_model().source}")
    print(f"{'model':>6} {'phase':>8} {'batch':>5} {'tok':>5} {'sp':>4} {'dense_ms':>9} {'cross_ms':>9} {'speedup':>7} "
          f"{'MB dense':>9} {'MB cross':>9} {'sparse layers':>13}")
    for name in args.models.split(","):
        sparsities = args.sparsities if name == "bert" else args.llama_sparsities
        for sp in (float(v) for v in sparsities.split(",")):
            torch.manual_seed(0)
            t0 = time.time()
            model, phases, inputs = bert(sp) if name == "bert" else llama(sp, args.llama_layers)
            dense_bytes = linear_bytes(model)
            with torch.no_grad():
                dense = {}
                for phase, batch, seq in phases:
                    x = inputs(batch, seq)
                    dense[(phase, batch, seq)] = graph_ms(lambda: model(**x))
                report = cross.sparsify_(model, progress=False)
                cross_bytes = linear_bytes(model)
                sparse = {}
                for phase, batch, seq in phases:
                    x = inputs(batch, seq)
                    sparse[(phase, batch, seq)] = graph_ms(lambda: model(**x))
                # dense timed again after the sparse runs: the two dense timings bracket the sparse one,
                # so clock drift over the run does not pass for a speed-up or a loss
                cross.unsparsify_(model)
                for phase, batch, seq in phases:
                    x = inputs(batch, seq)
                    dense[(phase, batch, seq)] = (dense[(phase, batch, seq)] + graph_ms(lambda: model(**x))) / 2
                for phase, batch, seq in phases:
                    ms = sparse[(phase, batch, seq)]
                    d = dense[(phase, batch, seq)]
                    row = dict(model=name if name == "bert" else f"llama-{args.llama_layers}L", phase=phase,
                               batch=batch, tokens=batch * seq, sparsity=sp, dense_ms=round(d, 4), cross_ms=round(ms, 4),
                               speedup=round(d / ms, 3), weight_bytes_dense=dense_bytes, weight_bytes_cross=cross_bytes)
                    rows.append(row)
                    print(f"{row['model']:>6} {phase:>8} {batch:>5} {batch * seq:>5} {sp:>4} {d:9.3f} {ms:9.3f} "
                          f"{d / ms:7.2f} {dense_bytes / 1e6:9.1f} {cross_bytes / 1e6:9.1f} "
                          f"{report.n_swapped:>6}/{len(report.layers)}", flush=True)
            print(f"   ({name} at {sp}: built, pruned, planned and timed in {time.time() - t0:.0f} s)", flush=True)
            del model
            torch.cuda.empty_cache()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "model.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
