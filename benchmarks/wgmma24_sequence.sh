#!/usr/bin/env bash
# The 2:4 kernel's launches in a decoder step's order, block by block (benchmarks/wgmma24_sequence.py):
# 16 tokens at 70% (issue 5's cell) and 90%, the compressed layout, and 70% in the slots layout, one
# device call (~3 min on the H100).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_sequence.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for s in 0.7 0.9 0.5; do
    step seq_$s 150 python3 benchmarks/wgmma24_sequence.py --sparsity $s --layers 4 --out "$OUT/seq_$s"
done
step seq_0.7_slots 150 python3 benchmarks/wgmma24_sequence.py --sparsity 0.7 --layers 4 --slots --out "$OUT/seq_0.7_slots"
