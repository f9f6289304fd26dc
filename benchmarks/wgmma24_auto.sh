#!/usr/bin/env bash
# Either layout of the warpgroup 2:4 format, chosen per layer by the measured check
# (wgmma_layout="auto"; docs/perf-notes.md, "Either layout, chosen per layer by the measured check")
# in one device call (under ~580 s on the H100): the runtime's warpgroup 2:4 GPU tests; the kernel
# grid's cross+wgmma24a rows (benchmarks/kernels.py --resume on a copy of the
# committed kernels.csv: the other rows kept); the Llama-2-7B-shaped decoder at 90% with
# --wgmma-kernel --wgmma-layout auto, against the dense model in the same run. The grid comes back as
# kernels.csv, the model folder as model.tgz. On the H100 (2026-12-05) the decoder step ran out of its
# 360 s (the 2:4 kernel was then offered at every token count, each timed in both layouts);
# benchmarks/auto_decoder.sh runs it alone.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_auto.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 60 python3 -m pytest -q -m gpu tests/test_wgmma24_runtime.py -k "auto or alternatives"
cp "benchmarks/results/$GPU/kernels.csv" "$OUT/kernels.csv"
step grid 150 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24,cross+wgmma24c,cross+wgmma24a --cost-model $CM \
    --out "$OUT" --resume
mkdir -p "$OUT/model"
step model 360 python3 -m cross bench model --models llama --llama-sparsities 0.9 --cost-model $CM \
    --wgmma-kernel --wgmma-layout auto --out "$OUT/model/auto"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
