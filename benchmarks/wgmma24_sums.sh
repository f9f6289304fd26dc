#!/usr/bin/env bash
# STREAM's end with the summers' loads sized to their output (sum_share: as many slots' loads in flight
# as the output has slots, none past the last) and the compressed layout's sized records as the runtime
# packs them, in one device call (~330 s on the H100): the 2:4 kernel's STREAM, cluster and compressed
# GPU tests; the four-layer sequence (benchmarks/wgmma24_sequence.py, 16 tokens) with the end's steps
# at 70%, then the kernel before this change (OLD: its wgmma24.cu, carried) and after, swapped between
# runs on fixed records (new, old, new, old at 70%; new, old at 90%), then sized records at 90 and 50%.
# Usage (repository root, on the GPU machine): OUT=<dir> OLD=.carry/old/wgmma24.cu bash benchmarks/wgmma24_sums.sh
source "$(dirname "$0")/steps.sh"
OLD=${OLD:?set OLD to the wgmma24.cu to compare with}
K=src/cross/kernels/wgmma24.cu
NEW=$(mktemp)
cp "$K" "$NEW"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k "stream or splits or compressed"
S="python3 benchmarks/wgmma24_sequence.py"
step steps_0.7 80 $S --sparsity 0.7 --end-steps --out "$OUT/steps_0.7"
rm -f "$OUT/steps_0.7/wgmma24_sequence_blocks.pt"
for r in 1 2; do
    cp "$NEW" "$K"; step new_fixed_0.7_$r 60 $S --sparsity 0.7 --fixed-records
    cp "$OLD" "$K"; step old_fixed_0.7_$r 60 $S --sparsity 0.7 --fixed-records
done
cp "$NEW" "$K"; step new_fixed_0.9 60 $S --sparsity 0.9 --fixed-records
cp "$OLD" "$K"; step old_fixed_0.9 60 $S --sparsity 0.9 --fixed-records
cp "$NEW" "$K"
for s in 0.9 0.5; do step sized_$s 60 $S --sparsity $s; done
cd "$OUT" && { tail -3 gpu_tests.txt; grep -h "^== \|^# \|step by step" steps_0.7.txt new_*.txt old_*.txt sized_*.txt; } > summary.txt
