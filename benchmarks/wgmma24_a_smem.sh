#!/usr/bin/env bash
# The A-from-shared-memory builds (kernels/wgmma24.cu -DA_SMEM=1) at 128 tokens, in one device call (~4
# min): their GPU tests; 11008x4096 and 4096x4096 at 70 / 90%, XPRE builds without and with A_SMEM at the
# launch's clusters and at 2:1:2, the XPRE build also by STREAM (cuBLAS in the same run); the XPRE +
# A_SMEM build's time split on 11008x4096 (docs/perf-notes.md, "128 tokens split, and the first A_SMEM
# run"); and the XPRE build's split by STREAM (all the SMs' blocks, not the 86 clusters of 2), to see
# whether the copies' time falls with more SMs pulling, and again with its end by fp32 reductions (END_RED,
# --reduce-tokens 128) and their GPU tests; and the gather kernel's GPU tests (its 8-token build).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/wgmma24_a_smem.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 128"
CROSS_CUDA_DEFINES=-DXPRE=1 step xpre 90 $B --settings 2:2,2:1:2,2:2:0 --out "$OUT/xpre.csv"
CROSS_CUDA_DEFINES="-DXPRE=1 -DA_SMEM=1" step xpre_a_smem 80 $B --settings 2:2,2:1:2 --out "$OUT/xpre_a_smem.csv"
F="python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.7,0.9 --n 128"
step floor_xpre_stream 80 $F --base=-DXPRE=1 --split 0 --out "$OUT/floor_xpre_stream.csv"
step floor_xpre_stream_red 80 $F --base=-DXPRE=1 --split 0 --reduce-tokens 128 --out "$OUT/floor_xpre_stream_red.csv"
step stream_reduce_tests 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k stream_reduce -x
step a_smem_tests 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k a_smem -x
step floor_xpre_a_smem 80 $F --base="-DXPRE=1 -DA_SMEM=1" --out "$OUT/floor_xpre_a_smem.csv"
step gather_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gather.py -x
