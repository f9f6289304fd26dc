#!/usr/bin/env bash
# The 16-token launch's fixed part (docs/perf-notes.md, "The launch's fixed part, block by block"): "copies
# only" at no bytes is 9.3-10.0 us against the launch's own 5.3-5.6, and the build without copies, mmas or the
# end's sums grows ~0.17 us a unit a block. Steps, the main question first:
# - fence_split: the 16-token split (compressed, STREAM, 70 / 90%, 4096x4096 and 11008x4096) with the loop's
#   fence.proxy.async dropped (-DPROXY_FENCE=0, alone and with PROPAGATE) timed beside the default builds;
# - fence_floor: the same split's ablation builds without the fence (--base);
# - fixed_<shape>: wgmma24_ablate.py at 90% without copies or the end's sums, without copies, copies only and
#   whole, every block's start and end stamped (in the blocks, or around them?);
# - fence_tests: the kernel's STREAM GPU tests in the build without the fence.
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/fixed_part.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
split=(python3 benchmarks/wgmma24_floor.py --shapes llama-qkvo,llama-up --sparsities 0.7,0.9 --n 16 --compressed)
step fence_split 150 "${split[@]}" "--builds=-DPROXY_FENCE=0,-DPROPAGATE=1,-DPROPAGATE=1 -DPROXY_FENCE=0" \
    --out "$OUT/fence_split.csv"
step fence_floor 100 "${split[@]}" --base=-DPROXY_FENCE=0 --out "$OUT/fence_floor.csv"
for shape in 4096x4096 11008x4096; do
    step "fixed_$shape" 60 python3 benchmarks/wgmma24_ablate.py --shape "$shape" --sparsity 0.9 --n 16 --compressed \
        --variants "no copies or end,no copies,copies only,full"
done
CROSS_CUDA_DEFINES=-DPROXY_FENCE=0 step fence_tests 100 python3 -m pytest -q -m gpu tests/test_wgmma24.py -k stream
