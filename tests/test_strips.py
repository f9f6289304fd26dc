"""The strip format (pack/strips.py) and the strip kernel (kernels/strip_mma.cu).

CPU: the format read back the way the kernel reads it (each lane's stream, the chunk floors, the
ring's rows) gives the weight bit for bit, over shapes, densities, launches and ring settings; what
is stored and what is not (zeros, -0.0, NaN, Inf); the kernel's data path (copies, ring, selects)
transcribed step by step; bad arguments fail with a clear error.
GPU (`-m gpu`): the kernel against the fp32 product with outputs poisoned, fresh inputs each time,
over shapes (ragged M and K), densities, dtypes, token counts, bias, and non-finite inputs (the dense
product's semantics).
"""

import pytest
import torch

from cross.pack.strips import StripWeight, lane_slots, pair_words, strips_reference

RING = 64  # the kernel build the transcription below mirrors (strip_mma.cu's RING)


def _weight(m, k, density, gen, dtype=torch.bfloat16):
    w = torch.randn(m, k, generator=gen).to(dtype)
    keep = torch.rand(m, k, generator=gen) < density
    return torch.where(keep, w, torch.zeros_like(w))


def _bits(t):
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize("m,k", [(16, 64), (40, 200), (33, 136), (100, 8), (64, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("blocks,warps", [(1, 1), (3, 2), (2, 5)])
@pytest.mark.parametrize("mt", [1, 2])
def test_round_trip(rng, m, k, density, blocks, warps, mt):
    w = _weight(m, k, density, rng)
    sw = StripWeight.from_dense(w, blocks=blocks, warps=warps, ring=64 * mt, depth=2 if mt == 1 else 1, mt=mt)
    assert all(t.is_contiguous() for t in (sw.values, sw.masks, sw.chunks, sw.heads))  # the kernel reads raw buffers
    assert torch.equal(_bits(sw.to_dense()), _bits(w))


@pytest.mark.parametrize("ring,depth", [(64, 2), (128, 4), (128, 6), (64, 1)])
def test_floors_keep_the_ring(rng, ring, depth):
    """A warp over a whole long strip at 50%: lanes drift apart; floors bound the spread so that
    every read falls within the rows the ring holds (to_dense raises otherwise)."""
    w = _weight(16, 4096, 0.5, rng)
    sw = StripWeight.from_dense(w, blocks=1, warps=1, ring=ring, depth=depth)
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    hi = sw.chunks[:, 1]
    assert bool((hi[1:] >= hi[:-1]).all())
    floored = sw.chunks[:, 0] > 0
    if ring == 64 and depth == 2:
        assert bool(floored.any())  # a 16 x 4096 strip in one warp drifts past 64 rows at 50%
    if bool(floored.any()):  # without its floors the format reads outside the ring, or wrong values
        sw.chunks[:, 0] = 0
        with pytest.raises(RuntimeError, match="outside its ring"):
            sw.to_dense()


def test_dense_rows_need_a_larger_ring(rng):
    w = _weight(16, 4096, 1.0, rng)
    with pytest.raises(ValueError, match="larger ring"):
        StripWeight.from_dense(w, blocks=1, warps=1, ring=64, depth=4)


def test_what_is_stored(rng):
    w = _weight(32, 128, 0.5, rng)
    w[0, 0], w[0, 1], w[1, 5], w[2, 7] = float("nan"), float("inf"), -0.0, float("-inf")
    sw = StripWeight.from_dense(w, blocks=2, warps=2)
    back = sw.to_dense()
    stored = (_bits(w).to(torch.int32) & 0x7FFF) != 0
    assert torch.equal(_bits(back)[stored], _bits(w)[stored])
    assert bool((_bits(back)[~stored] == 0).all())  # -0.0 comes back as +0.0: not stored
    n_masked = sum(bin(v & 0xFFFFFFFF).count("1") for v in sw.masks.flatten().tolist())
    assert n_masked == int(pair_words(w)[1].sum())  # a bit per pair that holds a nonzero
    assert int(pair_words(w)[1].sum()) < int(stored.sum())  # some pairs hold two


def test_lane_slots_layout():
    """Lane 4 g + q of a step holds, m-tile by m-tile, row g at columns 4q..4q+3, then row g + 8 at
    the same columns."""
    w = torch.arange(32 * 64, dtype=torch.float32).view(32, 64)
    g, q, j = 3, 2, 1
    lane = 4 * g + q
    cols = [16 * j + 4 * q + i for i in range(4)]
    s = lane_slots(w)
    assert s[1, 0, j, lane, :4].tolist() == w[16 + g, cols].tolist()
    assert s[1, 0, j, lane, 4:].tolist() == w[16 + g + 8, cols].tolist()
    s = lane_slots(w, mt=2)
    assert s[0, 0, j, lane, :4].tolist() == w[g, cols].tolist()
    assert s[0, 0, j, lane, 4:8].tolist() == w[g + 8, cols].tolist()
    assert s[0, 0, j, lane, 8:12].tolist() == w[16 + g, cols].tolist()
    assert s[0, 0, j, lane, 12:].tolist() == w[16 + g + 8, cols].tolist()


def test_reference_is_the_dense_product(rng):
    w = _weight(40, 200, 0.3, rng)
    x = torch.randn(5, 200, generator=rng).to(torch.bfloat16)
    b = torch.randn(40, generator=rng).to(torch.bfloat16)
    sw = StripWeight.from_dense(w, blocks=3, warps=2)
    ref = (x.float() @ w.float().t() + b.float()).to(torch.bfloat16)
    assert torch.equal(strips_reference(x, sw, b), ref)


@pytest.mark.parametrize("bad", ["dtype", "ring", "depth", "blocks", "dim"])
def test_bad_arguments(rng, bad):
    w = _weight(16, 64, 0.5, rng)
    kw = dict(blocks=1, warps=1, ring=64, depth=2)
    if bad == "dtype":
        w, err = w.float(), TypeError
    elif bad == "dim":
        w, err = w[0], ValueError
    else:
        kw[bad], err = {"ring": 16, "depth": 0, "blocks": 0}[bad], ValueError
    with pytest.raises(err):
        StripWeight.from_dense(w, **kw)


@pytest.mark.parametrize("bad", ["nt", "shape", "dtype", "bias", "out", "device"])
def test_strip_matmul_refuses_bad_input(rng, bad):
    """Wrong arguments fail with a clear error before anything is launched (the checks need no GPU)."""
    from cross.kernels.launch import strip_matmul

    w = _weight(32, 64, 0.5, rng)
    sw = StripWeight.from_dense(w, blocks=2, warps=2)
    x = torch.randn(3, 64, generator=rng).to(torch.bfloat16)
    kw = {}
    if bad == "nt":
        kw["nt"] = 12
    elif bad == "shape":
        x = x[:, :32]
    elif bad == "dtype":
        x = x.half()
    elif bad == "bias":
        kw["bias"] = torch.zeros(31, dtype=torch.bfloat16)
    elif bad == "out":
        kw["out"] = torch.empty(3, 32, dtype=torch.bfloat16).t().contiguous().t()  # stride 3 along M
    match = {"nt": "8 or 16", "shape": "expected x", "dtype": "expected x", "bias": "bias", "out": "out",
             "device": "CUDA device"}[bad]
    with pytest.raises(ValueError, match=match):
        strip_matmul(x, sw, **kw)


# ------------------------------------------------- the kernel's data path, transcribed
def _select_pairs(pm, w):  # strip_mma.cu's select_pairs
    p0, p1, p2, p3 = (bool(pm >> i & 1) for i in range(4))
    s1, s2, s3 = (w[1] if p0 else w[0]), (w[2] if p0 else w[1]), (w[3] if p0 else w[2])
    m1, m2 = (s2 if p1 else s1), (s3 if p1 else s2)
    return [w[0] if p0 else 0, s1 if p1 else 0, m1 if p2 else 0, (m2 if p2 else m1) if p3 else 0]


def _transcribe(sw):
    """The weight as strip_mma.cu builds its A operands: each warp's copies into its ring (the split
    at the ring's end, the rows of slots 0-2 again past it), the chunk floors, each lane's four words
    per step and m-tile and its selects."""
    vals = [v & 0xFFFFFFFF for v in sw.values.reshape(-1).tolist()]
    masks = [v & 0xFFFFFFFF for v in sw.masks.reshape(-1).tolist()]
    table, (m, k), mt = sw.chunks.tolist(), sw.shape, sw.mt
    out = torch.zeros(m, k, dtype=torch.int32)
    for s0, s1, cfirst, cn, row0, ch0, _, _ in sw.heads.tolist():
        n_chunks = (s1 - s0) * cn
        ring = [[0xDEADBEEF] * 32 for _ in range(RING + 3)]  # poisoned: a read of an unstaged row shows
        staged = 0

        def stage(c):
            nonlocal staged
            if c >= n_chunks:
                return
            r_lo, r_hi = staged, table[ch0 + c][1]
            staged = r_hi
            row = lambda r: vals[(row0 + r) * 32:(row0 + r + 1) * 32]  # noqa: E731
            lap = (r_hi - 1) & ~(RING - 1)
            m_lo, m_hi = max(r_lo, lap), min(r_hi, lap + 3)
            n_rows = r_hi - r_lo
            first = lap - r_lo if lap > r_lo else n_rows
            for i in range(first):
                ring[(r_lo & (RING - 1)) + i] = row(r_lo + i)
            for i in range(n_rows - first):
                ring[i] = row(lap + i)
            for i in range(max(0, m_hi - m_lo)):
                ring[RING + (m_lo & (RING - 1)) + i] = row(m_lo + i)

        for c in range(sw.depth):
            stage(c)
        p, c = [0] * 32, 0
        for s in range(s0, s1):
            for cc in range(cn):
                stage(c + sw.depth)
                p = [max(v, table[ch0 + c][0]) for v in p]
                for lane in range(32):
                    g, q = lane >> 2, lane & 3
                    word, start = masks[(ch0 + c) * 32 + lane], p[lane]
                    for j in range(4):
                        for t in range(mt):
                            sh = 4 * (mt * j + t)  # the words before this step and m-tile: the bits below
                            at = start + bin(word & ((1 << sh) - 1)).count("1")
                            a = _select_pairs((word >> sh) & 15, [ring[(at & (RING - 1)) + i][lane] for i in range(4)])
                            col = (cfirst + cc) * 64 + 16 * j + 4 * q
                            for reg, v in enumerate(a):  # (g, 0-1), (g + 8, 0-1), (g, 2-3), (g + 8, 2-3)
                                r, c0 = (s * mt + t) * 16 + g + 8 * (reg & 1), col + 2 * (reg >> 1)
                                for e, h in enumerate((v & 0xFFFF, v >> 16)):
                                    if r < m and c0 + e < k:
                                        out[r, c0 + e] = h - 65536 if h >= 32768 else h
                    p[lane] = start + bin(word).count("1")
                c += 1
    return out.to(torch.int16)


@pytest.mark.parametrize("m,k,blocks,warps,mt,depth,density", [
    (16, 64, 1, 8, 2, 1, 0.5), (48, 200, 2, 2, 2, 1, 0.4), (40, 136, 3, 1, 1, 2, 0.3), (16, 2048, 1, 1, 1, 2, 0.5),
    (32, 512, 1, 2, 2, 1, 0.3), (20, 64, 4, 1, 1, 1, 1.0)])
def test_kernel_transcription(rng, m, k, blocks, warps, mt, depth, density):
    """The kernel's copies, ring indexing and decode, step by step in Python, give the weight."""
    w = _weight(m, k, density, rng)
    sw = StripWeight.from_dense(w, blocks=blocks, warps=warps, ring=RING, depth=depth, mt=mt)
    assert torch.equal(_transcribe(sw), _bits(w))


# ---------------------------------------------------------------------- GPU
def _gpu_case(gen, m, k, density, n, nt, dtype, bias, warps=8, mt=1):
    from cross.kernels.launch import strip_matmul

    w = _weight(m, k, density, gen, dtype).cuda()
    blocks = torch.cuda.get_device_properties(0).multi_processor_count
    depth, ring = (2, 64) if mt == 1 else (1, 64) if density <= 0.3 else (1, 128)
    if ring == 128:
        warps = 4  # X and the rings within the shared memory at 16 tokens
    sw = StripWeight.from_dense(w, blocks=blocks, warps=warps, ring=ring, depth=depth, mt=mt)
    x = torch.randn(n, k, generator=gen).to(dtype).cuda()
    b = torch.randn(m, generator=gen).to(dtype).cuda() if bias else None
    y = torch.full((n, m), float("nan"), dtype=dtype, device="cuda")
    strip_matmul(x, sw, b, out=y, nt=nt)
    ref = x.double() @ w.double().t() + (b.double() if bias else 0)
    return y, ref


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(16, 64), (40, 200), (1000, 1032), (4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("nt", [8, 16])
@pytest.mark.parametrize("mt", [1, 2])
def test_gpu_strip_kernel(m, k, density, nt, mt, rng):
    for n in sorted({1, nt - 3, nt, nt + 5}):
        y, ref = _gpu_case(rng, m, k, density, n, nt, torch.bfloat16, bias=n % 2 == 0, mt=mt)
        err = (y.double() - ref).abs()
        scale = ref.abs() + ref.pow(2).mean().sqrt()
        assert bool(torch.isfinite(y).all()), f"n={n}: non-finite output (unwritten?)"
        assert float((err / scale).max()) < 2e-2, f"n={n}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_strip_kernel_dtypes(dtype, rng):
    y, ref = _gpu_case(rng, 300, 520, 0.4, 11, 16, dtype, bias=True)
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())
    assert float(err.max()) < 2e-2


@pytest.mark.gpu
def test_gpu_strip_kernel_non_finite_inputs():
    """Every element is multiplied: a zero of the weight against Inf gives NaN, as in the dense product."""
    from cross.kernels.launch import strip_matmul

    gen = torch.Generator().manual_seed(7)
    w = _weight(64, 256, 0.5, gen).cuda()
    w[:, 3] = 0
    w[5, 3] = 1.0
    sw = StripWeight.from_dense(w, blocks=4, warps=2)
    x = torch.randn(9, 256, generator=gen).to(torch.bfloat16).cuda()
    x[2, 3] = float("inf")
    y = strip_matmul(x, sw, nt=16)
    ref = (x.float() @ w.float().t()).to(torch.bfloat16)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    ok = torch.isfinite(ref)
    assert torch.allclose(y[ok].float(), ref[ok].float(), rtol=2e-2, atol=2e-2)
