#!/usr/bin/env bash
# The compressed layout by clusters at 50% (docs/perf-notes.md, "The 50% split"): at 50% and 16 tokens the
# slots layout by its clusters of 2 ran 11008x4096 faster than the compressed layout by STREAM; is it the
# launch? The 16-token launch split (benchmarks/wgmma24_floor.py, PROPAGATE's build beside the default) of:
# - up_c2, up_c4: the compressed layout by clusters of 2 / 4 on 11008x4096;
# - up_slots: the slots layout by its clusters (the launcher's split, 2) on 11008x4096;
# - c8: the compressed layout by clusters of 8 on 4096x4096 and 4096x11008 (the launcher's split for 4096 rows).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/half_clusters.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
floor=(python3 benchmarks/wgmma24_floor.py --sparsities 0.5 --n 16 --builds=-DPROPAGATE=1)
step up_c2 120 "${floor[@]}" --shapes llama-up --compressed --split 2 --out "$OUT/up_c2.csv"
step up_c4 120 "${floor[@]}" --shapes llama-up --compressed --split 4 --out "$OUT/up_c4.csv"
step up_slots 120 "${floor[@]}" --shapes llama-up --out "$OUT/up_slots.csv"
step c8 150 "${floor[@]}" --shapes llama-qkvo,llama-down --compressed --split 8 --out "$OUT/c8.csv"
