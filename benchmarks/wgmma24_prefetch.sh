#!/usr/bin/env bash
# The next layer's first weight bytes hinted into L2 by the layer before it (kernels/wgmma24.cu's
# prefetch, launch.wgmma24_prefetch), in one device call (under ~300 s): the hint's GPU tests and the
# measured check's (tests/test_measure.py, tests/test_wgmma24_runtime.py); then
# benchmarks/wgmma24_prefetch.py, two Llama-2-7B-shaped decoder layers' linear layers chained at 16
# tokens, 70% and 90%, both layouts, without the hint and with 2, 4, 8 units per block or all of the
# next weight, cuBLAS's chain in the same run (docs/perf-notes.md, "The next layer's first bytes in L2").
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_prefetch.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 150 bash -c "python3 -m pytest -q -m gpu tests/test_wgmma24.py -k 'prefetch or stream'; python3 -m pytest -q -m gpu tests/test_measure.py tests/test_wgmma24_runtime.py"
P="python3 benchmarks/wgmma24_prefetch.py --n 16 --depths 0,2,4,8,all --links mlp,all"
step prefetch_slots70 60 $P --sparsity 0.7 --layout slots --out "$OUT/prefetch_slots70.csv"
step prefetch_comp70 60 $P --sparsity 0.7 --layout compressed --out "$OUT/prefetch_comp70.csv"
step prefetch_slots90 50 $P --sparsity 0.9 --layout slots --out "$OUT/prefetch_slots90.csv"
step prefetch_comp90 50 $P --sparsity 0.9 --layout compressed --out "$OUT/prefetch_comp90.csv"
