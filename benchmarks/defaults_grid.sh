#!/usr/bin/env bash
# The kernel grid with the runtime's new defaults, in one device call (~9 min; docs/perf-notes.md
# "Next, from here"):
# - launch_floor: an empty launch's cost (one block; the warpgroup 2:4 kernel's STREAM grid with and
#   without its shared memory and carveout; one and two launches a graph), cuBLAS's at 1 and 16 tokens;
# - grid: benchmarks/kernels.py on the three Llama-2-7B shapes at 50 / 70 / 90% and 1-2048 tokens, cross
#   now the runtime's defaults (the warpgroup 2:4 kernel offered under nan_policy "propagate" on compute
#   capability 9.0), cross+wgmma24c the kernel under "ignore" as the last grid had it (kernels.csv, then
#   benchmarks/report_kernels.py for kernels.png and kernels_table.md);
# - fp16_tests: the kernel's fp16 builds (IS_BF16=0), with and without PROPAGATE, never run on a GPU before,
#   and the runtime's non-finite test in bf16 and fp16;
# - memcheck, racecheck: the PROPAGATE build (now on the default path) under compute-sanitizer: its kernel
#   tests (clusters and STREAM, both layouts, an Inf and a NaN weight, the rare path taken) and the runtime's;
#   racecheck (shared memory) on the 16-token cases.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/defaults_grid.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step launch_floor 45 python3 benchmarks/launch_floor.py --out "$OUT/launch_floor.csv"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step fp16_tests 60 $T tests/test_wgmma24.py tests/test_wgmma24_runtime.py -k "fp16 or propagates_nonfinite"
step grid 300 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24c --cost-model $CM --out "$OUT/grid"
step memcheck 100 compute-sanitizer --tool memcheck --report-api-errors no $T tests/test_wgmma24.py \
    tests/test_wgmma24_runtime.py -k propagate
step racecheck 60 compute-sanitizer --tool racecheck --kernel-name kns=wgmma24 --report-api-errors no \
    $T tests/test_wgmma24.py -k "propagate and 700-2056-16"
grep -h "SUMMARY\|passed\|failed" "$OUT"/fp16_tests.txt "$OUT"/memcheck.txt "$OUT"/racecheck.txt
