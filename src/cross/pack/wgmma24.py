"""The warpgroup 2:4 format: a weight stored for Hopper's sparse warpgroup mma
(``wgmma.mma_async.sp`` m64nNk32, ``kernels/wgmma24.cu``) with the weight as the A operand: each
thread's A registers and metadata word are read as they are stored, and the hardware picks the
columns of X they multiply, so the kernel spends no instruction per element on the sparsity.

Groups are 4 consecutive columns (X^T is the mma's B operand in shared memory, read in its natural
column order). Each group keeps two slots, as in ``pack/sparse24.py``: first position < second, a
lone nonzero with a stored zero beside it, an empty group two; a 32-bit word (first slot in the low
half) and a nibble of metadata (first position | second position << 2). A group's third and fourth
nonzeros (the overflow) can only sit at its positions 2 and 3, so they are a second 2:4 operand
whose metadata is the same nibble (2 | 3 << 2) everywhere: the kernel runs a second sparse mma over
them, and the format stores only their words (position 2 in the low half, 3 in the high, zero where
that position is not overflow), for the groups that have any.

Layout. A row block is R = 64 mtiles rows (``mtiles`` = warpgroups x m-tiles per warpgroup), a chunk
64 columns (two k-steps of 32, 16 groups). Per row block and chunk, contiguous:

    per m-tile (4608 bytes): A words [k-step][thread][4], then the metadata [thread]
    where there is overflow: a head word [thread] (wg 128 + tw): its first overflow word counted from
    the chunk's first slot (bits 0-13) and per m-tile t of its warpgroup a mask (bits 14 + 8 t ..):
    bit 4 ks + i set where its A register i of k-step ks has an overflow word; then the chunk's
    overflow words in ``slots`` slots (the most any chunk holds, rounded up:
    costmodel.roofline.wgmma24_slots; zeros after its words), by thread, m-tile and register

so a chunk's overflow arrives in shared memory with its copy, and the kernel builds each thread's
registers of the second operand from its head word, without a loop. In a warpgroup's m64nNk32
sparse mma, thread tw = 32 w + 4 g + q holds as its A register i the word of row 16 w + g + 8 (i & 1),
group q + 4 (i >> 1) of the k-step (the m16n8k32 sparse A layout of each warp's 16 rows); its
metadata word: thread 32 w + 4 g + 2 ks + h holds the nibbles of rows 16 w + g (bits 0-15) and
16 w + g + 8 (bits 16-31), groups 4 h .. 4 h + 3 of k-step ks, group 4 h + i at bits 4 i (sparsity
selector ks).

Bytes: 0.5625 of dense whatever the sparsity (values and metadata), plus, where there is overflow,
1 / 32 of dense for the head words (two warpgroups of two m-tiles) and 4 bytes per slot (a group
with overflow needs one).

The compressed layout (``from_dense(..., compressed=True)``) stores the nonzeros alone: per row block
and chunk a bitmap word per m-tile and thread (nibble 4 ks + i: the group its A register i of
k-step ks holds), a 16-bit head per thread (its first nonzero, in halves from the chunk's first),
and the nonzeros by thread, m-tile, register and position (``_compressed``); the kernel builds both
operands' registers and the metadata from them (2 bytes per nonzero and 1 / 16 + 1 / 64 of dense).
"""

from __future__ import annotations

import torch

from .._checks import check_weight
from ..costmodel.roofline import wgmma24_slots
from .rows import _as_int16, _as_int32, decoded_product
from .sparse24 import _slots

GROUP = 4
KSTEP = 32
CHUNK = 64
TILE_ROWS = 64
TILE_WORDS = 2 * 128 * 4 + 128  # per m-tile and chunk: A words of both k-steps, then the metadata
#: Tokens per block of the kernel's builds (the mma's N): a launch takes the smallest that holds its
#: tokens (``token_tile``), else tiles of 128
NTOKS = (16, 32, 64, 128)
NTOK = NTOKS[-1]
#: A head word: the thread's first overflow word (bits 0 .. START_BITS - 1), then a mask of 8 bits per m-tile
START_BITS = 14
#: The pipeline's stages take at most this much shared memory, and are at most MAX_STAGES
STAGE_SMEM, MAX_STAGES = 220 * 1024, 8
_DTYPES = (torch.bfloat16, torch.float16)


