#!/usr/bin/env bash
# The Llama-2-7B-shaped decoder at SPARSITY (default 0.7), siblings stacked, both models compiled by
# cross.compile (`--compile`: torch.compile with the stacked siblings' repeated products merged), one
# bench step per phase of PHASES (default decode-16, then decode-1) in what is left of the call, with
# FLAGS added to each (e.g. FLAGS=--wgmma-kernel); first cross.compile's GPU tests (TESTS=0 skips them).
# Every phase compiles once per state of the model (apart, stacked, sparse, dense again, apart again).
# The model folders come back as model.tgz (model/<phase>: model.*).
# BUDGET: seconds the whole script may take (default 585); a phase starts only with more than MIN_LEFT
# left (default 280: on the H100 the defaults' decode-16 step took 257 s; with --wgmma-kernel the build
# takes ~130 s more).
# Usage (repository root, on the GPU machine):
#   OUT=<dir> [BUDGET=585] [PHASES="decode-16 decode-1"] [FLAGS=...] [SPARSITY=0.7] bash benchmarks/compiled_decoder.sh
source "$(dirname "$0")/steps.sh"
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
[ "${TESTS:-1}" = 0 ] || step gpu_tests_compile 90 python3 -m pytest -q -m gpu tests/test_compile.py
mkdir -p "$OUT/model"
for phase in ${PHASES:-decode-16 decode-1}; do
    left=$(( ${BUDGET:-585} - $(date +%s) + start ))
    [ "$left" -gt "${MIN_LEFT:-280}" ] || { echo "$phase: not started, $left s left"; break; }
    t=$(date +%s)
    step "model_compiled_$phase" "$left" python3 -m cross bench model --models llama --llama-sparsities "${SPARSITY:-0.7}" \
        --phases "$phase" --compile --stack-siblings ${FLAGS:-} --cost-model $CM --out "$OUT/model/$phase"
    echo "model step: $(( $(date +%s) - t )) s" | tee -a "$OUT/model_compiled_$phase.txt"
done
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
