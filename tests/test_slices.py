"""The slice format (pack/slices.py) and the slice kernel (kernels/slice_mma.cu).

CPU: the format read back as the kernel reads it (each lane's two words from its half's start plus a
popcount, each register that word, the next, or zero) gives the weight bit for bit over shapes,
densities and warps; the lane layout of the pairs; the pieces' split of K; the blocks' n-tile ranges.
GPU (`-m gpu`): the kernel against the fp64 product with outputs poisoned, fresh inputs, over shapes
(ragged M and K, several pieces per warp, several rounds per block), densities, token counts, dtypes,
loads ahead and bias; non-finite inputs give the dense product's NaN.
"""

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
def test_round_trip(rng, m, k, density, warps):
    w = _sparse(m, k, density, rng)
    w[0, 0] = -0.0  # no nonzero: not stored (read back as +0.0)
    sw = SliceWeight.from_dense(w, warps=warps)
    assert sw.heads.is_contiguous() and sw.values.is_contiguous()
    assert torch.equal(_bits(sw.to_dense()), _bits(torch.where(w == 0, torch.zeros_like(w), w)))
    pairs = torch.nn.functional.pad(w != 0, (0, sw.ksp * 16 - k, 0, -m % 8)).view(-1, sw.ksp * 8, 2).any(-1)
    assert sw.values.numel() == int(pairs.sum()) + PAD_WORDS  # a word per pair that holds a nonzero
    assert int(sw.tile_words.sum()) == int(pairs.sum())


def test_fp16_round_trip(rng):
    w = _sparse(40, 96, 0.4, rng, torch.float16)
    w = torch.where(w == 0, torch.zeros_like(w), w)  # -0.0 is read back as +0.0
    assert torch.equal(_bits(SliceWeight.from_dense(w).to_dense()), _bits(w))


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


@pytest.mark.parametrize("bad", ["steps", "shape", "device"])
def test_slice_matmul_refuses_bad_input(rng, bad):
    """Its own check (the format's steps per piece) and the checks it shares with strip_matmul (test_strips
    covers each of them) fail with a clear error before anything is launched."""
    from cross.kernels.launch import slice_matmul

    sw = SliceWeight.from_dense(_sparse(32, 256, 0.5, rng), warps=1, max_steps=16 if bad == "steps" else 8)
    assert sw.sp == (16 if bad == "steps" else 8)
    x = torch.randn(3, 256 if bad != "shape" else 32, generator=rng).to(torch.bfloat16)
    match = {"steps": "8 steps per piece", "shape": "expected x", "device": "CUDA"}[bad]
    with pytest.raises(ValueError, match=match):
        slice_matmul(x, sw)


def test_shared_memory_is_the_warps_partial_sums_and_rings():
    per_warp = (2048 + 4) * 4 + 10 * 8 + 8 * 4  # the ring of words, 10 mbarriers, the copies' ends
    assert smem_bytes(16, 0) == 16 * per_warp
    assert smem_bytes(16, 7) == smem_bytes(16, 0) + 16 * 7 * (512 + 256) < 227 * 1024  # 7 n-tiles per round fit


