"""Index arithmetic of the warpgroup 2:4 kernel (kernels/wgmma24.cu), transcribed and run on weights
packed by ``Wgmma24Weight.from_dense``: where ``load_chunk`` puts X in a stage, which words each
thread loads as its A registers and metadata, the sparse warpgroup mma as PTX documents it (the
m16n8k32 sparse A and metadata layout per warp, B read through the no-swizzle K-major descriptor
with its leading and stride byte offsets, the m64nNk16 accumulator layout), the overflow operand's
registers built from the head words and a second mma over them, the compressed layout's registers
(each thread's first words from its warp's base and the scan of its lanes' counts), the partial
sums' staging, the cluster's split of K and of the rows it sums, and STREAM's end (which blocks
sum a split output, and which of its values each). The GPU tests run the kernel
itself; this checks the same arithmetic where there is no GPU, and that a misread layout (the
descriptor's offsets swapped, the compressed layout's words found without the lanes' scan) would be
caught.
"""

import re
from importlib.resources import files

import numpy as np
import pytest
import torch

from cross.pack.wgmma24 import CHUNK, TILE_ROWS, TILE_WORDS, Wgmma24Weight, token_tile, x_stages

START_BITS = 14  # a head word: first overflow word (bits 0-13), then a mask of 8 bits per m-tile
OVERFLOW_META = 0xEEEEEEEE  # the overflow operand's metadata: positions 2 and 3 in every nibble
B_LBO, B_SBO = 128, 512  # the kernel's b_desc


def _float(bits, dtype):
    """16-bit patterns (any integer array) as float64 values of ``dtype``."""
    b = np.asarray(bits, dtype=np.int64) & 0xFFFF
    if dtype == torch.bfloat16:
        return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return b.astype(np.uint16).view(np.float16).astype(np.float64)


