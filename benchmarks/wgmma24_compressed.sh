#!/usr/bin/env bash
# The compressed layout as masked words (pack/wgmma24._compressed) and STREAM's ranges by tickets, in
# one device call (under ~450 s): their GPU tests; benchmarks/wgmma24_bench.py (checked, then timed)
# at 16 tokens on 11008x4096 and 4096x4096, 70 and 90%, the slots layout (clusters; STREAM with 4
# ranges per block) against the compressed one (clusters; STREAM with 1 and 4 ranges per block), then
# 64 tokens; the block ends of STREAM with 1, 2 and 4 ranges per block, as blocks of their own and by
# tickets (benchmarks/wgmma24_ablate.py).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_compressed.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 100 python3 -m pytest -q -m gpu --maxfail=3 tests/test_wgmma24.py \
    -k "stream or splits or (compressed and not 11008)"
step bench16 150 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 \
    --weights uniform --ns 16 --settings 2:2,2:2:0:4,c2:2,c2:2:0,c2:2:0:4 --out "$OUT/bench16.csv"
step bench64 60 python3 benchmarks/wgmma24_bench.py --shapes llama-up --sparsities 0.7,0.9 \
    --weights uniform --ns 64 --settings 2:2:0,2:2:0:4,c2:2:0:4 --out "$OUT/bench64.csv"
A="python3 benchmarks/wgmma24_ablate.py --variants full --shape 11008x4096 --n 16"
step ends16 70 bash -c "$A --waves 1,2,4; $A --waves 2,4 --tickets"
