#!/usr/bin/env bash
# Lone halves through the runtime (make_plan(wgmma_layout="lone"); docs/perf-notes.md, "Lone halves in the runtime")
# in one device call:
# - grid: benchmarks/kernels.py on the three Llama-2-7B shapes at 50 / 70 / 90% and 1 / 8 / 16 tokens: cross (the
#   runtime's defaults), cross+wgmma24c (the 2:4 kernel offered, compressed layout, nan_policy "ignore") and
#   cross+wgmma24l (the same with lone halves), cuBLAS in the same run;
# - runtime: the runtime's lone halves GPU tests (a layer's buckets eagerly, in a CUDA graph, under torch.compile;
#   Inf and NaN inputs).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/lone_grid.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step grid 300 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16 --methods dense,cross,cross+wgmma24c,cross+wgmma24l --cost-model $CM --out "$OUT/grid"
step runtime 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24_runtime.py -k lone
