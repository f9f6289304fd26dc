#!/usr/bin/env bash
# The Llama-2-7B-shaped decoder with the siblings stacked (`--stack-siblings`) and the warpgroup 2:4
# kernel offered (`--wgmma-kernel`) at the sparsities not yet measured so (default 60% and 80%; 50, 70
# and 90% are model_stacked_wgmma{50,70,90}.* in benchmarks/results/h100): one model step per sparsity
# (~130-260 s each on the H100), the model folders back as model.tgz (model/<sparsity>/model.*).
# Usage (repository root, on the GPU machine): OUT=<dir> [SPARSITIES="0.6 0.8"] bash benchmarks/stacked_sweep.sh
source "$(dirname "$0")/steps.sh"
SPARSITIES=${SPARSITIES:-0.6 0.8}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
mkdir -p "$OUT/model"
for s in $SPARSITIES; do
    step "model_stacked_wgmma$s" 290 python3 -m cross bench model --models llama --llama-sparsities "$s" \
        --cost-model $CM --stack-siblings --wgmma-kernel --out "$OUT/model/$s"
done
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
