#!/usr/bin/env bash
# X by tensor copies (XTMA) as the default X copy, and PROPAGATE, in one device call (~7 min; the steps in
# the order of what they decide, docs/perf-notes.md "The X run: X's copies, XTMA and ROTATE, measured" and
# "Non-finite inputs in the warpgroup 2:4 kernel: PROPAGATE"):
# - the warpgroup 2:4 kernel's GPU tests with the default builds, now XTMA (-DXTMA=0, the per-thread
#   copies, in test_gpu_wgmma24_xtma), then the runtime's and the measured check's;
# - PROPAGATE's GPU tests (wgmma24_args(propagate=True), the runtime's plans with nan_policy "propagate":
#   Inf and NaN inputs as in the dense product; the runtime's in the second step);
# - 128 tokens with XTMA: the launch settings (clusters of 1-4, STREAM; both layouts), 3 shapes, 70 / 90%;
# - 16 tokens: what PROPAGATE's vote and the per-thread X copies (-DXTMA=0) cost against the default.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_xtma_default.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step wgmma24_tests 150 $T tests/test_wgmma24.py -k "not a_smem and not rotate and not xpre and not propagate" -x
step runtime_tests 60 $T tests/test_wgmma24_runtime.py tests/test_measure.py -x
step propagate_tests 70 $T tests/test_wgmma24.py -k propagate
step settings128 80 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-down,llama-qkvo --sparsities 0.7,0.9 \
    --weights uniform --ns 128 --settings 2:2:1,2:2:2,2:2:3,2:2:4,2:2:0,2:1:2,c2:2:0,c2:2:2 --out "$OUT/settings128.csv"
step floor16 60 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --n 16 \
    --compressed --builds=-DPROPAGATE=1,-DXTMA=0 --out "$OUT/floor16.csv"
