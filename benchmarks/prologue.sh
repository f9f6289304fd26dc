#!/usr/bin/env bash
# The 16-token launch's prologue (docs/perf-notes.md, "The prologue: copies issued before the block's
# barrier"): an empty block's unit 0 is in place ~0.7 us after the block's start. wgmma24_ablate.py --prologue
# stamps its steps (the index arithmetic, the mbarriers' set-up and barrier, the first copies' issue), as the
# launch is built and with EARLY=1 (thread 0 sets up the mbarriers and issues the first copies before the
# block's barrier) and PREFETCH_MAP=1 (X's tensor map prefetched at the start); wgmma24_floor.py times those
# builds, each checked against the fp32 product, beside the default in one run; then the kernel's GPU tests
# built with both.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/prologue.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step split_c 200 python3 benchmarks/wgmma24_floor.py --compressed --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 \
    --n 16 --builds "-DEARLY=1,-DPREFETCH_MAP=1,-DEARLY=1 -DPREFETCH_MAP=1" --out "$OUT/split_c.csv"
CROSS_CUDA_DEFINES="-DEARLY=1 -DPREFETCH_MAP=1" step tests_early 130 python3 -m pytest -q -m gpu tests/test_wgmma24.py \
    -k "stream or splits or sized"
for shape in 4096x4096 11008x4096; do
    step "prologue_$shape" 45 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 \
        --compressed --variants "no copies or end,full" --prologue
    step "prologue_early_$shape" 45 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 \
        --compressed --variants "no copies or end,full" --prologue --defines "-DEARLY=1 -DPREFETCH_MAP=1"
done
