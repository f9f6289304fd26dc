#!/usr/bin/env bash
# END_TICKET with its ticket drawn by an increment that ptxas leaves alone, and MASK_CHAIN (the masked
# words by predicated loads along a chain of predicated address steps) (docs/perf-notes.md, "The prologue and the end's tickets,
# measured" and "The masked words by a chain of predicated adds"): wgmma24_floor.py times the full builds
# with END_TICKET=1, MASK_CHAIN=1 and both beside the default in one run (each checked against the fp32
# product), at 16 tokens on the three Llama shapes at 50, 70 and 90% (compressed, STREAM) and at 64 tokens
# (END_RED's largest) on two; the slots layout at 16 tokens at 50% (its clusters) with MASK_CHAIN; the kernel's
# GPU tests of the compressed and slots layouts, STREAM and PROPAGATE built with END_TICKET and MASK_CHAIN; the
# four-layer sequence at 90% (wgmma24_sequence.py --end-steps) with END_RED's end and with END_TICKET's, step by
# step in the outputs' last arrivals / last tickets' blocks.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/end_ticket.sh
# Written while MASK_CHAIN was off by default: it is the kernel's default since, and -DMASK_CHAIN=1 builds the
# default; -DMASK_CHAIN=0 is the popcounts' path these runs compared it with.
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --no-ablations"
step split16 180 $F --compressed --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 --n 16 \
    --builds="-DEND_TICKET=1,-DMASK_CHAIN=1,-DEND_TICKET=1 -DMASK_CHAIN=1" --out "$OUT/split16.csv"
step split64 60 $F --compressed --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --n 64 \
    --builds="-DEND_TICKET=1,-DMASK_CHAIN=1" --out "$OUT/split64.csv"
step slots16 45 $F --shapes llama-qkvo,llama-up --sparsities 0.5 --n 16 --builds=-DMASK_CHAIN=1 --out "$OUT/slots16.csv"
CROSS_CUDA_DEFINES="-DEND_TICKET=1 -DMASK_CHAIN=1" step tests 300 python3 -m pytest -q -m gpu tests/test_wgmma24.py \
    -k "compressed or stream or propagate or gpu_wgmma24_kernel"
S="python3 benchmarks/wgmma24_sequence.py --sparsity 0.9 --end-steps"
step seq_red 60 $S --defines="-DEND_RED=1"
step seq_ticket 60 $S --defines="-DEND_RED=1 -DEND_TICKET=1"
