#!/usr/bin/env bash
# PROPAGATE's 16-token cost split (~5 min; docs/perf-notes.md "A launch's fixed part and PROPAGATE's
# shorter unit, measured"): half of it (+0.77 us on 11008x4096 at 90%) is not its unit's instructions.
# - split: at 16 tokens (compressed, STREAM) the default build against PROPAGATE, PROPAGATE with FOLD_EARLY
#   (its X word loaded before the unit's mmas: the load's latency off the chain, if that is the rest), and
#   PROPAGATE with ABLATE=128 (the end's block vote without its barrier: right where X is finite, as here);
# - fold_tests: PROPAGATE's GPU tests in the FOLD_EARLY build (it has never run on a GPU);
# - default_tests: the runtime's GPU tests with the compressed layout the default (planner.WGMMA_LAYOUT_DEFAULT;
#   the decoder ran it through --wgmma-layout compressed, the tests have not).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/propagate_split.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step split 120 python3 benchmarks/wgmma24_floor.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --n 16 \
    --compressed --builds="-DPROPAGATE=1,-DPROPAGATE=1 -DFOLD_EARLY=1,-DPROPAGATE=1 -DABLATE=128" --out "$OUT/split.csv"
CROSS_CUDA_DEFINES=-DFOLD_EARLY=1 step fold_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_wgmma24.py tests/test_wgmma24_runtime.py -k propagate
step default_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24_runtime.py tests/test_nn.py \
    tests/test_measure.py
