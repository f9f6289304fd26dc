#!/usr/bin/env bash
# The warpgroup 2:4 format's layouts at 50% on the Llama-2-7B-shaped decoder (docs/perf-notes.md, "Next, from
# the 50% runs"): the slots layout by its clusters beat the compressed layout by STREAM on 11008x4096 at 50%
# (forced, 16 tokens); does the layouts' contest keep slots for the decoder's stacked weights?
# - model50_auto: the decoder at 50%, siblings stacked, the runtime's defaults with --wgmma-layout auto (the
#   measured check times both layouts per weight and keeps the faster); dense in the same run.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/layout_half.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step model50_auto 560 python3 -u -m cross bench model --models llama --llama-sparsities 0.5 \
    --phases decode-1,decode-8,decode-16 --cost-model "$CM" --stack-siblings --wgmma-layout auto --out "$OUT/model50_auto"
