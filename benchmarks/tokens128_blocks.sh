#!/usr/bin/env bash
# The mmas under the decode at 128 tokens (docs/perf-notes.md, "128-row blocks and MMA_AHEAD at 128 tokens
# (prediction)"): the compressed layout by STREAM with END_RED at 128 tokens runs one 256-row block an SM, whose
# mmas wait for each unit's decode and barrier, nothing else issuing meanwhile. Two ways to overlap them, in one
# device call, 4096x4096 and 11008x4096 at 70 and 90%, cuBLAS in the same runs, every build checked against the
# fp32 product, each build's blocks per SM printed:
# - rows256: the default block (two warpgroups of two m-tiles), with 4 stages (the stages' own effect), and the
#   MMA_AHEAD build (two sets of 2:4 registers: a unit's mmas waited for after the next unit's are issued);
# - wg1mt2: blocks of one warpgroup of two m-tiles (128 rows, 128 threads), with 4 stages so two fit an SM;
# - wg2mt1: blocks of two warpgroups of one m-tile (128 rows), with 4 stages, with its registers bounded for two
#   blocks an SM (-DMIN_BLOCKS=2), and MMA_AHEAD;
# - ahead_over: MMA_AHEAD on 11008x4096 at 90% with and without the overflow (--without-overflow, every build with
#   -DMMA_AHEAD=1): the overlap where only the 2:4 mmas are left on the tensor cores;
# - tests: the MMA_AHEAD builds' GPU tests (STREAM with END_RED to 64 and to 128 tokens, clusters of 2).
# The steps' limits add up to 540 s (a call's limit is 600): the tests step may stop early; `-k mma_ahead` again then.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/tokens128_blocks.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --n 128 --no-ablations --shapes llama-qkvo,llama-up --sparsities 0.7,0.9"
F="$F --compressed --sized --reduce-tokens 128"
step rows256 120 $F --builds=-DSTAGES=4,-DMMA_AHEAD=1 --out "$OUT/rows256.csv"
step wg1mt2 100 $F --wgs 1 --mt 2 --builds=-DSTAGES=4 --out "$OUT/wg1mt2.csv"
step wg2mt1 120 $F --wgs 2 --mt 1 "--builds=-DSTAGES=4,-DSTAGES=4 -DMIN_BLOCKS=2,-DMMA_AHEAD=1" --out "$OUT/wg2mt1.csv"
step ahead_over 90 python3 benchmarks/wgmma24_floor.py --n 128 --no-ablations --shapes llama-up --sparsities 0.9 \
    --compressed --sized --reduce-tokens 128 --base=-DMMA_AHEAD=1 --without-overflow --out "$OUT/ahead_over.csv"
step tests 110 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k mma_ahead
