#!/usr/bin/env bash
# Sized records for the slots layout (docs/perf-notes.md, "Sized records for the slots layout"), ~9 min:
# - kernel_tests, runtime_tests: the kernel's GPU tests of sized records (both layouts, PROPAGATE's, A_SMEM's order), then the runtime's
#   (which packs the slots layout sized now);
# - floor50: the 16-token launch split at 50% of the slots layout by its clusters, fixed records against sized
#   (benchmarks/wgmma24_floor.py, PROPAGATE's build beside each), 11008x4096 and 4096x4096;
# - grid50: the grid's 50% and 60% cells at 8 and 16 tokens with the defaults, dense in the same run.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/sized_slots.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step kernel_tests 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k "sized or propagate or a_smem"
step runtime_tests 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24_runtime.py tests/test_measure.py
floor=(python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.5 --n 16
       --builds=-DPROPAGATE=1)
step floor50_fixed 80 "${floor[@]}" --out "$OUT/floor50_fixed.csv"
step floor50_sized 80 "${floor[@]}" --sized --out "$OUT/floor50_sized.csv"
step grid50 130 python3 -m cross bench kernels --shapes llama-qkvo,llama-up,llama-down --distributions uniform \
    --sparsities 0.5,0.6 --ns 8,16 --methods dense,cross --cost-model "$CM" --out "$OUT/grid50"
