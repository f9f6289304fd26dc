#!/usr/bin/env bash
# The gather kernel on a GPU: OUT=<folder> bash benchmarks/gather_run.sh first|depth|fixed|ablate (~3-6 min). All: its
# GPU tests, the benchmark against cuBLAS at 8 and 16 tokens (50-90%; 4096x11008 at 8 tokens), the kernel
# grid's dense, cross and cross+wgmma24c at 8 and 16 tokens in the same run, memcheck on a few tests.
# Variants of the build at 16 tokens, 70 and 90%: "first" (the first run): without the L2 prefetch, 16
# warps, segments of 4 and 16 records; "depth": records held 1 (32 warps) and 3 (24 warps) ahead (both at
# the commits that ran them); "fixed" (the fixed positions' layout; shorter: no grid, no 4096x11008): records
# held 5 ahead, and ncu at 70%; "ablate" (shorter still: the benchmark at 16 tokens, 70 and 90%, only): the
# profiling builds that exit once X is staged (GATHER_ABLATE=1) and that run each warp's first segment only
# (2), segments of 4 records, and X's staging by batches of 4 units a thread (X_BATCH=4: one round trip) with
# the stores' order swapped (X_SWAP=1), that build also exiting once X is staged and with segments of 4
# records (as run at 59c3243, whose defaults were X_BATCH=1 and X_SWAP=0; the variant's are the defaults now; it also
# timed records by loads that skip L1, REC_NC=1, slower and since removed).
source "$(dirname "$0")/steps.sh"
set -e
case "${1:-}" in first | depth | fixed | ablate) ;;
    *) echo "usage: OUT=... bash benchmarks/gather_run.sh first|depth|fixed|ablate" >&2; exit 2 ;; esac
SHORT=$([ "$1" = fixed ] || [ "$1" = ablate ] && echo 1 || echo 0)
set +e
V="--shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 16"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
step gather_tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gather.py -x
V90="--shapes llama-qkvo,llama-up --sparsities 0.9,0.7 --ns 16"
if [ "$1" = ablate ]; then  # the default build at the variants' points only
    step gather_bench 100 python3 benchmarks/gather_bench.py $V90 --out "$OUT/gather_bench.csv"
else
    step gather_bench 200 python3 benchmarks/gather_bench.py --shapes llama-qkvo,llama-up --sparsities 0.5,0.7,0.8,0.9 \
        --ns 8,16 --out "$OUT/gather_bench.csv"
fi
[ "$SHORT" = 1 ] || step gather_down8 60 python3 benchmarks/gather_bench.py --shapes llama-down --sparsities 0.7,0.9 --ns 8
if [ "$1" = first ]; then
    CROSS_CUDA_DEFINES=-DPREFETCH=0 step gather_noprefetch 60 python3 benchmarks/gather_bench.py $V
    step gather_warps16 60 python3 benchmarks/gather_bench.py $V --warps 16
    step gather_seg4 60 python3 benchmarks/gather_bench.py $V --seg-quads 4
    step gather_seg16 60 python3 benchmarks/gather_bench.py $V --seg-quads 16
elif [ "$1" = depth ]; then
    CROSS_CUDA_DEFINES=-DDEPTH=1 step gather_depth1 60 python3 benchmarks/gather_bench.py $V
    CROSS_CUDA_DEFINES=-DDEPTH=3 step gather_depth3 60 python3 benchmarks/gather_bench.py $V --warps 24
elif [ "$1" = ablate ]; then
    CROSS_CUDA_DEFINES=-DGATHER_ABLATE=1 step gather_ablate1 60 python3 benchmarks/gather_bench.py $V90 --no-check
    CROSS_CUDA_DEFINES=-DGATHER_ABLATE=2 step gather_ablate2 60 python3 benchmarks/gather_bench.py $V90 --no-check
    step gather_seg4 60 python3 benchmarks/gather_bench.py $V90 --seg-quads 4
    CROSS_CUDA_DEFINES="-DX_BATCH=4 -DX_SWAP=1" step gather_xbatch_swap 60 python3 benchmarks/gather_bench.py $V90
    CROSS_CUDA_DEFINES="-DX_BATCH=4 -DX_SWAP=1 -DGATHER_ABLATE=1" step gather_xbatch_swap_ablate1 60 \
        python3 benchmarks/gather_bench.py $V90 --no-check
    CROSS_CUDA_DEFINES="-DX_BATCH=4 -DX_SWAP=1" step gather_xbatch_swap_seg4 60 python3 benchmarks/gather_bench.py $V90 \
        --seg-quads 4
else
    CROSS_CUDA_DEFINES=-DDEPTH=5 step gather_depth5 60 python3 benchmarks/gather_bench.py $V
    step ncu_gather70 120 ncu -k regex:gather_mma --launch-count 1 --set full python3 benchmarks/gather_profile_one.py \
        --shape 11008x4096 --sparsity 0.7 --n 16
fi
[ "$SHORT" = 1 ] || step grid 120 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --ns 8,16 \
    --methods dense,cross,cross+wgmma24c --cost-model "$CM" --out "$OUT/grid"
step gather_memcheck 100 compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider \
    -m gpu tests/test_gather.py -k "40-200 or warps"
