#!/usr/bin/env bash
# Where the compressed layout's time goes, in one device call (under ~380 s): the kernel's GPU tests
# (STREAM, splits, the compressed layout); benchmarks/wgmma24_bench.py at 16 tokens on 11008x4096 and
# 4096x4096, 70 and 90%, both layouts, clusters and STREAM, then STREAM with three blocks per SM
# (CROSS_CUDA_DEFINES=-DMIN_BLOCKS=3 -DSTAGES=3: at most 80 registers, 3 stages); the compressed layout's
# copies-only build and block ends (benchmarks/wgmma24_ablate.py, 90%); ncu on its STREAM launch
# (occupancy, the warps' stalls); the runtime's GPU tests.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_compressed.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 90 python3 -m pytest -q -m gpu --maxfail=3 tests/test_wgmma24.py \
    -k "stream or splits or (compressed and not 11008)"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 16"
step bench 60 $B --settings 2:2,2:2:0,c2:2,c2:2:0 --out "$OUT/bench.csv"
CROSS_CUDA_DEFINES="-DMIN_BLOCKS=3 -DSTAGES=3" step bench_3blocks 60 $B --settings 2:2:0,c2:2:0 --out "$OUT/bench_3blocks.csv"
step ablate_c 40 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --n 16 --compressed --sparsity 0.9
step ncu_c 50 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats python3 benchmarks/wgmma24_profile_one.py --shape 11008x4096 --sparsity 0.9 --n 16 \
    --setting 2:2:0 --compressed
step gpu_tests_runtime 70 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
