#!/usr/bin/env bash
# The layouts' contest the default at 50%, and the warpgroup 2:4 kernel's 16-token launch split at 50%
# (docs/perf-notes.md, "Next, from the 50% runs"), ~8 min:
# - grid50: the kernel grid's 50% and 60% cells at 8 and 16 tokens with the runtime's defaults (`cross`: the
#   layouts' contest where their bytes are close, planner.LAYOUT_CONTEST_BYTES), dense in the same run;
# - split50: the compressed layout by STREAM at 50% (11008x4096, 4096x4096): the ablation builds
#   (benchmarks/wgmma24_floor.py) and PROPAGATE's cost there, with and without FOLD_EARLY;
# - fold90: FOLD_EARLY on 11008x4096 at 90%, where PROPAGATE's +0.77 us was measured (lost from the last split).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/half_split.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step grid50 220 python3 -m cross bench kernels --shapes llama-qkvo,llama-up,llama-down --distributions uniform \
    --sparsities 0.5,0.6 --ns 8,16 --methods dense,cross --cost-model "$CM" --out "$OUT/grid50"
step split50 170 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.5 --n 16 \
    --compressed --builds="-DPROPAGATE=1,-DPROPAGATE=1 -DFOLD_EARLY=1" --out "$OUT/split50.csv"
step fold90 100 python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.9 --n 16 \
    --compressed --builds="-DPROPAGATE=1,-DPROPAGATE=1 -DFOLD_EARLY=1" --out "$OUT/fold90.csv"
