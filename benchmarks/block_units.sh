#!/usr/bin/env bash
# Where an empty block's microsecond goes (docs/perf-notes.md, "Where an empty block's microsecond goes"): the
# compressed layout's STREAM launch at 16 tokens, 90%, without copies, mmas or end and whole, with each block's
# units stamped as they pass their waits (wgmma24_ablate.py --units): unit 0's stamp is the prologue's end, the
# stamps' steps the loop's time a unit, the last unit to the block's end its stores and exit. Then ncu's warp
# states on the empty build (what its warps wait for: the barrier or something else).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/block_units.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for shape in 4096x4096 11008x4096; do
    step "units_$shape" 90 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 --compressed \
        --variants "no copies or end,full" --units
done
step ncu_empty 150 ncu -k regex:wgmma24 --launch-count 1 --section WarpStateStats --section SchedulerStats \
    --section LaunchStats --section Occupancy python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 \
    --sparsity 0.9 --n 16 --compressed --variants "no copies or end"
