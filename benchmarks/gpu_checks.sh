#!/usr/bin/env bash
# The GPU tests of the runtime (the measured check with its alternatives and the 2:4 layouts' contest,
# nn, the row kernel's fit in `cross profile`) and of the warpgroup 2:4 kernel at its default launch
# setting and in the compressed layout; then `cross profile --force` (the cost model with the row
# kernel's fitted terms, back as costmodel_profile.json); then the kernel grid at 8 and 16 tokens
# with the 2:4 kernel's layouts (kernels_wgmma24.csv), in one device call (under ~580 s).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/gpu_checks.sh
source "$(dirname "$0")/steps.sh"
export CROSS_CACHE_DIR=/tmp/cross_cache_gpu_checks
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 240 python3 -m pytest -q -m gpu --maxfail=5 tests/test_rowfit.py tests/test_runtime_gpu.py \
    tests/test_nn.py tests/test_measure.py tests/test_wgmma24_runtime.py
step gpu_tests_wgmma24 110 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py \
    -k "test_gpu_wgmma24_kernel and 2-2 or compressed"
step profile 100 python3 -m cross profile --force -q
cp "$(ls -t "$CROSS_CACHE_DIR"/costmodel-*.json | head -1)" "$OUT/costmodel_profile.json" 2>/dev/null  # the newest
step grid 110 python3 -m cross bench kernels --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --ns 8,16 --methods dense,cross,cross+wgmma24,cross+wgmma24c,cross+wgmma24a --cost-model $CM --out "$OUT/grid"
cp "$OUT/grid/kernels_fig1.csv" "$OUT/kernels_wgmma24.csv" 2>/dev/null
rm -rf "$OUT/grid"
