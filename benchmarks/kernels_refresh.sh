#!/usr/bin/env bash
# The kernel grid (kernels.csv: benchmarks/kernels.py on the three Llama-2-7B shapes at 50 / 70 / 90% and
# 1-2048 tokens: cross, the runtime's defaults, with the warpgroup 2:4 kernel offered under nan_policy
# "propagate" on compute capability 9.0; cross+wgmma24 and cross+wgmma24c, offered under "ignore") and
# Figure 1's cross rows (kernels_fig1.csv: the committed file less its `cross` rows, measured again by --resume, each against
# cuBLAS in the same run; the peers' rows are kept) in one device call (under ~580 s on the H100). The
# DLMC archives travel as .carry/dlmc (carry it). Figure 1's folder comes back as fig1.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/kernels_refresh.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step grid 240 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24,cross+wgmma24c --cost-model $CM --out "$OUT"
mkdir -p "$OUT/fig1"
python3 benchmarks/drop_rows.py "benchmarks/results/$GPU/kernels_fig1.csv" "$OUT/fig1/kernels_fig1.csv" --method cross
step fig1 330 python3 -m cross bench kernels --shapes llama-up,llama-qkvo,bert-up --ns 1,16,128,2048 \
    --distributions uniform,nonuniform,dlmc --dlmc .carry/dlmc --dlmc-layers dlmc-ffn-up \
    --methods dense,cross,cross-cuda-bitmap,cusparse-csr,triton-bsr-32,sparse-2:4 \
    --cost-model $CM --out "$OUT/fig1" --resume
tar czf "$OUT/fig1.tgz" -C "$OUT" fig1 && rm -r "$OUT/fig1"
