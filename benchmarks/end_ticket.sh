#!/usr/bin/env bash
# END_TICKET with its ticket drawn by an increment that ptxas leaves alone (docs/perf-notes.md, "The prologue
# and the end's tickets, measured", and what follows it): wgmma24_floor.py times the full builds with END_TICKET=1, and
# with EARLY=1 PREFETCH_MAP=1 as well, beside the default in one run (each checked against the fp32 product),
# at 16 tokens on the three Llama shapes at 50, 70 and 90% and at 64 tokens (END_RED's largest) on two; the
# kernel's STREAM GPU tests built with END_TICKET; the four-layer sequence at 90% (wgmma24_sequence.py --end-steps)
# with END_RED's end and with END_TICKET's, step by step in the outputs' last arrivals / last tickets' blocks.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/end_ticket.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step split16 200 python3 benchmarks/wgmma24_floor.py --compressed --shapes llama-qkvo,llama-up,llama-down \
    --sparsities 0.5,0.7,0.9 --n 16 --no-ablations --builds "-DEND_TICKET=1,-DEARLY=1 -DPREFETCH_MAP=1 -DEND_TICKET=1" \
    --out "$OUT/split16.csv"
step split64 90 python3 benchmarks/wgmma24_floor.py --compressed --shapes llama-qkvo,llama-up \
    --sparsities 0.7,0.9 --n 64 --no-ablations --builds "-DEND_TICKET=1" --out "$OUT/split64.csv"
CROSS_CUDA_DEFINES="-DEND_TICKET=1" step tests 120 python3 -m pytest -q -m gpu tests/test_wgmma24.py -k stream
S="python3 benchmarks/wgmma24_sequence.py --sparsity 0.9 --end-steps"
step seq_red 90 $S --defines="-DEND_RED=1"
step seq_ticket 90 $S --defines="-DEND_RED=1 -DEND_TICKET=1"
