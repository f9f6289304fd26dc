"""End-to-end latency of whole models, dense vs sparsified with cross (bf16, CUDA graphs, L2 flushed).

This is `cross bench model` (src/cross/bench/models.py, src/cross/cli/bench.py) with this script's
earlier defaults (BERT-base at 50/70/90%, the Llama-2-7B-shaped decoder at 50/70%), writing
model.csv only. Models are built from transformers configs with random weights (no downloads),
every encoder / decoder nn.Linear magnitude-pruned per layer to the target sparsity; the dense
model is the pruned model itself, so both compute the same function. Each forward is captured in
a CUDA graph and the graph replayed with L2 flushed (cross.bench.timing).

    PYTHONPATH=src python benchmarks/model.py --out benchmarks/results/h100
"""

from __future__ import annotations

import sys

from cross.cli.bench import add_model_options, bench_model, run_script

DEFAULTS = dict(models="bert,llama", sparsities="0.5,0.7,0.9", llama_sparsities="0.5,0.7", out=None)


def main(argv=None) -> int:
    return run_script(__doc__, add_model_options, DEFAULTS, lambda args: bench_model(args, report=False), argv)


if __name__ == "__main__":
    sys.exit(main())
