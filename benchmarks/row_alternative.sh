#!/usr/bin/env bash
# The row kernel timed beside the tile kernel (partition/planner.py: a tile kernel's bucket where the
# row kernel wins or nearly wins gets it as an alternative) in one device call (under ~480 s on the
# H100): the measured check's GPU tests; kernels.csv's `cross` rows at 1-16 tokens measured again
# (benchmarks/drop_rows.py, then --resume; the other rows kept); the Llama-2-7B-shaped decoder at 70
# and 90% with the runtime's defaults, against the dense model in the same run. The grid comes back
# as kernels.csv, the model folder as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/row_alternative.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 80 python3 -m pytest -q -m gpu tests/test_measure.py tests/test_wgmma24_runtime.py
python3 benchmarks/drop_rows.py "benchmarks/results/$GPU/kernels.csv" "$OUT/kernels.csv" --method cross --ns 1,8,16
step grid 60 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24,cross+wgmma24c --cost-model $CM --out "$OUT" --resume
mkdir -p "$OUT/model"
step model 300 python3 -m cross bench model --models llama --llama-sparsities 0.7,0.9 --cost-model $CM \
    --out "$OUT/model/base"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
