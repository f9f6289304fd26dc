#!/usr/bin/env bash
# Where the compressed layout's time goes, in one device call (under ~330 s): the kernel's GPU tests
# (STREAM, splits, the compressed layout); benchmarks/wgmma24_ablate.py on 11008x4096 at 16 tokens,
# the compressed layout at 90 and 70% (its full build against one that only copies, and every
# block's end); ncu on its STREAM launch at 90% (occupancy, the warps' stalls); the runtime's GPU tests.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_compressed.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 90 python3 -m pytest -q -m gpu --maxfail=3 tests/test_wgmma24.py \
    -k "stream or splits or (compressed and not 11008)"
A="python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --n 16 --compressed"
step ablate_c 70 bash -c "$A --sparsity 0.9; $A --sparsity 0.7"
step ncu_c 60 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats python3 benchmarks/wgmma24_profile_one.py --shape 11008x4096 --sparsity 0.9 --n 16 \
    --setting 2:2:0 --compressed
step gpu_tests_runtime 90 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
