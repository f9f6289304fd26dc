#!/usr/bin/env bash
# What STREAM's sums step is made of, in one device call (~280 s on the H100; the steps in order of
# what they tell, so that a shorter call keeps the first; memcheck over the 2:4 kernel's STREAM tests late): the four-layer sequence at 70%, 16 tokens,
# with the end's steps (benchmarks/wgmma24_sequence.py --end-steps; its per-block stamps kept as
# blocks.tgz) as built, without the sums' loads (-DABLATE=16), without their stores to Y (-DABLATE=32),
# without both (-DABLATE=48), and without the end (-DABLATE=8; the three ablations' outputs are wrong
# by design and not checked); the end by fp32 reductions at L2 and the output's last arrival (-DEND_RED=1,
# checked), with its steps and without, against the build as it is; then one block per SM (no neighbour to share the SM's port with, outputs
# over half as many blocks) with 4 and 6 stages, checked; and STREAM launched cooperatively
# (CROSS_STREAM_COOPERATIVE=1: its GPU tests, eager and in a CUDA graph, then the sequence).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_sums_parts.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
S="python3 benchmarks/wgmma24_sequence.py --sparsity 0.7"
step parts_full 60 $S --end-steps --out "$OUT/full"
tar czf "$OUT/blocks.tgz" -C "$OUT" full && rm -r "$OUT/full"
step plain 60 $S
step plain_end_red 60 $S --defines=-DEND_RED=1
step end_red 60 $S --end-steps --defines=-DEND_RED=1
for a in 16 32; do step parts_ablate$a 60 $S --end-steps --unchecked --defines=-DABLATE=$a; done
step cooperative_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k cooperative
CROSS_STREAM_COOPERATIVE=1 step cooperative 60 $S
step memcheck 150 compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_wgmma24.py -k stream
P="--per-sm qkv=1,o=1,gate_up=1,down=1"
step one_per_sm_stages4 60 $S --end-steps $P --defines=-DSTAGES=4
for a in 48 8; do step parts_ablate$a 60 $S --unchecked --defines=-DABLATE=$a; done
step one_per_sm_stages6 60 $S --end-steps $P --defines=-DSTAGES=6
grep -h "^== \|^# \|step by step\|SUMMARY\|passed\|failed" "$OUT"/*.txt
