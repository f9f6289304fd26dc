#!/usr/bin/env bash
# STREAM over 1-4 times the resident blocks (the hardware block scheduler hands the later ranges to
# whichever SM frees first; docs/perf-notes.md, "Ranges handed out by the hardware's block scheduler"),
# one and two blocks per SM, the three Llama shapes at 16 tokens, 11008x4096 at 64 and 128, in one call.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_waves.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
A="python3 benchmarks/wgmma24_ablate.py --variants full"
step w_up16 60 $A --shape 11008x4096 --n 16 --waves 1,2,3,4
step w_up16_s4 50 $A --shape 11008x4096 --n 16 --waves 1,2,4 --stages 4
step w_up16_90_s4 50 $A --shape 11008x4096 --n 16 --sparsity 0.9 --waves 1,2,4 --stages 4
step w_qkvo16 50 $A --shape 4096x4096 --n 16 --waves 1,2,4
step w_qkvo16_s4 50 $A --shape 4096x4096 --n 16 --waves 1,2,4 --stages 4
step w_down16_s4 50 $A --shape 4096x11008 --n 16 --waves 1,2,4 --stages 4
step w_up64 50 $A --shape 11008x4096 --n 64 --waves 1,2,4
step w_up128 50 $A --shape 11008x4096 --n 128 --waves 1,2
step w_copies_up16_s4 40 python3 benchmarks/wgmma24_ablate.py --variants "copies only" --shape 11008x4096 --n 16 --waves 1,2,4 --stages 4
