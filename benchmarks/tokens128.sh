#!/usr/bin/env bash
# The warpgroup 2:4 kernel at 128 tokens with today's builds (XTMA, MASK_CHAIN: the compressed layout's 128-token
# STREAM build no longer spills; docs/perf-notes.md, "128 tokens again (prediction)") in one device call, the
# three Llama-2-7B shapes at 70 and 90%, cuBLAS in the same runs, every full build checked against the fp32 product:
# - slots128: the slots layout by the launcher's clusters (the best 128-token launch when last measured);
# - comp128: the compressed layout, sized, by STREAM with END_RED at 128 tokens (--reduce-tokens 128), and its lone
#   halves (--lone);
# - comp128c2: the compressed layout, sized, by clusters of 2 (--split 2);
# - split128: the STREAM END_RED launch of comp128 split by ablation builds (copies only, weight copies only, ...)
#   on 11008x4096 at 90%.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/tokens128.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --n 128"
S="--shapes llama-qkvo,llama-up,llama-down --sparsities 0.7,0.9"
step slots128 90 $F --no-ablations $S --out "$OUT/slots128.csv"
step comp128 120 $F --no-ablations $S --compressed --sized --reduce-tokens 128 --lone --out "$OUT/comp128.csv"
step comp128c2 90 $F --no-ablations $S --compressed --sized --split 2 --out "$OUT/comp128c2.csv"
step split128 90 $F --shapes llama-up --sparsities 0.9 --compressed --sized --reduce-tokens 128 --out "$OUT/split128.csv"
