#!/usr/bin/env bash
# CROSS_STREAM_REDUCE=1 on the GPU, in one call (~450 s on the H100): its GPU tests and the cooperative
# launches' (tests/test_wgmma24.py), then, if none failed, the Llama-2-7B-shaped decoder compiled at
# SPARSITY (default 0.7), decode at batch 16, `--wgmma-kernel --kernel-times`, STREAM's split outputs
# summed by fp32 reductions (benchmarks/compiled_decoder.sh, its model.tgz; against the same run's dense
# model, to compare with the deterministic end's model_compiled16_wgmma70_sums.* in
# benchmarks/results/h100).
# Usage (repository root, on the GPU machine): OUT=<dir> [SPARSITY=0.7] bash benchmarks/stream_reduce_decoder.sh
source "$(dirname "$0")/steps.sh"
start=$(date +%s)
step reduce_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k "stream_reduce or cooperative"
[ "$(tail -1 "$OUT/reduce_tests.txt")" = "exit 0" ] || { echo "the reductions' GPU tests did not pass: no decoder run"; exit 1; }
CROSS_STREAM_REDUCE=1 TESTS=0 PHASES=decode-16 FLAGS="--wgmma-kernel --kernel-times" \
    BUDGET=$((585 - $(date +%s) + start)) MIN_LEFT=300 bash "$(dirname "$0")/compiled_decoder.sh"
