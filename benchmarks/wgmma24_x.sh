#!/usr/bin/env bash
# X's copies in the warpgroup 2:4 kernel, in one device call (~7 min; the steps in the order of what they
# decide, so that a call cut short still answers the first questions; docs/perf-notes.md, "X's share of
# the copies at 128 tokens, and ROTATE" and "X by tensor copies: XTMA"):
# - 11008x4096 at 128 tokens, 70 / 90%, clusters of 2: the XPRE build's time split with the "weight copies
#   only" ablation (-DABLATE=65: X's share of the copies), and ROTATE's full time (-DROTATE=1: the row
#   blocks start at different chunks, so that they do not all read the same part of X at once);
# - XTMA's GPU tests (-DXTMA=1: X copied from its rows by tensor copies, no re-layout), then the default
#   build's split with ROTATE's and XTMA's full times;
# - ncu on the XPRE launch at 70%; ROTATE's own split and GPU tests; XTMA at 16 tokens (the compressed
#   layout by STREAM, the runtime's launch); 4096x4096 by 2:1:2 with and without ROTATE.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_x.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.7,0.9 --n 128 --split 2"
step floor_xpre 120 $F --base=-DXPRE=1 --builds=-DROTATE=1 --out "$OUT/floor_xpre.csv"
step xtma_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k xtma -x
step floor_default 150 $F --builds=-DROTATE=1,-DXTMA=1 --out "$OUT/floor_default.csv"
CROSS_CUDA_DEFINES=-DXPRE=1 step ncu_xpre128 70 ncu -k regex:wgmma24 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis_Tables --section WarpStateStats python3 benchmarks/wgmma24_profile_one.py \
    --shape 11008x4096 --sparsity 0.7 --n 128 --setting 2:2:2
step floor_xpre_rotate 120 $F --base="-DXPRE=1 -DROTATE=1" --out "$OUT/floor_xpre_rotate.csv"
step rotate_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k rotate -x
step floor16_xtma 120 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --n 16 \
    --compressed --builds=-DXTMA=1 --out "$OUT/floor16_xtma.csv"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 128 --settings 2:1:2"
CROSS_CUDA_DEFINES=-DXPRE=1 step qkvo_xpre 60 $B --out "$OUT/qkvo_xpre.csv"
CROSS_CUDA_DEFINES="-DXPRE=1 -DROTATE=1" step qkvo_xpre_rotate 60 $B --out "$OUT/qkvo_xpre_rotate.csv"
