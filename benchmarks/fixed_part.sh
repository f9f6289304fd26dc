#!/usr/bin/env bash
# The 16-token launch's fixed part, block by block (docs/perf-notes.md, "What the 16-token targets need in
# bytes"): "copies only" at no bytes is 9.3-10.0 us against the launch's own 5.3-5.6. wgmma24_ablate.py times
# the compressed layout's STREAM launch without copies or the end's sums, without copies, with copies only and
# whole, and stamps every block's start and end: whether the fixed part is in the blocks (their times) or
# around them (the kernel's time past the last block's end).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/fixed_part.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for shape in 4096x4096 11008x4096; do
    step "fixed_$shape" 90 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 --compressed \
        --variants "no copies or end,no copies,copies only,full"
done
