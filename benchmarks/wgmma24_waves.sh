#!/usr/bin/env bash
# STREAM's ranges handed out as the SMs free (docs/perf-notes.md, "Ranges handed out by the hardware's
# block scheduler" and "... by tickets"), in one device call (under ~500 s): the GPU tests of STREAM
# (tickets included) and the splits; benchmarks/wgmma24_bench.py (checked, then timed) on the three
# Llama shapes at 16 and 64 tokens, clusters against STREAM with 1, 2 and 4 ranges per block; then
# benchmarks/wgmma24_ablate.py's block ends with 1-4 ranges per block, as blocks of their own (the
# hardware's scheduler) and by tickets, one and two blocks per SM.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_waves.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 80 python3 -m pytest -q -m gpu --maxfail=3 tests/test_wgmma24.py -k "stream or splits"
step bench 110 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --weights uniform --ns 16,64 --settings 2:2,2:2:0,2:2:0:2,2:2:0:4 --out "$OUT/bench.csv"
A="python3 benchmarks/wgmma24_ablate.py --variants full"
step up16_hw 40 $A --shape 11008x4096 --n 16 --waves 1,2,4
step up16_tickets 35 $A --shape 11008x4096 --n 16 --waves 2,4 --tickets
step up16_s4 50 bash -c "$A --shape 11008x4096 --n 16 --waves 2,4 --stages 4; $A --shape 11008x4096 --n 16 --waves 2,4 --stages 4 --tickets"
step qkvo16 50 bash -c "$A --shape 4096x4096 --n 16 --waves 2,4; $A --shape 4096x4096 --n 16 --waves 2,4 --tickets"
step up128 45 bash -c "$A --shape 11008x4096 --n 128 --waves 2; $A --shape 11008x4096 --n 128 --waves 2 --tickets"
