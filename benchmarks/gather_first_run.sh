#!/usr/bin/env bash
# The gather kernel's first GPU run (OUT=<folder> bash benchmarks/gather_first_run.sh, ~6 min): its GPU
# tests, the benchmark against cuBLAS at 8 and 16 tokens (50-90%; 4096x11008 at 8 tokens), the builds
# without the L2 prefetch, with 16 warps and other segment lengths, the compressed 2:4 layout and the
# defaults at 8 and 16 tokens in the same run (the kernel grid's methods), and memcheck on a few tests.
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
step gather_tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gather.py -x
step gather_bench 200 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.8,0.9 \
    --ns 8,16 --out "$OUT/gather_bench.csv"
step gather_down8 60 python3 benchmarks/gather_bench.py --shapes llama-down --sparsities 0.7,0.9 --ns 8
CROSS_CUDA_DEFINES=-DPREFETCH=0 step gather_noprefetch 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up \
    --sparsities 0.7,0.9 --ns 16
step gather_warps16 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 16 --warps 16
step gather_seg4 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 16 --seg-quads 4
step gather_seg16 60 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 16 --seg-quads 16
step grid 120 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 8,16 \
    --methods dense,cross,cross+wgmma24c --cost-model "$CM" --out "$OUT/grid"
step gather_memcheck 100 compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_gather.py -k "40-200 or warps"
