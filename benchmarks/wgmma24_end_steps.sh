#!/usr/bin/env bash
# STREAM's end step by step in the decoder step's order (benchmarks/wgmma24_sequence.py --end-steps,
# -DBLOCK_TIMES=3: each summing block's last unit's mmas, partial sums stored, wait, sums, exit) at 70,
# 90 and 50%, 16 tokens; at 70% the compressed layout's sized records, and 64-row q, k, v and 128-row
# gate, up outputs at one block per SM (no middle blocks) with fixed and sized records; then the
# compiled decoder at 70%, batch 16, with --kernel-times (the step and its layers with the current
# end), in one device call (~550 s on the H100; the decoder starts only with 300 s left).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_end_steps.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
S="python3 benchmarks/wgmma24_sequence.py"
for s in 0.7 0.9 0.5; do
    step end_steps_$s 80 $S --sparsity $s --end-steps --out "$OUT/end_steps_$s"
    rm -f "$OUT/end_steps_$s/wgmma24_sequence_blocks.pt"  # 2 MB each; the printed split is what is kept
done
step sized_0.7 60 $S --sparsity 0.7 --sized
ROWS="--rows qkv=64,gate_up=128 --per-sm qkv=1,gate_up=1"
step rows_0.7 80 $S --sparsity 0.7 --end-steps $ROWS
step rows_sized_0.7 60 $S --sparsity 0.7 --sized $ROWS
OUT="$OUT" TESTS=0 PHASES=decode-16 FLAGS="--wgmma-kernel --kernel-times" BUDGET=$((590 - SECONDS)) MIN_LEFT=300 \
    bash "$(dirname "$0")/compiled_decoder.sh"
