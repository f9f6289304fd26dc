#!/usr/bin/env bash
# The 16-token launch's fixed part, block by block (docs/perf-notes.md, "The launch's fixed part, block by
# block"): "copies only" at no bytes is 9.3-10.0 us against the launch's own 5.3-5.6, and the build without
# copies, mmas or the end's sums grows with a block's units. wgmma24_ablate.py times the compressed layout's
# STREAM launch (90%, 16 tokens) without copies or the end's sums, without copies, with copies only and whole,
# and stamps every block's start and end: whether that time is in the blocks (their times) or around them (the
# kernel's time past the last block's end), and (--again) a second launch right behind the first: whether a block's
# first microsecond is the launch's cold start. (At 537676e this script also timed the split without the loop's
# proxy fence, -DPROXY_FENCE=0, a tuning define taken out after that run: results/h100/fixed_part/.)
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/fixed_part.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for shape in 4096x4096 11008x4096; do
    step "fixed_$shape" 60 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 --compressed \
        --variants "no copies or end,no copies,copies only,full" --again
done
