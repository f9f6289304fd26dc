#!/usr/bin/env bash
# The sibling projections stacked (`--stack-siblings`: q, k, v one layer, gate, up one layer) in the
# Llama-2-7B-shaped decoder at 70% with the defaults, against the dense model stacked the same way
# (the log also has the dense model as given), and the same command without --stack-siblings; first
# the stacked layers' GPU tests. LAYERS decoder layers (default 32: ~330 s on the H100; 8: ~130 s).
# The model folders come back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> [LAYERS=8] bash benchmarks/stacked_decoder.sh
source "$(dirname "$0")/steps.sh"
LAYERS=${LAYERS:-32}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests_stack 60 python3 -m pytest -q -m gpu tests/test_stack.py
mkdir -p "$OUT/model"
for run in stacked apart; do
    start=$(date +%s)
    step "model_$run" 240 python3 -m cross bench model --models llama --llama-sparsities 0.7 --llama-layers "$LAYERS" \
        --cost-model $CM $([ $run = stacked ] && echo --stack-siblings) --out "$OUT/model/$run"
    echo "model step: $(( $(date +%s) - start )) s" | tee -a "$OUT/model_$run.txt"
done
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
