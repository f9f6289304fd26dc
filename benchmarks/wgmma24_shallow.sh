#!/usr/bin/env bash
# The shallow pipeline at 16-64 tokens (pack/wgmma24.stages: 4 stages in the slots layout, 3 compressed)
# as the default, in one device call (under ~330 s on the H100): the warpgroup 2:4 kernel's GPU tests
# (~75 s once NVRTC's builds are cached, ~150 s before) and the runtime's; benchmarks/wgmma24_bench.py at
# 1, 8 and 16 tokens on the three Llama-2-7B shapes at 70 and 90% (the slots layout by wgmma24_split's
# launch, the compressed one by STREAM) (docs/perf-notes.md, "The pipeline's depth at 16-64 tokens").
# The decoder with it takes a call of its own (~270 s per sparsity):
#   python3 -m cross bench model --models llama --llama-sparsities 0.7 --wgmma-kernel --wgmma-layout slots \
#       --cost-model benchmarks/results/h100/costmodel.json --out <dir>
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_shallow.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 200 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py
step gpu_tests_runtime 90 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
step bench 60 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --weights uniform --ns 1,8,16 --settings 2:2,c2:2:0 --out "$OUT/bench.csv"
