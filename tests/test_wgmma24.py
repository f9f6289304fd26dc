"""The warpgroup 2:4 format (pack/wgmma24.py) and its kernel (kernels/wgmma24.cu).

CPU: the format read back (the mma's slots, and the overflow entries through the head words) gives
the weight bit for bit over shapes, densities, warpgroups and m-tiles; the thread layout of the A
words and the metadata nibbles; the bytes; the launcher's split; the STREAM launch's partition (its
integer arithmetic transcribed: every output summed once, counters and slots never shared, counters
back at zero by their own wrap).
GPU (`-m gpu`, compute capability 9.0): the kernel against the fp64 product with outputs poisoned,
fresh inputs, over shapes (ragged M and K), densities, dtypes, token counts (token tiles), warpgroups,
m-tiles, splits of K (clusters, and STREAM: the same bits twice, counters back to zero) and bias.
"""

import contextlib
import inspect
import os

import pytest
import torch

from cross.kernels.cuda_backend import WGMMA24_MAX_PER_SM, WGMMA24_MIN_UNITS, wgmma24_stream_blocks
from cross.kernels.launch import wgmma24_split
from cross.costmodel.roofline import wgmma24_slots
from cross.pack.wgmma24 import CHUNK, NTOKS, START_BITS, TILE_WORDS, Wgmma24Weight, size_words, smem_bytes, stages, token_tile
from runtime_checks import assert_dense_nonfinite, dense_terms, nonfinite_inputs


