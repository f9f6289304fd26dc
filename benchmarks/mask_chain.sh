#!/usr/bin/env bash
# MASK_CHAIN (the masked words by predicated loads along a chain of predicated address steps; docs/perf-notes.md,
# "The masked words by a chain of predicated adds") where end_ticket.sh left it open: wgmma24_floor.py times the
# full build with -DMASK_CHAIN=1 beside the default in one run (each checked against the fp32 product) at 16
# tokens on the three Llama shapes at 50, 60, 80 and 90% (compressed, STREAM: where it starts to pay), at 64
# tokens on two, and the slots layout at 16 tokens at 50% (its clusters); the kernel's GPU tests of the
# compressed and slots layouts, STREAM and PROPAGATE built with MASK_CHAIN.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/mask_chain.sh
# Written while MASK_CHAIN was off by default: it is the kernel's default since, and -DMASK_CHAIN=1 builds the
# default; -DMASK_CHAIN=0 is the popcounts' path these runs compared it with.
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --no-ablations"
step chain16 100 $F --compressed --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.6,0.8,0.9 --n 16 \
    --builds=-DMASK_CHAIN=1 --out "$OUT/chain16.csv"
step split64 60 $F --compressed --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --n 64 \
    --builds="-DEND_TICKET=1,-DMASK_CHAIN=1" --out "$OUT/split64.csv"
step slots16 45 $F --shapes llama-qkvo,llama-up --sparsities 0.5 --n 16 --builds=-DMASK_CHAIN=1 --out "$OUT/slots16.csv"
CROSS_CUDA_DEFINES="-DMASK_CHAIN=1" step tests 300 python3 -m pytest -q -m gpu tests/test_wgmma24.py \
    -k "compressed or stream or propagate or gpu_wgmma24_kernel"