# ---------------------------------------------------------------------- GPU
def _check(y, x, w, b):
    ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    assert bool(torch.isfinite(y).all()), "non-finite output (unwritten?)"
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
    assert float(err.max()) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(8, 16), (40, 200), (1000, 1032), (4096, 4096), (11008, 4096), (300, 11008)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_gpu_slice_kernel(m, k, density):
    from cross.kernels.launch import slice_matmul

    gen = torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
    w = _sparse(m, k, density, gen).cuda()
    sw = SliceWeight.from_dense(w)
    for n in (1, 7, 16, 21):
        x = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=gen).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        slice_matmul(x, sw, b, out=y)
        _check(y, x, w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("warps", [4, 7, 16])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_gpu_slice_kernel_warps_and_rounds(warps, density):
    """Few warps (several pieces each: positions of several pieces in flight), dense n-tiles (the
    rings at their fullest), and M large enough for several rounds of n-tiles per block (each round's
    partial sums in shared memory, summed and written)."""
    from cross.kernels.launch import slice_matmul

    gen = torch.Generator().manual_seed(5)
    m = 8 * 30 * torch.cuda.get_device_properties(0).multi_processor_count + 13  # 30+ n-tiles per block
    w = _sparse(m, 520, density, gen).cuda()
    sw = SliceWeight.from_dense(w, warps=warps)
    x = torch.randn(16, 520, generator=gen).to(torch.bfloat16).cuda()
    y = torch.full((16, m), float("nan"), dtype=torch.bfloat16, device="cuda")
    _check(slice_matmul(x, sw, out=y), x, w, None)


@pytest.mark.gpu
def test_gpu_slice_kernel_fp16_and_strided_x():
    from cross.kernels.launch import slice_matmul

    gen = torch.Generator().manual_seed(3)
    w = _sparse(300, 520, 0.4, gen, torch.float16).cuda()
    x = torch.randn(11, 600, generator=gen).to(torch.float16).cuda()[:, 40:560]  # a strided view
    y = slice_matmul(x, SliceWeight.from_dense(w))
    ref = x.double() @ w.double().t()
    assert float(((y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())).max()) < 5e-3


@pytest.mark.gpu
def test_gpu_slice_kernel_propagates_non_finite_inputs():
    """Every element of a step is multiplied, zeros included: Inf in X gives NaN where a zero weight
    meets it, as the dense product does."""
    from cross.kernels.launch import slice_matmul

    w = torch.zeros(16, 32, dtype=torch.bfloat16, device="cuda")
    w[:, 1] = 1.0
    x = torch.ones(2, 32, dtype=torch.bfloat16, device="cuda")
    x[0, 0] = float("inf")
    y = slice_matmul(x, SliceWeight.from_dense(w))
    ref = x.float() @ w.float().t()
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and bool(torch.isnan(y[0]).all())


class _Barriers:
    """mbarriers as slice_mma.cu uses them: a copy arms barrier b for its next phase; a wait on (b,
    parity) for a copy must find that copy's phase the newest armed one, of that parity; a barrier is
    armed again only after its newest phase was waited for."""

    def __init__(self, n):
        self.arms = [[] for _ in range(n)]
        self.waited = [0] * n

    def arm(self, b, copy):
        assert self.waited[b] == len(self.arms[b]), f"barrier {b} armed before its phase was waited for"
        self.arms[b].append(copy)

    def wait(self, b, parity, copy):
        phase = len(self.arms[b]) - 1
        assert phase >= 0 and self.arms[b][phase] == copy, f"barrier {b}: copy {copy} is not its newest phase"
        assert phase & 1 == parity, f"barrier {b}: waits for parity {parity} of phase {phase}"
        self.waited[b] = phase + 1


def _simulate_warp(sw, rounds, warp, ring=2048, blk=512, nb=8):
    """slice_mma.cu's copies, waits and reads for one warp over a block's ``rounds`` ((r0, n-tiles)
    each), transcribed: the pieces' heads (one copy per piece and round, asked for when the piece
    before starts, copy n on mbarrier nb + n % 2), the words streamed through the ring (copies of at
    most ``blk`` words, at most ``nb`` in flight, copy n on mbarrier n % nb, never over words not yet
    multiplied, the cursor entering a piece only once its heads were asked for), each n-tile waiting
    for the copies that hold its words. Checks every copy's source, every read's place and every
    mbarrier's phases; returns the word copies made, per round."""
    sp, t_all = sw.sp, sw.tiles
    heads = sw.heads.view(-1, 2 * sp, 2).to(torch.int64)
    n_vals = sw.values.numel()
    pc0 = warp * sw.pieces
    bars = _Barriers(nb + 2)
    copied = landed = issued = waited = hcopies = 0
    ends = {}
    out = []
    for r0, nr in rounds:
        def span(piece):  # a piece's words for the round, 16-byte aligned
            row = (pc0 + piece) * t_all + r0
            assert row + nr <= sw.heads.shape[0] - HEAD_PAD  # the heads copy: real pieces and n-tiles
            last = heads[row + nr - 1, 2 * sp - 1]
            end = int(last[1]) + bin(int(last[0]) & 0xFFFFFFFF).count("1")
            return int(heads[row, 0, 1]) & ~3, (end + 3) & ~3

        def copy_heads():
            nonlocal hcopies
            bars.arm(nb + (hcopies & 1), ("heads", hcopies))
            hcopies += 1

        def wait_heads(n):
            bars.wait(nb + (n & 1), (n >> 1) & 1, ("heads", n))

        def wait_words():
            nonlocal waited
            bars.wait(waited % nb, (waited // nb) & 1, ("words", waited))
            waited += 1

        h0 = hcopies
        cp, hlast = 0, 0
        copies = []
        base = {}

        def enter(piece):
            nonlocal nxt, stop
            nxt, stop = span(piece)
            base[piece] = copied - nxt

        def fill(freed):
            nonlocal cp, copied, nxt, issued
            while True:
                if nxt >= stop:
                    if cp >= hlast:
                        return
                    cp += 1
                    wait_heads(h0 + cp)
                    enter(cp)
                    continue
                at = copied % ring
                n = min(stop - nxt, blk, ring - at)
                if copied + n > freed + ring or issued - waited >= nb:
                    return
                assert nxt % 4 == 0 and n % 4 == 0 and nxt + n <= n_vals  # inside the values, 16-byte chunks
                bars.arm(issued % nb, ("words", issued))
                copies.append((nxt, n))
                ends[issued] = copied + n
                copied, nxt, issued = copied + n, nxt + n, issued + 1

        nxt = stop = 0
        copy_heads()
        wait_heads(h0)
        enter(0)
        freed = copied
        for pl in range(sw.pieces):
            if pl > 0:
                wait_heads(h0 + pl)
                if cp < pl:
                    cp = pl
                    enter(pl)
            if pl + 1 < sw.pieces:
                copy_heads()
                hlast = pl + 1
            for i in range(nr):
                h = heads[(pc0 + pl) * t_all + r0 + i]
                last = h[2 * sp - 1]
                start = int(h[0, 1]) + base[pl]
                end = int(last[1]) + bin(int(last[0]) & 0xFFFFFFFF).count("1") + base[pl]
                while landed < end:
                    if waited == issued:
                        fill(freed)
                    assert waited < issued, "the n-tile waits for a copy that was never issued"
                    landed = ends[waited]
                    wait_words()
                assert freed <= start and end - freed <= ring  # its words are in the ring, none overwritten
                for u in range(2 * sp):
                    mask, st = (int(v) for v in h[u])
                    for j in range(16):  # a lane's word and the next
                        at = (st + base[pl] + bin(mask & ((1 << (2 * j)) - 1)).count("1")) % ring
                        assert at + 1 < ring + 4
                freed = end
                fill(freed)
        while waited < issued:
            wait_words()
        landed = copied
        out.append(copies)
    return out


@pytest.mark.parametrize("m,k,warps,blocks,density", [(40, 200, None, 3, 0.4), (1000, 1032, 4, 7, 0.4),
                                                     (24, 3000, 16, 2, 1.0), (8, 16, 16, 5, 0.4), (400, 520, 5, 3, 1.0),
                                                     (2000, 3000, 3, 2, 0.1)])
@pytest.mark.parametrize("rt", [2, 7])
def test_kernel_copies_and_reads(rng, m, k, warps, blocks, density, rt):
    """The kernel's copies and reads (slice_mma.cu, transcribed in _simulate_warp) for every block,
    round of ``rt`` n-tiles and warp: sources inside the format, each n-tile's words landed before it
    is multiplied and not overwritten while it is, and every copy after the one before it (pieces share at most
    a 16-byte chunk; the stream is contiguous: an n-tile's last start plus its popcount is the next n-tile's first)."""
    sw = SliceWeight.from_dense(_sparse(m, k, density, rng), warps=warps)
    r = sw.ranges(blocks)[0].tolist()
    for b in range(blocks):
        rounds = [(r0, min(r0 + rt, r[b + 1]) - r0) for r0 in range(r[b], r[b + 1], rt)]
        for warp in range(sw.warps):
            for copies in _simulate_warp(sw, rounds, warp):
                for (a, n), (c, _) in zip(copies, copies[1:]):
                    assert c >= a + n - 4  # in stream order; pieces may share a 16-byte chunk, nothing more
    heads = sw.heads.view(-1, 2 * sw.sp, 2).to(torch.int64)
    ends = heads[:, -1, 1] + torch.tensor([bin(int(v) & 0xFFFFFFFF).count("1") for v in heads[:, -1, 0]])
    real = sw.warps * sw.pieces * sw.tiles
    assert torch.equal(ends[:real - 1], heads[1:real, 0, 1])  # contiguous from n-tile to n-tile, piece to piece
