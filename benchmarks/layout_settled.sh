#!/usr/bin/env bash
# The decoder at 50% with the runtime's defaults since the layouts' contest became the default and sparsify_ takes
# a weight kind's settled layout (nn/sparsify.LAYOUT_SETTLED) without a contest: sparsify_'s time against the
# 217 s of a contest for every layer (benchmarks/results/h100/layout_half/), and the step's times.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/layout_settled.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step model50 420 python3 -u -m cross bench model --models llama --llama-sparsities 0.5 \
    --phases decode-1,decode-8,decode-16 --cost-model "$CM" --stack-siblings --out "$OUT/model50"
