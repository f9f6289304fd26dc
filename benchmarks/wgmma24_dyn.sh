#!/usr/bin/env bash
# Pieces by tickets, partial sums by fp32 reductions (DYN, kernels/wgmma24.cu) against STREAM's equal
# ranges, in one device call (under ~230 s): benchmarks/wgmma24_bench.py at 16 tokens on 11008x4096,
# 70 and 90%, both layouts by STREAM, then the same with CROSS_CUDA_DEFINES="-DDYN=1 -DPIECE=4" and
# "-DPIECE=2" (every timed setting checked against the fp32 product first); then DYN's GPU tests
# (docs/perf-notes.md, "Pieces by tickets, summed by reductions").
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_dyn.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up --sparsities 0.7,0.9 --weights uniform --ns 16 --settings 2:2:0,c2:2:0"
step stream 40 $B --out "$OUT/stream.csv"
CROSS_CUDA_DEFINES="-DDYN=1 -DPIECE=4" step dyn4 40 $B --out "$OUT/dyn4.csv"
CROSS_CUDA_DEFINES="-DDYN=1 -DPIECE=2" step dyn2 40 $B --out "$OUT/dyn2.csv"
step gpu_tests 90 python3 -m pytest -q -m gpu tests/test_wgmma24.py -k "dyn"
