#!/usr/bin/env bash
# Smaller blocks at 128 tokens (docs/perf-notes.md, "Lone halves and 128 tokens, measured (H100)"): the
# compressed layout by STREAM with END_RED at 128 tokens runs one 256-row block an SM, whose mmas wait for each
# unit's decode and barrier and nothing else issues meanwhile; blocks of 128 rows (one warpgroup of two m-tiles,
# or two of one) may fit two an SM, one block's mmas under the other's decode. In one device call, 4096x4096 and
# 11008x4096 at 70 and 90%, cuBLAS in the same runs, every build checked against the fp32 product:
# - rows256: the default block (two warpgroups of two m-tiles), the baseline, and with 4 stages;
# - wg1mt2: one warpgroup of two m-tiles (128 rows, 128 threads), and with 4 stages (8 leave one block an SM);
# - wg2mt1: two warpgroups of one m-tile (128 rows, 256 threads), with 4 stages, and with its registers bounded
#   for two blocks an SM (-DMIN_BLOCKS=2).
# Each build's line gives its blocks per SM.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/tokens128_blocks.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --n 128 --no-ablations --shapes llama-qkvo,llama-up --sparsities 0.7,0.9"
F="$F --compressed --sized --reduce-tokens 128"
step rows256 100 $F --builds=-DSTAGES=4 --out "$OUT/rows256.csv"
step wg1mt2 100 $F --wgs 1 --mt 2 --builds=-DSTAGES=4 --out "$OUT/wg1mt2.csv"
step wg2mt1 120 $F --wgs 2 --mt 1 "--builds=-DSTAGES=4,-DSTAGES=4 -DMIN_BLOCKS=2" --out "$OUT/wg2mt1.csv"
