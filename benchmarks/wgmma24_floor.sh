#!/usr/bin/env bash
# What a 16-token warpgroup 2:4 launch spends outside its mmas, in one device call (under ~150 s): the
# ablation builds' compile check runs on the CPU; here benchmarks/wgmma24_floor.py on 4096x4096,
# 4096x11008 and the stacked q, k, v (12288x4096) at 70 and 90%, the slots layout by its clusters and
# the compressed layout by STREAM: the full launch, copies only, no copies, the launch alone, cuBLAS
# in the same run (docs/perf-notes.md, "The compressed layout by clusters of 8, measured": a
# 4096x4096 launch takes ~16-17 us whatever it reads).
# the compressed layout's STREAM also as other full builds, BUILDS (comma-separated CROSS_CUDA_DEFINES;
# none by default).
# N=128 (with SHAPES, default llama-up,llama-qkvo): the slots layout alone at 128 tokens (the runtime's
# layout there), its time split the same way; the A_SMEM builds' GPU tests (A read by the mmas from shared
# memory); launch settings (warpgroups:m-tiles:split) of the XPRE builds (X by one bulk copy per unit, the
# layout's fastest there) and of the XPRE + A_SMEM ones on both shapes; and the latter's split on 11008x4096.
# Usage (repository root, on the GPU machine): OUT=<dir> [BUILDS=...] [N=128 [SHAPES=...]] bash benchmarks/wgmma24_floor.sh
source "$(dirname "$0")/steps.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
if [ "${N:-16}" = 128 ]; then
    step a_smem_tests 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_wgmma24.py -k a_smem -x
    if [ "$(tail -1 "$OUT/a_smem_tests.txt")" != "exit 0" ]; then  # the descriptor's strides the other way round
        CROSS_CUDA_DEFINES="-DA_LBO=256 -DA_SBO=128" step a_smem_tests_swapped 90 python3 -m pytest -q \
            -p no:cacheprovider -m gpu tests/test_wgmma24.py -k a_smem -x
    fi
    B="python3 benchmarks/wgmma24_bench.py --shapes llama-up,llama-qkvo --sparsities 0.7,0.9 --weights uniform --ns 128"
    CROSS_CUDA_DEFINES=-DXPRE=1 step settings128_xpre 80 $B --settings 2:2,2:1:2,2:1:4 --out "$OUT/settings128_xpre.csv"
    CROSS_CUDA_DEFINES="-DXPRE=1 -DA_SMEM=1" step settings128_xpre_a_smem 80 $B --settings 2:2,2:2:1,2:2:4,2:1:2 \
        --out "$OUT/settings128_xpre_a_smem.csv"
    step floor_slots128 100 python3 benchmarks/wgmma24_floor.py --shapes "${SHAPES:-llama-up,llama-qkvo}" \
        --sparsities 0.7,0.9 --n 128 --builds="${BUILDS:-}" --out "$OUT/floor_slots128.csv"
    step floor_slots128_a_smem 80 python3 benchmarks/wgmma24_floor.py --shapes llama-up --sparsities 0.7,0.9 --n 128 \
        --base="-DXPRE=1 -DA_SMEM=1" --out "$OUT/floor_slots128_a_smem.csv"
    exit 0
fi
F="python3 benchmarks/wgmma24_floor.py --shapes llama-qkvo,llama-down,llama-qkv --sparsities 0.7,0.9 --n 16"
step floor_slots 70 $F --out "$OUT/floor_slots.csv"
step floor_compressed 100 $F --compressed --builds="${BUILDS:-}" --out "$OUT/floor_compressed.csv"
