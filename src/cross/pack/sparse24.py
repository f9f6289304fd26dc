"""The 2:4 format: a weight whose every group of 4 columns holds at most 2 nonzeros,
stored for the sparse tensor cores (``mma.sp.sync.m16n8k32``, ``kernels/sparse24_mma.cu``): each
lane's A registers are loaded as they are stored, and the hardware picks the columns they multiply
from 2-bit metadata, so the kernel spends no instruction per element on the sparsity.

Groups. The mma's k index 2 q + 8 i + e (lane q's B register i, half e) multiplies the column of X
that its A slot names. The kernel loads a lane's four B registers of a k-tile as 8 adjacent columns
of X, 8 q .. 8 q + 7, so its k index 2 q + 8 i + e is column 8 q + 2 i + e of the k-tile: the groups
of 4 consecutive k indices are, in columns of a 32-column k-tile, {2 i, 2 i + 1, 2 i + 8, 2 i + 9}
and 16 + the same, i = 0..3 (``group_columns``). Which 4 columns share a group does not matter to a
weight pruned without regard to it; a weight pruned 2:4 over consecutive columns (torch's
semi-structured sparsity) is not 2:4 in these groups.

Layout. A strip is 16 mt rows (mt m-tiles of 16), a k-tile 32 columns (8 groups of 4), a step two
k-tiles (64 columns). Each group keeps two slots (first position < second position; a group with
one nonzero keeps a stored zero beside it, an empty group two), a 32-bit word (the first slot in the
low half) and a nibble of metadata (first position | second position << 2). In an m16n8k32 sparse
mma lane 4 g + q holds, as its A register i, the word of row g + 8 (i & 1), group q + 4 (i >> 1) of
the k-tile. Its metadata word for a step (the sparsity selector picks the lanes: 0 for the first
k-tile, 1 for the second): lane 4 g + q (q = 2 kt + h) holds the nibbles of row g (bits 0-15) and
row g + 8 (bits 16-31), groups 4 h .. 4 h + 3 of k-tile kt, group 4 h + i at bits 4 i (the layout
measured on the H200: docs/perf-notes.md, "Sparse tensor cores for 8-16 tokens").

    values   int32 [S, KP, 288 mt (+ 32)]  per strip and step: per m-tile the A words [k-tile][lane][4]
                                          (1024 bytes), then the metadata [lane] (128 bytes); then,
                                          where there is overflow, the head words [lane] (128 bytes)
    entries  int32 [E]                    the overflow entries: value bits | column in the step << 16

Overflow. A group's third and fourth nonzeros do not fit the sparse mma: they are entries, which
the kernel multiplies on CUDA cores. The lanes 4 g + q of a lane group hold the accumulators of rows
g and g + 8 of each m-tile, for their tokens; lane 4 g + 2 t + hf's head word of a step names the
entries of row 16 t + 8 hf + g in the step's 64 columns (first entry, count), so each lane group
finds its rows' entries without a search. At 70% sparsity ~8% of the nonzeros are entries, at 50%
~23%, at 90% ~1%.

so a warp's loads of a step are 16 bytes per lane, contiguous, at addresses fixed by (strip, step):
no table. Bytes: 0.5 of dense for the values plus 1/16 for the metadata, whatever the sparsity.
"""

from __future__ import annotations

import torch

from .._checks import check_weight
from .rows import _as_int16, _as_int32

ROWS = 16
GROUP = 4
KTILE = 32
STEP = 2 * KTILE
TILE_WORDS = 2 * 32 * 4 + 32  # per strip, step and m-tile: A words of both k-tiles, then the metadata
HEAD_WORDS = 32  # per strip and step, after its m-tiles: a word per lane, its overflow segment
START_BITS = 25  # a head word: first entry (bits 0-24), entries (bits 25-31)
_DTYPES = (torch.bfloat16, torch.float16)


def _slots() -> tuple[torch.Tensor, torch.Tensor]:
    """Per 4-bit mask of a group's nonzeros (at most 2): its two slots' positions (first < second)."""
    p0, p1 = torch.zeros(16, dtype=torch.int64), torch.ones(16, dtype=torch.int64)
    for mask in range(16):
        bits = [p for p in range(GROUP) if mask >> p & 1]
        if len(bits) == 2:
            p0[mask], p1[mask] = bits
        elif len(bits) == 1:
            p0[mask], p1[mask] = (bits[0], 3) if bits[0] < 3 else (2, 3)
    return p0, p1


def _overflow(bits: torch.Tensor, over: torch.Tensor, cols: torch.Tensor, s_: int, kp: int, mt: int):
    """The overflow entries (a group's third and fourth nonzeros: ``over`` over ``bits``, both in
    k order, rows padded to whole strips) and each step's head words: [S, KP, 32] int64, lane 4 g +
    2 t + hf's word the first entry and count of row 16 t + 8 hf + g of that strip's m-tile t in the
    step's 64 columns (its segment), and int32 [E] entries in the order of (strip, step, lane,
    column), each the value's bits | its column within the step << 16."""
    rows = ROWS * mt
    r, kappa = over.nonzero(as_tuple=True)
    col = cols[kappa]
    s, step, c = r // rows, col // STEP, col % STEP
    t, hf, g = (r % rows) // ROWS, (r % ROWS) // 8, r % 8
    lane = 4 * g + 2 * t + hf
    seg = (s * kp + step) * HEAD_WORDS + lane
    head, entries = head_words(seg, c, bits[r, kappa], s_ * kp * HEAD_WORDS, "Sparse24Weight")
    return head.view(s_, kp, HEAD_WORDS), entries


