#!/usr/bin/env bash
# The kernel grid with the runtime's new defaults, and PROPAGATE's shorter unit, in one device call (219 s on
# the H100 on 2026-12-07: benchmarks/results/h100/defaults_grid/; docs/perf-notes.md "A launch's fixed part and
# PROPAGATE's shorter unit, measured"):
# - launch_floor: an empty launch's cost (one block; the warpgroup 2:4 kernel's STREAM grid with and
#   without its shared memory and carveout; one and two launches a graph), cuBLAS's at 1 and 16 tokens;
# - propagate_tests: PROPAGATE's GPU tests with its shorter unit (not yet run on a GPU), and the kernel's fp16
#   builds (IS_BF16=0), with and without PROPAGATE, never run on a GPU before;
# - floor16: PROPAGATE's cost at 16 tokens with its shorter unit (predicted +0.2-0.4 us on 11008x4096,
#   against +0.57 / +1.06 measured before: docs/perf-notes.md);
# - grid: benchmarks/kernels.py on the three Llama-2-7B shapes at 50 / 70 / 90% and 1-2048 tokens, cross
#   now the runtime's defaults (the warpgroup 2:4 kernel offered under nan_policy "propagate" on compute
#   capability 9.0), cross+wgmma24c the kernel under "ignore" as the last grid had it (kernels.csv, then
#   benchmarks/report_kernels.py for kernels.png and kernels_table.md);
# - memcheck, racecheck: the PROPAGATE build (now on the default path) under compute-sanitizer: its kernel
#   tests (clusters and STREAM, both layouts, an Inf and a NaN weight, the rare path taken) and the runtime's;
#   racecheck (shared memory) on the 16-token cases.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/defaults_grid.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step launch_floor 40 python3 benchmarks/launch_floor.py --out "$OUT/launch_floor.csv"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step propagate_tests 75 $T tests/test_wgmma24.py tests/test_wgmma24_runtime.py -k "fp16 or propagate"
step floor16 55 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --n 16 \
    --compressed --builds=-DPROPAGATE=1 --out "$OUT/floor16.csv"
step grid 270 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24c --cost-model $CM --out "$OUT/grid"
step memcheck 90 compute-sanitizer --tool memcheck --report-api-errors no $T tests/test_wgmma24.py \
    tests/test_wgmma24_runtime.py -k propagate
step racecheck 45 compute-sanitizer --tool racecheck --kernel-name kns=wgmma24 --report-api-errors no \
    $T tests/test_wgmma24.py -k "propagate and 700-2056-16"
grep -h "SUMMARY\|passed\|failed" "$OUT"/propagate_tests.txt "$OUT"/memcheck.txt "$OUT"/racecheck.txt
