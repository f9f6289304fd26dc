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

The compressed layout (``from_dense(..., compressed=True)``) stores only the A words that are not
zero, of both operands (``_compressed``): per row block and chunk, the metadata words as above, a
head word per thread (bits 8 t + r: its A register r = 4 ks + i of m-tile t has a word in the 2:4
part; bits 16 + 8 t + r: in the overflow), a base word per warp (its first 2:4 word, bits 0-15, and
its first overflow word, bits 16-31, counted from the chunk's first slot), then the words in
``slots`` slots: all the threads' 2:4 words, then their overflow words, each thread's by m-tile and
register. A thread finds its first word of each part from its warp's base and the counts of the
lanes before it (a scan across the warp), and builds its registers like the overflow's. Bytes: 4 per
group with a nonzero and 4 more per group with overflow, 1 / 16 of dense for the metadata and 1 / 32
for the head words (the default block): whatever the sparsity, at most the slots layout's bytes and
1 / 32 of dense.

Sized records (``from_dense(..., sized=True)``, either layout): the same records at the same stride,
and before them each record's size (its header and the words it uses, rounded up to 16 bytes; uint16
in 16-byte units, by row block and chunk, the table padded to 16 bytes: ``size_words``), so that a
launch copies each chunk's own bytes rather than the weight's largest chunk's (``-DSIZED=1``): the
slots layout's header is its m-tiles and head words, its words the chunk's overflow words.
``values`` is then one flat int32 buffer, the sizes then the records; the device memory is the
records' plus 2 bytes a record; the bytes a launch reads (``bytes_read``) are the records' sizes.
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
#: At most this many stages in blocks of up to SHALLOW_TOKENS tokens, by layout (slots, compressed): a
#: shallower burst of copies at the launch's start ends the blocks sooner (H100, 16 and 64 tokens:
#: docs/perf-notes.md, "The pipeline's depth at 16-64 tokens")
SHALLOW_TOKENS, SHALLOW_STAGES = 64, (4, 3)
_DTYPES = (torch.bfloat16, torch.float16)


