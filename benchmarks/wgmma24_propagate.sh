#!/usr/bin/env bash
# The warpgroup 2:4 kernel under nan_policy "propagate", in one device call (~9.5 min; docs/perf-notes.md
# "XTMA as the default, and PROPAGATE, measured" and what follows it):
# - PROPAGATE's GPU tests (the kernel's and the runtime's), the vote now warp-uniform for ptxas;
# - 16 tokens: PROPAGATE's cost against the default build (predicted within ~0.3 us: 5 instructions a unit);
# - the Llama-2-7B-shaped decoder at 70%, decode at batch 1, 8 and 16, with --wgmma-kernel --nan-policy
#   propagate (what WGMMA_KERNEL_DEFAULT would give) and with the defaults, each against the dense model;
# - the rest of the kernel's GPU tests with XTMA the default (the last call ran 139 of 235).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_propagate.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step propagate_tests 80 $T tests/test_wgmma24.py tests/test_wgmma24_runtime.py -k propagate
step floor16 60 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --n 16 \
    --compressed --builds=-DPROPAGATE=1 --out "$OUT/floor16.csv"
M="python3 -m cross bench model --models llama --llama-sparsities 0.7 --phases decode-1,decode-8,decode-16 --cost-model $CM"
mkdir -p "$OUT/model"
step model_propagate 200 $M --wgmma-kernel --nan-policy propagate --out "$OUT/model/propagate"
step model_base 110 $M --out "$OUT/model/base"
step wgmma24_tests 120 $T tests/test_wgmma24.py -k "not test_gpu_wgmma24_kernel and not a_smem and not rotate and not xpre and not propagate"
