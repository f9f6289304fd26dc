#!/usr/bin/env bash
# The rest of lone_halves.sh's kernel tests, and where the compressed layout's 128-token STREAM launch spends its
# time past its copies and mmas (docs/perf-notes.md, "Lone halves and 128 tokens, measured"), in one device call:
# - tests: the kernel's lone halves GPU tests that lone_halves.sh's step did not reach in its limit (lone=True)
#   and PROPAGATE's with them (Inf and NaN inputs and weights, eager and in a CUDA graph);
# - over128: wgmma24_floor.py --without-overflow at 128 tokens, 90%: what the overflow's four mmas a unit cost
#   where a unit's mmas are eight times those at 16 tokens;
# - units128: wgmma24_sequence.py --n 128 --units at 90%: each block's units' landings and its end, two decoder
#   layers back to back (the deterministic end: STREAM's END_RED stops at 64 tokens).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/tokens128_units.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
step tests 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py \
    -k "(lone and True) or (propagate and True-True-True)"
step over128 90 python3 benchmarks/wgmma24_floor.py --n 128 --no-ablations --shapes llama-qkvo,llama-up \
    --sparsities 0.9 --compressed --sized --reduce-tokens 128 --without-overflow --out "$OUT/over128.csv"
step units128 90 python3 benchmarks/wgmma24_sequence.py --n 128 --sparsity 0.9 --layers 2 --units --out "$OUT"
