#!/usr/bin/env bash
# The warpgroup 2:4 kernel's first GPU run in one device call (under ~580 s): the identity-X layout
# diagnostic; its GPU tests at the default launch setting (2 warpgroups x 2 m-tiles), every split,
# fp16 and the compressed layout, then the runtime's (the measured check with alternatives); its block settings on
# 11008x4096; and what the runtime runs with it against cuBLAS. Each step has its own time limit, so
# one that hangs or runs long leaves the rest their time; NVRTC's builds are kept between steps
# (kernels/cuda_backend.py, cache_dir). The other launch settings' tests: drop the -k filter.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_first_run.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m cross info | tee -a "$OUT/device.txt"
step layout 50 python3 benchmarks/wgmma24_layout_check.py
step gpu_tests_kernel 150 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py \
    -k "test_gpu_wgmma24_kernel and 2-2 or splits or fp16 or compressed"
step gpu_tests_runtime 120 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
step wgmma24_bench 110 python3 benchmarks/wgmma24_bench.py --shapes llama-up --sparsities 0.7,0.9 --ns 16,128,512,2048 \
    --settings 2:2,c2:2,2:1,2:2:2 --out "$OUT/wgmma24_first.csv"
step kernels 120 python3 -m cross bench kernels --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --ns 8,16,128,512 --methods dense,cross,cross+wgmma24,cross+wgmma24c,cross-wgmma24 --out "$OUT/kernels_wgmma24"
