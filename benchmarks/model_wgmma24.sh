#!/usr/bin/env bash
# The model level with the warpgroup 2:4 kernel, in one device call (under ~450 s per sparsity on the H100:
# 277 s with --wgmma-kernel, 143 s without, at 70%): the Llama-2-7B-shaped decoder (32 layers; prefill of
# 512 tokens, decode at batch 1, 8 and 16) with --wgmma-kernel and then without it (the runtime's other
# kernels), each against the dense model in its own run; the cost model of the GPU's results folder. The
# two output folders come back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/model_wgmma24.sh [layout [sparsities]]
# (layout: slots, the default, or compressed; sparsities: comma-separated, default 0.7)
source "$(dirname "$0")/steps.sh"
LAYOUT=${1:-slots}
SPARSITIES=${2:-0.7}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
M="python3 -m cross bench model --models llama --llama-sparsities $SPARSITIES --cost-model $CM"
mkdir -p "$OUT/model"
step model_wgmma 330 $M --wgmma-kernel --wgmma-layout "$LAYOUT" --out "$OUT/model/wgmma"
step model_base 200 $M --out "$OUT/model/base"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