class Wgmma24Weight:
    """A weight in the warpgroup 2:4 layout; ``from_dense`` packs one."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, wgs: int, mt: int, values: torch.Tensor,
                 slots: int, n_entries: int, n_groups: int = 0, compressed: bool = False):
        self.shape, self.dtype, self.wgs, self.mt, self.values = shape, dtype, wgs, mt, values
        # word slots per chunk: the overflow's (0: none), or the compressed layout's values; overflow
        # nonzeros, and groups holding them, in all
        self.slots, self.n_entries, self.n_groups = slots, n_entries, n_groups
        self.compressed = compressed
        self._decoded: list[torch.Tensor] = []  # to_dense(), once read (wgmma24_reference)

    @property
    def mtiles(self) -> int:
        return self.wgs * self.mt

    @property
    def rows(self) -> int:
        """Rows per row block (R)."""
        return TILE_ROWS * self.mtiles

    @property
    def overflow(self) -> bool:
        """Whether some group holds more than 2 nonzeros (the kernel's second mma runs)."""
        return self.n_entries > 0

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Device bytes of the format (tiles, head words and overflow word slots)."""
        return self.values.numel() * self.values.element_size()

    def to(self, device) -> "Wgmma24Weight":
        return Wgmma24Weight(self.shape, self.dtype, self.wgs, self.mt, self.values.to(device), self.slots,
                             self.n_entries, self.n_groups, self.compressed)

    def decoded(self) -> torch.Tensor:
        """``to_dense()``, read once and kept."""
        if not self._decoded:
            self._decoded.append(self.to_dense())
        return self._decoded[0]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, wgs: int = 2, mt: int = 2,
                   compressed: bool = False) -> "Wgmma24Weight":
        """Pack a 2-D bf16/fp16 weight: in every group of 4 consecutive columns the first two nonzeros
        in the 2:4 part, the others (at positions 2 and 3) in the overflow operand; zeros (and -0.0)
        are not stored. ``compressed``: the compressed layout (``_compressed``: nonzeros only, and a
        bitmap, from which the kernel builds both operands)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"warpgroup 2:4 format: expected a bfloat16 or float16 weight, got {weight.dtype}")
        if wgs not in (1, 2) or mt not in (1, 2):
            raise ValueError(f"Wgmma24Weight: wgs and mt must be 1 or 2, got {wgs!r}, {mt!r}")
        m, k = weight.shape
        dev = weight.device
        mtiles = wgs * mt
        rows = TILE_ROWS * mtiles
        rb_, nc = -(-m // rows), -(-k // CHUNK)
        w = torch.zeros(rb_ * rows, nc * CHUNK, dtype=weight.dtype, device=dev)
        w[:m, :k] = weight
        bits = w.view(torch.int16).to(torch.int64) & 0xFFFF
        nz = (bits & 0x7FFF) != 0
        over = nz & (nz.view(rb_ * rows, -1, GROUP).cumsum(-1).view_as(nz) > 2)  # a group's third and fourth
        n_entries, n_groups = int(over.sum()), int(over.view(rb_ * rows, -1, GROUP).any(-1).sum())
        if compressed:
            values, slots = _compressed(bits, nz, rb_, nc, wgs, mt)
            return cls((m, k), weight.dtype, wgs, mt, values, slots, n_entries, n_groups, True)
        nz = nz & ~over
        mask = (nz.view(rb_ * rows, -1, GROUP).to(torch.int64) * (1 << torch.arange(GROUP, device=dev))).sum(-1)
        p0t, p1t = (t.to(dev) for t in _slots())
        p0, p1 = p0t[mask], p1t[mask]
        vals = torch.where(nz, bits, 0).view(rb_ * rows, -1, GROUP)
        word = vals.gather(-1, p0[..., None])[..., 0] | (vals.gather(-1, p1[..., None])[..., 0] << 16)
        nib = p0 | (p1 << 2)
        # (rb, mtile, w, hf, g, chunk, ks, hq, q): row = 64 mtile + 16 w + 8 hf + g, group = 16 chunk + 8 ks + 4 hq + q
        shape = (rb_, mtiles, 4, 2, 8, nc, 2, 2, 4)
        word, nib = word.view(shape), nib.view(shape)
        # A words: [rb, chunk, mtile, ks, thread = 32 w + 4 g + q, i = hf + 2 hq]
        a = word.permute(0, 5, 1, 6, 2, 4, 8, 7, 3).reshape(rb_, nc, mtiles, 2 * 128 * 4)
        # metadata: thread 32 w + 4 g + 2 ks + hq: groups 4 hq + q (bits 4 q) of row g (low half), g + 8 (high)
        half = (nib << (4 * torch.arange(4, device=dev))).sum(-1)  # [rb, mtile, w, hf, g, chunk, ks, hq]
        meta = half[:, :, :, 0] | (half[:, :, :, 1] << 16)  # [rb, mtile, w, g, chunk, ks, hq]
        meta = meta.permute(0, 4, 1, 2, 3, 5, 6).reshape(rb_, nc, mtiles, 128)
        tiles = torch.cat([a, meta], -1).reshape(rb_, nc, mtiles * TILE_WORDS)
        slots = 0
        if n_entries:
            head, words = _overflow(bits, over, rb_, nc, wgs, mt)
            tiles = torch.cat([tiles, head, words], -1)
            slots = words.shape[-1]
        values = _as_int32(tiles).contiguous()
        if values.numel() * 4 >= 2**31:
            raise ValueError("Wgmma24Weight: the weight is too large for 32-bit offsets")
        return cls((m, k), weight.dtype, wgs, mt, values, slots, n_entries, n_groups)

    def to_dense(self) -> torch.Tensor:
        """The weight, read from the format as the kernel reads it: the sparse mma's slots, then the
        overflow operand's registers found through each thread's head word (the compressed layout:
        each thread's nonzeros from its first one, by its bitmap words)."""
        m, k = self.shape
        if self.compressed:
            dense = _read_compressed(self.values, self.wgs, self.mt, self.slots)
            return _as_int16(dense).view(self.dtype)[:m, :k].contiguous()
        mtiles = self.mtiles
        rb_, nc = self.values.shape[:2]
        dev = self.values.device
        v = self.values.to(torch.int64) & 0xFFFFFFFF
        tiles = v[..., :mtiles * TILE_WORDS].reshape(rb_, nc, mtiles, TILE_WORDS)
        a = tiles[..., :1024].reshape(rb_, nc, mtiles, 2, 4, 8, 4, 2, 2)  # rb, chunk, mtile, ks, w, g, q, hq, hf
        word = a.permute(0, 2, 4, 8, 5, 1, 3, 7, 6)  # rb, mtile, w, hf, g, chunk, ks, hq, q
        meta = tiles[..., 1024:].reshape(rb_, nc, mtiles, 4, 8, 2, 2)  # rb, chunk, mtile, w, g, ks, hq
        half = torch.stack([meta & 0xFFFF, meta >> 16], 4)  # rb, chunk, mtile, w, hf, g, ks, hq
        nib = (half[..., None] >> (4 * torch.arange(4, device=dev))) & 15  # ..., q
        nib = nib.permute(0, 2, 3, 4, 5, 1, 6, 7, 8)  # rb, mtile, w, hf, g, chunk, ks, hq, q
        rows = rb_ * TILE_ROWS * mtiles
        word, nib = word.reshape(rows, -1), nib.reshape(rows, -1)
        out = torch.zeros(rows, nc * CHUNK // GROUP, GROUP, dtype=torch.int64, device=dev)
        out.scatter_(-1, (nib & 3)[..., None], (word & 0xFFFF)[..., None])
        out.scatter_(-1, (nib >> 2)[..., None], (word >> 16)[..., None])
        dense = out.reshape(rows, nc * CHUNK)
        if self.overflow:
            over = _read_overflow(v[..., mtiles * TILE_WORDS:], self.wgs, self.mt, self.slots)
            over = over.reshape(rows, nc * CHUNK)
            dense = torch.where(over != 0, over, dense)
        return _as_int16(dense).view(self.dtype)[:m, :k].contiguous()


def wgmma24_reference(x: torch.Tensor, weight: Wgmma24Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) from the warpgroup 2:4 format in fp32, in X's dtype. The
    kernel multiplies only the stored slots, so this is its result for finite X; with non-finite
    inputs both differ from the dense product (the plans that run it have nan_policy 'ignore')."""
    return decoded_product(x, weight, bias)


# (rb, wg, t, w, hf, g, chunk, ks, hq, q) <-> (rb, chunk, wg, w, g, q, t, ks, hq, hf): a thread's groups
# by m-tile t and register 4 ks + i (i = hf + 2 hq); the compressed layout adds each group's positions
_BY_THREAD = (0, 6, 1, 3, 5, 9, 2, 7, 8, 4)
_BY_ROW = (0, 2, 6, 3, 9, 4, 1, 7, 8, 5)


def _overflow(bits: torch.Tensor, over: torch.Tensor, rb_: int, nc: int, wgs: int, mt: int):
    """Head words [rb, chunk, threads] (int64) and the overflow word slots [rb, chunk, slots] (int64
    bit patterns of int32 words, zeros after a chunk's) of the overflow ``over`` (a group's third and
    fourth nonzeros) of the padded weight's bit patterns ``bits``."""
    rows = TILE_ROWS * wgs * mt
    dev = bits.device
    over = over.view(rb_ * rows, nc * CHUNK // GROUP, GROUP)
    if bool(over[..., :2].any()):  # a third nonzero is at position 2 or 3
        raise RuntimeError("warpgroup 2:4 format: an overflow nonzero before a group's position 2")
    ov = torch.where(over, bits.view_as(over), 0)
    word = ov[..., 2] | (ov[..., 3] << 16)
    has = over[..., 2:].any(-1)
    shape = (rb_, wgs, mt, 4, 2, 8, nc, 2, 2, 4)
    threads = 128 * wgs
    word = word.view(shape).permute(_BY_THREAD).reshape(rb_ * nc, threads, mt * 8)
    has = has.view(shape).permute(_BY_THREAD).reshape(rb_ * nc, threads, mt * 8)
    reg = torch.arange(8, device=dev)
    masks = (has.view(rb_ * nc, threads, mt, 8).to(torch.int64) << reg).sum(-1)  # [(rb, chunk), thread, t]
    count = has.sum(-1)  # [(rb, chunk), thread]
    start = torch.cumsum(count, -1) - count
    head = start | (masks << (START_BITS + 8 * torch.arange(mt, device=dev))).sum(-1)
    per_chunk = count.sum(-1)
    slots = wgmma24_slots(int(per_chunk.max()))
    table = torch.zeros(rb_ * nc, slots, dtype=torch.int64, device=dev)
    chunk_of = torch.arange(rb_ * nc, device=dev)[:, None, None].expand_as(has)[has]
    first = (torch.cumsum(per_chunk, 0) - per_chunk)[chunk_of]
    table[chunk_of, torch.arange(len(chunk_of), device=dev) - first] = word[has] & 0xFFFFFFFF
    return head.view(rb_, nc, threads), table.view(rb_, nc, slots)


def _read_overflow(record: torch.Tensor, wgs: int, mt: int, slots: int) -> torch.Tensor:
    """The overflow operand's nonzeros as 16-bit patterns [rows of the row blocks, chunk columns] (int64,
    zero elsewhere), read from each chunk's record after the m-tiles (``record``: [rb, chunk, words],
    int64 bit patterns) as the kernel reads them: each thread's head word, its masks, and its words
    in the slots."""
    rb_, nc = record.shape[:2]
    dev = record.device
    threads = 128 * wgs
    head = record[..., :threads]  # [rb, chunk, thread]
    table = record[..., threads:threads + slots].reshape(rb_, nc, slots)
    masks = (head[..., None] >> (START_BITS + 8 * torch.arange(mt, device=dev))) & 0xFF  # [rb, chunk, thread, t]
    reg = torch.arange(8, device=dev)
    has = ((masks[..., None] >> reg) & 1).bool()  # [rb, chunk, thread, t, reg]
    before = torch.cumsum(has.flatten(-2), -1).view_as(has) - has.to(torch.int64)  # the thread's earlier words
    index = (head & (2**START_BITS - 1))[..., None, None] + before
    word = torch.where(has, table.gather(-1, torch.where(has, index, 0).flatten(2)).view_as(has), 0)
    word = word.view(rb_, nc, wgs, 4, 8, 4, mt, 2, 2, 2).permute(_BY_ROW)
    out = torch.zeros(*word.shape, GROUP, dtype=torch.int64, device=dev)
    out[..., 2] = word & 0xFFFF
    out[..., 3] = (word >> 16) & 0xFFFF
    return out.reshape(rb_ * TILE_ROWS * wgs * mt, nc * CHUNK)




def _compressed(bits: torch.Tensor, nz: torch.Tensor, rb_: int, nc: int, wgs: int, mt: int):
    """The compressed layout's records [rb, chunk, words] (int32) and its value word slots per chunk.
    Per row block and chunk: a bitmap word per m-tile and thread (nibble 4 ks + i: the nonzeros of the
    group its A register i of k-step ks holds), a 16-bit head per thread (its first nonzero, counted
    in halves from the chunk's first), then the nonzeros in slots of two, by thread, m-tile, register
    and position; the slots hold 3 words more than the fullest chunk's, which the kernel's loads of
    a group's four halves may read past its last."""
    dev = bits.device
    threads, mtiles = 128 * wgs, wgs * mt
    shape = (rb_, wgs, mt, 4, 2, 8, nc, 2, 2, 4, GROUP)
    nzt = nz.view(shape).permute(_BY_THREAD + (10,)).reshape(rb_, nc, threads, mt, 8, GROUP)
    vals = bits.view(shape).permute(_BY_THREAD + (10,)).reshape(rb_, nc, threads, mt, 8, GROUP)
    nib = (nzt.to(torch.int64) << torch.arange(GROUP, device=dev)).sum(-1)  # [rb, nc, thread, t, r]
    word = (nib << (4 * torch.arange(8, device=dev))).sum(-1)  # [rb, nc, thread, t]
    bitmaps = word.view(rb_, nc, wgs, 128, mt).transpose(3, 4).reshape(rb_, nc, mtiles * 128)
    count = nzt.flatten(3).sum(-1)  # [rb, nc, thread]
    head = torch.cumsum(count, -1) - count
    halves = count.sum(-1)  # [rb, nc]
    if int(halves.max()) >= 2**16:
        raise RuntimeError("warpgroup 2:4 format: a chunk's nonzeros over the 16-bit heads")
    slots = wgmma24_slots(int(halves.max()) // 2 + 3)
    stream = torch.zeros(rb_ * nc, 2 * slots, dtype=torch.int64, device=dev)
    chunk_of = torch.arange(rb_ * nc, device=dev).view(rb_, nc, 1, 1, 1, 1).expand_as(nzt)[nzt]
    first = (torch.cumsum(halves.flatten(), 0) - halves.flatten())[chunk_of]
    stream[chunk_of, torch.arange(len(chunk_of), device=dev) - first] = vals[nzt]
    heads = head.view(rb_, nc, threads // 2, 2)
    records = torch.cat([bitmaps, heads[..., 0] | (heads[..., 1] << 16),
                         (stream[:, 0::2] | (stream[:, 1::2] << 16)).view(rb_, nc, slots)], -1)
    return _as_int32(records).contiguous(), slots


def _read_compressed(values: torch.Tensor, wgs: int, mt: int, slots: int) -> torch.Tensor:
    """The compressed layout's weight as 16-bit patterns [rows of the row blocks, chunk columns]
    (int64), read as the kernel reads it: each thread's bitmap words, its head, and its nonzeros
    from there in order."""
    rb_, nc = values.shape[:2]
    dev = values.device
    threads, mtiles = 128 * wgs, wgs * mt
    v = values.to(torch.int64) & 0xFFFFFFFF
    bitmaps = v[..., :mtiles * 128].view(rb_, nc, wgs, mt, 128).transpose(3, 4).reshape(rb_, nc, threads, mt)
    nib = (bitmaps[..., None] >> (4 * torch.arange(8, device=dev))) & 15  # [rb, nc, thread, t, r]
    nzt = ((nib[..., None] >> torch.arange(GROUP, device=dev)) & 1).bool()
    hw = v[..., mtiles * 128: mtiles * 128 + threads // 2]
    head = torch.stack([hw & 0xFFFF, hw >> 16], -1).reshape(rb_, nc, threads)
    words = v[..., mtiles * 128 + threads // 2:]
    stream = torch.stack([words & 0xFFFF, words >> 16], -1).reshape(rb_, nc, 2 * slots)
    rank = torch.cumsum(nzt.flatten(3).to(torch.int64), -1).view_as(nzt) - 1
    index = torch.where(nzt, head[..., None, None, None] + rank, 0)
    out = torch.where(nzt, stream.gather(-1, index.flatten(2)).view_as(nzt), 0)
    out = out.view(rb_, nc, wgs, 4, 8, 4, mt, 2, 2, 2, GROUP).permute(_BY_ROW + (10,))
    return out.reshape(rb_ * TILE_ROWS * mtiles, nc * CHUNK)


def token_tile(n: int) -> int:
    """Tokens per block for a launch of ``n`` tokens: the smallest of NTOKS that holds them, else 128."""
    return next(t for t in NTOKS if n <= t or t == NTOK)


def record_bytes(wgs: int, mt: int, slots: int, compressed: bool = False) -> int:
    """Bytes of a row block's chunk in the format: the m-tiles' words, and where there is overflow
    (``slots`` > 0) the head words and the overflow word slots; ``compressed``: the bitmap words, the
    heads and the value word slots."""
    if compressed:
        return wgs * mt * 128 * 4 + 128 * wgs * 2 + 4 * slots
    return wgs * mt * TILE_WORDS * 4 + (128 * wgs * 4 + 4 * slots if slots else 0)


def stages(wgs: int, mt: int, slots: int, ntok: int = NTOK, compressed: bool = False) -> int:
    """The pipeline's stages (chunks in flight, one being read): as many as STAGE_SMEM holds, at most
    MAX_STAGES (6 at 128 tokens, 8 at 16-64 in the default block with little overflow)."""
    return max(2, min(MAX_STAGES, STAGE_SMEM // (record_bytes(wgs, mt, slots, compressed) + ntok * CHUNK * 2)))


def smem_bytes(wgs: int, mt: int, slots: int, ntok: int = NTOK, n_stages: int | None = None,
               compressed: bool = False) -> int:
    """Dynamic shared memory of a wgmma24 block (kernels/wgmma24.cu) of ``ntok`` tokens over a weight
    of ``slots`` overflow word slots per chunk (``compressed``: value word slots): its pipeline's
    stages (``n_stages``, default ``stages``), which then hold the partial sums."""
    n_stages = stages(wgs, mt, slots, ntok, compressed) if n_stages is None else n_stages
    pipeline = n_stages * (record_bytes(wgs, mt, slots, compressed) + ntok * CHUNK * 2)
    return max(pipeline, ntok * (TILE_ROWS * wgs * mt + 4) * 4)