def _weight(m, k, per_group, gen, dtype=torch.bfloat16):
    """A random weight with 0..per_group nonzeros (uniformly) in every group of 4 consecutive columns."""
    kk = -(-k // 4) * 4
    w = torch.randn(m, kk // 4, 4, generator=gen)
    order = torch.rand(m, kk // 4, 4, generator=gen).argsort(-1)
    n = torch.randint(0, per_group + 1, (m, kk // 4, 1), generator=gen)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, order, torch.arange(4)[None, None, :] < n)
    return torch.where(keep, w, 0.0).view(m, kk)[:, :k].to(dtype)


def _bits(t):
    return t.contiguous().view(torch.int16)


def _unstructured(m, k, density, gen, dtype=torch.bfloat16):
    w = (torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)).to(dtype)
    return torch.where(w == 0, torch.zeros_like(w), w)


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (129, 8), (256, 1024)])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_trip(rng, m, k, wgs, mt, dtype):
    w = _weight(m, k, 2, rng, dtype)
    w[0, 0] = -0.0  # no nonzero: stored as +0.0
    sw = Wgmma24Weight.from_dense(w, wgs, mt)
    assert sw.values.is_contiguous()
    assert torch.equal(_bits(sw.to_dense()), _bits(torch.where(w == 0, torch.zeros_like(w), w)))
    assert not sw.overflow  # 2:4 already: no entries, no head words
    assert sw.nbytes == -(-m // sw.rows) * -(-k // CHUNK) * wgs * mt * TILE_WORDS * 4


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (256, 1024)])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (1, 2)])
def test_round_trip_with_overflow(rng, m, k, density, wgs, mt):
    """An unstructured weight: a group's first two nonzeros in the mma's slots, the others in the
    overflow operand."""
    w = _unstructured(m, k, density, rng)
    sw = Wgmma24Weight.from_dense(w, wgs, mt)
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    kk = -(-k // 4) * 4
    nz = torch.nn.functional.pad(w != 0, (0, kk - k)).view(m, -1, 4).sum(-1)
    assert sw.n_entries == int((nz - 2).clamp(min=0).sum())
    assert sw.n_groups == int((nz > 2).sum())  # one overflow word per group holding a third nonzero
    assert sw.overflow == (sw.n_entries > 0) == (sw.slots > 0)
    if sw.overflow:
        # the slots: the fullest chunk's overflow words (the bits set in its head words' masks) rounded up
        heads = sw.values[..., wgs * mt * TILE_WORDS: wgs * mt * TILE_WORDS + 128 * wgs].to(torch.int64)
        words = sum((heads >> (START_BITS + b)) & 1 for b in range(8 * mt)).sum(-1)
        assert int(words.sum()) == sw.n_groups and sw.slots == wgmma24_slots(int(words.max()))
        per_chunk = wgs * mt * TILE_WORDS * 4 + wgs * 128 * 4 + 4 * sw.slots
        assert sw.nbytes == -(-m // sw.rows) * -(-k // CHUNK) * per_chunk


def test_thread_layout():
    """Thread 32 w + 4 g + q's A register i is the word of row 16 w + g + 8 (i & 1), group q + 4 (i >> 1) of
    the k-step; thread 32 w + 4 g + 2 ks + h's metadata word holds groups 4 h .. 4 h + 3 of k-step ks,
    rows 16 w + g (low half) and 16 w + g + 8 (high half), group 4 h + i at bits 4 i."""
    m, k = 64, 64
    w = torch.zeros(m, k, dtype=torch.bfloat16)
    # row r, group j: one nonzero at position (r + j) % 4 of value r * 64 + j + 1 (exact in bf16 up to 256)
    for r in (0, 9, 21, 63):
        for j in range(16):
            w[r, 4 * j + (r + j) % 4] = float(r + j + 1)
    sw = Wgmma24Weight.from_dense(w, 1, 1)
    tile = sw.values[0, 0].to(torch.int64) & 0xFFFFFFFF
    a = tile[:1024].view(2, 128, 4)  # k-step, thread, register
    meta = tile[1024:].view(128)
    for r in (0, 9, 21, 63):
        wv, g, hf = r // 16, r % 8, (r % 16) // 8
        for j in range(16):
            ks, jj = j // 8, j % 8
            q, hq = jj % 4, jj // 4
            thread, reg = 32 * wv + 4 * g + q, hf + 2 * hq
            p = (r + j) % 4
            first = p if p < 3 else 2  # the lone nonzero's slot: first unless it is at position 3
            word = int(a[ks, thread, reg])
            value = torch.tensor([word >> (16 * (first != p)) & 0xFFFF], dtype=torch.int32).to(torch.int16)
            assert float(value.view(torch.bfloat16)) == float(r + j + 1)
            mw = int(meta[32 * wv + 4 * g + 2 * ks + hq]) >> (16 * hf)
            nib = (mw >> (4 * q)) & 15
            assert (nib & 3, nib >> 2) == ((p, 3) if p < 3 else (2, 3))


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (256, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_sized_records(rng, m, k, density, wgs, mt):
    """Sized records: the compressed layout's records as they are, after a table of each record's size
    (16-byte units: its header and the words its masks count, rounded up; a uint16 a record, padded to
    16 bytes); read back from only those bytes (to_dense masks the rest) it is the weight."""
    w = _unstructured(m, k, density, rng)
    plain = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True)
    sw = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True, sized=True)
    rb_, nc = plain.values.shape[:2]
    assert sw.sized and sw.blocks == (rb_, nc) and torch.equal(sw.records, plain.values)
    assert sw.values.dim() == 1 and sw.values.is_contiguous() and sw.records.data_ptr() % 16 == 0
    assert torch.equal(sw.values[size_words(rb_, nc):], plain.values.reshape(-1))
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    mtiles, threads = wgs * mt, 128 * wgs
    v = plain.values.to(torch.int64) & 0xFFFFFFFF
    heads = v[..., mtiles * 128: mtiles * 128 + threads]
    used = sum(((heads >> b) & 1).sum(-1) for b in range(32))  # [rb, chunk]
    header = mtiles * 128 + threads + threads // 32
    assert torch.equal(sw.record_sizes(), -(-(header + used) // 4))
    assert int(sw.record_sizes().max()) * 4 <= v.shape[-1]  # no record past the fixed stride
    assert sw.bytes_read == 16 * int(sw.record_sizes().sum()) <= plain.bytes_read == plain.nbytes
    assert sw.to("cpu").sized and sw.nbytes == plain.nbytes + 16 * -(-rb_ * nc // 8)  # 2 bytes a record, padded
    with pytest.raises(ValueError, match="not sized"):
        plain.record_sizes()


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (256, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_sized_slots_records(rng, m, k, density, wgs, mt):
    """Sized records of the slots layout: its records as they are, after a table of each record's size
    (16-byte units: the m-tiles, where the weight has overflow the head words, and a word per group of 4
    with more than two nonzeros in the record's rows and chunk, counted on the weight, rounded up); read
    back from only those bytes (to_dense masks the rest) it is the weight."""
    w = _unstructured(m, k, density, rng)
    plain = Wgmma24Weight.from_dense(w, wgs, mt)
    sw = Wgmma24Weight.from_dense(w, wgs, mt, sized=True)
    rb_, nc = plain.values.shape[:2]
    assert sw.sized and not sw.compressed and sw.blocks == (rb_, nc) and torch.equal(sw.records, plain.values)
    assert torch.equal(sw.values[size_words(rb_, nc):], plain.values.reshape(-1))
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    rows = 64 * wgs * mt
    padded = torch.zeros(rb_ * rows, nc * 64, dtype=torch.int64)
    padded[:m, :k] = (_bits(w) & 0x7FFF != 0).to(torch.int64)
    over = (padded.view(rb_, rows, nc, 16, 4).sum(-1) > 2).sum((1, 3))  # [rb, chunk]
    header = wgs * mt * 1152 + (128 * wgs if plain.overflow else 0)
    assert torch.equal(sw.record_sizes(), -(-(header + over) // 4))
    assert int(sw.record_sizes().max()) * 4 <= plain.values.shape[-1]
    assert sw.bytes_read == 16 * int(sw.record_sizes().sum()) <= plain.nbytes
    assert sw.to("cpu").sized and sw.nbytes == plain.nbytes + 16 * -(-rb_ * nc // 8)


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (256, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_compressed_round_trip(rng, m, k, density, wgs, mt):
    """The compressed layout read back is the weight; its words are the slots layout's nonzero A words
    and overflow words; a head word's masks name them, each warp's base word is the count of the words
    before its first (the 2:4 part's from the chunk's first slot, the overflow's after every 2:4 word);
    its bytes are the metadata, head and base words and the slots of the fullest chunk's words."""
    w = _unstructured(m, k, density, rng)
    sw = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True)
    assert sw.compressed and sw.values.is_contiguous()
    assert torch.equal(_bits(sw.to_dense()), _bits(w))
    kk = -(-k // 4) * 4
    nz = torch.nn.functional.pad(w != 0, (0, kk - k)).view(m, -1, 4).sum(-1)
    assert sw.n_entries == int((nz - 2).clamp(min=0).sum()) and sw.overflow == (sw.n_entries > 0)
    mtiles, threads = wgs * mt, 128 * wgs
    v = sw.values.to(torch.int64) & 0xFFFFFFFF
    heads = v[..., mtiles * 128: mtiles * 128 + threads]
    bases = v[..., mtiles * 128 + threads: mtiles * 128 + threads + threads // 32]
    count = [sum((heads >> (b + s)) & 1 for b in range(16)).view(*v.shape[:2], threads // 32, 32).sum(-1)
             for s in (0, 16)]  # [rb, chunk, warp] per part
    assert torch.equal(bases & 0xFFFF, torch.cumsum(count[0], -1) - count[0])
    assert torch.equal(bases >> 16, count[0].sum(-1, keepdim=True) + torch.cumsum(count[1], -1) - count[1])
    words = count[0].sum(-1) + count[1].sum(-1)  # [rb, chunk]
    assert int(words.sum()) == int((nz > 0).sum() + (nz > 2).sum())  # a word per group, one more with overflow
    assert sw.slots == wgmma24_slots(max(int(words.max()), 1))
    assert sw.nbytes == v.shape[0] * v.shape[1] * (mtiles * 512 + threads * 4 + threads // 32 * 4 + 4 * sw.slots)
    slots_layout = Wgmma24Weight.from_dense(w, wgs, mt).values.to(torch.int64) & 0xFFFFFFFF
    meta = slots_layout[..., :mtiles * TILE_WORDS].reshape(*v.shape[:2], mtiles, TILE_WORDS)[..., 1024:]
    assert torch.equal(v[..., :mtiles * 128], meta.flatten(2))  # the same metadata words


@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (300, 136), (256, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_lone_halves_round_trip(rng, m, k, density, wgs, mt):
    """Lone halves (compressed, lone=True) read back are the weight, sized or not: a word per group with
    two nonzeros or a lone one at position 3, a 16-bit half per lone one at 0-2, a word more per group
    with overflow; the head words name the words, the lone masks the halves; each warp's lone base counts
    the halves before its first from the chunk's first slot (after every word); the words and halves take
    the slots of the fullest chunk's; sized, a record is its header, words and halves rounded up."""
    w = _unstructured(m, k, density, rng)
    sw = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True, lone=True)
    sized = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True, sized=True, lone=True)
    assert sw.lone and sw.to("cpu").lone and sized.lone
    assert torch.equal(_bits(sw.to_dense()), _bits(w)) and torch.equal(_bits(sized.to_dense()), _bits(w))
    kk = -(-k // 4) * 4
    nzg = torch.nn.functional.pad(_bits(w) & 0x7FFF != 0, (0, kk - k)).view(m, -1, 4)
    count = nzg.sum(-1)
    lone_at_3 = (count == 1) & nzg[..., 3]
    halves_expected = int(((count == 1) & ~lone_at_3).sum())
    words_expected = int((count >= 2).sum() + lone_at_3.sum() + (count > 2).sum())
    mtiles, threads = wgs * mt, 128 * wgs
    v = sw.values.to(torch.int64) & 0xFFFFFFFF
    at = mtiles * 128
    heads, at = v[..., at:at + threads], at + threads
    lone_masks = torch.stack([v[..., at:at + threads // 2] & 0xFFFF, v[..., at:at + threads // 2] >> 16], -1).flatten(-2)
    at += threads // 2
    bases, at = v[..., at:at + threads // 32], at + threads // 32
    lone_bases = torch.stack([v[..., at:at + threads // 64] & 0xFFFF, v[..., at:at + threads // 64] >> 16], -1).flatten(-2)
    assert not v[..., at + threads // 64:at + 4].any()  # padded to 16 bytes with zeros (4 words)
    popc = lambda t: sum((t >> b) & 1 for b in range(16)).view(*v.shape[:2], threads // 32, 32).sum(-1)  # noqa: E731
    words = [popc(heads & 0xFFFF), popc(heads >> 16)]  # [rb, chunk, warp]
    halves = popc(lone_masks)
    assert int(words[0].sum() + words[1].sum()) == words_expected and int(halves.sum()) == halves_expected
    assert torch.equal(heads & 0xFFFF & lone_masks, torch.zeros_like(heads))  # a register is a word or a half
    all_words = (words[0].sum(-1) + words[1].sum(-1))[..., None]
    assert torch.equal(lone_bases, 2 * all_words + torch.cumsum(halves, -1) - halves)
    assert torch.equal(bases & 0xFFFF, torch.cumsum(words[0], -1) - words[0])
    per_chunk = all_words[..., 0] + -(-halves.sum(-1) // 2)
    assert sw.slots == wgmma24_slots(max(int((2 * all_words[..., 0] + halves.sum(-1)).max() + 1) // 2, 1))
    record = mtiles * 512 + threads * 6 + threads // 32 * 4 + 16 + 4 * sw.slots  # the lone bases in 16 bytes
    assert record % 16 == 0 and sw.nbytes == v.shape[0] * v.shape[1] * record
    header = mtiles * 128 + threads * 3 // 2 + threads // 32 + 4
    assert torch.equal(sized.record_sizes(), -(-(header + per_chunk) // 4))
    assert sized.bytes_read <= Wgmma24Weight.from_dense(w, wgs, mt, compressed=True, sized=True).bytes_read + \
        v.shape[0] * v.shape[1] * 16 * -(-(threads // 2 + 4) // 4)  # at most the masks' and lone bases' bytes more
    with pytest.raises(ValueError, match="compressed=True"):
        Wgmma24Weight.from_dense(w, wgs, mt, lone=True)


def test_overflow_thread_layout():
    """A group's third and fourth nonzeros are the overflow operand's word (position 2 low, 3 high,
    zero where that position is not overflow) in the A register of the main part's layout: thread 32 w +
    4 g + q of m-tile t's warpgroup, register i of k-step ks; its head word's mask bit 8 t + 4 ks + i is
    set, and its words follow its first one in register order."""
    m, k = 256, 128
    w = torch.zeros(m, k, dtype=torch.bfloat16)
    cases = [(5, 3, (0, 1, 2, 3)), (5, 22, (0, 2, 3)), (77, 8, (1, 2, 3)), (200, 31, (0, 1, 2)), (130, 17, (0, 1, 3))]
    for r, grp, positions in cases:
        for n, p in enumerate(positions):
            w[r, 4 * grp + p] = float(r % 50 + n + 1)
    sw = Wgmma24Weight.from_dense(w, 2, 2)
    assert torch.equal(_bits(sw.to_dense()), _bits(w)) and sw.n_groups == len(cases)
    v = sw.values[0].to(torch.int64) & 0xFFFFFFFF  # row block 0: [chunk, words]
    head, words = v[:, 4 * TILE_WORDS: 4 * TILE_WORDS + 256], v[:, 4 * TILE_WORDS + 256:]
    seen = 0
    for r, grp, positions in cases:
        mtile, wv, hf, g = r // 64, (r % 64) // 16, (r % 16) // 8, r % 8
        chunk, ks, hq, q = grp // 16, (grp % 16) // 8, (grp % 8) // 4, grp % 4
        wg, t = mtile // 2, mtile % 2
        thread, bit = 128 * wg + 32 * wv + 4 * g + q, 8 * t + 4 * ks + hf + 2 * hq
        hw = int(head[chunk, thread])
        assert hw >> (START_BITS + bit) & 1
        index = (hw & ((1 << START_BITS) - 1)) + bin((hw >> START_BITS) & ((1 << bit) - 1)).count("1")
        word = int(words[chunk, index])
        over = positions[2:]
        for half, p in enumerate((2, 3)):
            bits = torch.tensor([word >> (16 * half) & 0xFFFF], dtype=torch.int32).to(torch.int16)
            want = w[r, 4 * grp + p] if p in over else 0.0
            assert float(bits.view(torch.bfloat16)) == float(want)
        seen += 1
    masks = sum(int(((head >> (START_BITS + b)) & 1).sum()) for b in range(16))
    assert masks == seen  # no other bit set


def test_bad_input():
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        Wgmma24Weight.from_dense(torch.randn(64, 64))
    with pytest.raises(ValueError, match="wgs and mt"):
        Wgmma24Weight.from_dense(torch.randn(64, 64).bfloat16(), wgs=3)


def test_slots():
    """Entry slots: a power of two from 16 to 256, then multiples of 256."""
    got = [wgmma24_slots(n) for n in (0, 1, 16, 17, 100, 256, 257, 500, 513, 8192)]
    assert got == [0, 16, 16, 32, 128, 256, 512, 512, 768, 8192]


def _stream(units, blocks, chunks, contributions, counters=None):
    """The STREAM launch's sums as wgmma24.cu does them (its integer formulas, transcribed): block j
    walks units [j U / P, (j + 1) U / P); at its last unit of an output, the output's blocks j_first ..
    j_last (block_of), and where they differ its partial to slot (j, 0 if the output is its first else
    1), an arrival on counter j_first (atom.inc with bound j_last - j_first: the count wraps to zero at
    the last arrival; ``counters``: the values the launch starts from, updated), and the last arrival
    sums the slots of blocks j_first .. j_last in block order. Returns the outputs as written (each
    once) and the slots and counters used."""
    block_of = lambda u: ((u + 1) * blocks - 1) // units  # noqa: E731
    counters = {} if counters is None else counters
    slots, arrivals, written = {}, {}, {}
    for j in range(blocks):
        u0, u1 = j * units // blocks, (j + 1) * units // blocks
        acc = 0.0
        for u in range(u0, u1):
            acc += contributions[u]
            o, c = divmod(u, chunks)
            if c != chunks - 1 and u != u1 - 1:
                continue
            first = o * chunks
            jf, jl = block_of(first), block_of(first + chunks - 1)
            if jf == jl:
                assert o not in written
                written[o] = acc
            else:
                key = (j, 0 if u0 >= first else 1)
                assert key not in slots, "a slot written twice"
                slots[key] = acc
                arrivals.setdefault(jf, []).append((o, j))
                count = counters.get(jf, 0)
                assert count == len(arrivals[jf]) - 1, "a counter not at zero when its output's launch began"
                counters[jf] = 0 if count >= jl - jf else count + 1  # atom.inc
                if len(arrivals[jf]) == jl - jf + 1:  # the last: every block's partial is in its slot
                    assert counters[jf] == 0  # wrapped: the waiting blocks go on, the next launch finds zero
                    assert o not in written and {b for _, b in arrivals[jf]} == set(range(jf, jl + 1))
                    written[o] = sum(slots[(b, 0 if b * units // blocks >= first else 1)] for b in range(jf, jl + 1))
            acc = 0.0
    return written, slots, arrivals


@pytest.mark.parametrize("outputs,chunks,blocks", [(43, 64, 132), (43, 64, 264), (16, 64, 132), (16, 172, 256),
                                                   (3, 12, 9), (1, 5, 1), (7, 3, 21), (5, 7, 12), (200, 64, 528)])
def test_stream_partition(outputs, chunks, blocks):
    """Every output written once with the sum of its units' contributions; a counter per split output
    (none shared, each below the block count), each arrived on by exactly its blocks; two slots per block."""
    units = outputs * chunks
    assert blocks <= units
    contributions = [float(1 << (u % 40)) + u for u in range(units)]
    written, slots, arrivals = _stream(units, blocks, chunks, contributions)
    assert sorted(written) == list(range(outputs))
    for o in range(outputs):
        assert written[o] == sum(contributions[o * chunks:(o + 1) * chunks])
    assert all(len({o for o, _ in v}) == 1 for v in arrivals.values())  # one output per counter
    assert max(arrivals, default=0) < blocks and all(s in (0, 1) for _, s in slots)


def test_stream_counters_wrap_to_zero_for_any_next_launch():
    """The counters wrap back to zero at each output's last arrival, so launches of other grids (other
    token counts) on the same counters find them at zero, with no reset."""
    counters = {}
    for outputs, chunks, blocks in [(16, 64, 256), (32, 64, 264), (16, 64, 132), (48, 64, 264), (16, 172, 256)]:
        units = outputs * chunks
        _stream(units, blocks, chunks, [1.0] * units, counters)
        assert counters and not any(counters.values())


def test_stream_blocks():
    """The SMs' resident blocks, each with at least WGMMA24_MIN_UNITS units where there are that many,
    and the kernel's 32-bit unit arithmetic kept in range."""
    assert wgmma24_stream_blocks(43 * 64, 132, 1) == 132
    assert wgmma24_stream_blocks(43 * 64, 132, 2) == 264
    assert wgmma24_stream_blocks(43 * 64, 132, 9) == 132 * WGMMA24_MAX_PER_SM
    assert wgmma24_stream_blocks(16 * 64, 132, 2) == 16 * 64 // WGMMA24_MIN_UNITS  # 4096 x 4096: 256 blocks
    assert wgmma24_stream_blocks(3, 132, 1) == 1
    big = 2**24
    assert (big + 1) * wgmma24_stream_blocks(big, 132, 4) < 2**32


def test_split_and_smem():
    # 11008 rows in blocks of 256: 86 blocks (172 would take 2 waves; clusters of 8, 344 blocks, more
    # than one round, are not offered, though the waves' model would take them)
    assert wgmma24_split(43, 64, 132) == 2
    assert wgmma24_split(16, 64, 132) == 8  # 4096 rows: 128 blocks, one round
    assert wgmma24_split(16, 172, 132) == 8  # 4096 x 11008
    assert wgmma24_split(16, 172, 100) == 4  # on 100 SMs, 128 blocks would not start at once
    assert wgmma24_split(200, 64, 132) == 4  # 7 waves of 18 chunks against 4 of 34 or 2 of 66
    assert wgmma24_split(16, 8, 132) == 2  # at least 4 chunks per part
    assert wgmma24_split(16, 24, 132) == 4  # clusters of 8 would have 3 chunks each
    # more token tiles, fewer parts: 4096 rows at 512 tokens (4 tiles) in one wave of 128 blocks, at
    # 2048 tokens (16 tiles) 2 waves of whole row blocks; 11008 rows at 512 tokens as at one tile
    assert [wgmma24_split(16, 64, 132, t) for t in (1, 4, 16)] == [8, 2, 1]
    assert wgmma24_split(43, 64, 132, 4) == 2
    assert smem_bytes(2, 2, 0) == 6 * (4 * 4608 + 128 * 64 * 2) <= 227 * 1024
    assert smem_bytes(2, 2, 16) == 6 * (4 * 4608 + 1024 + 64 + 128 * 64 * 2) <= 227 * 1024
    # up to 64 tokens a shallow pipeline (4 stages in the slots layout, 3 compressed); at 128 as many
    # as fit (at most 8); many entries: fewer
    assert [stages(2, 2, 512, t) for t in NTOKS] == [4, 4, 4, 5]
    assert [stages(2, 2, 512, t, compressed=True) for t in NTOKS] == [3, 3, 3, 8]
    assert smem_bytes(2, 2, 512, 16) == 4 * (4 * 4608 + 1024 + 2048 + 16 * 64 * 2)
    assert stages(2, 2, 8192, 128) == 3  # a dense weight: every group's 2 extra nonzeros
    sizes = [(w, m, s, t) for w in (1, 2) for m in (1, 2) for s in (0, 16, 1024, 4096 * w * m) for t in NTOKS]
    assert all(smem_bytes(*a) <= 227 * 1024 for a in sizes)
    # the partial sums fit in the stages they replace
    assert all(smem_bytes(w, m, s, t) >= t * (64 * w * m + 4) * 4 for w, m, s, t in sizes)
    assert [token_tile(n) for n in (1, 16, 17, 32, 33, 64, 65, 128, 129, 5000)] == [16, 16, 32, 32, 64, 64, 128,
                                                                                    128, 128, 128]


# ---------------------------------------------------------------------- GPU
def _needs_sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warpgroup 2:4 kernel needs a compute capability 9.0 GPU")


def _eager_and_replayed(run, fresh, ok, times=3):
    """``run()`` eagerly, then captured in a CUDA graph and replayed, ``times`` each, every time on fresh
    inputs (``fresh()``: new X, poisoned output) and its result checked (``ok()``)."""
    for _ in range(times):
        fresh()
        run()
        torch.cuda.synchronize()
        assert ok()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(times):
        fresh()
        graph.replay()
        torch.cuda.synchronize()
        assert ok()


def _fresh_launches(args, w, n, rng, also=lambda: True):
    """``args``' launch at ``n`` tokens with a bias, eagerly and replayed in a CUDA graph, twice each, on fresh X
    with the output poisoned: right against fp32, and ``also()`` after each."""
    from cross.kernels.launch import wgmma24_run

    m, k = w.shape
    x = torch.empty(n, k, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda()
    y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")

    def fresh():
        x.copy_(torch.randn(n, k, generator=rng).to(torch.bfloat16))
        y.fill_(float("nan"))

    _eager_and_replayed(lambda: wgmma24_run(x, args, b, y), fresh, lambda: _check(y, x, w, b) < 2e-2 and also(), 2)


def _check_token_tiles(m, k, weight, split, rng):
    """The build CROSS_CUDA_DEFINES now selects, on a weight of ``weight`` ("2:4": two nonzeros a group;
    else a density) launched with ``split``: the product at 16, 128 and 301 tokens (token tiles), with a
    bias at even counts, against fp32 with the output poisoned."""
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    w = (_weight(m, k, 2, rng) if weight == "2:4" else _unstructured(m, k, float(weight), rng)).cuda()
    args = wgmma24_args(Wgmma24Weight.from_dense(w), split)
    for n in (16, 128, 301):
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_run(x, args, b, y)
        assert _check(y, x, w, b) < 2e-2, f"n={n}"


def _check(y, x, w, b):
    ref = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    assert bool(torch.isfinite(y).all()), "non-finite output (unwritten?)"
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
    return float(err.max())


@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_a_smem_order(rng, wgs, mt):
    """The A_SMEM builds' records (pack/wgmma24.a_smem_order): each k-step's A word of row r and word j
    (group j of the k-step's 8, as the thread layout assigns them to registers) sits where the
    descriptor's no-swizzle K-major layout reads it: byte 256 (r / 8) + 128 (j / 4) + 16 (r % 8) +
    4 (j % 4) of the tile (the kernel's A_SBO, A_LBO); the metadata, head words and overflow unchanged."""
    from cross.pack.wgmma24 import a_smem_order

    w = _unstructured(300, 200, 0.4, rng)
    sw = Wgmma24Weight.from_dense(w, wgs, mt)
    new = a_smem_order(sw).to(torch.int64) & 0xFFFFFFFF
    old = sw.values.to(torch.int64) & 0xFFFFFFFF
    rb_, nc = sw.blocks
    n = sw.mtiles * TILE_WORDS
    t_old = old.view(rb_, nc, -1)[..., :n].reshape(rb_, nc, sw.mtiles, TILE_WORDS)
    t_new = new.view(rb_, nc, -1)[..., :n].reshape(rb_, nc, sw.mtiles, TILE_WORDS)
    for ks in range(2):
        for r in range(64):
            for j in range(8):
                wv, g, hf, q, hq = r // 16, r % 8, (r % 16) // 8, j % 4, j // 4
                reg = 512 * ks + 4 * (32 * wv + 4 * g + q) + hf + 2 * hq  # the thread layout (test_thread_layout)
                at = 512 * ks + (256 * (r // 8) + 128 * (j // 4) + 16 * (r % 8) + 4 * (j % 4)) // 4
                assert torch.equal(t_new[..., at], t_old[..., reg]), (ks, r, j)
    assert torch.equal(t_new[..., 1024:], t_old[..., 1024:])
    assert torch.equal(new.view(rb_, nc, -1)[..., n:], old.view(rb_, nc, -1)[..., n:])
    assert not torch.equal(new, old)
    sized = Wgmma24Weight.from_dense(w, wgs, mt, sized=True)  # the size table first, the same records after it
    words = size_words(rb_, nc)
    assert torch.equal(a_smem_order(sized), torch.cat([sized.values[:words], a_smem_order(sw).reshape(-1)]))
    with pytest.raises(ValueError, match="slots layout"):
        a_smem_order(Wgmma24Weight.from_dense(w, compressed=True))


@contextlib.contextmanager
def _built_with(monkeypatch, defines: str):
    """The wgmma24 builds and their launches with CROSS_CUDA_DEFINES ``defines`` inside the block (the
    variable is restored at the test's end; the builds are forgotten on the way in and out)."""
    from cross.kernels import cuda_backend

    monkeypatch.setenv(cuda_backend.DEFINES_ENV, defines)
    cuda_backend.wgmma24_defines_changed()
    try:
        yield
    finally:
        cuda_backend.wgmma24_defines_changed()


def test_a_smem_builds_reserve_the_overflow_buffers(monkeypatch):
    """An A_SMEM build (CROSS_CUDA_DEFINES=-DA_SMEM=1) gets its two overflow buffers past the stages,
    fewer stages where they would not fit, at least 3; none without overflow."""
    from cross.kernels import cuda_backend
    from cross.pack.wgmma24 import STAGE_SMEM, a_smem_reserve, record_bytes

    monkeypatch.setattr(cuda_backend, "_compile", lambda dev, src, name, defines, smem, arch_specific=False: (None, defines))
    monkeypatch.setattr(cuda_backend, "resident_blocks", lambda func, threads, smem: 1)
    with _built_with(monkeypatch, "-DA_SMEM=1"):
        for slots, ntok in ((64, 128), (64, 16), (0, 128)):
            defines, smem, _ = cuda_backend._wgmma24_kernel(0, True, 2, 2, 2, slots, ntok)
            n = cuda_backend.defined_stages(defines)
            reserve = a_smem_reserve(2, 2, slots)
            assert reserve == (32768 if slots else 0)
            assert smem == n * (record_bytes(2, 2, slots) + ntok * 128) + reserve <= STAGE_SMEM
            assert n >= 3 and n <= stages(2, 2, slots, ntok)
        assert cuda_backend.defined_stages(cuda_backend._wgmma24_kernel(0, True, 2, 2, 2, 64, 128)[0]) < stages(2, 2, 64, 128)
        with pytest.raises(ValueError, match="slots layout"):
            cuda_backend._wgmma24_kernel(0, True, 2, 2, 0, 64, 16, True, True)


def test_xtma_builds_align_the_stages(monkeypatch):
    """The default builds are XTMA ones (-DXTMA=1): their stages' X starts at a 1024-byte boundary past
    the record, with 1024 bytes more to align the first, and not more than the stages' budget;
    CROSS_CUDA_DEFINES -DXTMA=0, -DXPRE=1 or -DA_SMEM=1 give builds without; XTMA with XPRE is refused."""
    from cross.kernels import cuda_backend
    from cross.pack.wgmma24 import STAGE_SMEM, X_ALIGN, record_bytes, stage_bytes

    monkeypatch.setattr(cuda_backend, "_compile", lambda dev, src, name, defines, smem, arch_specific=False: (None, defines))
    monkeypatch.setattr(cuda_backend, "resident_blocks", lambda func, threads, smem: 1)
    with _built_with(monkeypatch, ""):
        for slots, ntok, compressed in ((64, 128, False), (64, 16, False), (0, 128, False), (1024, 32, True),
                                        (32, 64, False)):
            defines, smem, _ = cuda_backend._wgmma24_kernel(0, True, 2, 2, 2 if not compressed else 0, slots, ntok,
                                                            compressed, compressed)
            assert "-DXTMA=1" in defines
            n = cuda_backend.defined_stages(defines)
            record = record_bytes(2, 2, slots, compressed)
            stage = stage_bytes(2, 2, slots, ntok, compressed, x_align=True)
            assert stage % X_ALIGN == 0 and record <= stage - ntok * 128 < record + X_ALIGN
            assert smem == max(n * stage, ntok * (256 + 4) * 4) + X_ALIGN <= STAGE_SMEM + X_ALIGN
            assert 2 <= n <= stages(2, 2, slots, ntok, compressed)
    for defines, xtma in (("-DXTMA=0", False), ("-DXPRE=1", False), ("-DA_SMEM=1", False), ("-DXTMA=1", True),
                          ("-DA_SMEM=1 -DXTMA=1", True)):
        with _built_with(monkeypatch, defines):
            assert cuda_backend.wgmma24_xtma() is xtma
            if "A_SMEM" not in defines:  # (its stages reserve the overflow's buffers)
                built, smem, _ = cuda_backend._wgmma24_kernel(0, True, 2, 2, 2, 64, 128)
                assert f"-DXTMA={int(xtma)}" in built
                assert smem == smem_bytes(2, 2, 64, 128, cuda_backend.defined_stages(built), x_align=xtma)
    with _built_with(monkeypatch, "-DXTMA=1 -DXPRE=1"), pytest.raises(ValueError, match="choose one"):
        cuda_backend.wgmma24_xtma()


def test_x_map_geometry():
    """X's tensor map for the XTMA builds: dimensions innermost first (K, N), the row stride in bytes, a
    box of a chunk's 64 columns by the token tile; a row stride under K or not a multiple of 8 refused."""
    from cross.kernels.cuda_backend import x_map_geometry

    assert x_map_geometry(301, 2056, 2056, 128) == ((2056, 301), (4112,), (64, 128))
    assert x_map_geometry(5, 64, 72, 16) == ((64, 5), (144,), (64, 16))
    for ldx in (2052, 1000):
        with pytest.raises(ValueError, match="row stride"):
            x_map_geometry(4, 2056, ldx, 16)


def test_tuning_stages_size_the_shared_memory(monkeypatch):
    """A build whose stages CROSS_CUDA_DEFINES sets (a tuning build) is allowed the shared memory of
    those stages, not of the default's."""
    from cross.kernels import cuda_backend

    seen = {}
    monkeypatch.setattr(cuda_backend, "_compile", lambda dev, src, name, defines, smem, arch_specific=False: (
        seen.update(defines=defines, smem=smem), (None, "func"))[1])
    monkeypatch.setattr(cuda_backend, "resident_blocks", lambda func, threads, smem: (func, threads, smem))
    with _built_with(monkeypatch, "-DSTAGES=3"):
        smem = smem_bytes(2, 2, 64, 16, 3, x_align=True)  # (an XTMA build: the default)
        assert cuda_backend._wgmma24_kernel(0, True, 2, 2, 1, 64, 16) == ("func", smem, ("func", 256, smem))
        assert stages(2, 2, 64, 16) != 3 and seen["defines"][-1] == "-DSTAGES=3"


def test_x_at_an_odd_offset_is_copied_aligned():
    """The kernels copy X's rows in 16-byte pieces: a contiguous view that starts 2 bytes past an
    aligned address (which ``contiguous()`` returns as it is) is copied; an aligned X is not."""
    from cross.kernels.launch import _rows_16_byte_aligned

    base = torch.randn(1 + 4 * 64).to(torch.bfloat16)
    odd = base[1:].view(4, 64)
    assert odd.is_contiguous() and odd.data_ptr() % 16 and odd.contiguous().data_ptr() == odd.data_ptr()
    fixed = _rows_16_byte_aligned(odd)
    assert fixed.data_ptr() % 16 == 0 and torch.equal(fixed, odd)
    aligned = torch.randn(4, 64).to(torch.bfloat16)
    assert _rows_16_byte_aligned(aligned) is aligned
    assert _rows_16_byte_aligned(aligned.t().contiguous().t()).is_contiguous()  # column-major: copied


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(64, 64), (40, 200), (1000, 1032), (4096, 4096), (11008, 4096), (4096, 11008)])
@pytest.mark.parametrize("weight", ["2:4", "0.05", "0.3", "0.5", "1.0"])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1), (2, 1)])
def test_gpu_wgmma24_kernel(m, k, weight, wgs, mt, rng):
    """2:4 weights, and unstructured ones of the given density (their overflow as the second mma)."""
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    w = (_weight(m, k, 2, rng) if weight == "2:4" else _unstructured(m, k, float(weight), rng)).cuda()
    sw = Wgmma24Weight.from_dense(w, wgs, mt)
    for n in (1, 16, 20, 50, 100, 128, 300):  # blocks of 16, 32, 64 and 128 tokens
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_matmul(x, sw, b, out=y)
        assert _check(y, x, w, b) < 2e-2, f"n={n}"


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(40, 200), (1000, 1032), (11008, 4096)])
@pytest.mark.parametrize("weight", ["2:4", "0.05", "0.3", "1.0"])
@pytest.mark.parametrize("wgs,mt", [(2, 2), (1, 1)])
@pytest.mark.parametrize("sized", [False, True])
@pytest.mark.parametrize("lone", [False, True], ids=["words", "lone"])
def test_gpu_wgmma24_compressed(m, k, weight, wgs, mt, sized, lone, rng):
    """The compressed layout (both operands decoded from the nonzeros and a bitmap) at every block of
    tokens, with split K (the default by launch) and without; sized: each refill copies its record's
    own bytes; lone: its lone halves (a group's lone nonzero at positions 0-2 as its 16-bit value, the
    LONE build)."""
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    w = (_weight(m, k, 2, rng) if weight == "2:4" else _unstructured(m, k, float(weight), rng)).cuda()
    sw = Wgmma24Weight.from_dense(w, wgs, mt, compressed=True, sized=sized, lone=lone)
    for n, split in ((1, None), (16, 1), (20, None), (50, None), (60, 0), (100, 2), (128, None), (300, None)):
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_matmul(x, sw, b, out=y, split=split if split is None or sw.records.shape[1] >= 4 * split else None)
        assert _check(y, x, w, b) < 2e-2, f"n={n}"


def _twice_the_same_bits(args, w, n, rng):
    """Two launches of ``args`` on fresh X and bias under torch's deterministic algorithms (STREAM's end in
    block order), outputs poisoned: right against the product, the same bits both times, the STREAM
    counters back to zero after each."""
    from cross.kernels.launch import wgmma24_run

    m, k = w.shape
    x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
    b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda()
    ys, before = [], (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for _ in range(2):
            y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
            ys.append(wgmma24_run(x, args, b, y))
            assert _check(y, x, w, b) < 2e-2, f"n={n}"
            assert not args.counters.any()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert torch.equal(_bits(ys[0]), _bits(ys[1]))


@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 2, 3, 5, 8])
def test_gpu_wgmma24_splits(split, rng):
    """Every split of K sums to the same product, and a split's result is deterministic run to run."""
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    m, k = 700, 2056
    w = _unstructured(m, k, 0.3, rng).cuda()
    sw = Wgmma24Weight.from_dense(w)
    x = torch.randn(128, k, generator=rng).to(torch.bfloat16).cuda()
    y = torch.full((128, m), float("nan"), dtype=torch.bfloat16, device="cuda")
    wgmma24_matmul(x, sw, out=y, split=split)
    assert _check(y, x, w, None) < 2e-2
    assert torch.equal(wgmma24_matmul(x, sw, split=split).view(torch.int16), y.view(torch.int16))


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,compressed", [(700, 2056, 128, False), (2752, 4096, 16, False), (300, 520, 300, False),
                                              (256, 256, 1, False), (64, 64, 40, False), (4096, 4096, 16, True),
                                              (4096, 1024, 3, False)])
def test_gpu_wgmma24_stream(m, k, n, compressed, rng):
    """The launch's chunks in equal parts over the SMs (split 0): outputs split across blocks (4096
    rows at 16 tokens: each over ~16 blocks, which share its sums) sum their slots in block order under
    torch's deterministic algorithms, so two launches give the same bits; the counters are back to zero."""
    from cross.kernels.launch import wgmma24_args

    _needs_sm90()
    w = _unstructured(m, k, 0.3, rng).cuda()
    args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=compressed), 0)
    assert args.split == 0
    _twice_the_same_bits(args, w, n, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("m,k,n", [(4096, 4096, 16), (12288, 4096, 9), (700, 2056, 128), (300, 520, 300)])
def test_gpu_wgmma24_sized_stream(m, k, n, compressed, rng):
    """Sized records by STREAM (each refill copies its record's own bytes), either layout: right, the same
    bits twice, the counters back to zero, as the fixed records."""
    from cross.kernels.launch import wgmma24_args

    _needs_sm90()
    w = _unstructured(m, k, 0.5, rng).cuda()
    args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=compressed, sized=True), 0)
    assert args.sized and args.compressed == compressed and args.row_blocks == -(-m // 256)
    _twice_the_same_bits(args, w, n, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,wgs,mt", [(40, 200, 1, 1), (1000, 1032, 2, 2), (11008, 4096, 2, 2), (4096, 11008, 2, 2)])
@pytest.mark.parametrize("weight", ["2:4", "0.5", "1.0"])
def test_gpu_wgmma24_sized_slots(m, k, weight, wgs, mt, rng):
    """The slots layout's sized records (each refill copies its m-tiles, head words and the chunk's own
    overflow words) at every block of tokens, by clusters (the launch's default, and 1) and by STREAM."""
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    w = (_weight(m, k, 2, rng) if weight == "2:4" else _unstructured(m, k, float(weight), rng)).cuda()
    sw = Wgmma24Weight.from_dense(w, wgs, mt, sized=True)
    assert sw.sized and not sw.compressed
    for n, split in ((1, None), (16, None), (16, 0), (50, None), (100, 0), (300, None)):
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_matmul(x, sw, b, out=y, split=split)
        assert _check(y, x, w, b) < 2e-2, f"n={n}, split={split}"


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(4096, 4096, 16), (12288, 4096, 9), (700, 2056, 128)])
def test_gpu_wgmma24_stream_cooperative(m, k, n, rng, monkeypatch):
    """STREAM launched cooperatively (CROSS_STREAM_COOPERATIVE=1): right, the same bits twice, and the same
    inside a CUDA graph, replayed on fresh X with the output poisoned."""
    from cross.kernels import cuda_backend
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    _needs_sm90()
    monkeypatch.setenv(cuda_backend.COOPERATIVE_ENV, "1")
    w = _unstructured(m, k, 0.3, rng).cuda()
    args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=True, sized=True), 0)
    _twice_the_same_bits(args, w, n, rng)
    x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
    y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
    wgmma24_run(x, args, None, y)  # warm-up (the build) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        wgmma24_run(x, args, None, y)
    for _ in range(2):
        x.copy_(torch.randn(n, k, generator=rng).to(torch.bfloat16))
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert _check(y, x, w, None) < 2e-2 and not args.counters.any()


@pytest.mark.gpu
@pytest.mark.parametrize("sized", [False, True])
@pytest.mark.parametrize("m,k,n,reduce_tokens", [(4096, 4096, 16, 64), (12288, 4096, 9, 64), (22016, 4096, 16, 64),
                                                 (700, 2056, 64, 64), (300, 520, 33, 64), (700, 2056, 128, 64),
                                                 (700, 2056, 128, 128), (11008, 4096, 128, 128)])
def test_gpu_wgmma24_stream_reduce(m, k, n, reduce_tokens, sized, rng, monkeypatch):
    """STREAM's default end (CROSS_STREAM_REDUCE unset: split outputs summed by fp32 reductions, END_RED, up
    to 64 tokens; 128 by the deterministic end, or by END_RED where REDUCE_MAX_TOKENS is raised to 128, the
    tuning setting): right against fp32 on fresh X each launch with the output poisoned, eagerly and
    replayed in a CUDA graph, the counters and the reductions' area back to zero after every launch."""
    from cross.kernels import cuda_backend
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    _needs_sm90()
    monkeypatch.delenv(cuda_backend.REDUCE_ENV, raising=False)
    monkeypatch.setattr(cuda_backend, "REDUCE_MAX_TOKENS", reduce_tokens)
    builds, build = [], cuda_backend._wgmma24_kernel  # which build each launch takes (END_RED: its `reduce`)
    reduce_at = list(inspect.signature(build).parameters).index("reduce")
    monkeypatch.setattr(cuda_backend, "_wgmma24_kernel", lambda *a: builds.append(a[reduce_at]) or build(*a))
    w = _unstructured(m, k, 0.3, rng).cuda()
    args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=True, sized=sized), 0)
    area = cuda_backend.reduce_area(torch.cuda.current_device())
    x = torch.empty(n, k, dtype=torch.bfloat16, device="cuda")
    y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")

    def fresh():
        x.copy_(torch.randn(n, k, generator=rng).to(torch.bfloat16))
        y.fill_(float("nan"))

    _eager_and_replayed(lambda: wgmma24_run(x, args, None, y), fresh,
                        lambda: _check(y, x, w, None) < 2e-2 and not args.counters.any() and not area.any())
    assert set(builds) == {n <= reduce_tokens}


@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 2, None])
@pytest.mark.parametrize("weight", ["2:4", "0.1", "0.3"])
@pytest.mark.parametrize("m,k", [(11008, 4096), (700, 2056), (64, 64)])
def test_gpu_wgmma24_a_smem(m, k, weight, split, rng, monkeypatch):
    """A_SMEM builds (CROSS_CUDA_DEFINES=-DA_SMEM=1: A read by the mmas from shared memory in
    a_smem_order, the overflow staged there per unit, a unit's mmas waited for after the next unit's are
    issued) by clusters: the product at 16-301 tokens (token tiles), with and without overflow."""
    from cross.kernels import cuda_backend

    _needs_sm90()
    # after any CROSS_CUDA_DEFINES of the run (a tuning of the descriptors' strides, say)
    with _built_with(monkeypatch, os.environ.get(cuda_backend.DEFINES_ENV, "") + " -DA_SMEM=1"):
        _check_token_tiles(m, k, weight, split, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("split,reduce_tokens,propagate", [(0, 64, False), (0, 128, False), (0, 128, True),
                                                           (2, 64, False)])
@pytest.mark.parametrize("weight", ["2:4", "0.3"])
@pytest.mark.parametrize("m,k", [(11008, 4096), (700, 2056)])
def test_gpu_wgmma24_mma_ahead(m, k, weight, split, reduce_tokens, propagate, rng, monkeypatch):
    """MMA_AHEAD builds (CROSS_CUDA_DEFINES=-DMMA_AHEAD=1: two sets of 2:4 registers by the unit's parity, a
    unit's mmas waited for after the next unit's are issued, the stages one unit less ahead) of the compressed
    layout, sized, by STREAM (END_RED up to 64 tokens, or up to 128; and the PROPAGATE build) and by clusters of 2,
    with overflow and without (2:4): the product at 16, 128 and 300 tokens against fp32 on fresh X, output
    poisoned, eagerly and replayed in a CUDA graph, the STREAM counters and the reductions' area back to zero."""
    from cross.kernels import cuda_backend
    from cross.kernels.launch import wgmma24_args

    _needs_sm90()
    monkeypatch.setattr(cuda_backend, "REDUCE_MAX_TOKENS", reduce_tokens)
    monkeypatch.setattr(cuda_backend, "_REDUCE_AREAS", {})  # an area for as many tokens as the builds reduce
    with _built_with(monkeypatch, os.environ.get(cuda_backend.DEFINES_ENV, "") + " -DMMA_AHEAD=1"):
        w = (_weight(m, k, 2, rng) if weight == "2:4" else _unstructured(m, k, float(weight), rng)).cuda()
        args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=True, sized=True), split, propagate=propagate)
        area = cuda_backend.reduce_area(torch.cuda.current_device())
        for n in (16, 128, 300):
            _fresh_launches(args, w, n, rng, lambda: not args.counters.any() and not area.any())


@pytest.mark.gpu
@pytest.mark.parametrize("xtma", [True, False])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("split", [0, 2, None])
@pytest.mark.parametrize("m,k,n", [(2752, 4096, 16), (700, 2056, 128), (300, 520, 300), (1000, 1032, 5),
                                   (11008, 4096, 128)])
def test_gpu_wgmma24_xtma(m, k, n, split, compressed, xtma, rng, monkeypatch):
    """X copied from its rows by tensor copies through its tensor map (the default, XTMA: 128-byte
    swizzle, zeros past N and K), and by every thread's 16-byte copies (-DXTMA=0): the product against
    fp32 on fresh X, output poisoned, eagerly and replayed in a CUDA graph, by STREAM and by clusters."""
    from cross.kernels import cuda_backend
    from cross.kernels.launch import wgmma24_args

    _needs_sm90()
    with _built_with(monkeypatch, "" if xtma else "-DXTMA=0"):
        assert cuda_backend.wgmma24_xtma() is xtma
        w = _unstructured(m, k, 0.3, rng).cuda()
        _fresh_launches(wgmma24_args(Wgmma24Weight.from_dense(w, compressed=compressed), split), w, n, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("base", ["", "-DXPRE=1", "-DXPRE=1 -DA_SMEM=1"])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("m,k,weight", [(11008, 4096, "0.3"), (700, 2056, "2:4"), (700, 2056, "0.1"), (64, 64, "0.3")])
def test_gpu_wgmma24_rotate(m, k, weight, split, base, rng, monkeypatch):
    """ROTATE builds (CROSS_CUDA_DEFINES=-DROTATE=1: a cluster block walks its chunks from its row block's
    turn, wrapping), also with XPRE and A_SMEM: the product at 16-301 tokens against fp32, output poisoned."""
    from cross.kernels import cuda_backend

    _needs_sm90()
    with _built_with(monkeypatch, f"{base} -DROTATE=1".strip()):
        _check_token_tiles(m, k, weight, split, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("split", [0, None])
@pytest.mark.parametrize("m,k,n", [(2752, 4096, 16), (700, 2056, 128), (300, 520, 300), (64, 64, 40), (1000, 1032, 5)])
def test_gpu_wgmma24_xpre(m, k, n, split, compressed, rng, monkeypatch):
    """XPRE builds (CROSS_CUDA_DEFINES=-DXPRE=1: X laid out per launch as the stages hold it, a unit's
    part by one bulk copy beside the weight's): the product, by STREAM and by clusters."""
    from cross.kernels import cuda_backend
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    _needs_sm90()
    with _built_with(monkeypatch, "-DXPRE=1"):
        assert cuda_backend.wgmma24_xpre()
        w = _unstructured(m, k, 0.3, rng).cuda()
        args = wgmma24_args(Wgmma24Weight.from_dense(w, compressed=compressed), split)
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda()
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        wgmma24_run(x, args, b, y)
        assert _check(y, x, w, b) < 2e-2


@pytest.mark.gpu
def test_gpu_wgmma24_fp16(rng):
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    w = _unstructured(300, 520, 0.4, rng, torch.float16).cuda()
    x = torch.randn(77, 520, generator=rng).to(torch.float16).cuda()
    y = wgmma24_matmul(x, Wgmma24Weight.from_dense(w))
    assert _check(y, x, w, None) < 5e-3


@pytest.mark.gpu
def test_gpu_wgmma24_x_at_an_odd_offset(rng):
    """X a contiguous view 2 bytes past an aligned address (copied aligned before the launch)."""
    from cross.kernels.launch import wgmma24_matmul

    _needs_sm90()
    w = _unstructured(256, 512, 0.3, rng).cuda()
    x = torch.randn(1 + 20 * 512, generator=rng).to(torch.bfloat16).cuda()[1:].view(20, 512)
    assert x.data_ptr() % 16
    assert _check(wgmma24_matmul(x, Wgmma24Weight.from_dense(w)), x, w, None) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("split", [2, 0])
@pytest.mark.parametrize("m,k,n", [(700, 2056, 16), (2752, 4096, 40)])
def test_gpu_wgmma24_fp16(m, k, n, split, compressed, rng, monkeypatch):
    """fp16 weights and X (the IS_BF16=0 builds): the product against fp32 with the output poisoned, then
    under propagate=True Inf and NaN inputs as in the dense product (an Inf and a NaN weight too), by
    clusters and STREAM, both layouts, eager and replayed in a CUDA graph, fresh X each time."""
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    _needs_sm90()
    w = _unstructured(m, k, 0.3, rng, torch.float16)
    with _built_with(monkeypatch, ""):
        weight = Wgmma24Weight.from_dense(w.cuda(), compressed=compressed)
        x = torch.empty(n, k, dtype=torch.float16, device="cuda")
        y = torch.empty(n, m, dtype=torch.float16, device="cuda")
        b = torch.randn(m, generator=rng).to(torch.float16).cuda()

        def fresh():
            x.copy_(torch.randn(n, k, generator=rng).to(torch.float16))
            y.fill_(float("nan"))

        args = wgmma24_args(weight, split)
        _eager_and_replayed(lambda: wgmma24_run(x, args, b, y), fresh, lambda: _check(y, x, w.cuda(), b) < 2e-2, 2)
        w[5, 7], w[9, 12] = float("inf"), float("nan")  # stored nonzeros
        args = wgmma24_args(Wgmma24Weight.from_dense(w.cuda(), compressed=compressed), split, propagate=True)
        _check_nonfinite(lambda: wgmma24_run(x, args, b, y), x, y, w, b, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("compressed,sized,lone", [(False, False, False), (False, True, False), (True, True, False),
                                                  (True, True, True)])
@pytest.mark.parametrize("split", [2, 0])
@pytest.mark.parametrize("m,k,n", [(700, 2056, 16), (700, 2056, 128), (300, 520, 301), (2752, 4096, 40)])
def test_gpu_wgmma24_propagate(m, k, n, split, compressed, sized, lone, rng, monkeypatch):
    """propagate=True (the PROPAGATE build): Inf and NaN inputs give exactly the dense
    product's NaN and Inf (0 x Inf NaN, w x Inf an Inf of its sign, Infs of both signs NaN, a NaN input
    NaN everywhere in its token), also through an Inf and a NaN weight; the finite outputs, the tokens
    without one, as before; by clusters and STREAM, both layouts (and the compressed one's lone halves),
    fixed and sized records, eager and replayed in a CUDA graph."""
    from cross.kernels.launch import wgmma24_args, wgmma24_run

    _needs_sm90()
    w = _unstructured(m, k, 0.5, rng)
    w[5, 7], w[9, 12] = float("inf"), float("nan")  # stored nonzeros
    with _built_with(monkeypatch, ""):
        args = wgmma24_args(Wgmma24Weight.from_dense(w.cuda(), compressed=compressed, sized=sized, lone=lone), split,
                            propagate=True)
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda()
        x = torch.empty(n, k, dtype=torch.bfloat16, device="cuda")
        y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
        _check_nonfinite(lambda: wgmma24_run(x, args, b, y), x, y, w, b, rng)


def _check_nonfinite(run, x, y, w, b, rng):
    """``run()`` (a PROPAGATE launch of X ``x`` into ``y``, bias ``b``) on X with Inf and NaN in x's dtype
    (nonfinite_inputs) against the dense product's terms summed on the CPU (``w``: the weight there),
    eagerly and replayed in a CUDA graph, fresh X each time."""
    refs = []

    def fresh():
        xh = nonfinite_inputs(x.shape[0], x.shape[1], rng, x.dtype)
        refs.append(dense_terms(xh, w) + b.float().cpu())
        x.copy_(xh)
        y.fill_(float("nan"))

    def ok():
        assert_dense_nonfinite(y, refs[-1])
        return True

    _eager_and_replayed(run, fresh, ok, 2)
