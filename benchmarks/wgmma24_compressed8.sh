#!/usr/bin/env bash
# The compressed layout by clusters of 8 for 4096-row weights (its default now where the clusters all
# start at once, launch.wgmma24_launch_split), in one device call (under ~170 s): its GPU tests; then
# benchmarks/wgmma24_bench.py on 4096x4096 and 4096x11008 at 16 tokens, 70 and 90%: the slots layout's
# default launch (clusters of 8), the compressed layout by STREAM (its default before) and by clusters
# of 8, each checked against the fp32 product first, cuBLAS in the same run (docs/perf-notes.md, "The
# compressed layout by clusters of 8").
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_compressed8.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 70 python3 -m pytest -q -m gpu tests/test_wgmma24.py -k clusters_by_default
step bench 95 python3 benchmarks/wgmma24_bench.py --shapes llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --weights uniform --ns 16 --settings 2:2,c2:2:0,c2:2:8 --out "$OUT/bench.csv"
