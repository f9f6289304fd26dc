#!/usr/bin/env bash
# STREAM's end step by step in the decoder step's order, and the end's candidates, in one device call
# (~300 s on the H100): the GPU tests of sized records and PAIR_END; benchmarks/wgmma24_sequence.py
# --end-steps (-DBLOCK_TIMES=3: each summing block's last unit's mmas, partial sums stored, wait, sums,
# exit) at 70, 90 and 50%, 16 tokens; at 70% the compressed layout's sized records, and 64-row q, k, v
# and 128-row gate, up outputs at one block per SM (no middle blocks) with fixed and sized records and
# with PAIR_END (a two-block output summed from the registers, the partner's partials read early).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_end_steps.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k "sized or pair_end"
S="python3 benchmarks/wgmma24_sequence.py"
for s in 0.7 0.9 0.5; do
    step end_steps_$s 80 $S --sparsity $s --end-steps --out "$OUT/end_steps_$s"
    rm -f "$OUT/end_steps_$s/wgmma24_sequence_blocks.pt"  # 2 MB each; the printed split is what is kept
done
step sized_0.7 60 $S --sparsity 0.7 --sized
ROWS="--rows qkv=64,gate_up=128 --per-sm qkv=1,gate_up=1"
step rows_0.7 80 $S --sparsity 0.7 --end-steps $ROWS
step rows_sized_0.7 60 $S --sparsity 0.7 --sized $ROWS
step rows_pair_0.7 80 $S --sparsity 0.7 --end-steps --sized $ROWS --defines="-DPAIR_END=1 -DMIN_BLOCKS=2"
grep -h "^#\|qkv\|  o:\|gate_up\|down\|passed\|failed" "$OUT"/*.txt | grep -v "units in place"