def head_words(seg: torch.Tensor, col: torch.Tensor, value_bits: torch.Tensor, segments: int, name: str):
    """Overflow entries, each in segment ``seg`` at column ``col`` (< 2**16) of its step or chunk with
    16-bit pattern ``value_bits``, as (int64 head words [segments], first entry | count << START_BITS;
    int32 entries in the order of (segment, column), value bits | column << 16)."""
    order = torch.argsort(seg * 2**16 + col)
    seg, entries = seg[order], (value_bits | (col << 16))[order]
    count = torch.bincount(seg, minlength=segments)
    start = torch.cumsum(count, 0) - count
    most = int(count.max())
    if len(entries) >= 2**START_BITS or most >= 2 ** (32 - START_BITS):
        raise ValueError(f"{name}: {len(entries)} overflow entries, at most {most} in "
                         f"one row's 64 columns: over the head words' {START_BITS}/{32 - START_BITS} bits")
    return start | (count << START_BITS), _as_int32(entries).contiguous()


def group_columns(k: int, device=None) -> torch.Tensor:
    """The column of each k index, over ``k`` rounded up to whole k-tiles: k index 32 b + 2 q + 8 i + e
    is column 32 b + 8 q + 2 i + e; group j holds k indices 4 j .. 4 j + 3."""
    kappa = torch.arange(KTILE, device=device)
    q, i, e = (kappa % 8) // 2, kappa // 8, kappa % 2
    tile = 8 * q + 2 * i + e
    blocks = -(-k // KTILE)
    return (KTILE * torch.arange(blocks, device=device)[:, None] + tile[None, :]).reshape(-1)


def is_24(weight: torch.Tensor) -> bool:
    """Every group (``group_columns``) holds at most 2 nonzeros."""
    m, k = weight.shape
    cols = group_columns(k, weight.device)
    nz = torch.nn.functional.pad(weight != 0, (0, len(cols) - k))[:, cols]
    return bool((nz.view(m, -1, GROUP).sum(-1) <= 2).all())


class Sparse24Weight:
    """A 2:4 weight in the sparse tensor cores' layout; ``from_dense`` packs one."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, mt: int, values: torch.Tensor,
                 entries: torch.Tensor):
        self.shape, self.dtype, self.mt, self.values, self.entries = shape, dtype, mt, values, entries

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mt: int = 2) -> "Sparse24Weight":
        """Pack a 2-D bf16/fp16 weight: in every group the first two nonzeros (in k order) in the
        2:4 part, the others (a group's third and fourth) as overflow entries; zeros (and -0.0) are
        not stored (a kept slot beside a lone nonzero holds +0.0)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"2:4 format: expected a bfloat16 or float16 weight, got {weight.dtype}")
        if mt not in (1, 2):
            raise ValueError(f"Sparse24Weight: mt must be 1 or 2, got {mt!r}")
        m, k = weight.shape
        dev = weight.device
        rows = ROWS * mt
        s_, kp = -(-m // rows), -(-k // STEP)
        w = torch.zeros(s_ * rows, kp * STEP, dtype=weight.dtype, device=dev)
        w[:m, :k] = weight
        cols = group_columns(kp * STEP, dev)
        w = w[:, cols]  # k index order: each group's 4 columns side by side
        bits = w.view(torch.int16).to(torch.int64) & 0xFFFF
        nz = (bits & 0x7FFF) != 0
        over = nz & (nz.view(s_ * rows, -1, GROUP).cumsum(-1).view_as(nz) > 2)  # a group's third and fourth
        nz = nz & ~over
        g = nz.view(s_ * rows, -1, GROUP)
        mask = (g.to(torch.int64) * (1 << torch.arange(GROUP, device=dev))).sum(-1)  # [R, groups]
        p0t, p1t = (t.to(dev) for t in _slots())
        p0, p1 = p0t[mask], p1t[mask]
        vals = torch.where(nz, bits, 0).view(s_ * rows, -1, GROUP)
        v0 = vals.gather(-1, p0[..., None])[..., 0]
        v1 = vals.gather(-1, p1[..., None])[..., 0]
        word = v0 | (v1 << 16)  # [R, groups]
        nib = p0 | (p1 << 2)
        # (s, t, half, g, kp, kt, hq, q) with row = 16 t + 8 half + g, group = 8 kt + 4 hq + q
        word = word.view(s_, mt, 2, 8, kp, 2, 2, 4)
        nib = nib.view(s_, mt, 2, 8, kp, 2, 2, 4)
        # A words: [s, kp, t, kt, lane = 4 g + q, i = half + 2 hq]
        a = word.permute(0, 4, 1, 5, 3, 7, 6, 2).reshape(s_, kp, mt, 2 * 32 * 4)
        # metadata: lane 4 g + (2 kt + hq): nibbles of groups 4 hq + i (bits 4 i) of row g, then row g + 8
        shift = 4 * torch.arange(4, device=dev)
        half_words = (nib << shift).sum(-1)  # [s, t, half, g, kp, kt, hq]: 16 bits
        meta = half_words[:, :, 0] | (half_words[:, :, 1] << 16)  # [s, t, g, kp, kt, hq]
        meta = meta.permute(0, 3, 1, 2, 4, 5).reshape(s_, kp, mt, 32)
        head, entries = _overflow(bits, over, cols, s_, kp, mt)
        tiles = torch.cat([a, meta], -1).reshape(s_, kp, mt * TILE_WORDS)
        # head words only where there is overflow: a 2:4 weight runs the kernel's build without it
        values = _as_int32(torch.cat([tiles, head], -1) if entries.numel() else tiles).contiguous()
        if values.numel() >= 2**31:
            raise ValueError("Sparse24Weight: the weight is too large for 32-bit offsets")
        return cls((m, k), weight.dtype, mt, values, entries)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def overflow(self) -> bool:
        """Whether some group holds more than 2 nonzeros (entries, and head words in each step)."""
        return self.entries.numel() > 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.entries))

    def to_dense(self) -> torch.Tensor:
        """The weight, read from the format as the kernel reads it: the sparse mma's slots, then each
        lane group's overflow entries found through its step's head words."""
        m, k = self.shape
        mt = self.mt
        s_, kp = self.values.shape[:2]
        v = self.values.to(torch.int64) & 0xFFFFFFFF
        tiles = v[..., :mt * TILE_WORDS].reshape(s_, kp, mt, TILE_WORDS)
        a = tiles[..., :256].reshape(s_, kp, mt, 2, 8, 4, 2, 2)  # s, kp, t, kt, g, q, hq, half
        meta = tiles[..., 256:].reshape(s_, kp, mt, 8, 2, 2)  # s, kp, t, g, kt, hq
        word = a.permute(0, 2, 7, 4, 1, 3, 6, 5)  # s, t, half, g, kp, kt, hq, q
        half_words = torch.stack([meta & 0xFFFF, meta >> 16], 3)  # s, kp, t, half, g, kt, hq
        nib = (half_words[..., None] >> (4 * torch.arange(4, device=v.device))) & 15  # ..., q
        nib = nib.permute(0, 2, 3, 4, 1, 5, 6, 7)  # s, t, half, g, kp, kt, hq, q
        rows = s_ * ROWS * mt
        out = torch.zeros(rows, kp * STEP // GROUP, GROUP, dtype=torch.int64, device=v.device)
        word, nib = word.reshape(rows, -1), nib.reshape(rows, -1)
        out.scatter_(-1, (nib & 3)[..., None], (word & 0xFFFF)[..., None])
        out.scatter_(-1, (nib >> 2)[..., None], (word >> 16)[..., None])
        dense = torch.zeros(rows, kp * STEP, dtype=torch.int64, device=v.device)
        dense[:, group_columns(kp * STEP, v.device)] = out.reshape(rows, kp * STEP)
        if not self.overflow:
            return _as_int16(dense).view(self.dtype)[:m, :k].contiguous()
        # overflow: lane 4 g + 2 t + hf of step (s, st) names the entries of row 16 (s mt + t) + 8 hf + g
        head = v[..., mt * TILE_WORDS:].reshape(-1)  # [(s, st, lane)]
        ent = self.entries.to(torch.int64) & 0xFFFFFFFF
        count = head >> START_BITS
        seg = torch.repeat_interleave(torch.arange(len(head), device=v.device), count)
        first = torch.repeat_interleave(head & (2**START_BITS - 1), count)
        e = ent[first + torch.arange(len(seg), device=v.device) - torch.repeat_interleave(torch.cumsum(count, 0) - count,
                                                                                             count)]
        lane, st, s = seg % HEAD_WORDS, (seg // HEAD_WORDS) % kp, seg // (HEAD_WORDS * kp)
        g, t, hf = lane // 4, (lane % 4) // 2, lane % 2
        if mt == 1 and bool((t > 0).any()):
            raise RuntimeError("2:4 format: a one-m-tile step names entries of a second m-tile")
        row = s * ROWS * mt + ROWS * t + 8 * hf + g
        dense[row, st * STEP + (e >> 16)] = e & 0xFFFF
        return _as_int16(dense).view(self.dtype)[:m, :k].contiguous()


def smem_bytes(k: int, nt: int, warps: int, mt: int) -> int:
    """Dynamic shared memory of a sparse24_mma block (sparse24_mma.cu's layout): X, the partial sums,
    X's mbarrier."""
    sx = -(-k // STEP) * STEP + 32
    return nt * sx * 2 + warps * mt * (nt // 8) * 32 * 16 + 8
