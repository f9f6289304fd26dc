#!/usr/bin/env bash
# The warpgroup 2:4 kernel with the launch's chunks in equal parts over the SMs (STREAM, split 0)
# in one device call (under ~450 s), the most wanted first: the GPU tests of the kernel's splits,
# STREAM launches (correct, the same bits twice, counters back to zero) and the compressed layout;
# benchmarks/wgmma24_bench.py on the three Llama shapes at 16, 64 and 128 tokens, STREAM (setting 2:2:0)
# against clusters of 2 and 4; STREAM with -DBULK=0 (the weight's records by 16-byte cp.async of all
# threads, as before the bulk copies); one ncu launch (the SMs' occupancy, the DRAM rate and the warps'
# stalls); STREAM with CROSS_CUDA_DEFINES=-DSTAGES=4 (~94 KB of shared memory at 16 tokens: two blocks
# per SM); the identity-X layout diagnostic; the runtime's GPU tests. Each step has its own time limit. The
# runtime's view (`cross bench kernels --methods dense,cross,cross+wgmma24,cross-wgmma24`) is a call
# of its own.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_stream.sh
source "$(dirname "$0")/steps.sh"
BENCH="benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 --weights uniform"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests_kernel 100 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py \
    -k "stream or splits or fp16 or odd or compressed"
step stream 110 python3 $BENCH --ns 16,64,128 --settings 2:2:0,2:2:2,2:2:4 --out "$OUT/stream.csv"
CROSS_CUDA_DEFINES=-DBULK=0 step stream_cp16 30 python3 benchmarks/wgmma24_bench.py --shapes llama-up \
    --sparsities 0.7 --weights uniform --ns 16,64 --settings 2:2:0,2:2:2 --out "$OUT/stream_cp16.csv"
step ncu_stream 50 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight --section Occupancy \
    --section WarpStateStats python3 benchmarks/wgmma24_profile_one.py --shape 11008x4096 --sparsity 0.7 --n 16 --setting 2:2:0
CROSS_CUDA_DEFINES=-DSTAGES=4 step stream_s4 40 python3 $BENCH --ns 16,64 --settings 2:2:0 --out "$OUT/stream_s4.csv"
step layout 45 python3 benchmarks/wgmma24_layout_check.py
step gpu_tests_runtime 80 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
