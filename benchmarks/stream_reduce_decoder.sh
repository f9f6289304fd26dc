#!/usr/bin/env bash
# STREAM's end by fp32 reductions (the default up to 64 tokens) on the GPU, in one call (~450 s on the
# H100): the GPU tests of tests/test_wgmma24.py and tests/test_wgmma24_runtime.py that SELECT picks (-k;
# default: the reductions' and the cooperative launches'; within TEST_LIMIT seconds, default 150), then,
# if none failed, the Llama-2-7B-shaped decoder compiled at SPARSITY (default 0.7), decode at batch 16,
# `--wgmma-kernel --kernel-times` (benchmarks/compiled_decoder.sh, its model.tgz; against the same
# run's dense model; CROSS_STREAM_REDUCE=0 in the environment: the deterministic end instead).
# Usage (repository root, on the GPU machine):
#   OUT=<dir> [SPARSITY=0.7] [SELECT=...] [TEST_LIMIT=150] bash benchmarks/stream_reduce_decoder.sh
source "$(dirname "$0")/steps.sh"
start=$(date +%s)
step reduce_tests ${TEST_LIMIT:-150} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py tests/test_wgmma24_runtime.py \
    -k "${SELECT:-stream_reduce or cooperative}"
[ "$(tail -1 "$OUT/reduce_tests.txt")" = "exit 0" ] || { echo "the reductions' GPU tests did not pass: no decoder run"; exit 1; }
TESTS=0 PHASES=decode-16 FLAGS="--wgmma-kernel --kernel-times" \
    BUDGET=$((585 - $(date +%s) + start)) MIN_LEFT=300 bash "$(dirname "$0")/compiled_decoder.sh"
