#!/usr/bin/env bash
# The launch's clusters of 8 for 4096-row weights (kernels/launch.py, wgmma24_split: 8 where all its
# blocks start at once) in one device call (under ~420 s on the H100): the warpgroup 2:4 kernel's split
# and runtime GPU tests; benchmarks/wgmma24_bench.py at 16 tokens on the three Llama-2-7B shapes at 70 and
# 90%, the launch's own split against clusters of 4 (2:2 against 2:2:4); then the Llama-2-7B-shaped
# decoder at 70% with --wgmma-kernel (slots layout), against the dense model in the same run
# (docs/perf-notes.md, "Clusters of 8 for 4096-row weights"). The model folder comes back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_split8.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step gpu_tests 120 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py -k "split or stream"
step gpu_tests_runtime 60 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
step bench 40 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --weights uniform --ns 16 --settings 2:2,2:2:4 --out "$OUT/bench.csv"
mkdir -p "$OUT/model"
step model 300 python3 -m cross bench model --models llama --llama-sparsities 0.7 --cost-model $CM \
    --wgmma-kernel --wgmma-layout slots --out "$OUT/model/wgmma"
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
