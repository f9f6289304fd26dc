#!/usr/bin/env bash
# The warpgroup 2:4 kernel offered at 50% (265 s on the H100 on 2026-12-07: benchmarks/results/h100/wgmma24_half/;
# docs/perf-notes.md "The warpgroup 2:4 kernel at 50%"), in this order:
# - runtime_tests: the runtime's GPU tests of the kernel (its offers at 50% among them);
# - grid50: the kernel grid's 50% cells at 8 and 16 tokens with the runtime's defaults (`cross`, the kernel
#   offered from 50% now) and with either layout as the measured check times both (`cross+wgmma24a`);
# - model50: the Llama-2-7B-shaped decoder at 50%, siblings stacked (the defaults), dense in the same run.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_half.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step runtime_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24_runtime.py
step grid50 200 python3 -m cross bench kernels --shapes llama-qkvo,llama-up,llama-down --distributions uniform \
    --sparsities 0.5 --ns 8,16 --methods dense,cross,cross+wgmma24a --cost-model "$CM" --out "$OUT/grid50"
step model50 240 python3 -u -m cross bench model --models llama --llama-sparsities 0.5 \
    --phases decode-1,decode-8,decode-16 --cost-model "$CM" --stack-siblings --out "$OUT/model50"
