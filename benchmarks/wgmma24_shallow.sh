#!/usr/bin/env bash
# The shallow pipeline at 16-64 tokens (pack/wgmma24.stages: 4 stages in the slots layout, 3 compressed)
# as the default, in one device call (under ~560 s on the H100): the warpgroup 2:4 kernel's GPU tests
# and the runtime's; benchmarks/wgmma24_bench.py at 1, 8 and 16 tokens on the three Llama-2-7B shapes at
# 70 and 90% (the slots layout by wgmma24_split's launch, the compressed one by STREAM); then the
# Llama-2-7B-shaped decoder with --wgmma-kernel (slots layout) at 70% and at 90%, against the dense
# model in the same run (docs/perf-notes.md, "The pipeline's depth at 16-64 tokens"). The model folders
# come back as model.tgz.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_shallow.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) CM=benchmarks/results/h200/costmodel.json ;;
    *) CM=benchmarks/results/h100/costmodel.json ;;
esac
step gpu_tests 120 python3 -m pytest -q -m gpu --maxfail=5 tests/test_wgmma24.py
step gpu_tests_runtime 90 python3 -m pytest -q -m gpu -x tests/test_wgmma24_runtime.py
step bench 60 python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo,llama-down --sparsities 0.7,0.9 \
    --weights uniform --ns 1,8,16 --settings 2:2,c2:2:0 --out "$OUT/bench.csv"
mkdir -p "$OUT/model"
for sp in 0.7 0.9; do
    step "model_$sp" 170 python3 -m cross bench model --models llama --llama-sparsities $sp --cost-model $CM \
        --wgmma-kernel --wgmma-layout slots --out "$OUT/model/wgmma_$sp"
done
tar czf "$OUT/model.tgz" -C "$OUT" model && rm -r "$OUT/model"
