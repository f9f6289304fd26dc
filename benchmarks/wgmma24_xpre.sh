#!/usr/bin/env bash
# X by one bulk copy per unit (XPRE, kernels/wgmma24.cu: X laid out per launch by pack/wgmma24.x_stages)
# against X by every thread's cp.async, and the burst's depth at 16 tokens, in one device call (under
# ~350 s): XPRE's GPU tests; benchmarks/wgmma24_bench.py at 16 and 128 tokens on 11008x4096 and
# 4096x4096, 70 and 90%, the slots layout's clusters and the compressed layout by STREAM, without and
# with CROSS_CUDA_DEFINES=-DXPRE=1 (the layout's torch kernels timed with it); then the compressed
# layout's block ends at 90%, 16 tokens, with 3 and 5 stages against the default, and at the default
# when each block's units land (--units) (docs/perf-notes.md, "X by one bulk copy per unit", and
# "Next, from the refill ..." 1).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_xpre.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 90 python3 -m pytest -q -m gpu tests/test_wgmma24.py -k xpre
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 16,128 --settings 2:2,c2:2:0"
step bench 70 $B --out "$OUT/bench.csv"
CROSS_CUDA_DEFINES="-DXPRE=1" step bench_xpre 70 $B --out "$OUT/bench_xpre.csv"
A="python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.9 --n 16 --compressed"
step burst 100 bash -c "$A --stages 3 && $A --stages 5 && $A --units"
