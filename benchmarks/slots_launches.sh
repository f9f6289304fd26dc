#!/usr/bin/env bash
# The slots layout's other launches at 50%, 16 tokens (docs/perf-notes.md, "Next, from the 50% split"): its
# launcher takes clusters of 2 on 11008x4096 and 8 on 4096x4096; the compressed layout gained 3.8 us from clusters
# of 2 to 4 on 11008x4096. The launch split (benchmarks/wgmma24_floor.py) of:
# - up_s4: the slots layout by clusters of 4 on 11008x4096;
# - qkvo_stream: the slots layout by STREAM on 4096x4096.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/slots_launches.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step up_s4 70 python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.5 --n 16 --split 4 --out "$OUT/up_s4.csv"
step qkvo_stream 70 python3 benchmarks/wgmma24_floor.py --shapes llama-qkvo --sparsities 0.5 --n 16 --split 0 \
    --out "$OUT/qkvo_stream.csv"
