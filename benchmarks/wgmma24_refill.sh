#!/usr/bin/env bash
# The refill after the mmas (REFILL_LATE, kernels/wgmma24.cu) against the refill after the barrier, in
# one device call (under ~360 s): the kernel's GPU tests (STREAM, splits, the compressed layout) at the
# default (REFILL_LATE=1); benchmarks/wgmma24_bench.py at 16 tokens on 11008x4096 and 4096x4096, 70 and
# 90%, both layouts at their default launches, with -DREFILL_LATE=0 and 1; then whether an SM's pace
# holds from launch to launch (benchmarks/wgmma24_ablate.py --repeats 5, copies only, both layouts)
# (docs/perf-notes.md, "Next" 7 a-b).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_refill.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 130 python3 -m pytest -q -m gpu --maxfail=3 tests/test_wgmma24.py \
    -k "stream or splits or (compressed and not 11008)"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 16"
CROSS_CUDA_DEFINES="-DREFILL_LATE=0" step bench_early 60 $B --settings 2:2,c2:2 --out "$OUT/bench_early.csv"
step bench_late 60 $B --settings 2:2,c2:2 --out "$OUT/bench_late.csv"
step repeats 50 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.7 --n 16 \
    --variants "copies only" --repeats 5
step repeats_c 50 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.9 --n 16 --compressed \
    --variants "copies only,full" --repeats 5
