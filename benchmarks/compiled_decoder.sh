#!/usr/bin/env bash
# The Llama-2-7B-shaped decoder at 70% with the defaults, siblings stacked, both models compiled by
# cross.compile (`--compile`: torch.compile with the stacked siblings' repeated products merged),
# decode at batch 16, then at batch 1 in what is left of the call; first cross.compile's GPU tests.
# Every phase compiles once per state of the model (apart, stacked, sparse, dense again, apart again).
# The model folders come back as model.tgz (model/decode-16, model/decode-1: model.*).
# BUDGET: seconds the whole script may take (default 585); a phase starts only with more than 280 left
# (on a CPU, inductor took ~40 s to compile a 32-layer decoder's step: ~270 s per phase and its 5 states).
# Usage (repository root, on the GPU machine): OUT=<dir> [BUDGET=585] bash benchmarks/compiled_decoder.sh
source "$(dirname "$0")/steps.sh"
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests_compile 90 python3 -m pytest -q -m gpu tests/test_compile.py
mkdir -p "$OUT/model"
for phase in decode-16 decode-1; do
    left=$(( ${BUDGET:-585} - $(date +%s) + start ))
    [ "$left" -gt 280 ] || break
    t=$(date +%s)
    step "model_compiled_$phase" "$left" python3 -m cross bench model --models llama --llama-sparsities 0.7 \
        --phases "$phase" --compile --stack-siblings --cost-model $CM --out "$OUT/model/$phase"
    echo "model step: $(( $(date +%s) - t )) s" | tee -a "$OUT/model_compiled_$phase.txt"
done
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