def stage_x(x_bits, c, n_tok, k, ntok):
    """X's part of a stage of ``ntok`` tokens as load_chunk writes it: 16-bit slots, zeros past n_tok
    tokens and past K."""
    xs = np.zeros(ntok * CHUNK, dtype=np.int64)
    for p in range(ntok * CHUNK // 8):
        t, g8 = p >> 3, p & 7
        col = c * CHUNK + 8 * g8
        if t < n_tok and col < k:
            dst = (g8 >> 2) * (ntok * 64) + (t >> 3) * 512 + (g8 & 3) * 128 + (t & 7) * 16
            xs[dst // 2: dst // 2 + 8] = x_bits[t, col: col + 8]
    return xs


def wgmma_sp(acc, a, e, xs, b_start, sel, dtype, lbo, sbo):
    """acc[128 threads][N / 2] += A (64 x 32) x B (32 x N) as wgmma.mma_async.sp m64nNk32 reads them:
    thread 32 w + 4 g + q's A register i holds the two stored values of row 16 w + g + 8 (i & 1),
    group q + 4 (i >> 1); the metadata of row 16 w + g (+ 8: high half), group j comes from thread
    32 w + 4 g + 2 sel + (j >> 2), nibble j & 3; B element (token n, k kk) sits at
    b_start + (n >> 3) SBO + (kk >> 3) LBO + (n & 7) 16 + (kk & 7) 2 bytes."""
    A = np.zeros((64, 32))
    for tw in range(128):
        w, g, q = tw >> 5, (tw >> 2) & 7, tw & 3
        for i in range(4):
            row, grp = 16 * w + g + 8 * (i & 1), q + 4 * (i >> 1)
            meta = int(e[32 * w + 4 * g + 2 * sel + (grp >> 2)])
            nib = (meta >> (16 * (i & 1) + 4 * (grp & 3))) & 15
            word = int(a[tw, i])
            A[row, 4 * grp + (nib & 3)] += _float(word & 0xFFFF, dtype)
            A[row, 4 * grp + (nib >> 2)] += _float(word >> 16, dtype)
    ntok = 2 * acc.shape[1]
    n, kk = np.meshgrid(np.arange(ntok), np.arange(32), indexing="ij")
    B = _float(xs[(b_start + (n >> 3) * sbo + (kk >> 3) * lbo + (n & 7) * 16 + (kk & 7) * 2) // 2], dtype)
    D = A @ B.T  # [row][token]
    tw = np.arange(128)[:, None]
    i = np.arange(ntok // 2)[None, :]
    rows = 16 * (tw >> 5) + ((tw >> 2) & 7) + 8 * ((i >> 1) & 1)
    toks = 8 * (i >> 2) + 2 * (tw & 3) + (i & 1)
    acc += D[rows, toks]


def popc(v):
    return bin(v).count("1")


def masked_registers(words, start, masks, mt):
    """masked_registers: a thread's registers [m-tile t][k-step][register] of an operand stored as its
    nonzero words from ``start`` on: register r of m-tile t is the word at start + the bits of its
    mask (m-tile t's 8 at 8 t) below it, zero where its bit is clear."""
    o = np.zeros((mt, 2, 4), dtype=np.int64)
    for t in range(mt):
        mask = (masks >> (8 * t)) & 0xFF
        for r in range(8):
            if mask >> r & 1:
                o[t, r >> 2, r & 3] = int(words[start + popc(mask & ((1 << r) - 1))])
        start += popc(mask)
    return o


def halves(words):
    """A run of 32-bit words read as the 16-bit values they hold, low half first (a u16 pointer's view)."""
    w = np.asarray(words, dtype=np.int64)
    return np.stack([w & 0xFFFF, w >> 16], -1).reshape(-1)


def lone_registers(words, start, half, lstart, mask, lone, mt):
    """The lone halves' 2:4 registers (wgmma24.cu's lone_registers): the pairs' words by ``mask`` from
    ``start``, then, in registers of their own, the halves by ``lone`` from ``lstart`` (16-bit loads:
    the value in the low half); an m-tile's words and halves after the earlier m-tiles'."""
    o = np.zeros((mt, 2, 4), dtype=np.int64)
    for t in range(mt):
        m8, l8 = (mask >> (8 * t)) & 0xFF, (lone >> (8 * t)) & 0xFF
        w, h = start, lstart
        for r in range(8):
            if m8 >> r & 1:
                o[t, r >> 2, r & 3] = int(words[w])
                w += 1
        for r in range(8):
            if l8 >> r & 1:
                o[t, r >> 2, r & 3] = int(half[h])
                h += 1
        start, lstart = start + popc(m8), lstart + popc(l8)
    return o


def compressed_registers(record, wgs, mt, lane_scan=True, lone=False):
    """The compressed layout's registers, thread by thread: each thread's first word of each part is
    its warp's base plus the inclusive scan of its lanes' counts (both parts' at once, 16 bits each;
    ``lone``: three counts of 10 bits, the lone halves' first from the warp's lone base, in halves)
    less its own (without ``lane_scan``: the base alone, a misreading); the 2:4 part's A registers,
    the metadata words and the overflow's A registers, per m-tile ([m-tile][k-step][thread of the
    warpgroup][register], [m-tile][thread], as the first)."""
    mtiles, threads = wgs * mt, 128 * wgs
    at = mtiles * 128
    meta = record[:at]
    heads, at = record[at:at + threads], at + threads
    if lone:
        lone_masks, at = halves(record[at:at + threads // 2]), at + threads // 2
    bases, at = record[at:at + threads // 32], at + threads // 32
    if lone:
        lone_bases, at = halves(record[at:at + threads // 64]), at + 4  # padded to 16 bytes
    words = record[at:]
    a = np.zeros((mtiles, 2, 128, 4), dtype=np.int64)
    o = np.zeros_like(a)
    if lone:
        cnt = [popc(int(h) & 0xFFFF) | popc(int(h) >> 16) << 10 | popc(int(lm)) << 20
               for h, lm in zip(heads, lone_masks)]
    else:
        cnt = [popc(int(h) & 0xFFFF) | popc(int(h) >> 16) << 16 for h in heads]
    for tid in range(threads):
        wg, tw, lane = tid >> 7, tid & 127, tid & 31
        scan = sum(cnt[tid - lane: tid + 1]) if lane_scan else cnt[tid]
        before = scan - cnt[tid]
        if lone:
            starts = int(bases[tid >> 5]) + (before & 0x3FF) + ((before >> 10 & 0x3FF) << 16)
        else:
            starts = int(bases[tid >> 5]) + before
        hw = int(heads[tid])
        if lone:
            ra = lone_registers(words, starts & 0xFFFF, halves(words), int(lone_bases[tid >> 5]) + (before >> 20),
                                hw & 0xFFFF, int(lone_masks[tid]), mt)
        else:
            ra = masked_registers(words, starts & 0xFFFF, hw & 0xFFFF, mt)
        ro = masked_registers(words, starts >> 16, hw >> 16, mt)
        for t in range(mt):
            a[wg * mt + t, :, tw] = ra[t]
            o[wg * mt + t, :, tw] = ro[t]
    e = np.asarray(meta, dtype=np.int64).reshape(mtiles, 128)
    return a, e, o


def run_kernel(x, sw, split, bias=None, lbo=B_LBO, sbo=B_SBO, lane_scan=True):
    """Y as wgmma24 computes it, block by block, with the kernel's index arithmetic, in blocks of the
    tokens the launcher picks (16, 32, 64, or tiles of 128)."""
    m, k = sw.shape
    n = x.shape[0]
    ntok = token_tile(n)
    kstep = ntok * 64  # X's bytes per k-step of a stage
    dtype = sw.dtype
    wgs, mt, mtiles = sw.wgs, sw.mt, sw.mtiles
    R, threads = TILE_ROWS * mtiles, 128 * wgs
    values = sw.values.to(torch.int64).numpy() & 0xFFFFFFFF
    row_blocks, chunks = values.shape[:2]
    x_bits = x.view(torch.int16).to(torch.int64).numpy() & 0xFFFF
    y = np.full((n, m), np.nan)
    per = -(-(R // 4) // split) * 4
    tiles = -(-n // ntok)
    for cluster in range(row_blocks * tiles):  # the launcher's grid: blockIdx.x / SPLIT
        rb, tok0 = cluster // tiles, (cluster % tiles) * ntok
        n_in = min(ntok, n - tok0)
        ts = np.zeros((split, ntok, R))  # each cluster block's staged partial sums [token][row]
        for part in range(split):
            c0, c1 = part * chunks // split, (part + 1) * chunks // split
            acc = np.zeros((mtiles, 128, ntok // 2))  # acc[wg MT + t][thread of the warpgroup][register]
            for c in range(c0, c1):
                stage = values[rb, c]
                xs = stage_x(x_bits[tok0:], c, n_in, k, ntok)
                if sw.compressed:
                    a, e, o = compressed_registers(stage, wgs, mt, lane_scan, sw.lone)
                    meta = np.full(128, OVERFLOW_META)
                    for mtile in range(mtiles):
                        for ks in range(2):
                            wgmma_sp(acc[mtile], a[mtile, ks], e[mtile], xs, ks * kstep, ks, dtype, lbo, sbo)
                            if sw.overflow:
                                wgmma_sp(acc[mtile], o[mtile, ks], meta, xs, ks * kstep, ks, dtype, lbo, sbo)
                    continue
                for mtile in range(mtiles):
                    tile = stage[mtile * TILE_WORDS:(mtile + 1) * TILE_WORDS]
                    e = tile[1024:1152]
                    for ks in range(2):
                        a = tile[512 * ks: 512 * (ks + 1)].reshape(128, 4)  # 16 bytes per thread
                        wgmma_sp(acc[mtile], a, e, xs, ks * kstep, ks, dtype, lbo, sbo)
                if sw.overflow:  # the second mma: each thread's registers of the overflow operand
                    heads = stage[mtiles * TILE_WORDS:mtiles * TILE_WORDS + threads]
                    words = stage[mtiles * TILE_WORDS + threads:]  # the chunk's overflow words, in its stage
                    o = np.zeros((mtiles, 2, 128, 4), dtype=np.int64)  # [m-tile, k-step, thread, register]
                    for tid in range(threads):
                        hw = int(heads[tid])
                        regs = masked_registers(words, hw & ((1 << START_BITS) - 1), hw >> START_BITS, mt)
                        for t in range(mt):
                            o[(tid >> 7) * mt + t, :, tid & 127] = regs[t]
                    meta = np.full(128, OVERFLOW_META)
                    for mtile in range(mtiles):
                        for ks in range(2):
                            wgmma_sp(acc[mtile], o[mtile, ks], meta, xs, ks * kstep, ks, dtype, lbo, sbo)
            for mtile in range(mtiles):
                for tw in range(128):
                    warp, g, q = tw >> 5, (tw >> 2) & 7, tw & 3
                    r0 = mtile * 64 + 16 * warp + g
                    for i in range(ntok // 2):
                        row, tok = r0 + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * q + (i & 1)
                        ts[part, tok, row] = acc[mtile, tw, i]
        # block ``part`` of the cluster sums rows [part PER, part PER + PER) over the cluster, in rank order
        for part in range(split):
            rlo, rhi = part * per, min(R, part * per + per)
            for r4 in range(rlo, rhi, 4):
                s = sum(ts[src, :n_in, r4:r4 + 4] for src in range(split))
                for u in range(4):
                    row = rb * R + r4 + u
                    if row < m:
                        y[tok0:tok0 + n_in, row] = s[:, u] + (0.0 if bias is None else float(bias[row]))
    return y


def _weight(m, k, sparsity, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) >= sparsity)
    return torch.where(w == 0, 0.0, w).to(dtype), gen


@pytest.mark.parametrize("m,k,n,wgs,mt,split,sparsity", [
    (64, 64, 16, 1, 1, 1, 0.5),      # one block of 16 tokens, one chunk
    (200, 136, 130, 2, 2, 1, 0.3),   # ragged rows, K and tokens (two tiles of 128)
    (130, 256, 40, 1, 2, 3, 0.4),    # 64 tokens per block; K split over a cluster of 3 (chunks 1/1/2)
    (70, 200, 9, 2, 1, 2, 0.8),      # two warpgroups of one m-tile, a cluster of 2
    (64, 128, 30, 1, 1, 1, 0.6),     # 32 tokens per block
    (100, 64, 100, 1, 2, 1, 0.5),    # 128 tokens per block, 28 of them padding
    (150, 64, 260, 1, 1, 2, 0.5),    # 3 row blocks x 3 token tiles x clusters of 2, by the grid's order
])
@pytest.mark.parametrize("layout", ["slots", "compressed", "lone"])
def test_kernel_arithmetic_is_the_product(m, k, n, wgs, mt, split, sparsity, layout):
    w, gen = _weight(m, k, sparsity, torch.bfloat16, seed=m + k)
    sw = Wgmma24Weight.from_dense(w, wgs, mt, layout != "slots", lone=layout == "lone")
    assert sw.overflow  # some groups hold 3 or 4 nonzeros: the second mma runs
    x = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(m, generator=gen).to(torch.bfloat16)
    y = run_kernel(x, sw, split, bias.double().numpy())
    ref = (x.double() @ w.double().t() + bias.double()).numpy()
    assert not np.isnan(y).any(), "an output the blocks never wrote"
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("n,k,ntok", [(16, 64, 16), (5, 200, 16), (40, 136, 64), (300, 520, 128), (129, 8, 128)])
def test_x_stages_are_the_stages(n, k, ntok, rng):
    """X laid out once per launch for XPRE builds (pack/wgmma24.x_stages): every unit's part is, bit for
    bit, X's part of a stage as load_chunk's cp.async copies write it (zeros past N and K)."""
    x = torch.randn(n, k, generator=rng).to(torch.bfloat16)
    chunks = -(-k // CHUNK)
    xs = x_stages(x, ntok, chunks)
    bits = x.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    assert xs.shape == (-(-n // ntok), chunks, ntok * CHUNK)
    for tt in range(xs.shape[0]):
        rows = bits[tt * ntok:(tt + 1) * ntok]
        for c in range(chunks):
            want = stage_x(rows, c, rows.shape[0], k, ntok)
            assert np.array_equal(xs[tt, c].view(torch.int16).numpy().astype(np.int64) & 0xFFFF, want)


def test_two_four_weight_without_overflow():
    w, gen = _weight(128, 192, 0.0, torch.bfloat16, seed=7)
    w.view(128, 48, 4)[..., 1::2] = 0
    sw = Wgmma24Weight.from_dense(w, 1, 2)
    assert not sw.overflow
    x = torch.randn(33, 192, generator=gen).to(torch.bfloat16)
    ref = (x.double() @ w.double().t()).numpy()
    np.testing.assert_allclose(run_kernel(x, sw, 2), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_fp16():
    w, gen = _weight(64, 128, 0.4, torch.float16, seed=5)
    x = torch.randn(20, 128, generator=gen).to(torch.float16)
    y = run_kernel(x, Wgmma24Weight.from_dense(w, 1, 1), 2)
    ref = (x.double() @ w.double().t()).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_swapped_descriptor_offsets_are_caught():
    """The check can fail: B read with the leading and stride byte offsets swapped gives another product."""
    w, gen = _weight(64, 64, 0.5, torch.bfloat16, seed=6)
    x = torch.randn(100, 64, generator=gen).to(torch.bfloat16)  # a block of 128 tokens: the reads stay in the stage
    y = run_kernel(x, Wgmma24Weight.from_dense(w, 1, 1), 1, lbo=B_SBO, sbo=B_LBO)
    ref = (x.double() @ w.double().t()).numpy()
    assert np.abs(y - ref).max() > 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("lone", [False, True], ids=["compressed", "lone"])
def test_compressed_words_without_the_lanes_scan_are_caught(lone):
    """The check can fail: the compressed layout's words (and lone halves) found from the warp's base
    alone (no scan of the lanes' counts) give another product."""
    w, gen = _weight(64, 64, 0.5, torch.bfloat16, seed=8)
    x = torch.randn(16, 64, generator=gen).to(torch.bfloat16)
    y = run_kernel(x, Wgmma24Weight.from_dense(w, 1, 1, compressed=True, lone=lone), 1, lane_scan=False)
    ref = (x.double() @ w.double().t()).numpy()
    assert np.abs(y - ref).max() > 0.1 * np.abs(ref).max()


def _block_of(u, units, blocks):
    return ((u + 1) * blocks - 1) // units


# STREAM's end: the loads a summing thread keeps in flight (wgmma24.cu's default, read from it)
SUM_LOADS = int(re.search(r"#define SUM_LOADS (\d+)", (files("cross.kernels") / "wgmma24.cu").read_text())[1])


def sum_share(jf, jl, lo, hi, threads):
    """wgmma24.cu's sum_share<S> (S as its caller picks it from the output's slots), transcribed: for
    each thread, its rounds of loads, each a list of (block, value) pairs it loads together; the values
    it sums in that order, per value, are the blocks jf .. jl in block order."""
    n = jl - jf + 1
    S = next(s for s in (2, 4, 8, 16, 32) if n <= s or s == 32)
    E = max(SUM_LOADS // S, 1)
    rounds = {}
    for tid in range(threads):
        mine = []
        for e0 in range(lo + tid, hi, E * threads):
            for b0 in range(jf, jl + 1, S):
                mine.append([(b0 + q, e0 + k * threads) for q in range(S) for k in range(E)
                             if b0 + q <= jl and e0 + k * threads < hi])
        rounds[tid] = mine
    return rounds


STREAM_GRIDS = [
    (16, 64, 264),   # 4096 rows at 16 tokens: each output over ~16.5 blocks
    (48, 64, 264),   # 12288 rows: ~5.5 blocks per output
    (86, 64, 264),   # 22016 rows (gate, up stacked): ~3.1 blocks per output
    (16, 172, 264),  # 4096x11008
    (3, 5, 4),       # few units: outputs split 2 ways, and blocks holding an output's middle
    (7, 3, 7),       # one output per block: nothing split
    (5, 4, 6),       # outputs of 4 units over 6 blocks
]


def _row_tok(tid, f, mt, nacc):
    """The row and token of thread tid's accumulator f (of mt x nacc) in its output (m64nNk16 layout)."""
    wg, warp, lane, i = tid >> 7, (tid & 127) >> 5, tid & 31, f % nacc
    row = (wg * mt + f // nacc) * 64 + 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1)
    return row, 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)


def _stream_partials(unit_acc, blocks):
    """STREAM's blocks' partial sums (unit_acc: [outputs, chunks, threads, registers], a unit's
    accumulators): for each block j and output uo it holds units of, (j, its first unit u0, uo, jf, jl,
    the accumulators summed over j's units of uo), block jf .. jl holding uo's units."""
    outputs, chunks = unit_acc.shape[:2]
    units = outputs * chunks
    for j in range(blocks):
        u0, u1 = j * units // blocks, (j + 1) * units // blocks
        for uo in sorted({u // chunks for u in range(u0, u1)}):
            first = uo * chunks
            jf, jl = _block_of(first, units, blocks), _block_of(first + chunks - 1, units, blocks)
            yield j, u0, uo, jf, jl, sum(unit_acc[uo, u - first] for u in range(max(u0, first), min(u1, first + chunks)))


def _output_sums(unit_acc, rows, mt, nacc):
    """Every output's values [outputs, rows, tokens] as the sums of its units' accumulators (unit_acc:
    [outputs, chunks, threads, registers]), each thread's register at its row and token."""
    outputs, _, threads, regs = unit_acc.shape
    want = np.zeros((outputs, rows, 2 * nacc))
    for tid in range(threads):
        for f in range(regs):
            r, t = _row_tok(tid, f, mt, nacc)
            want[:, r, t] = unit_acc[:, :, tid, f].sum(axis=1)
    return want


def _reduce_case(outputs, chunks, blocks, wgs, mt, ntok, seed):
    """An END_RED-style end's transcription inputs: its generator, every unit's accumulators [outputs, chunks,
    threads, registers], each thread's register's position in a slot [threads, registers], the blocks'
    slots (zero), Y (NaN) and its writes' counts (zero)."""
    rng = np.random.default_rng(outputs * 1000 + chunks + seed)
    threads, regs = 128 * wgs, mt * (ntok // 2)
    unit_acc = rng.standard_normal((outputs, chunks, threads, regs))
    pos = np.array([[((f // 4) * threads + tid) * 4 + f % 4 for f in range(regs)] for tid in range(threads)])
    rows = 64 * wgs * mt
    return (rng, unit_acc, pos, np.zeros((blocks, rows * ntok)), np.full((outputs, rows, ntok), np.nan),
            np.zeros((outputs, rows, ntok), dtype=int))


def _write(y, writes, uo, value, mt, nacc):
    """Output uo's values written from value(tid, f), each counted in ``writes``."""
    for tid in range(y.shape[1] * y.shape[2] // (mt * nacc)):
        for f in range(mt * nacc):
            y[(uo,) + _row_tok(tid, f, mt, nacc)] = value(tid, f)
            writes[(uo,) + _row_tok(tid, f, mt, nacc)] += 1


@pytest.mark.parametrize("outputs,chunks,blocks", STREAM_GRIDS)
@pytest.mark.parametrize("wgs,mt,ntok", [(2, 2, 16), (1, 1, 32), (2, 1, 64)])
def test_stream_end_sums_every_value_once(outputs, chunks, blocks, wgs, mt, ntok):
    """STREAM's end (wgmma24.cu), transcribed: block j takes units [j U / P, (j + 1) U / P); an output
    split across blocks jf .. jl is summed by blocks jf .. jl - 1, each its share of the output's R NTOK
    values over every block's slot (``sum_share``: each slot's value loaded once, in rounds of at most
    SUM_LOADS loads, one round at 256 rows and 16 tokens; summed in block order), value e being
    accumulator e / THREADS of thread e % THREADS, written
    to its row and token; an output one block holds alone, from its accumulators. Every value of every
    output is written once and is the sum of all its units' partials; a block sums only the output it
    ends with (it never waits between its units), block jl holds the output's last units first, and no
    two split outputs share a counter (counters[jf])."""
    rng = np.random.default_rng(outputs * 1000 + chunks)
    threads, nacc = 128 * wgs, ntok // 2
    R, regs = 64 * wgs * mt, mt * nacc
    units = outputs * chunks
    unit_acc = rng.standard_normal((outputs, chunks, threads, regs))  # a unit's accumulators, per thread

    def row_tok(tid, f):
        return _row_tok(tid, f, mt, nacc)

    y = np.full((outputs, R, ntok), np.nan)
    writes = np.zeros((outputs, R, ntok), dtype=int)
    slots = {}  # (block, 0 or 1) -> its partial sums, thread-major
    counters = set()
    ranges = [(j * units // blocks, (j + 1) * units // blocks) for j in range(blocks)]
    for j, u0, uo, jf, jl, acc in _stream_partials(unit_acc, blocks):  # first every block's partials (the arrivals) ...
        if jf == jl:
            _write(y, writes, uo, lambda tid, f: acc[tid, f], mt, nacc)
        else:
            slots[(j, 0 if u0 >= uo * chunks else 1)] = acc.T.reshape(-1)  # part[f THREADS + tid]
            counters.add((jf, uo))
    assert len({jf for jf, _ in counters}) == len(counters)  # one split output per counter
    for jf, uo in counters:  # ... then the blocks that end with each split output sum it
        first = uo * chunks
        jl = _block_of(first + chunks - 1, units, blocks)
        assert ranges[jl][0] >= first  # jl starts inside the output: it arrives and goes on
        parts = jl - jf
        for p in range(parts):
            j = jf + p
            assert (ranges[j][1] - 1) // chunks == uo  # the output a waiting block ends with
            lo, hi = p * (R * ntok) // parts, (p + 1) * (R * ntok) // parts
            rounds = sum_share(jf, jl, lo, hi, threads)
            loads = [pair for r in rounds.values() for batch in r for pair in batch]
            # each slot's value of the share loaded once, no slot past jl, at most SUM_LOADS in flight
            assert sorted(loads) == [(b, e) for b in range(jf, jl + 1) for e in range(lo, hi)]
            assert all(len(batch) <= SUM_LOADS for r in rounds.values() for batch in r)
            if R * ntok == 4096 and threads == 256 and jl - jf < 32:  # 256 rows, 16 tokens: one round
                assert all(len(r) <= 1 for r in rounds.values())
            sums = {}
            for r in rounds.values():
                for batch in r:
                    for b, e in batch:  # per value, in block order
                        assert sums.get(e, (jf - 1, 0.0))[0] == b - 1
                        sums[e] = (b, sums.get(e, (jf - 1, 0.0))[1] + slots[(b, 0 if ranges[b][0] >= first else 1)][e])
            for e, (_, v) in sums.items():
                te, f = e % threads, e // threads
                y[(uo,) + row_tok(te, f)] = v
                writes[(uo,) + row_tok(te, f)] += 1
    assert (writes == 1).all()
    want = _output_sums(unit_acc, R, mt, nacc)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("outputs,chunks,blocks", STREAM_GRIDS)
@pytest.mark.parametrize("wgs,mt,ntok", [(2, 2, 16), (1, 1, 32), (2, 1, 64)])
def test_stream_end_red_sums_every_value_once(outputs, chunks, blocks, wgs, mt, ntok):
    """The END_RED=1 build's end (wgmma24.cu), transcribed: every block of an output split across blocks
    jf .. jl adds its accumulators into block jl's slot (R NTOK floats from jl R NTOK), accumulator f of thread tid at
    ((f / 4) THREADS + tid) 4 + f % 4, the blocks arriving in any order; the arrival that makes the
    count jl - jf + 1 reads its own positions back, writes them to Y and zeroes them. Each split output's
    slot is its own (block jl's units start inside it), the positions cover the slot once, every value
    of every output is written once and is the sum of its units' partials, and the slots are zero after."""
    rng, unit_acc, pos, ws, y, writes = _reduce_case(outputs, chunks, blocks, wgs, mt, ntok, 7)
    nacc, R, units = ntok // 2, 64 * wgs * mt, outputs * chunks
    assert sorted(pos.reshape(-1)) == list(range(R * ntok))  # a slot's floats, each one thread's once
    arrivals, owner = [], {}
    for j, u0, uo, jf, jl, acc in _stream_partials(unit_acc, blocks):
        if jf == jl:
            _write(y, writes, uo, lambda tid, f: acc[tid, f], mt, nacc)
        else:  # block jl's slot is uo's alone: jl's units start inside uo, and no other output's jl is jl
            assert jl * units // blocks >= uo * chunks and owner.setdefault(jl, uo) == uo
            arrivals.append((jf, jl, uo, acc))
    counts = {}
    for i in rng.permutation(len(arrivals)):  # the arrivals in any order
        jf, jl, uo, acc = arrivals[i]
        area = ws[jl]
        area[pos] += acc
        counts[jf] = counts.get(jf, 0) + 1
        if counts[jf] == jl - jf + 1:  # the last arrival: its own positions back, Y, the slot zeroed
            _write(y, writes, uo, lambda tid, f: area[pos[tid, f]], mt, nacc)
            area[pos] = 0.0
    assert (writes == 1).all() and not ws.any()
    want = _output_sums(unit_acc, R, mt, nacc)
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("outputs,chunks,blocks", STREAM_GRIDS)
@pytest.mark.parametrize("wgs,mt,ntok", [(2, 2, 16), (2, 1, 64)])
def test_stream_end_ticket_sums_every_value_once(outputs, chunks, blocks, wgs, mt, ntok):
    """The END_TICKET=1 build's end (wgmma24.cu), transcribed: the blocks whose range ends inside a split
    output (the loop's last unit is one of the output's) draw tickets on its counter's low 16 bits as that
    unit starts, in any order, and their number is the kernel's `ending` (jl - jf, plus one where block jl's
    range ends with the output); the last ticket's block adds nothing, every other block of the output
    (block jl too where it goes on) adds its accumulators into block jl's slot and counts itself on the high
    16 bits; the last ticket's block finds jl - jf there, writes Y from the slot plus its own accumulators and
    zeroes the slot and the counter. Every value of every output is written once and is the sum of its
    units' partials; slots and counters are zero after."""
    rng, unit_acc, pos, ws, y, writes = _reduce_case(outputs, chunks, blocks, wgs, mt, ntok, 11)
    nacc, R, units = ntok // 2, 64 * wgs * mt, outputs * chunks
    counters = np.zeros(blocks, dtype=np.int64)
    split = {}  # uo -> its blocks' (j, ends with uo, accumulators)
    for j, u0, uo, jf, jl, acc in _stream_partials(unit_acc, blocks):
        if jf == jl:
            _write(y, writes, uo, lambda tid, f: acc[tid, f], mt, nacc)
        else:
            u1 = (j + 1) * units // blocks
            split.setdefault(uo, []).append((j, (u1 - 1) // chunks == uo, acc))
    for uo, parts in split.items():
        first = uo * chunks
        jf, jl = _block_of(first, units, blocks), _block_of(first + chunks - 1, units, blocks)
        ending = jl - jf + (1 if (jl + 1) * units // blocks == first + chunks else 0)
        drawers = [p for p in parts if p[1]]
        assert len(drawers) == ending >= 1 and [p[0] for p in parts] == list(range(jf, jl + 1))
        order = [drawers[i] for i in rng.permutation(len(drawers))]  # the tickets in any order
        tickets = {}
        for p in order:
            tickets[p[0]] = int(counters[jf] & 0xFFFF)
            counters[jf] += 1
        last = next(p for p in drawers if tickets[p[0]] == ending - 1)
        area = ws[jl]
        for j, _, acc in parts:
            if j != last[0]:
                area[pos] += acc
                counters[jf] += 1 << 16
        assert counters[jf] >> 16 == jl - jf  # what the last ticket's block waits for
        counters[jf] = 0
        _write(y, writes, uo, lambda tid, f: area[pos[tid, f]] + last[2][tid, f], mt, nacc)
        area[pos] = 0.0
    assert (writes == 1).all() and not ws.any() and not counters.any()
    want = _output_sums(unit_acc, R, mt, nacc)
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-9)
