#!/usr/bin/env bash
# The gather kernel with its records held DEPTH ahead in registers (OUT=<folder> bash benchmarks/gather_depth.sh,
# ~4 min): GPU tests and memcheck of the default build (DEPTH=2, 32 warps), the benchmark at 8 and 16
# tokens (50-90%; 4096x11008 at 8), the builds DEPTH=1 (32 warps) and DEPTH=3 (24 warps), and the
# kernel grid's methods at 8 and 16 tokens in the same run.
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
step gather_tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gather.py -x
step gather_bench 200 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.8,0.9 \
    --ns 8,16 --out "$OUT/gather_bench.csv"
step gather_down8 60 python3 benchmarks/gather_bench.py --shapes llama-down --sparsities 0.7,0.9 --ns 8
CROSS_CUDA_DEFINES=-DDEPTH=1 step gather_depth1 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up \
    --sparsities 0.7,0.9 --ns 16
CROSS_CUDA_DEFINES=-DDEPTH=3 step gather_depth3 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up \
    --sparsities 0.7,0.9 --ns 16 --warps 24
step grid 120 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 8,16 \
    --methods dense,cross,cross+wgmma24c --cost-model "$CM" --out "$OUT/grid"
step gather_memcheck 100 compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_gather.py -k "40-200 or warps"
