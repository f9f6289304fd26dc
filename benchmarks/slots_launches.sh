#!/usr/bin/env bash
# The slots layout's other launches at 50%, 16 tokens (docs/perf-notes.md, "Next, from the 50% split"): its
# launcher takes clusters of 2 on 11008x4096 and 8 on the 4096-row weights; the compressed layout gained 3.8 us
# from clusters of 2 to 4 on 11008x4096. The launch split (benchmarks/wgmma24_floor.py), each launcher's own
# split beside the other in the same run:
# - up_s2 / up_s4: 11008x4096 by clusters of 2 (the launcher's) and of 4;
# - qkvo_s8 / qkvo_stream: 4096x4096 by clusters of 8 (the launcher's) and by STREAM;
# - down_s8 / down_stream: 4096x11008 the same.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/slots_launches.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
for run in up:llama-up:2 up:llama-up:4 qkvo:llama-qkvo:8 qkvo:llama-qkvo:0 down:llama-down:8 down:llama-down:0; do
    IFS=: read -r tag shape split <<< "$run"
    name=${tag}_s$split
    [ "$split" = 0 ] && name=${tag}_stream
    step "$name" 70 python3 benchmarks/wgmma24_floor.py --shapes "$shape" --sparsities 0.5 --n 16 --split "$split" \
        --out "$OUT/$name.csv"
done
