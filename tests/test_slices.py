"""The slice format (pack/slices.py) and the slice kernel (kernels/slice_mma.cu).

CPU: the format read back as the kernel reads it (each lane's two words from its half's start plus a
popcount, each register that word, the next, or zero) gives the weight bit for bit over shapes,
densities and warps; the lane layout of the pairs; the pieces' split of K; the blocks' n-tile ranges;
the kernel's producer and consumers, transcribed and interleaved at random (every word a lane selects
is the right one, no copy over unread words, no deadlock).
GPU (`-m gpu`): the kernel against the fp64 product with outputs poisoned, fresh inputs, over shapes
(ragged M and K, several pieces per warp, several rounds per block), densities, token counts, dtypes
and bias; non-finite inputs give the dense product's NaN.
"""

import functools

import pytest
import torch

from cross.pack.slices import HEAD_PAD, PAD_WORDS, SliceWeight, default_warps, slice_steps, smem_bytes


def _sparse(m, k, density, gen, dtype=torch.bfloat16):
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)
    return w.to(dtype)


def _bits(t):
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize("m,k", [(8, 16), (40, 200), (33, 136), (100, 8), (64, 1024), (24, 3000)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("warps", [None, 1, 3, 16])
@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
def test_round_trip(rng, m, k, density, warps, elements):
    w = _sparse(m, k, density, rng)
    w[0, 0] = -0.0  # no nonzero: not stored (read back as +0.0)
    sw = SliceWeight.from_dense(w, warps=warps, elements=elements)
    assert sw.heads.is_contiguous() and sw.values.is_contiguous()
    assert torch.equal(_bits(sw.to_dense()), _bits(torch.where(w == 0, torch.zeros_like(w), w)))
    if elements:  # a 16-bit value per nonzero, two per word
        nnz = int((w != 0).sum())
        per_tile = torch.nn.functional.pad(w != 0, (0, 0, 0, -m % 8)).view(-1, 8 * k).sum(1)
        assert sw.values.numel() == -(-nnz // 2) + PAD_WORDS and torch.equal(sw.tile_words, (per_tile + 1) // 2)
        assert sw.heads.shape == (sw.warps * sw.pieces * sw.tiles + HEAD_PAD, 4 * sw.sp, 2)
        return
    pairs = torch.nn.functional.pad(w != 0, (0, sw.ksp * 16 - k, 0, -m % 8)).view(-1, sw.ksp * 8, 2).any(-1)
    assert sw.values.numel() == int(pairs.sum()) + PAD_WORDS  # a word per pair that holds a nonzero
    assert int(sw.tile_words.sum()) == int(pairs.sum())


@pytest.mark.parametrize("elements", [False, True])
def test_fp16_round_trip(rng, elements):
    w = _sparse(40, 96, 0.4, rng, torch.float16)
    w = torch.where(w == 0, torch.zeros_like(w), w)  # -0.0 is read back as +0.0
    assert torch.equal(_bits(SliceWeight.from_dense(w, elements=elements).to_dense()), _bits(w))


def test_lane_layout():
    """Lane 4 g + q of half h owns rows 4 h + g' (g = 4 h + g') and columns 4 q .. 4 q + 3: its pairs
    are bits 2 j, 2 j + 1 (j = lane % 16) of its half's mask, the lower column in a word's low half."""
    w = torch.zeros(8, 16, dtype=torch.bfloat16)
    w[5, 6] = 1.0  # g = 5 (half 1, g' = 1), q = 1, second pair (columns 6-7), first element
    w[2, 1] = 2.0  # g = 2 (half 0, g' = 2), q = 0, first pair, second element
    sw = SliceWeight.from_dense(w, warps=1)
    h = sw.heads[0, 0].tolist() + sw.heads[0, sw.sp].tolist()  # mask, start of half 0, then half 1
    assert h[0] == 1 << (2 * (4 * 2 + 0)) and h[1] == 0
    assert h[2] == 1 << (2 * (4 * 1 + 1) + 1) and h[3] == 1
    bits = [v & 0xFFFFFFFF for v in sw.values[:2].tolist()]
    assert bits[0] == 0x4000 << 16  # bf16 2.0 in the high half (column 1), +0.0 in the low
    assert bits[1] == 0x3F80  # bf16 1.0 in the low half (column 6)


def test_element_lane_layout():
    """Elements: lane 4 g + q (quarter lane // 8, jj = lane % 8) owns row g and columns 4 q .. 4 q + 3:
    bits 4 jj + c of its quarter's mask; the elements follow the stream (step, half, quarter, bit), two
    per word, the first in the low half."""
    w = torch.zeros(8, 32, dtype=torch.bfloat16)
    w[5, 6] = 1.0  # g = 5: half 1, quarter 0 (lanes 16-23), jj = 4 + 1, c = 2
    w[2, 1] = 2.0  # g = 2: half 0, quarter 1 (lanes 8-15), jj = 0, c = 1
    w[2, 3] = 3.0  # the same lane, c = 3
    w[0, 16 + 12] = 4.0  # step 1, g = 0, q = 3, c = 0: half 0, quarter 0, jj = 3
    sw = SliceWeight.from_dense(w, warps=1, elements=True)
    h = sw.heads[0].view(2, sw.sp, 2, 2)  # (half, step, quarter, {mask, start})
    assert h[0, 0, 1].tolist() == [(1 << 1) | (1 << 3), 0]
    assert h[1, 0, 0].tolist() == [1 << (4 * 5 + 2), 2]
    assert h[0, 1, 0].tolist() == [1 << (4 * 3), 3]
    halves = sw.values.view(torch.int16)[:4].view(torch.bfloat16).tolist()
    assert halves == [2.0, 3.0, 1.0, 4.0]


def _funnel(lo, hi, shift):
    """__funnelshift_r: the low 32 bits of (hi:lo) >> (shift % 32)."""
    return (((hi << 32) | lo) >> (shift & 31)) & 0xFFFFFFFF


def _prmt(a, b, sel):
    """prmt.b32 (default mode): byte i of the result is byte (sel >> 4 i) & 7 of (b:a); the selector's
    high 16 bits are not read."""
    assert all(not (sel >> (4 * i + 3)) & 1 for i in range(4))  # no sign-replicating selector
    data = a | (b << 32)
    return sum(((data >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def _element_table():
    """slice_mma.cu's table (ELEMS), transcribed: per 4 bits, the byte selectors of the two B registers
    from v0 .. v3 (the low 16 bits of each word; the first word's high 16 bits, ORed with 0xFFFF, the
    mask of v3)."""
    table = []
    for bits in range(16):
        sel, r = 0, 0
        for c in range(4):
            v = r if bits >> c & 1 else 3
            r += bits >> c & 1
            sel |= (2 * v | (2 * v + 1) << 4) << (8 * c)
        table.append(((sel & 0xFFFF) | (0xFFFF0000 if bits == 15 else 0), sel >> 16))
    return table


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_element_step_bits(rng, density):
    """The element build's step (slice_mma.cu, ELEMS), transcribed to the bit: for each position copied
    to a ring place, each step and lane, its first element's byte from the slot's base, the three words,
    the funnel shifts, the table's entry from the rotated mask, the byte permutes: the two B registers
    are the weight's columns 4 q .. 4 q + 3 of row g (zeros, -0.0 included, as +0.0; NaN and Inf kept)."""
    import random

    w = _sparse(24, 272, density, rng)
    w[1, 3], w[2, 5], w[3, 7], w[0, 0] = float("nan"), float("inf"), -0.0, -0.0
    sw = SliceWeight.from_dense(w, warps=2, elements=True)
    kept = _bits(torch.where(w == 0, torch.zeros_like(w), w)).to(torch.int64) & 0xFFFF
    bits = torch.zeros(sw.tiles * 8, sw.ksp * 16, dtype=torch.int64)
    bits[:24, :272] = kept
    words = [v & 0xFFFFFFFF for v in sw.values.tolist()]
    heads = sw.heads.view(-1, 4 * sw.sp, 2).tolist()
    table, order = _element_table(), random.Random(int(torch.randint(0, 2**31, (1,), generator=rng)))
    ring_off = 0x16900 + 4 * (1444 * order.randrange(16))  # a warp's ring in shared memory (bytes)
    for piece in range(sw.warps * sw.pieces):
        for t in range(sw.tiles):
            h = heads[piece * sw.tiles + t]
            end = h[-1][1] + bin(h[-1][0] & 0xFFFFFFFF).count("1")
            a, at = (h[0][1] >> 1) & ~3, 4 * order.randrange(100)
            n = ((((end + 1) >> 1) + 3) & ~3) - a
            smem = {ring_off + 4 * (at + i): words[a + i] for i in range(n)}
            b = (ring_off + 4 * (at - a)) & 0xFFFFFFFF  # the slot's base, as the producer writes it
            for u in range(sw.sp):
                for lane in range(32):
                    jj, half, quarter, g, q = lane & 7, lane >> 4, (lane >> 3) & 1, lane >> 2, lane & 3
                    mask, start = h[half * 2 * sw.sp + 2 * u + quarter]
                    mask &= 0xFFFFFFFF
                    below, rot = (1 << (4 * jj)) - 1, (4 * jj - 3) & 31
                    eb = (2 * (start + bin(mask & below).count("1")) + b) & 0xFFFFFFFF
                    w0, w1, w2 = (smem.get((eb & ~3) + 4 * i, 0xDEADBEEF) for i in range(3))
                    t0, t1 = table[(_funnel(mask, mask, rot) & 0x78) >> 3]
                    lo = _funnel(w0, w1, eb << 3)
                    hi = _funnel(w1, w2, eb << 3) & (t0 | 0xFFFF)
                    b0, b1 = _prmt(lo, hi, t0), _prmt(lo, hi, t1)
                    row, col = 8 * t + g, 16 * (piece * sw.sp + u) + 4 * q
                    want = [int(v) for v in bits[row, col:col + 4]]
                    assert (b0, b1) == (want[0] | want[1] << 16, want[2] | want[3] << 16), (piece, t, u, lane)


@pytest.mark.parametrize("k,warps", [(16, 1), (4096, 16), (11008, 15), (768, 6), (5000, 16)])
def test_pieces_cover_k(k, warps):
    pieces, sp, ksp = slice_steps(k, warps)
    assert sp % 8 == 0 and sp <= 16 and ksp == warps * pieces * sp and ksp * 16 >= k
    assert (ksp - sp * warps) * 16 < k  # one piece fewer per warp would not cover K


def test_default_warps_pad_little():
    assert default_warps(4096) == 16 and slice_steps(4096, 16)[2] == 256  # no padding
    assert slice_steps(768, default_warps(768))[2] == 48  # BERT's 768 columns exactly


@pytest.mark.parametrize("blocks", [1, 5, 132])
def test_ranges_cover_the_tiles_in_order(rng, blocks):
    w = _sparse(1000, 256, 0.3, rng)
    w[:400] = 0  # the lower tiles cost less: their blocks take more of them
    sw = SliceWeight.from_dense(w)
    r, most = sw.ranges(blocks)
    r = r.tolist()
    assert most == max(b - a for a, b in zip(r, r[1:]))
    assert r[0] == 0 and r[-1] == sw.tiles == 125 and all(a <= b for a, b in zip(r, r[1:]))
    if blocks == 5:
        assert r[1] > 125 // 5  # more empty n-tiles in the first block


def test_from_dense_refuses_bad_input(rng):
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        SliceWeight.from_dense(torch.ones(8, 16))
    with pytest.raises(ValueError, match="warps must be"):
        SliceWeight.from_dense(torch.ones(8, 16, dtype=torch.bfloat16), warps=0)


@pytest.mark.parametrize("bad", ["steps", "shape", "device", "producers", "threads"])
def test_slice_matmul_refuses_bad_input(rng, bad):
    """Its own checks (the format's steps per piece, the producer warps) and the checks it shares with
    strip_matmul (test_strips covers each of them) fail with a clear error before anything is launched."""
    from cross.kernels.launch import slice_matmul

    sw = SliceWeight.from_dense(_sparse(32, 256, 0.5, rng), warps=32 if bad == "threads" else 1,
                                max_steps=16 if bad == "steps" else 8)
    assert sw.sp == (16 if bad == "steps" else 8)
    x = torch.randn(3, 256 if bad != "shape" else 32, generator=rng).to(torch.bfloat16)
    match = {"steps": "8 steps per piece", "shape": "expected x", "device": "CUDA", "producers": "producers must",
             "threads": "1,024 threads"}[bad]
    with pytest.raises(ValueError, match=match):
        slice_matmul(x, sw, producers=5 if bad == "producers" else 1)


def test_producer_lanes_serve_every_consumer_once():
    """The consumer warp each producer lane serves, as slice_mma.cu computes it (its expression read
    from the source: lane l of producer k, warp WARPS + k, serves warp k + P l): for every warp count
    the format allows and every number of producers the launcher allows, each consumer warp has
    exactly one producer lane."""
    import re

    from cross.kernels.cuda_backend import SLICE_MAX_PRODUCERS

    assert _kernel_constant("MAX_PRODUCERS") == SLICE_MAX_PRODUCERS
    expr = re.search(r"\bserved = ([^;,]+);", _kernel_source()).group(1)
    served_by = compile(expr, "slice_mma.cu", "eval")
    for warps in range(1, 33):
        for producers in range(1, SLICE_MAX_PRODUCERS + 1):
            served = [eval(served_by, {"warp": warps + k, "WARPS": warps, "producers": producers, "lane": lane})
                      for k in range(producers) for lane in range(32)]
            assert sorted(w for w in served if w < warps) == list(range(warps))


def test_shared_memory_is_the_warps_partial_sums_and_rings():
    ring = (_kernel_constant("RING") + 4) * 4
    per_warp = ring + 2 * _kernel_constant("NB") * 4 + 20 * 8  # the ring, the slots' bases and places, 20 mbarriers
    assert smem_bytes(16, 0) == 16 * per_warp
    # 11 n-tiles per round fit (11008 rows on 132 SMs: one round)
    assert smem_bytes(16, 11) == smem_bytes(16, 0) + 16 * 11 * (512 + 256) <= 227 * 1024
    # elements: heads per quarter-step (twice the bytes) and the block's table of 16 x 8 bytes
    assert smem_bytes(16, 0, elements=True) == smem_bytes(16, 0) + 128
    assert smem_bytes(16, 8, elements=True) == smem_bytes(16, 0, elements=True) + 16 * 8 * (512 + 512) <= 227 * 1024


# ---------------------------------------------------------------------- GPU
def _check(y, x, w, b):
    ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    assert bool(torch.isfinite(y).all()), "non-finite output (unwritten?)"
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
    assert float(err.max()) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(8, 16), (40, 200), (1000, 1032), (4096, 4096), (11008, 4096), (300, 11008)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
def test_gpu_slice_kernel(m, k, density, elements, rng):
    from cross.kernels.launch import slice_matmul

    gen = rng
    w = _sparse(m, k, density, gen).cuda()
    sw = SliceWeight.from_dense(w, elements=elements)
    for n in (1, 7, 16, 21):
        x = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=gen).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        slice_matmul(x, sw, b, out=y)
        _check(y, x, w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("warps", [4, 7, 16])
@pytest.mark.parametrize("density", [0.3, 1.0])
@pytest.mark.parametrize("producers", [1, 3])
@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
def test_gpu_slice_kernel_warps_and_rounds(warps, density, producers, elements, rng):
    """Few warps (several pieces each: positions of several pieces in flight), dense n-tiles (the
    rings at their fullest), M large enough for several rounds of n-tiles per block (each round's
    partial sums in shared memory, summed and written), one or several producer warps."""
    from cross.kernels.launch import slice_matmul

    gen = rng
    m = 8 * 30 * torch.cuda.get_device_properties(0).multi_processor_count + 13  # 30+ n-tiles per block
    w = _sparse(m, 520, density, gen).cuda()
    sw = SliceWeight.from_dense(w, warps=warps, elements=elements)
    x = torch.randn(16, 520, generator=gen).to(torch.bfloat16).cuda()
    y = torch.full((16, m), float("nan"), dtype=torch.bfloat16, device="cuda")
    _check(slice_matmul(x, sw, out=y, producers=producers), x, w, None)


@pytest.mark.gpu
@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
def test_gpu_slice_kernel_fp16_and_strided_x(elements, rng):
    from cross.kernels.launch import slice_matmul

    gen = rng
    w = _sparse(300, 520, 0.4, gen, torch.float16).cuda()
    x = torch.randn(11, 600, generator=gen).to(torch.float16).cuda()[:, 40:560]  # a strided view
    y = slice_matmul(x, SliceWeight.from_dense(w, elements=elements))
    ref = x.double() @ w.double().t()
    assert float(((y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())).max()) < 5e-3


@pytest.mark.gpu
@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
def test_gpu_slice_kernel_propagates_non_finite_inputs(elements):
    """Every element of a step is multiplied, zeros included: Inf in X gives NaN where a zero weight
    meets it, as the dense product does."""
    from cross.kernels.launch import slice_matmul

    w = torch.zeros(16, 32, dtype=torch.bfloat16, device="cuda")
    w[:, 1] = 1.0
    x = torch.ones(2, 32, dtype=torch.bfloat16, device="cuda")
    x[0, 0] = float("inf")
    y = slice_matmul(x, SliceWeight.from_dense(w, elements=elements))
    ref = x.float() @ w.float().t()
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and bool(torch.isnan(y[0]).all())


@functools.lru_cache(maxsize=None)
def _kernel_source() -> str:
    from importlib import resources

    return resources.files("cross.kernels").joinpath("slice_mma.cu").read_text()


def _kernel_constant(name):
    """A #define of slice_mma.cu (the transcription below uses the kernel's own sizes)."""
    import re

    return int(re.search(rf"#define {name} (\d+)", _kernel_source()).group(1))


class _Mbar:
    """An mbarrier of one arrival, as the kernel arms and tests it: a phase completes when its arrival
    (with the bytes it announces) came and those bytes landed. A test for phase n answers as the
    hardware does for its parity; the transcription also requires n to be the current phase or the
    one just completed (a parity test cannot tell older phases apart)."""

    def __init__(self):
        self.done, self.arrived, self.bytes = 0, False, 0

    def arrive(self, nbytes=0):
        assert not self.arrived, "a second arrival on a phase of one"
        self.arrived, self.bytes = True, self.bytes + nbytes
        self._complete()

    def land(self, nbytes):
        self.bytes -= nbytes
        assert self.bytes >= 0
        self._complete()

    def _complete(self):
        if self.arrived and self.bytes == 0:
            self.done, self.arrived = self.done + 1, False

    def test(self, n):
        assert n >= 0 and self.done in (n, n + 1), f"tests phase {n} with {self.done} completed"
        return (self.done & 1) != (n & 1)


def _run_warp(sw, t0, t1, rt, warp, rng, together, ring=None, nb=None):
    """slice_mma.cu for one consumer warp and the producer lane that serves it, over a block's n-tiles
    [t0, t1) in rounds of ``rt``, transcribed: each side as a coroutine that yields where the kernel
    polls or waits, the bulk copies landing in any order, all three interleaved at random (``rng``).
    Checks: every copy's source is inside the format and 16-byte aligned; no copy overwrites ring words
    or heads whose reader has not arrived past them; every word a lane selects is the stream's word it
    wants; every mbarrier test asks for the current or just completed phase; the run ends (no
    deadlock). ``together``: the build's TOGETHER (1, or 2: two positions at a time when both have
    landed). Returns the ring places of the words copies and how often the consumer took two
    positions at a time."""
    ring = ring or _kernel_constant("RING")
    nb = nb or _kernel_constant("NB")
    sp, tiles, pieces, elements = sw.sp, sw.tiles, sw.pieces, sw.elements
    hw = (4 if elements else 2) * sp  # a position's heads: per half and step (and quarter)
    heads = sw.heads.view(-1, hw, 2).to(torch.int64)
    n_vals, n_heads = sw.values.numel(), sw.heads.shape[0] - HEAD_PAD
    full, empty = [_Mbar() for _ in range(nb)], [_Mbar() for _ in range(nb)]
    hfull, hempty = [_Mbar(), _Mbar()], [_Mbar(), _Mbar()]
    smem_ring = [None] * (ring + 4)  # the stream word each ring word holds
    hbuf = [None, None]  # the heads rows each buffer holds
    base, place = [None] * nb, [None] * nb
    flight = []  # copies issued, not landed: (apply, barrier, bytes)
    live = {}  # position -> its ring words [at, at + n), until the consumer arrives past it
    hreading = [None, None]  # the heads rows each buffer's reader has not arrived past
    nq = -(-(t1 - t0) // rt) * pieces if t1 > t0 else 0
    pc0 = warp * pieces
    places, pairs = [], [0]

    def pop(x):
        return bin(int(x) & 0xFFFFFFFF).count("1")

    def nr_of(r0):
        return min(rt, t1 - r0)

    def producer():
        hq, hr0, hpl, qw, wr0, wpl, i = 0, t0, 0, 0, t0, 0, 0
        hready = False
        p = old = wh = 0
        while qw < nq:
            if hq < nq and hq <= qw + 1 and (hq < 2 or hempty[hq & 1].test((hq >> 1) - 1)):
                row0, n = (pc0 + hpl) * tiles + hr0, nr_of(hr0)
                assert row0 + n <= n_heads  # real pieces and n-tiles
                assert hreading[hq & 1] is None, "a heads copy over heads not yet read"
                hreading[hq & 1] = (row0, n)
                hfull[hq & 1].arrive(n * hw * 8)
                flight.append((lambda b=hq & 1, v=(row0, n): hbuf.__setitem__(b, v), hfull[hq & 1], n * hw * 8))
                hq += 1
                hpl += 1
                if hpl == pieces:
                    hpl, hr0 = 0, hr0 + rt
            while qw < nq and (hready or hfull[qw & 1].test(qw >> 1)):  # as many positions as fit
                hready = True
                row0 = (pc0 + wpl) * tiles + wr0
                assert hbuf[qw & 1] == (row0, nr_of(wr0))  # the heads the producer reads have landed
                h = heads[row0 + i]
                if elements:  # element starts: the words from the first element's to the last one's
                    a = (int(h[0, 1]) >> 1) & ~3
                    n = ((((int(h[-1, 1]) + pop(h[-1, 0]) + 1) >> 1) + 3) & ~3) - a
                else:
                    a = int(h[0, 1]) & ~3
                    n = ((int(h[-1, 1]) + pop(h[-1, 0]) + 3) & ~3) - a
                fits, at = False, 0
                while True:
                    if p - old < nb:
                        tail = place[old % nb]
                        if old == p:
                            at, fits = (wh if wh + n <= ring else 0), True
                        elif wh >= tail:
                            if wh + n <= ring:
                                at, fits = wh, True
                            elif n < tail:
                                at, fits = 0, True
                        elif wh + n < tail:
                            at, fits = wh, True
                    if fits or old == p or not empty[old % nb].test(old // nb):
                        break
                    old += 1
                if not fits:
                    break
                s = p % nb
                assert a % 4 == 0 and n % 4 == 0 and a + n <= n_vals  # inside the values, 16-byte chunks
                for q, (lo, hi) in live.items():
                    assert at + n <= lo or hi <= at or n == 0 or lo == hi, f"position {p} over {q}'s words"
                live[p] = (at, at + n)
                places.append(at)
                place[s], base[s] = at, at - a
                full[s].arrive(n * 4)

                def land(at=at, a=a, n=n):
                    smem_ring[at:at + n] = range(a, a + n)
                flight.append((land, full[s], n * 4))
                wh, p, i = at + n, p + 1, i + 1
                if i == nr_of(wr0):
                    i, qw, hready, wpl = 0, qw + 1, False, wpl + 1
                    if wpl == pieces:
                        wpl, wr0 = 0, wr0 + rt
            yield

    def consumer():
        p = qc = 0
        for r0 in range(t0, t1, rt):
            nr = nr_of(r0)
            for pl in range(pieces):
                while not hfull[qc & 1].test(qc >> 1):
                    yield
                row0 = (pc0 + pl) * tiles + r0
                assert hbuf[qc & 1] == (row0, nr)
                i = 0
                s0, par = p % nb, (p // nb) & 1  # carried from position to position, as the kernel does
                while i < nr:  # a position, or two when the second has landed too (no wait while holding one)
                    assert (s0, par) == (p % nb, (p // nb) & 1)
                    while not full[s0].test(p // nb):
                        yield
                    s1 = (s0 + 1) % nb
                    par1 = par ^ (s1 == 0)
                    group = 2 if together == 2 and i + 1 < nr and full[s1].test((p + 1) // nb) else 1
                    assert (s1, par1) == ((p + 1) % nb, ((p + 1) // nb) & 1)
                    s0, par = (s1, par1) if group == 1 else ((s1 + 1) % nb, par1 ^ ((s1 + 1) % nb == 0))
                    pairs[0] += group == 2
                    for e in range(group):
                        h, b = heads[row0 + i + e], base[(p + e) % nb]
                        if elements:
                            _element_reads(h, b, smem_ring, ring)
                            continue
                        for u in range(2 * sp):  # (half, step)
                            mask, st = int(h[u, 0]) & 0xFFFFFFFF, int(h[u, 1])
                            for j in range(16):  # a lane's word and the next, as the ring holds them
                                c = st + pop(mask & ((1 << (2 * j)) - 1))
                                assert 0 <= c + b and c + b + 1 < ring + 4
                                for bit in (2 * j, 2 * j + 1):  # the words its selects keep
                                    if mask >> bit & 1:
                                        pos = c + (bit & 1 and mask >> (2 * j) & 1)
                                        assert smem_ring[pos + b] == pos, "a lane reads a word not (yet) there"
                    yield  # the lanes' reads take time; the arrivals follow
                    for e in range(group):
                        del live[p]
                        empty[p % nb].arrive()
                        p += 1
                    i += group
                hreading[qc & 1] = None
                hempty[qc & 1].arrive()
                qc += 1

    sides = [producer(), consumer()]
    for _ in range(10 ** 6):
        moves = [("side", g) for g in sides] + [("land", c) for c in flight]
        if not moves:
            break
        kind, what = moves[rng.randrange(len(moves))]
        if kind == "land":
            flight.remove(what)
            what[0]()
            what[1].land(what[2])
        else:
            try:
                next(what)
            except StopIteration:
                sides.remove(what)
    else:
        raise AssertionError("no end: a deadlock")
    assert not live and all(b.bytes == 0 and not b.arrived for b in full + empty + hfull + hempty)
    return places, pairs[0]


def _element_reads(h, b, smem_ring, ring):
    """The words a consumer's lanes read for a position of the element format (heads h, its word c at
    ring word c + b): per quarter-step, lane jj's first element at the start plus the popcount below
    its 4 bits, three words from that element's; each word that holds one of its values is that word."""
    for mask, st in h.tolist():  # (half, step, quarter)
        mask &= 0xFFFFFFFF
        for jj in range(8):
            e = st + bin(mask & ((1 << (4 * jj)) - 1)).count("1")
            assert 0 <= (e >> 1) + b and (e >> 1) + b + 2 < ring + 4
            for r in range(bin(mask >> (4 * jj) & 15).count("1")):
                word = (e + r) >> 1
                assert smem_ring[word + b] == word, "a lane reads a word not (yet) there"


@pytest.mark.parametrize("elements", [False, True], ids=["pairs", "elements"])
@pytest.mark.parametrize("m,k,warps,blocks,density", [(40, 200, None, 3, 0.4), (1000, 1032, 4, 7, 0.4),
                                                     (24, 3000, 16, 2, 1.0), (8, 16, 16, 5, 0.4), (400, 520, 5, 3, 1.0),
                                                     (2000, 3000, 3, 2, 0.1), (1000, 520, 1, 2, 0.7)])
@pytest.mark.parametrize("rt", [1, 2, 7])
@pytest.mark.parametrize("together", [1, 2])
def test_kernel_copies_and_reads(rng, m, k, warps, blocks, density, rt, together, elements):
    """The kernel's producer and consumers (slice_mma.cu, transcribed in _run_warp) for every block and
    warp, interleaved at random: sources inside the format, no copy over words or heads not yet read,
    every selected word the right one, no aliased mbarrier phase, no deadlock; and the stream is
    contiguous (an n-tile's last start plus its popcount is the next n-tile's first), so a position's
    words are one range."""
    import random

    sw = SliceWeight.from_dense(_sparse(m, k, density, rng), warps=warps, elements=elements)
    r = sw.ranges(blocks)[0].tolist()
    order = random.Random(int(torch.randint(0, 2**31, (1,), generator=rng)))
    wrapped = paired = 0
    for b in range(blocks):
        for warp in range(sw.warps):
            places, pairs = _run_warp(sw, r[b], r[b + 1], rt, warp, order, together)
            wrapped += sum(1 for x, y in zip(places, places[1:]) if y < x)
            paired += pairs
    if density == 1.0 and m * k > 100_000:
        assert wrapped > 0  # the ring's start was reused
    if rt > 1 and sw.tiles > 2 * blocks:
        assert (paired > 0) == (together == 2)  # two positions at a time, in that build only
    heads = sw.heads.view(-1, (4 if elements else 2) * sw.sp, 2).to(torch.int64)
    ends = heads[:, -1, 1] + torch.tensor([bin(int(v) & 0xFFFFFFFF).count("1") for v in heads[:, -1, 0]])
    real = sw.warps * sw.pieces * sw.tiles
    assert torch.equal(ends[:real - 1], heads[1:real, 0, 1])  # contiguous from n-tile to n-tile, piece to piece
