#!/usr/bin/env bash
# The 2:4 kernel's STREAM end (blocks waiting on other blocks of their output) under compute-sanitizer,
# in one device call (under ~560 s): memcheck over the STREAM tests of tests/test_wgmma24.py, racecheck
# (shared memory) over the 2:4 kernel alone on the 4096-row case (each output over ~16 blocks) and a
# small one, then bench/step_kernels' GPU test (the profiler's records of graph replays).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/stream_end_checks.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step memcheck 240 compute-sanitizer --tool memcheck --report-api-errors no $T tests/test_wgmma24.py -k stream
step racecheck 240 compute-sanitizer --tool racecheck --kernel-name kns=wgmma24 --report-api-errors no \
    $T tests/test_wgmma24.py -k "stream and (4096-4096 or 256-256)"
step step_kernels 60 $T tests/test_step_kernels.py
grep -h "SUMMARY\|passed\|failed" "$OUT"/memcheck.txt "$OUT"/racecheck.txt "$OUT"/step_kernels.txt
