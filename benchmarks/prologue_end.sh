#!/usr/bin/env bash
# The 16-token launch's prologue and end (docs/perf-notes.md, "The prologue: copies issued before the block's
# barrier" and "The end's last arrival by tickets"): wgmma24_floor.py times the tuning builds EARLY=1 (thread 0
# sets up the mbarriers and issues the first copies before the block's barrier), PREFETCH_MAP=1 (X's tensor
# map prefetched at the start; the two together) and END_TICKET=1 (END_RED's last arrival chosen by a ticket drawn under the
# block's last unit, no reply waited for by the others), each checked against the fp32 product, beside the
# default in one run; the kernel's STREAM GPU tests built with them; wgmma24_ablate.py --prologue stamps the
# prologue's steps with and without EARLY and PREFETCH_MAP.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/prologue_end.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
BUILDS="-DEARLY=1 -DPREFETCH_MAP=1,-DEND_TICKET=1,-DEARLY=1 -DPREFETCH_MAP=1 -DEND_TICKET=1"
step split_c 180 python3 benchmarks/wgmma24_floor.py --compressed --shapes llama-qkvo,llama-up \
    --sparsities 0.7,0.9 --n 16 --no-ablations --builds "$BUILDS" --out "$OUT/split_c.csv"
CROSS_CUDA_DEFINES="-DEARLY=1 -DPREFETCH_MAP=1 -DEND_TICKET=1" step tests 120 python3 -m pytest -q -m gpu \
    tests/test_wgmma24.py -k stream
for shape in 11008x4096; do
    step "prologue_$shape" 35 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 \
        --compressed --variants "no copies or end,full" --prologue
    step "prologue_early_$shape" 35 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 \
        --compressed --variants "no copies or end,full" --prologue --defines "-DEARLY=1 -DPREFETCH_MAP=1"
done
