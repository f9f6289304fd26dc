#!/usr/bin/env bash
# The stacked decoder's prefill of 512 tokens at 70% with the defaults (eager, CUDA graph), against the
# dense model stacked and as given (`dense_apart_ms`): above 64 tokens (nn/stack.py APART_ABOVE_TOKENS)
# stacked siblings on cuBLAS (dense, or sparse falling back to the dense copy) run their own rows, so
# both prefills should read as the model as given (the sparse one 0.96-0.97x of it before,
# model_stacked_wgmma{60,80}). With decode-1 beside the prefill the layers are sparsified (a prefill
# alone wins nowhere, and nothing is swapped: model_stacked_prefill checked the dense half only), so the
# sparse prefill runs the stacked SparseLinear's dense copy by sibling rows. ~130 s on the H100.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/stacked_prefill.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step model_stacked_prefill 240 python3 -m cross bench model --models llama --llama-sparsities 0.7 \
    --phases prefill-1,decode-1 --stack-siblings --cost-model $CM --out "$OUT/model_prefill"
