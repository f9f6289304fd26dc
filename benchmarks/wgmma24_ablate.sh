#!/usr/bin/env bash
# Where the warpgroup 2:4 kernel's time goes, in one device call (under ~340 s): for each case the full
# STREAM build and one that only copies (benchmarks/wgmma24_ablate.py: their rates against cuBLAS and
# every block's start, end and SM): 11008x4096 at 16 tokens (one block per SM, then two: STAGES=4),
# at 128 tokens, and 4096x4096 at 16 tokens (docs/perf-notes.md, "Bulk copies of the weight's
# records, measured", and Next 7).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_ablate.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step ablate_up16 70 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.7 --n 16
step ablate_up16_s4 60 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.7 --n 16 --stages 4
step ablate_up128 60 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.7 --n 128
step ablate_qkvo16 60 python3 benchmarks/wgmma24_ablate.py --shape 4096x4096 --sparsity 0.7 --n 16
# the compressed layout, 107-109 registers at 16 tokens now (153 in its first run, before an output's
# first mma took scale-d 0): at 90% its 8 stages (~70 KB) fit two blocks per SM; clusters and STREAM
step compressed_stream 40 python3 benchmarks/wgmma24_bench.py --shapes llama-up --sparsities 0.7,0.9 \
    --weights uniform --ns 16,64 --settings c2:2,c2:2:0 --out "$OUT/compressed_stream.csv"
