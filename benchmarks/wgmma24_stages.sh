#!/usr/bin/env bash
# The pipeline's depth at 16 and 64 tokens (docs/perf-notes.md, "The pipeline's depth at 16-64 tokens"):
# benchmarks/wgmma24_bench.py on the three Llama-2-7B shapes at 50 / 70 / 90%, the slots layout
# (wgmma24_split's launch) and the compressed one by STREAM, with the format's stages (pack/wgmma24.stages:
# now 4 / 3 up to 64 tokens; 8 as at 0c0fe9a, when the committed run was made) and with
# CROSS_CUDA_DEFINES=-DSTAGES=3, 4, 5, 6 and (16 tokens) 8; then when each block's units land at 3 stages (--units),
# against the default's in wgmma24_xpre.sh. One device call, under ~360 s; the steps' logs and CSVs come
# back as stages.tgz (a device call returns at most 8 files); `python benchmarks/wgmma24_stages_plot.py
# stages_*.csv` plots them (each row's stages column: the depth its build had).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_stages.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.5,0.7,0.9 --weights uniform --ns 16,64 --settings 2:2,c2:2:0"
step stages_default 80 $B --out "$OUT/stages_default.csv"
for s in 3 4 5 6; do
    CROSS_CUDA_DEFINES="-DSTAGES=$s" step "stages_$s" 80 $B --out "$OUT/stages_$s.csv"
done
# 8 stages (the old default at 16 tokens) do not fit a 64-token block at 50%: 16 tokens only
CROSS_CUDA_DEFINES="-DSTAGES=8" step stages_8 60 ${B/--ns 16,64/--ns 16} --out "$OUT/stages_8.csv"
step units_3 40 python3 benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.9 --n 16 --compressed --stages 3 --units
tar czf "$OUT/stages.tgz" -C "$OUT" $(cd "$OUT" && ls stages_*) && rm "$OUT"/stages_*
