#!/usr/bin/env bash
# STREAM's end step by step in the decoder step's order (benchmarks/wgmma24_sequence.py --end-steps,
# -DBLOCK_TIMES=3: each summing block's last unit's mmas, partial sums stored, wait, sums, exit) at 70,
# 90 and 50%, 16 tokens, then the compiled decoder at 70%, batch 16, with --kernel-times (the step and
# its layers with the current end), in one device call (~450 s on the H100).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_end_steps.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for s in 0.7 0.9 0.5; do
    step end_steps_$s 80 python3 benchmarks/wgmma24_sequence.py --sparsity $s --end-steps --out "$OUT/end_steps_$s"
    rm -f "$OUT/end_steps_$s/wgmma24_sequence_blocks.pt"  # 2 MB each; the printed split is what is kept
done
OUT="$OUT" TESTS=0 PHASES=decode-16 FLAGS="--wgmma-kernel --kernel-times" BUDGET=$((590 - SECONDS)) MIN_LEFT=300 \
    bash "$(dirname "$0")/compiled_decoder.sh"
