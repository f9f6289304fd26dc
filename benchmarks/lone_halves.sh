#!/usr/bin/env bash
# Lone halves (the compressed layout's lone=True, the LONE build; docs/perf-notes.md, "Lone halves, built
# (prediction)") in one device call:
# - tests: the kernel's lone halves GPU tests (every block of tokens, STREAM and clusters, sized records) and
#   PROPAGATE's with them (Inf and NaN inputs and weights, eager and in a CUDA graph);
# - lone16: wgmma24_floor.py --compressed --sized --lone: the default build on the compressed layout and on its
#   lone halves (each checked against the fp32 product), cuBLAS in the same run, at 16 tokens on the three
#   Llama shapes at 50, 70 and 90%; slots16: the slots layout (fixed records, its launchers' splits, as the
#   runtime packs it) at 50%, the layout the runtime takes there now;
# - over16: wgmma24_floor.py --without-overflow (the overflow's cost, docs/perf-notes.md "The overflow's cost at
#   90% (prediction)") at 90%;
# - runtime: the runtime's lone halves GPU tests (make_plan(wgmma_layout="lone"): a layer's buckets run the kernel
#   eagerly, in a CUDA graph and under torch.compile; Inf and NaN inputs).
# Usage (repository root, on the GPU machine): OUT=<dir> bash benchmarks/lone_halves.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
F="python3 benchmarks/wgmma24_floor.py --no-ablations --n 16 --shapes llama-qkvo,llama-up,llama-down"
step lone16 120 $F --compressed --sized --lone --sparsities 0.5,0.7,0.9 --out "$OUT/lone16.csv"
step slots16 45 $F --sparsities 0.5 --out "$OUT/slots16.csv"
step tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k "lone or (propagate and True-True-True)"
step runtime 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24_runtime.py -k lone
step over16 45 $F --compressed --sized --without-overflow --sparsities 0.9 --out "$OUT/over16.csv"
