#!/usr/bin/env bash
# The sibling projections stacked (`--stack-siblings`: q, k, v one layer, gate, up one layer) in the
# Llama-2-7B-shaped decoder at 70% with the defaults, against the dense model stacked the same way
# (the log also has the dense model as given); the same command without --stack-siblings is
# model_fitted70 (benchmarks/results/h100). First the stacked layers' GPU tests. One device call
# (~250 s on the H100). The model folder comes back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/stacked_decoder.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests_stack 60 python3 -m pytest -q -m gpu tests/test_stack.py
mkdir -p "$OUT/model"
start=$(date +%s)
step model 330 python3 -m cross bench model --models llama --llama-sparsities 0.7 --cost-model $CM \
    --stack-siblings --out "$OUT/model/stacked"
echo "model step: $(( $(date +%s) - start )) s" | tee -a "$OUT/model.txt"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