class Wgmma24Weight:
    """A weight in the warpgroup 2:4 layout; ``from_dense`` packs one."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, wgs: int, mt: int, values: torch.Tensor,
                 slots: int, n_entries: int, n_groups: int = 0, compressed: bool = False, sized: bool = False,
                 lone: bool = False):
        self.shape, self.dtype, self.wgs, self.mt, self.values = shape, dtype, wgs, mt, values
        # word slots per chunk: the overflow's (0: none), or the compressed layout's values; overflow
        # nonzeros, and groups holding them, in all
        self.slots, self.n_entries, self.n_groups = slots, n_entries, n_groups
        self.compressed, self.sized, self.lone = compressed, sized, lone
        self._decoded: list[torch.Tensor] = []  # to_dense(), once read (wgmma24_reference)

    @property
    def layout(self) -> str:
        """The layout's name as plans give it (``make_plan``'s ``wgmma_layout``): 'slots', 'compressed' or
        'lone' (the compressed layout with lone halves)."""
        return "lone" if self.lone else "compressed" if self.compressed else "slots"

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
        """Device bytes of the format (tiles, head words and overflow word slots; sized records: and their
        sizes)."""
        return self.values.numel() * self.values.element_size()

    @property
    def blocks(self) -> tuple[int, int]:
        """(row blocks, chunks) of the records."""
        return -(-self.shape[0] // self.rows), -(-self.shape[1] // CHUNK)

    @property
    def records(self) -> torch.Tensor:
        """The records [row blocks, chunks, words] (int32; sized records: the flat buffer past the sizes)."""
        if not self.sized:
            return self.values
        rb_, nc = self.blocks
        return self.values[size_words(rb_, nc):].view(rb_, nc, -1)

    def record_sizes(self) -> torch.Tensor:
        """Sized records: each record's size in 16-byte units [row blocks, chunks] (int64)."""
        if not self.sized:
            raise ValueError("Wgmma24Weight.record_sizes: the records are not sized (from_dense(..., sized=True))")
        rb_, nc = self.blocks
        table = self.values[:size_words(rb_, nc)].view(torch.int16)[:rb_ * nc]
        return (table.to(torch.int64) & 0xFFFF).view(rb_, nc)

    @property
    def bytes_read(self) -> int:
        """Bytes of the weight a launch reads for one token tile: every record (sized: its own size)."""
        return int(self.record_sizes().sum()) * 16 if self.sized else self.nbytes

    def to(self, device) -> "Wgmma24Weight":
        return Wgmma24Weight(self.shape, self.dtype, self.wgs, self.mt, self.values.to(device), self.slots,
                             self.n_entries, self.n_groups, self.compressed, self.sized, self.lone)

    def decoded(self) -> torch.Tensor:
        """``to_dense()``, read once and kept."""
        if not self._decoded:
            self._decoded.append(self.to_dense())
        return self._decoded[0]

    @classmethod
    def for_layout(cls, weight: torch.Tensor, layout: str) -> "Wgmma24Weight":
        """``weight`` packed as the runtime packs ``layout`` ('slots', 'compressed' or 'lone'; ``layout``'s
        names): the compressed layout's records, lone halves or not, sized, so that a launch copies each
        record's own bytes; the slots layout's fixed (sized, they read 4% fewer bytes at 50% and timed no
        faster: docs/perf-notes.md, "Sized records for the slots layout, measured")."""
        if layout not in ("slots", "compressed", "lone"):
            raise ValueError(f"Wgmma24Weight.for_layout: expected 'slots', 'compressed' or 'lone', got {layout!r}")
        compressed = layout != "slots"
        return cls.from_dense(weight, compressed=compressed, sized=compressed, lone=layout == "lone")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, wgs: int = 2, mt: int = 2, compressed: bool = False,
                   sized: bool = False, lone: bool = False) -> "Wgmma24Weight":
        """Pack a 2-D bf16/fp16 weight: in every group of 4 consecutive columns the first two nonzeros
        in the 2:4 part, the others (at positions 2 and 3) in the overflow operand; zeros (and -0.0)
        are not stored. ``compressed``: the compressed layout (``_compressed``: nonzeros only, and a
        bitmap, from which the kernel builds both operands); ``sized``: its records' sizes kept, so
        that a launch copies each record's own bytes; ``lone`` (with ``compressed``): lone halves, a
        group's lone nonzero at positions 0-2 stored as its 16-bit value (``_compressed``)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"warpgroup 2:4 format: expected a bfloat16 or float16 weight, got {weight.dtype}")
        if wgs not in (1, 2) or mt not in (1, 2):
            raise ValueError(f"Wgmma24Weight: wgs and mt must be 1 or 2, got {wgs!r}, {mt!r}")
        if lone and not compressed:
            raise ValueError("Wgmma24Weight: lone halves (lone=True) are a form of the compressed layout: "
                             "pass compressed=True too")
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
        if compressed:
            values, slots = _compressed(word, meta, bits, over, rb_, nc, wgs, mt, lone)
            if sized:
                values = torch.cat([_size_table(values, wgs, mt, lone=lone), values.reshape(-1)])
        else:
            tiles = torch.cat([a, meta], -1).reshape(rb_, nc, mtiles * TILE_WORDS)
            slots = 0
            if n_entries:
                head, words = _overflow(bits, over, rb_, nc, wgs, mt)
                tiles = torch.cat([tiles, head, words], -1)
                slots = words.shape[-1]
            values = _as_int32(tiles).contiguous()
            if sized:
                values = torch.cat([_size_table(values, wgs, mt, compressed=False), values.reshape(-1)])
        if values.numel() * 4 >= 2**31:
            raise ValueError("Wgmma24Weight: the weight is too large for 32-bit offsets")
        return cls((m, k), weight.dtype, wgs, mt, values, slots, n_entries, n_groups, compressed, sized, lone)

    def to_dense(self) -> torch.Tensor:
        """The weight, read from the format as the kernel reads it: the sparse mma's slots, then the
        overflow operand's registers found through each thread's head word (the compressed layout:
        both operands' registers by each thread's masks, from its first words)."""
        m, k = self.shape
        mtiles = self.mtiles
        rb_, nc = self.records.shape[:2]
        dev = self.values.device
        v = self.records.to(torch.int64) & 0xFFFFFFFF
        if self.sized:  # only each record's own bytes: what a launch copies
            words = torch.arange(v.shape[-1], device=dev)
            v = torch.where(words < 4 * self.record_sizes()[..., None], v, 0)
        if self.compressed:
            tiles, over = _read_compressed(v, self.wgs, self.mt, self.slots, self.lone)
        else:
            tiles = v[..., :mtiles * TILE_WORDS].reshape(rb_, nc, mtiles, TILE_WORDS)
            over = _read_overflow(v[..., mtiles * TILE_WORDS:], self.wgs, self.mt, self.slots) if self.overflow else None
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
        if over is not None:
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


def _overflow_words(bits: torch.Tensor, over: torch.Tensor, rb_: int, nc: int, wgs: int, mt: int):
    """The overflow operand's words (position 2 in the low half, 3 in the high; int64 bit patterns) of
    the overflow ``over`` (a group's third and fourth nonzeros) of the padded weight's bit patterns
    ``bits``, and which groups have one, both [rows, groups]."""
    rows = TILE_ROWS * wgs * mt
    over = over.view(rb_ * rows, nc * CHUNK // GROUP, GROUP)
    if bool(over[..., :2].any()):  # a third nonzero is at position 2 or 3
        raise RuntimeError("warpgroup 2:4 format: an overflow nonzero before a group's position 2")
    ov = torch.where(over, bits.view_as(over), 0)
    return ov[..., 2] | (ov[..., 3] << 16), over[..., 2:].any(-1)


def _by_thread(t: torch.Tensor, rb_: int, nc: int, wgs: int, mt: int) -> torch.Tensor:
    """A per-group tensor (rows x groups, or the (rb, m-tile, w, hf, g, chunk, ks, hq, q) view) in a
    chunk's thread order: [(rb, chunk), thread, m-tile t x 8 + register 4 ks + i]."""
    return t.reshape(rb_, wgs, mt, 4, 2, 8, nc, 2, 2, 4).permute(_BY_THREAD).reshape(rb_ * nc, 128 * wgs, mt * 8)


def _masks(has: torch.Tensor, mt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per thread a mask of the registers with a word ([(rb, chunk), thread, mt x 8] -> int64, m-tile t's
    8 bits at 8 t) and their count."""
    dev = has.device
    masks = (has.to(torch.int64) << torch.arange(8 * mt, device=dev)).sum(-1)
    return masks, has.sum(-1)


def _slot_table(words: torch.Tensor, has: torch.Tensor, slots: int | None = None):
    """The ``has`` words of each chunk in order ([(rb, chunk), ...] flattened per chunk) in a table of
    ``slots`` slots per chunk (default ``wgmma24_slots`` of the fullest chunk's), zeros after a chunk's
    words: ([(rb, chunk), slots] int64, slots)."""
    dev = words.device
    has, words = has.flatten(1), words.flatten(1)
    per_chunk = has.sum(-1)
    slots = wgmma24_slots(int(per_chunk.max())) if slots is None else slots
    table = torch.zeros(has.shape[0], slots, dtype=torch.int64, device=dev)
    chunk_of = torch.arange(has.shape[0], device=dev)[:, None].expand_as(has)[has]
    first = (torch.cumsum(per_chunk, 0) - per_chunk)[chunk_of]
    table[chunk_of, torch.arange(len(chunk_of), device=dev) - first] = words[has] & 0xFFFFFFFF
    return table, slots


def _overflow(bits: torch.Tensor, over: torch.Tensor, rb_: int, nc: int, wgs: int, mt: int):
    """Head words [rb, chunk, threads] (int64) and the overflow word slots [rb, chunk, slots] (int64
    bit patterns of int32 words, zeros after a chunk's) of the overflow ``over`` (a group's third and
    fourth nonzeros) of the padded weight's bit patterns ``bits``."""
    word, has = _overflow_words(bits, over, rb_, nc, wgs, mt)
    word, has = _by_thread(word, rb_, nc, wgs, mt), _by_thread(has, rb_, nc, wgs, mt)
    masks, count = _masks(has, mt)
    start = torch.cumsum(count, -1) - count
    head = start | (masks << START_BITS)
    table, slots = _slot_table(word, has)
    return head.view(rb_, nc, -1), table.view(rb_, nc, slots)


def _registers(masks: torch.Tensor, start: torch.Tensor, table: torch.Tensor, mt: int) -> torch.Tensor:
    """Each thread's registers as the kernel builds them ([rb, chunk, thread, t, reg], int64; zero where
    its mask has no bit): register r of m-tile t is the table's word at the thread's ``start`` plus
    the bits of its ``masks`` (m-tile t's at 8 t) below 8 t + r."""
    dev = masks.device
    has = ((masks[..., None] >> torch.arange(8 * mt, device=dev)) & 1).bool()  # [rb, chunk, thread, 8 mt]
    before = torch.cumsum(has, -1) - has.to(torch.int64)  # the thread's earlier words
    index = torch.where(has, start[..., None] + before, 0)
    word = torch.where(has, table.gather(-1, index.flatten(2)).view_as(has), 0)
    return word.view(*masks.shape, mt, 8)


def _read_overflow(record: torch.Tensor, wgs: int, mt: int, slots: int) -> torch.Tensor:
    """The overflow operand's nonzeros as 16-bit patterns [rows of the row blocks, chunk columns] (int64,
    zero elsewhere), read from each chunk's record after the m-tiles (``record``: [rb, chunk, words],
    int64 bit patterns) as the kernel reads them: each thread's head word, its masks, and its words
    in the slots."""
    threads = 128 * wgs
    head = record[..., :threads]  # [rb, chunk, thread]
    table = record[..., threads:threads + slots]
    word = _registers(head >> START_BITS, head & (2**START_BITS - 1), table, mt)
    return _overflow_dense(word, wgs, mt)


def _overflow_dense(word: torch.Tensor, wgs: int, mt: int) -> torch.Tensor:
    """The overflow registers ([rb, chunk, thread, t, reg]) as 16-bit patterns at positions 2 and 3 of
    their groups: [rows of the row blocks, chunk columns] (int64, zero elsewhere)."""
    rb_, nc = word.shape[:2]
    dev = word.device
    word = word.reshape(rb_, nc, wgs, 4, 8, 4, mt, 2, 2, 2).permute(_BY_ROW)
    out = torch.zeros(*word.shape, GROUP, dtype=torch.int64, device=dev)
    out[..., 2] = word & 0xFFFF
    out[..., 3] = (word >> 16) & 0xFFFF
    return out.reshape(rb_ * TILE_ROWS * wgs * mt, nc * CHUNK)


def _compressed(word: torch.Tensor, meta: torch.Tensor, bits: torch.Tensor, over: torch.Tensor, rb_: int,
                nc: int, wgs: int, mt: int, lone: bool = False):
    """The compressed layout's records [rb, chunk, words] (int32) and word slots per chunk, from the 2:4
    part's words (the (rb, m-tile, w, hf, g, chunk, ks, hq, q) view; zero: no nonzero in the group),
    its metadata words [rb, chunk, m-tiles, 128] and the overflow ``over`` of the bit patterns
    ``bits``. Per chunk: the metadata, a head word per thread (the 2:4 part's masks at bits 0-15, the
    overflow's at 16-31), a base word per warp (its first word of each part), then the 2:4 part's
    words of every thread and after them the overflow's.

    ``lone`` (lone halves): a 2:4 word whose high half is zero (a group's lone nonzero at position 0, 1
    or 2: the slots put one at 3 in the high half, beside a zero at 2) is stored as its low half, after
    all the words, two to a slot. The head word's 2:4 mask then names the pairs only; a 16-bit mask per
    thread after the head words names its lone halves, and a 16-bit base per warp after the base words
    its first lone half, counted in halves from the first slot (``lone_base_words``: padded to 16 bytes)."""
    threads = 128 * wgs
    ow, oh = _overflow_words(bits, over, rb_, nc, wgs, mt)
    w24, o24 = _by_thread(word, rb_, nc, wgs, mt), _by_thread(ow, rb_, nc, wgs, mt)
    h24, hov = w24 != 0, _by_thread(oh, rb_, nc, wgs, mt)
    hl = h24 & ((w24 >> 16) == 0) if lone else torch.zeros_like(h24)
    h24 = h24 & ~hl
    (m24, c24), (mov, cov), (ml, cl) = (_masks(h, mt) for h in (h24, hov, hl))
    per_warp = torch.stack([c24, cov, cl], -1).view(rb_ * nc, threads // 32, 32, 3).sum(2)  # [(rb, chunk), warp, part]
    before = torch.cumsum(per_warp, 1) - per_warp
    words = per_warp[..., :2].sum(1)  # [(rb, chunk), part]
    before[..., 1] += words[:, :1]  # the overflow's words after every 2:4 word
    before[..., 2] += 2 * words.sum(-1, keepdim=True)  # the lone halves after every word, counted in halves
    if int(before.max()) >= 2**16 or int((2 * words.sum(-1) + per_warp[..., 2].sum(-1)).max()) >= 2**17:
        raise RuntimeError("warpgroup 2:4 format: a chunk's words over the 16-bit bases")
    halves = [torch.stack([w & 0xFFFF, w >> 16], -1).flatten(1) for w in (w24, o24)] + [(w24 & 0xFFFF).flatten(1)]
    has = [h.repeat_interleave(2, -1).flatten(1) for h in (h24, hov)] + [hl.flatten(1)]
    n_words = -(-max(int(torch.cat(has, 1).sum(-1).max()), 1) // 2)  # a slot at least
    table, _ = _slot_table(torch.cat(halves, 1), torch.cat(has, 1), 2 * wgmma24_slots(n_words))
    table = table[:, 0::2] | (table[:, 1::2] << 16)

    def two_a_word(t):  # 16-bit fields [(rb, chunk), n] as n / 2 words, the first in the low half
        t = t.reshape(rb_ * nc, -1, 2)
        return t[..., 0] | (t[..., 1] << 16)

    none = table[:, :0]
    lone_bases = torch.nn.functional.pad(two_a_word(before[..., 2]), (0, lone_base_words(wgs) - threads // 64))
    records = torch.cat([meta.reshape(rb_ * nc, -1), m24 | (mov << 16), two_a_word(ml) if lone else none,
                         before[..., 0] | (before[..., 1] << 16), lone_bases if lone else none, table], -1)
    return _as_int32(records.view(rb_, nc, -1)).contiguous(), table.shape[-1]


def lone_base_words(wgs: int) -> int:
    """int32 words of a lone halves record's lone bases (a uint16 a warp), padded to 16 bytes so that the
    record's size stays a multiple of 16 (a bulk copy's); the kernel pads them the same."""
    return -(-(4 * wgs) // 2 // 4) * 4


def size_words(row_blocks: int, chunks: int) -> int:
    """int32 words of sized records' size table: a uint16 a record, padded to 16 bytes (the records
    after it stay 16-byte aligned for the bulk copies); the kernel computes the same offset."""
    return -(-row_blocks * chunks // 8) * 4


def _size_table(records: torch.Tensor, wgs: int, mt: int, compressed: bool = True, lone: bool = False) -> torch.Tensor:
    """The size table (``size_words`` int32 words) of ``records`` [rb, chunks, words]: each record's
    header and the words its head words' masks count, rounded up to 16 bytes, as uint16 in 16-byte
    units, by row block and chunk, zeros after. Compressed: the header is ``record_bytes`` with no
    slots, the masks all 32 bits of a head word (``lone``: and half a word a lone mask's bit, rounded up);
    slots: the m-tiles and, where there is overflow, the head words, the masks a head word's bits from
    START_BITS."""
    rb_, nc, words = records.shape
    mtiles = wgs * mt
    if compressed:
        header, first, shift = record_bytes(wgs, mt, 0, compressed=True, lone=lone) // 4, mtiles * 128, 0
    else:
        first, shift = mtiles * TILE_WORDS, START_BITS
        header = first + (128 * wgs if words > first else 0)
    heads = records[..., first:first + 128 * wgs].to(torch.int64) & 0xFFFFFFFF
    used = sum(((heads >> b) & 1).sum(-1) for b in range(shift, 32))
    if lone:
        masks = records[..., first + 128 * wgs:first + 192 * wgs].to(torch.int64) & 0xFFFFFFFF  # two a word
        used = used + (sum(((masks >> b) & 1).sum(-1) for b in range(32)) + 1) // 2
    units = -(-(header + used) // 4)
    if int(units.max()) >= 2**15:
        raise RuntimeError("warpgroup 2:4 format: a record of 512 KB or more cannot be sized")
    table = torch.zeros(size_words(rb_, nc) * 2, dtype=torch.int16, device=records.device)
    table[:rb_ * nc] = units.reshape(-1).to(torch.int32).to(torch.int16)
    return table.view(torch.int32)


def _read_compressed(v: torch.Tensor, wgs: int, mt: int, slots: int, lone: bool = False):
    """The compressed layout's records (``v``: [rb, chunk, words], int64 bit patterns) read as the kernel
    reads them: the m-tiles' A words and metadata as the slots layout has them ([rb, chunk, m-tiles,
    TILE_WORDS]; zero words where a thread's mask has no bit) and the overflow as 16-bit patterns
    (``_overflow_dense``; None without overflow). A thread's first word of a part is its warp's base
    plus the words of the lanes before it; ``lone``: the lone halves' registers (a half in the low half)
    found the same way in the table read as halves, from the warp's lone base."""
    rb_, nc = v.shape[:2]
    threads, mtiles = 128 * wgs, wgs * mt
    halves = lambda t: torch.stack([t & 0xFFFF, t >> 16], -1).flatten(-2)  # noqa: E731  (two 16-bit fields a word)
    meta = v[..., :mtiles * 128].reshape(rb_, nc, mtiles, 128)
    at = mtiles * 128
    heads = v[..., at:at + threads]
    at += threads
    lone_masks = halves(v[..., at:at + threads // 2]) if lone else None
    at += threads // 2 if lone else 0
    bases = v[..., at:at + threads // 32]
    at += threads // 32
    lone_bases = halves(v[..., at:at + threads // 64]) if lone else None
    at += lone_base_words(wgs) if lone else 0
    table = v[..., at:]
    if table.shape[-1] != slots:
        raise ValueError(f"warpgroup 2:4 compressed layout: {table.shape[-1]} word slots per chunk, expected {slots}")

    def registers(masks, base, words):  # each thread's registers: its warp's base, the lanes before it
        count = sum((masks >> b) & 1 for b in range(16)).view(rb_, nc, threads // 32, 32)
        start = base[..., None] + torch.cumsum(count, -1) - count
        return _registers(masks, start.view(rb_, nc, threads), words, mt)

    regs = [registers((heads >> shift) & 0xFFFF, (bases >> shift) & 0xFFFF, table) for shift in (0, 16)]
    if lone:
        regs[0] = regs[0] | registers(lone_masks, lone_bases, halves(table))
    # the 2:4 registers [rb, chunk, thread = (wg, w, g, q), t, ks, i] as A words [rb, chunk, m-tile, ks, w, g, q, i]
    a = regs[0].view(rb_, nc, wgs, 4, 8, 4, mt, 2, 4).permute(0, 1, 2, 6, 7, 3, 4, 5, 8)
    tiles = torch.cat([a.reshape(rb_, nc, mtiles, 1024), meta], -1)
    over = _overflow_dense(regs[1], wgs, mt) if bool((heads >> 16).any()) else None
    return tiles, over


def token_tile(n: int) -> int:
    """Tokens per block for a launch of ``n`` tokens: the smallest of NTOKS that holds them, else 128."""
    return next(t for t in NTOKS if n <= t or t == NTOK)


def x_stages(x: torch.Tensor, ntok: int, chunks: int) -> torch.Tensor:
    """X [N, K] as the kernel's stages hold it, for builds that copy it by one bulk copy per unit
    (``-DXPRE=1``, kernels/wgmma24.cu): [token tiles, chunks, ntok x 64], unit (tile, chunk)'s part
    contiguous in the B operand's no-swizzle K-major layout (k-step, 8-token group, 8-column group,
    token, column: core matrices of 8 tokens x 8 columns), zeros past N tokens and past K."""
    n, k = x.shape
    tiles = -(-n // ntok)
    xp = torch.nn.functional.pad(x, (0, chunks * CHUNK - k, 0, tiles * ntok - n))
    return xp.view(tiles, ntok // 8, 8, chunks, 2, 4, 8).permute(0, 3, 4, 1, 5, 2, 6).reshape(tiles, chunks,
                                                                                              ntok * CHUNK)


def record_bytes(wgs: int, mt: int, slots: int, compressed: bool = False, lone: bool = False) -> int:
    """Bytes of a row block's chunk in the format: the m-tiles' words, and where there is overflow
    (``slots`` > 0) the head words and the overflow word slots; ``compressed``: the metadata words, the
    head words, the warps' base words and the word slots (``lone``: and a 16-bit lone mask a thread and
    lone base a warp)."""
    if compressed:
        return wgs * mt * 128 * 4 + 128 * wgs * 4 + 4 * wgs * 4 + 4 * slots + (
            128 * wgs * 2 + 4 * lone_base_words(wgs) if lone else 0)
    return wgs * mt * TILE_WORDS * 4 + (128 * wgs * 4 + 4 * slots if slots else 0)


#: XTMA builds (kernels/wgmma24.cu -DXTMA=1): X's part of a stage starts at a multiple of this past the
#: record (the 128-byte swizzle's atoms), and the block's shared memory is aligned to it at its start
X_ALIGN = 1024


def stage_bytes(wgs: int, mt: int, slots: int, ntok: int = NTOK, compressed: bool = False,
                x_align: bool = False, lone: bool = False) -> int:
    """Bytes of a pipeline stage: a chunk's record and X's ntok x 64 values (``x_align``: X at the next
    multiple of X_ALIGN past the record, the XTMA builds; ``lone``: lone halves' records)."""
    record = record_bytes(wgs, mt, slots, compressed, lone)
    return (-(-record // X_ALIGN) * X_ALIGN if x_align else record) + ntok * CHUNK * 2


def stages(wgs: int, mt: int, slots: int, ntok: int = NTOK, compressed: bool = False, reserve: int = 0,
           x_align: bool = False, lone: bool = False) -> int:
    """The pipeline's stages (chunks in flight, one being read): as many as STAGE_SMEM less ``reserve``
    bytes holds, at most MAX_STAGES (6 at 128 tokens in the default block with little overflow), and at
    most SHALLOW_STAGES (4 in the slots layout, 3 in the compressed one) at up to SHALLOW_TOKENS tokens;
    at least 2 (3 with a ``reserve``: the A_SMEM builds, ``a_smem_reserve``). ``x_align``: the XTMA
    builds' stages (``stage_bytes``) from an X_ALIGN boundary."""
    most = SHALLOW_STAGES[compressed] if ntok <= SHALLOW_TOKENS else MAX_STAGES
    fit = (STAGE_SMEM - reserve - (X_ALIGN if x_align else 0)) // stage_bytes(wgs, mt, slots, ntok, compressed,
                                                                              x_align, lone)
    return max(3 if reserve else 2, min(most, fit))


def a_smem_reserve(wgs: int, mt: int, slots: int) -> int:
    """Shared memory an A_SMEM build (kernels/wgmma24.cu: the mmas read A by descriptors) needs past its
    stages: two units' overflow operands (64-row x 32-value tiles of both k-steps per m-tile), or none
    without overflow."""
    return 2 * wgs * mt * 2 * 2048 if slots else 0


def a_smem_order(weight: "Wgmma24Weight") -> torch.Tensor:
    """The slots layout's records with each k-step's A words moved from the threads' register order
    (thread 32 w + lane, register i at 4 (32 w + lane) + i) to the order in which the mma reads A from
    shared memory, for the A_SMEM builds: the no-swizzle K-major layout of the 64-row x 8-word tile,
    core matrices of 8 rows x 4 words, row group r / 8 at 64 (r / 8) words, word group j / 4 at 32 (j / 4)
    (a descriptor's strides of 256 and 128 bytes). Register i of thread (w, g = lane / 4, q = lane % 4)
    is row 16 w + g + 8 (i & 1), word q + 4 (i >> 1): word 128 w + lane + 64 (i & 1) + 32 (i >> 1)."""
    if weight.compressed:
        raise ValueError("a_smem_order: the A_SMEM builds read the slots layout (compressed=False)")
    rb_, nc = weight.blocks
    v = weight.records  # sized records: the size table stays in front of them
    tiles = v[..., :weight.mtiles * TILE_WORDS].reshape(rb_, nc, weight.mtiles, TILE_WORDS)
    out = v.clone()
    new = out[..., :weight.mtiles * TILE_WORDS].view(rb_, nc, weight.mtiles, TILE_WORDS)
    for ks in range(2):
        new[..., 512 * ks + _A_SMEM_WORD.to(v.device)] = tiles[..., 512 * ks:512 * (ks + 1)]
    if weight.sized:
        return torch.cat([weight.values[:size_words(rb_, nc)], out.reshape(-1)])
    return out.reshape(weight.values.shape)


def _a_smem_word() -> torch.Tensor:
    """A_SMEM's word of each register word of a k-step (index 4 thread + i): 128 w + lane + 64 (i & 1) + 32 (i >> 1)."""
    tw, i = torch.arange(128)[:, None], torch.arange(4)[None, :]
    return (128 * (tw // 32) + tw % 32 + 64 * (i & 1) + 32 * (i >> 1)).reshape(-1)


_A_SMEM_WORD = _a_smem_word()


def smem_bytes(wgs: int, mt: int, slots: int, ntok: int = NTOK, n_stages: int | None = None,
               compressed: bool = False, reserve: int = 0, x_align: bool = False, lone: bool = False) -> int:
    """Dynamic shared memory of a wgmma24 block (kernels/wgmma24.cu) of ``ntok`` tokens over a weight
    of ``slots`` overflow word slots per chunk (``compressed``: value word slots): its pipeline's
    stages (``n_stages``, default ``stages``), which then hold the partial sums, and ``reserve`` bytes
    past them (A_SMEM builds: ``a_smem_reserve``); ``x_align``: the XTMA builds' stages
    (``stage_bytes``), X_ALIGN bytes more to align their start."""
    n_stages = stages(wgs, mt, slots, ntok, compressed, reserve, x_align, lone) if n_stages is None else n_stages
    pipeline = n_stages * stage_bytes(wgs, mt, slots, ntok, compressed, x_align, lone)
    return max(pipeline + reserve, ntok * (TILE_ROWS * wgs * mt + 4) * 4) + (X_ALIGN if x_align else 0)
