#!/usr/bin/env bash
# STREAM's end step by step in the decoder step's order (benchmarks/wgmma24_sequence.py --end-steps,
# -DBLOCK_TIMES=3: each summing block's last unit's mmas, partial sums stored, wait, sums, exit) at 70,
# 90 and 50%, 16 tokens, and at 70% with 64-row q, k, v and 128-row gate, up outputs at one block per SM,
# then the compiled decoder at 70%, batch 16, with --kernel-times (the step and its layers with the
# current end), in one device call (~500 s on the H100).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_end_steps.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for s in 0.7 0.9 0.5; do
    step end_steps_$s 80 python3 benchmarks/wgmma24_sequence.py --sparsity $s --end-steps --out "$OUT/end_steps_$s"
    rm -f "$OUT/end_steps_$s/wgmma24_sequence_blocks.pt"  # 2 MB each; the printed split is what is kept
done
# outputs of 64 and 128 rows where they outnumber the blocks (no middle blocks; the format pads more:
# docs/perf-notes.md, "Next, from the sequence")
step rows_0.7 80 python3 benchmarks/wgmma24_sequence.py --sparsity 0.7 --end-steps --rows qkv=64,gate_up=128 \
    --per-sm qkv=1,gate_up=1
OUT="$OUT" TESTS=0 PHASES=decode-16 FLAGS="--wgmma-kernel --kernel-times" BUDGET=$((590 - SECONDS)) MIN_LEFT=300 \
    bash "$(dirname "$0")/compiled_decoder.sh"
