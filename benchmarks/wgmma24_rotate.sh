#!/usr/bin/env bash
# ROTATE at 128 tokens (kernels/wgmma24.cu -DROTATE=1: a cluster block walks its chunks from its row
# block's turn, wrapping, so that the row blocks do not all read the same part of X at once), in one
# device call (~6 min): 11008x4096 at 70 / 90%, clusters of 2, the time split with and without it (XPRE
# builds, and the default one), with the new "weight copies only" ablation (-DABLATE=65: X's share of the
# copies), and ncu on the XPRE launch at 70% (the memory system's view); its GPU tests; 4096x4096 by
# 2:1:2 with and without it (docs/perf-notes.md, "X's share of the copies at 128 tokens, and ROTATE").
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_rotate.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.7,0.9 --n 128 --split 2"
step floor_xpre 120 $F --base=-DXPRE=1 --builds=-DROTATE=1 --out "$OUT/floor_xpre.csv"
CROSS_CUDA_DEFINES=-DXPRE=1 step ncu_xpre128 70 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats python3 benchmarks/wgmma24_profile_one.py \
    --shape 11008x4096 --sparsity 0.7 --n 128 --setting 2:2:2
step floor_xpre_rotate 120 $F --base="-DXPRE=1 -DROTATE=1" --out "$OUT/floor_xpre_rotate.csv"
step rotate_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k rotate -x
B="python3 benchmarks/wgmma24_bench.py --shapes llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 128 --settings 2:1:2"
CROSS_CUDA_DEFINES=-DXPRE=1 step qkvo_xpre 60 $B --out "$OUT/qkvo_xpre.csv"
CROSS_CUDA_DEFINES="-DXPRE=1 -DROTATE=1" step qkvo_xpre_rotate 60 $B --out "$OUT/qkvo_xpre_rotate.csv"
step floor_default 120 $F --builds=-DROTATE=1 --out "$OUT/floor_default.csv"
