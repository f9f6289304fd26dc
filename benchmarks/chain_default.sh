#!/usr/bin/env bash
# MASK_CHAIN made the warpgroup 2:4 kernel's default (docs/perf-notes.md, "END_TICKET by an increment and
# MASK_CHAIN, measured (H100)" and "MASK_CHAIN the default: the grid (H100)") in one device call:
# - tests: the kernel's GPU tests that mask_chain.sh did not run with -DMASK_CHAIN=1 (A in shared memory, fp16,
#   rotations, sized slots, splits, X's copies), the runtime's and the layers' that launch it
#   (test_wgmma24_runtime.py, test_nn.py, test_compile.py: CUDA graphs and torch.compile);
# - grid: benchmarks/kernels.py on the three Llama-2-7B shapes at 50 / 70 / 90% and 1-2048 tokens (cross, the
#   runtime's defaults; cross+wgmma24c the kernel under nan_policy "ignore"), as the last grid had it;
# - memcheck: the STREAM END_RED kernel tests under compute-sanitizer memcheck.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/chain_default.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
T="python3 -m pytest -q -p no:cacheprovider -m gpu"
step tests 200 $T tests/test_wgmma24.py tests/test_wgmma24_runtime.py tests/test_nn.py tests/test_compile.py \
    -k "not (compressed or stream or propagate or gpu_wgmma24_kernel) or runtime or nn or compile"
step grid 270 python3 benchmarks/kernels.py --shapes llama-qkvo,llama-up,llama-down --sparsities 0.5,0.7,0.9 \
    --ns 1,8,16,128,2048 --methods dense,cross,cross+wgmma24c --cost-model $CM --out "$OUT/grid"
step memcheck 60 compute-sanitizer --tool memcheck --report-api-errors no $T tests/test_wgmma24.py \
    tests/test_wgmma24_runtime.py -k "stream_reduce"
grep -h "SUMMARY\|passed\|failed" "$OUT"/tests.txt "$OUT"/memcheck.txt
