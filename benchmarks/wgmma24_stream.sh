#!/usr/bin/env bash
# The warpgroup 2:4 kernel with the launch's chunks in equal parts over the SMs (STREAM, the default)
# in one device call (under ~570 s): the identity-X layout diagnostic; the GPU tests of the kernel's
# splits and STREAM launches (correct, the same bits twice, counters back to zero) and the runtime's;
# benchmarks/wgmma24_bench.py on the three Llama shapes at 16, 64 and 128 tokens, STREAM (setting 2:2)
# against clusters of 2 and 4; STREAM with CROSS_CUDA_DEFINES=-DSTAGES=4 (~94 KB of shared memory at 16
# tokens: two blocks per SM); one ncu launch (the SMs' occupancy and the DRAM rate); then what the
# runtime runs with the kernel offered. Each step has its own time limit.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_stream.sh
source "$(dirname "$0")/steps.sh"
BENCH="benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 --weights uniform"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step layout 40 python3 benchmarks/wgmma24_layout_check.py
step gpu_tests_kernel 100 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py -k "stream or splits or fp16 or odd"
step gpu_tests_runtime 80 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
step stream 110 python3 $BENCH --ns 16,64,128 --settings 2:2,2:2:2,2:2:4 --out "$OUT/stream.csv"
CROSS_CUDA_DEFINES=-DSTAGES=4 step stream_s4 60 python3 $BENCH --ns 16,64 --settings 2:2 --out "$OUT/stream_s4.csv"
step ncu_stream 40 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight --section Occupancy \
    --section LaunchStats python3 benchmarks/wgmma24_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16
step kernels 90 python3 -m cross bench kernels --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --ns 16,128 --methods dense,cross,cross+wgmma24,cross-wgmma24 --out "$OUT/kernels_stream"
