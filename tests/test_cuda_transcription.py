"""Index arithmetic of the CUDA kernel's one-token CUDA-core path (`cores_tile` and `cores_fold` in
kernels/plan_matmul.cu), transcribed lane by lane, step by step, and run on tiles packed by
`TiledWeight.from_dense`: which bitmap word each lane takes, where its values start, the column of
each set bit, the lane that holds that column of X, and which accumulator register receives each
row's sum. The GPU tests run the kernel itself; this checks the same arithmetic where there is no GPU.
"""

import numpy as np
import pytest
import torch

from cross.pack.formats import TiledWeight
from cross.tiling import TileKind

TILE = (64, 64)
WORDS = TILE[0] * TILE[1] // 32


def stage_of(tw: TiledWeight, i: int, j: int):
    """A BITMAP tile's stage contents: its values, bitmap words (uint32 as int64) and word prefixes."""
    voff, moff = int(tw.value_offset[i, j]), int(tw.meta_offset[i, j])
    vals = tw.values[voff: voff + int(tw.nnz[i, j])].float()
    words = tw.meta[moff: moff + WORDS].to(torch.int64) & 0xFFFFFFFF
    prefix = tw.meta.view(torch.int16)[2 * (moff + WORDS): 2 * (moff + WORDS) + WORDS].to(torch.int64)
    return vals, words.tolist(), prefix.tolist()


def cores_tile(vals, words, prefix, x_cols, warp):
    """Each lane's sum after one tile, as cores_tile computes it (x_cols: the tile's 64 X columns)."""
    x0 = [float(x_cols[m]) for m in range(32)]  # lane m holds columns m (x0) and m + 32 (x1)
    x1 = [float(x_cols[m + 32]) for m in range(32)]
    bits = [words[warp * 32 + lane] for lane in range(32)]
    v = [prefix[warp * 32 + lane] + bin(bits[lane]).count("1") - 1 for lane in range(32)]
    sums = [0.0] * 32
    steps = max(bin(b).count("1") for b in bits)
    for _ in range(steps):
        for lane in range(32):
            b = bits[lane]
            top = (b.bit_length() - 1) & 31  # (31 - __clz(bits)) & 31
            lo, hi = x0[top], x1[top]  # __shfl_sync(x0, b), __shfl_sync(x1, b)
            xv = hi if lane & 1 else lo  # the word's columns: 0-31 (even lanes) or 32-63
            value = float(vals[max(v[lane], 0)]) if len(vals) else 0.0
            if b:  # a lane without bits computes a product from below its word's values and drops it
                sums[lane] += value * xv
            v[lane] -= 1
            bits[lane] = b & ~(1 << top)
    return sums


def cores_fold(sums):
    """acc[0][0] and acc[0][2] of every lane after cores_fold (zeros where the lane adds nothing)."""
    row = [sums[lane] + sums[lane ^ 1] for lane in range(32)]
    acc = np.zeros((32, 2))
    for lane in range(0, 32, 4):
        acc[lane] = row[2 * (lane >> 2)], row[2 * (lane >> 2) + 16]
    return acc


@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.2, 0.5, 1.0])
def test_cores_path_matches_the_dense_tile(density):
    gen = torch.Generator().manual_seed(int(density * 100))
    w = torch.randn(128, 128, generator=gen) * (torch.rand(128, 128, generator=gen) < density)
    x = torch.randn(128, generator=gen)
    tw = TiledWeight.from_dense(w, np.full((2, 2), TileKind.BITMAP), TILE)
    for i in range(2):
        for j in range(2):
            vals, words, prefix = stage_of(tw, i, j)
            x_cols = x[64 * j: 64 * j + 64]
            ref = w[64 * i: 64 * i + 64, 64 * j: 64 * j + 64].double() @ x_cols.double()
            for warp in range(4):
                acc = cores_fold(cores_tile(vals, words, prefix, x_cols, warp))
                # m16n8k16's C layout: lane 4g (token 0) holds rows 16 warp + g (acc[0][0]) and + g + 8 (acc[0][2])
                for g in range(8):
                    got = acc[4 * g]
                    expect = ref[16 * warp + g], ref[16 * warp + g + 8]
                    assert got[0] == pytest.approx(float(expect[0]), rel=1e-5, abs=1e-5)
                    assert got[1] == pytest.approx(float(expect[1]), rel=1e-5, abs=1e-5)
                assert not acc[[lane for lane in range(32) if lane % 4]].any(), "lanes of other tokens stay untouched"
