"""The 2:4 format (pack/sparse24.py) and the 2:4 kernel (kernels/sparse24_mma.cu).

CPU: the format read back (the mma's slots, and the overflow entries through the head words) gives
the weight bit for bit over shapes, densities and m-tiles; the lane layout of the A words, the
metadata nibbles and the head words.
GPU (`-m gpu`): the kernel against the fp64 product with outputs poisoned, fresh inputs, over
shapes (ragged M and K), densities, dtypes, token counts, m-tiles, warps and bias.
"""

import pytest
import torch

from cross.pack.sparse24 import Sparse24Weight, group_columns, is_24, smem_bytes


def _weight(m, k, per_group, gen, dtype=torch.bfloat16):
    """A random weight with 0..per_group nonzeros (uniformly) in every group (group_columns)."""
    cols = group_columns(k)
    kk = len(cols)
    w = torch.randn(m, kk // 4, 4, generator=gen)
    order = torch.rand(m, kk // 4, 4, generator=gen).argsort(-1)
    n = torch.randint(0, per_group + 1, (m, kk // 4, 1), generator=gen)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, order, torch.arange(4)[None, None, :] < n)
    out = torch.empty(m, kk)
    out[:, cols] = torch.where(keep, w, 0.0).view(m, kk)  # k index order -> columns
    return out[:, :k].to(dtype)


def _bits(t):
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize("m,k", [(16, 64), (40, 200), (33, 136), (100, 8), (64, 1024)])
@pytest.mark.parametrize("mt", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_trip(rng, m, k, mt, dtype):
    w = _weight(m, k, 2, rng, dtype)
    w[0, 0] = -0.0  # no nonzero: stored as +0.0
    sw = Sparse24Weight.from_dense(w, mt=mt)
    assert sw.values.is_contiguous()
    assert torch.equal(_bits(sw.to_dense()), _bits(torch.where(w == 0, torch.zeros_like(w), w)))
    assert sw.entries.numel() == 0 and not sw.overflow  # 2:4 already: no entries, no head words
    assert sw.nbytes() == -(-m // (16 * mt)) * -(-k // 64) * mt * 1152


@pytest.mark.parametrize("m,k", [(16, 64), (40, 200), (33, 136), (64, 1024)])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("mt", [1, 2])
def test_round_trip_with_overflow(rng, m, k, density, mt):
    """An unstructured weight: a group's first two nonzeros in the mma's slots, the others entries."""
    w = (torch.randn(m, k, generator=rng) * (torch.rand(m, k, generator=rng) < density)).to(torch.bfloat16)
    w = torch.where(w == 0, torch.zeros_like(w), w)
    sw = Sparse24Weight.from_dense(w, mt=mt)
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    if sw.overflow:
        assert sw.nbytes() == -(-m // (16 * mt)) * -(-k // 64) * (mt * 1152 + 128) + 4 * sw.entries.numel()
    cols = group_columns(k)
    nz = torch.nn.functional.pad(w != 0, (0, len(cols) - k))[:, cols].view(m, -1, 4).sum(-1)
    assert sw.entries.numel() == int((nz - 2).clamp(min=0).sum())


def test_groups_are_the_lanes_b_columns():
    """k index 2 q + 8 i + e of a k-tile (lane q's B register i, half e) is column 8 q + 2 i + e, so
    a lane's B registers are 8 adjacent columns; a group is 4 consecutive k indices."""
    cols = group_columns(64)
    assert sorted(cols.tolist()) == list(range(64))
    q, i, e = 3, 2, 1
    assert int(cols[2 * q + 8 * i + e]) == 8 * q + 2 * i + e
    assert cols[:4].tolist() == [0, 1, 8, 9] and cols[4:8].tolist() == [16, 17, 24, 25]
    assert cols[32:36].tolist() == [32, 33, 40, 41]


def test_lane_layout():
    """Lane 4 g + q's A register i holds row g + 8 (i & 1), group q + 4 (i >> 1) of its k-tile (the
    two kept slots, first in the low half); its metadata word row g's nibbles then row g + 8's, for
    groups 4 h .. 4 h + 3 of k-tile kt (q = 2 kt + h), a nibble = first position | second << 2."""
    w = torch.zeros(16, 64, dtype=torch.bfloat16)
    g, q, i, kt = 3, 2, 3, 1
    row, group = g + 8 * (i & 1), 8 * kt + q + 4 * (i >> 1)
    cols = group_columns(64)[4 * group:4 * group + 4]
    w[row, cols[1]], w[row, cols[3]] = 1.5, -2.0
    sw = Sparse24Weight.from_dense(w, mt=1)
    lane = 4 * g + q
    word = int(sw.values[0, 0, kt * 128 + lane * 4 + i]) & 0xFFFFFFFF
    assert word == (int(_bits(w[row, cols[1]:cols[1] + 1])) & 0xFFFF) | \
        ((int(_bits(w[row, cols[3]:cols[3] + 1])) & 0xFFFF) << 16)
    h = (q + 4 * (i >> 1)) // 4
    meta = int(sw.values[0, 0, 256 + 4 * g + 2 * kt + h]) & 0xFFFFFFFF
    nibble = (meta >> (16 * (i & 1) + 4 * q)) & 15
    assert nibble == 1 | (3 << 2)


def test_head_words_name_each_rows_entries(rng):
    """Lane 4 g + 2 t + hf's head word of a step: the first entry and the count of row 16 t + 8 hf + g
    in the step's 64 columns; an entry is the value's bits | its column in the step << 16."""
    w = _weight(32, 128, 2, rng)
    w[21, [64, 65, 72, 73]] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=w.dtype)  # a full group of step 1
    assert not is_24(w)
    sw = Sparse24Weight.from_dense(w, mt=2)
    assert sw.entries.numel() == 2
    g, t, hf = 21 % 8, 21 // 16, (21 % 16) // 8
    head = int(sw.values[0, 1, 2 * 288 + 4 * g + 2 * t + hf]) & 0xFFFFFFFF
    first, count = head & (2**25 - 1), head >> 25
    assert count == 2
    entries = [int(v) & 0xFFFFFFFF for v in sw.entries[first:first + count]]
    assert [e >> 16 for e in entries] == [8, 9]  # columns 72, 73: the group's third and fourth
    assert [e & 0xFFFF for e in entries] == [int(_bits(w[21, c:c + 1])) & 0xFFFF for c in (72, 73)]
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        Sparse24Weight.from_dense(w.float())
    with pytest.raises(ValueError, match="mt must be 1 or 2"):
        Sparse24Weight.from_dense(w, mt=3)


@pytest.mark.parametrize("bad", ["warps", "shape", "device"])
def test_sparse24_matmul_refuses_bad_input(rng, bad):
    """Its own check (warps) and the checks it shares with strip_matmul (test_strips covers each of
    them) fail with a clear error before anything is launched."""
    from cross.kernels.launch import sparse24_matmul

    sw = Sparse24Weight.from_dense(_weight(32, 64, 2, rng))
    x = torch.randn(3, 64 if bad != "shape" else 32, generator=rng).to(torch.bfloat16)
    with pytest.raises(ValueError, match={"warps": "warps must be", "shape": "expected x", "device": "CUDA"}[bad]):
        sparse24_matmul(x, sw, warps=0 if bad == "warps" else 16)


def test_shared_memory_grows_with_tokens_and_warps():
    assert smem_bytes(4096, 16, 16, 2) == 16 * 4128 * 2 + 16 * 2 * 2 * 512 + 8
    assert smem_bytes(4096, 8, 16, 2) < smem_bytes(4096, 16, 16, 2) < 227 * 1024


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(16, 64), (40, 200), (1000, 1032), (4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("weight", ["2:4", "0.05", "0.3", "0.5", "1.0"])
@pytest.mark.parametrize("nt", [8, 16])
@pytest.mark.parametrize("mt,warps", [(2, 16), (1, 8), (2, 5)])
def test_gpu_sparse24_kernel(m, k, weight, nt, mt, warps, rng):
    """2:4 weights, and unstructured ones of the given density (their overflow on CUDA cores)."""
    from cross.kernels.launch import sparse24_matmul

    gen = rng
    if weight == "2:4":
        w = _weight(m, k, 2, gen).cuda()
    else:
        w = (torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < float(weight))).to(torch.bfloat16).cuda()
    sw = Sparse24Weight.from_dense(w, mt=mt)
    for n in sorted({1, nt - 3, nt, nt + 5}):
        x = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=gen).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        sparse24_matmul(x, sw, b, out=y, nt=nt, warps=warps)
        ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
        assert bool(torch.isfinite(y).all()), f"n={n}: non-finite output (unwritten?)"
        err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
        assert float(err.max()) < 2e-2, f"n={n}"


@pytest.mark.gpu
def test_gpu_sparse24_kernel_fp16():
    from cross.kernels.launch import sparse24_matmul

    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(300, 520, generator=gen) * (torch.rand(300, 520, generator=gen) < 0.4)).to(torch.float16).cuda()
    x = torch.randn(11, 520, generator=gen).to(torch.float16).cuda()
    y = sparse24_matmul(x, Sparse24Weight.from_dense(w), nt=16)
    ref = x.double() @ w.double().t()
    assert float(((y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())).max()) < 5e-3
