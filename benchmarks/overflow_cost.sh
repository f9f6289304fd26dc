#!/usr/bin/env bash
# What the overflow operand costs a 16-token launch (docs/perf-notes.md, "The overflow's cost at 90%
# (prediction)"): wgmma24_floor.py --without-overflow times the default build on each weight and on the same
# weight less its groups' third and fourth nonzeros (no overflow operand: the launcher's OVER=0 build), each
# checked against its own fp32 product, cuBLAS in the same run; the compressed layout by STREAM on the three
# Llama shapes at 80 and 90% (at 90% both weights pack to the same bytes).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/overflow_cost.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step over16 100 python3 benchmarks/wgmma24_floor.py --no-ablations --compressed --without-overflow \
    --shapes llama-qkvo,llama-up,llama-down --sparsities 0.8,0.9 --n 16 --out "$OUT/over16.csv"
