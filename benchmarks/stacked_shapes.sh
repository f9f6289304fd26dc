#!/usr/bin/env bash
# One launch for the projections that share an input, measured before it is built (docs/perf-notes.md,
# "One launch for the projections that share an input"): the kernel grid on Llama-2-7B's q, k and v
# stacked (llama-qkv, 12288x4096) and gate and up stacked (llama-gateup, 22016x4096) beside the
# separate shapes (llama-qkvo, llama-up), 50 / 70 / 90%, 1, 8 and 16 tokens, with the runtime's
# defaults and with the warpgroup 2:4 kernel in either layout, each against cuBLAS on the same shape
# in the same run, in one device call (~2-3 min on an H100). The CSV comes back as kernels_stacked.csv.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/stacked_shapes.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step grid 400 python3 -m cross bench kernels --shapes llama-qkv,llama-qkvo,llama-gateup,llama-up \
    --distributions uniform --sparsities 0.5,0.7,0.9 --ns 1,8,16 --methods dense,cross,cross+wgmma24a \
    --cost-model $CM --out "$OUT/stacked"
cp "$OUT/stacked/kernels_fig1.csv" "$OUT/kernels_stacked.csv" 2>/dev/null
rm -rf "$OUT/stacked"
