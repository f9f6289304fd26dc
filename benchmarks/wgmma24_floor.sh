#!/usr/bin/env bash
# What a 16-token warpgroup 2:4 launch spends outside its mmas, in one device call (under ~150 s): the
# ablation builds' compile check runs on the CPU; here benchmarks/wgmma24_floor.py on 4096x4096,
# 4096x11008 and the stacked q, k, v (12288x4096) at 70 and 90%, the slots layout by its clusters and
# the compressed layout by STREAM: the full launch, copies only, no copies, the launch alone, cuBLAS
# in the same run (docs/perf-notes.md, "The compressed layout by clusters of 8, measured": a
# 4096x4096 launch takes ~16-17 us whatever it reads).
# the compressed layout's STREAM also as other full builds, BUILDS (comma-separated CROSS_CUDA_DEFINES;
# none by default).
# Usage (repository root, on the GPU machine): OUT=<dir> [BUILDS=...] bash benchmarks/wgmma24_floor.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --shapes llama-qkvo,llama-down,llama-qkv --sparsities 0.7,0.9 --n 16"
step floor_slots 70 $F --out "$OUT/floor_slots.csv"
step floor_compressed 100 $F --compressed --builds="${BUILDS:-}" --out "$OUT/floor_compressed.csv"
