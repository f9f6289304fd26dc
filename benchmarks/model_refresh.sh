#!/usr/bin/env bash
# Issue 5's model table again (model.csv, model.md, model.png: BERT-base, the Llama-2-7B-shaped decoder
# and the real MiniLM at 50-90%, every phase), measured as the decoder's headline runs are
# (`--stack-siblings --wgmma-kernel`, eager, CUDA-graph replay), over as many device calls as it
# takes (~25 min of device time on the H100: ~260 s per decoder sparsity). Each call starts from the
# rows measured so far (benchmarks/results/$GPU/model_refresh/model.csv: copy the call's model.csv
# there and commit it before the next call) and goes on with --resume until BUDGET seconds (default
# 570); a workload the limit cuts short is measured again, whole, by the next call, and the call that
# finishes writes model.md and model.png. MiniLM travels as .carry/minilm (bf16, 46 MB; carry it):
#   PYTHONPATH=src python benchmarks/minilm_carry.py .carry/minilm
# Usage (repository root, on the GPU machine): OUT=<dir> [BUDGET=570] bash benchmarks/model_refresh.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
mkdir -p "$OUT/m"
cp "benchmarks/results/$GPU/model_refresh/model.csv" "$OUT/m/" 2>/dev/null || echo "no rows measured before: from the start"
step model_refresh "${BUDGET:-570}" python3 -m cross bench model --minilm-dir .carry/minilm --stack-siblings \
    --wgmma-kernel --cost-model $CM --out "$OUT/m" --resume
mv "$OUT/m"/model.* "$OUT/" && rm -r "$OUT/m"
