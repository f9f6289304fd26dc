#!/usr/bin/env bash
# The Llama-2-7B-shaped decoder at 90% with --wgmma-kernel --wgmma-layout auto (each layer's 2:4
# format in the layout the measured check times faster), against the dense model in the same run;
# then the runtime's GPU tests (the measured check with its alternatives and the layouts' contest,
# nn, the row kernel's fit in `cross profile`), in one device call (under ~580 s on the H100). The
# model folder comes back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/auto_decoder.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
mkdir -p "$OUT/model"
start=$(date +%s)
step model 380 python3 -m cross bench model --models llama --llama-sparsities 0.9 --cost-model $CM \
    --wgmma-kernel --wgmma-layout auto --out "$OUT/model/auto"
echo "model step: $(( $(date +%s) - start )) s" | tee -a "$OUT/model.txt"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
step gpu_tests_check 90 python3 -m pytest -q -m gpu --maxfail=5 tests/test_rowfit.py tests/test_measure.py \
    tests/test_wgmma24_runtime.py
step gpu_tests_runtime 90 python3 -m pytest -q -m gpu --maxfail=5 tests/test_runtime_gpu.py tests/test_nn.py
