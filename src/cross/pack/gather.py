"""The gather format: a weight for the gather kernel (``kernels/gather_mma.cu``), which multiplies up to
16 tokens by a sparse weight on tensor cores at a cost per nonzero, not per weight element: X,
staged in shared memory as [K][16 tokens], is gathered at the nonzeros' columns by ``ldmatrix.trans``
as the A operand of ``mma.m16n8k16`` (16 tokens x 16 nonzeros), and the B operand (16 nonzeros x 8
rows) holds each nonzero's value in its own row's column and zeros elsewhere. So a step multiplies
16 nonzeros of a group of 8 rows by 16 tokens, one shared-memory wavefront per 8 nonzeros and token
half (the least that 32 bytes of X per nonzero allow), whatever the sparsity.

Classes and pairs. A step's slot k (0-15) reads X at a column of class k % 8 (column mod 8), so the 8
rows an ``ldmatrix`` matrix reads lie in 8 different bank groups (X's 16-byte halves are swizzled by
bit 2 of the column). Slots 2q, 2q + 1 (and 8 + 2q, 8 + 2q + 1) are a pair: two nonzeros of one row,
of classes 2q and 2q + 1, stored as one 32-bit word (the lower slot in the low half), which is lane
(4 g + q)'s B register where the pair's row is g, and zero in the other lanes of that q. A row's
nonzeros of classes 2q and 2q + 1, each by column, are zipped into pairs (where one class has more,
the other's half is a value-0 entry in the same 8-column block).

Records. A group of 8 rows is a run of records of 4 steps; record r holds the r-th pair of every
(row, pair class): pair class q's 8 positions p (step p >> 1, slots 8 (p & 1) + 2q, + 1) are rows
(p + q) mod 8, so lane (4 g + q) keeps exactly one word a record, at position (g - q) mod 8, and no row
index is stored. A group has as many records as its longest (row, pair class) has pairs; the others
are padded with value-0 pairs. A record is 64 words (256 bytes):

    words 0-31   the pair words, pair class q's position p at 8 q + p (a lane loads one word)
    words 32-63  each slot's column in units of 8 (its class is the slot's), 16 bits a step: slot k's
                 steps 0, 1 in word 32 + 2 k, steps 2, 3 in word 33 + 2 k (a lane loads 8 bytes)

A group's records are split into segments of ``seg_quads`` records, the kernel's unit of work (a
warp's): ``segs`` [S, 4] (group, first record, records, 0); ``group_seg`` [G + 1]: each group's first
segment.

Bytes: 4 per slot (256 per 64); padding is the spread of the (row, pair class) pair counts within a
group and the classes' imbalance within a row: at uniform 90% sparsity ~0.26 of dense, at 70% ~0.70.

Non-finite inputs: every slot multiplies X's 16 tokens at its column by the 8 rows' B values, zeros
included, so an Inf or NaN of X reaches every row of the groups that read its column (not every row,
as in the dense product, nor only the rows with a nonzero there): the format is for finite inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_weight
from .rows import _as_int32, _segment_rank, _stored_halves, decoded_product

GROUP_ROWS = 8  # rows per group: the mma's N
CLASSES = 8  # column classes (column mod 8): X's bank groups
SLOTS = 16  # nonzeros per step: the mma's K
QUAD = 4  # steps per record
RECORD_WORDS = 64
RECORD_BYTES = 4 * RECORD_WORDS
SEG_QUADS = 8  # records per segment: a warp's unit of work
MAX_K = 8 * 65536  # columns a slot's 16-bit column (in units of 8) reaches


@dataclass(frozen=True, eq=False)
class GatherWeight:
    """A weight in the gather format (module docstring). Build with :meth:`from_dense`."""

    shape: tuple[int, int]
    dtype: torch.dtype
    records: torch.Tensor  # int32 [Q, RECORD_WORDS]
    segs: torch.Tensor  # int32 [S, 4]
    group_seg: torch.Tensor  # int32 [G + 1]
    nnz: int
    seg_quads: int

    @property
    def groups(self) -> int:
        return self.group_seg.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.records.device

    @property
    def values(self) -> torch.Tensor:
        """The records: the buffer the launchers' shared checks read."""
        return self.records

    @property
    def steps(self) -> int:
        return QUAD * self.records.shape[0]

    @property
    def nbytes(self) -> int:
        """Device bytes: the records, segments and the group table."""
        return sum(t.numel() * t.element_size() for t in (self.records, self.segs, self.group_seg))

    @property
    def padding(self) -> float:
        """Slots that hold no nonzero (a row's classes unequal, a group's (row, pair class) pair counts unequal),
        as a fraction of all slots."""
        return 1.0 - self.nnz / max(1, SLOTS * self.steps)

    def to(self, device) -> "GatherWeight":
        return GatherWeight(self.shape, self.dtype, self.records.to(device), self.segs.to(device),
                            self.group_seg.to(device), self.nnz, self.seg_quads)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, seg_quads: int = SEG_QUADS) -> "GatherWeight":
        """Pack a 2-D bf16 or fp16 weight [M, K] (K a multiple of 8, at most MAX_K)."""
        check_weight(weight, "weight", (torch.bfloat16, torch.float16))
        m, k = weight.shape
        if k % CLASSES or k > MAX_K:
            raise ValueError(f"weight: the gather format needs K a multiple of {CLASSES} and at most {MAX_K}, got {k}")
        if isinstance(seg_quads, bool) or not isinstance(seg_quads, int) or seg_quads < 1:
            raise ValueError(f"seg_quads: expected a positive int, got {seg_quads!r}")
        w = weight.detach().cpu()
        bits, nz = _stored_halves(w)
        rows, cols = nz.nonzero(as_tuple=True)
        vals = bits[rows, cols]
        n_groups = -(-m // GROUP_ROWS)
        # each row's nonzeros of class 2q and 2q + 1, by column, zipped into pairs
        cls_ = cols % CLASSES
        key = rows * CLASSES + cls_
        order = torch.argsort(key * k + cols)
        rows, cols, vals, cls_, key = rows[order], cols[order], vals[order], cls_[order], key[order]
        rank, counts = _segment_rank(key, m * CLASSES)
        pairs_per = counts.view(m * 4, 2).max(1).values  # per (row, pair class)
        base = torch.cumsum(pairs_per, 0) - pairs_per
        n_pairs = int(pairs_per.sum())
        p_idx = base[rows * 4 + cls_ // 2] + rank
        pu = torch.full((n_pairs, 2), -1, dtype=torch.int64)
        pv = torch.zeros((n_pairs, 2), dtype=torch.int64)
        pu[p_idx, cls_ % 2] = cols // CLASSES
        pv[p_idx, cls_ % 2] = vals.to(torch.int64)
        pu = torch.where(pu < 0, pu.flip(1), pu)  # a missing half: its partner's 8-column block
        owner = torch.repeat_interleave(torch.arange(m * 4), pairs_per)  # row * 4 + pair class
        prow, pq = owner // 4, owner % 4
        # records: per group, record r holds the r-th pair of every (row, pair class); pair class q's
        # position p (step p >> 1, sequence p & 1) is row (p + q) mod 8's
        r_idx = torch.arange(n_pairs) - base[owner]
        per = torch.zeros(n_groups * GROUP_ROWS * 4, dtype=torch.int64)
        per[: m * 4] = pairs_per
        g_rec = per.view(n_groups, GROUP_ROWS * 4).max(1).values
        g_first = torch.cumsum(g_rec, 0) - g_rec
        n_rec = int(g_rec.sum())
        rec_of = g_first[prow // GROUP_ROWS] + r_idx
        pos = (prow % GROUP_ROWS - pq) % GROUP_ROWS
        rec = torch.zeros((n_rec, RECORD_WORDS), dtype=torch.int64)
        rec[rec_of, 8 * pq + pos] = pv[:, 0] | (pv[:, 1] << 16)
        ucol = torch.zeros((n_rec, SLOTS, QUAD), dtype=torch.int64)  # padding reads column (slot mod 8): value 0
        slot = 8 * (pos % 2) + 2 * pq
        ucol[rec_of, slot, pos // 2] = pu[:, 0]
        ucol[rec_of, slot + 1, pos // 2] = pu[:, 1]
        uw = ucol.view(n_rec, SLOTS, 2, 2)
        rec[:, 32:] = (uw[..., 0] | (uw[..., 1] << 16)).reshape(n_rec, 2 * SLOTS)
        # segments of seg_quads records per group
        g_segs = (g_rec + seg_quads - 1) // seg_quads
        group_seg = torch.zeros(n_groups + 1, dtype=torch.int64)
        group_seg[1:] = torch.cumsum(g_segs, 0)
        n_seg = int(group_seg[-1])
        s_group = torch.repeat_interleave(torch.arange(n_groups), g_segs)
        s_rank = torch.arange(n_seg) - group_seg[s_group]
        s_first = g_first[s_group] + s_rank * seg_quads
        s_len = torch.minimum(torch.full_like(s_first, seg_quads), g_first[s_group] + g_rec[s_group] - s_first)
        segs = torch.stack([s_group, s_first, s_len, torch.zeros_like(s_len)], 1)
        dev = weight.device
        return cls((m, k), weight.dtype, _as_int32(rec).to(dev), segs.to(torch.int32).to(dev),
                   group_seg.to(torch.int32).to(dev), int(rows.numel()), seg_quads)

    def stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, 16-bit patterns as int16) of every slot, padding included (value 0), decoded from
        the records as the kernel reads them."""
        rec = self.records.cpu().to(torch.int64) & 0xFFFFFFFF
        n_rec = rec.shape[0]
        segs = self.segs.cpu().to(torch.int64)
        rec_group = torch.repeat_interleave(segs[:, 0], segs[:, 2])  # the segments cover the records in order
        cw = rec[:, 32:].view(n_rec, SLOTS, 2)
        ucol = torch.stack([cw & 0xFFFF, cw >> 16], -1).view(n_rec, SLOTS, QUAD)  # [rec][slot][step]
        q, pos, j = torch.meshgrid(torch.arange(4), torch.arange(8), torch.arange(2), indexing="ij")
        q, pos, j = q.reshape(-1), pos.reshape(-1), j.reshape(-1)
        slot = 8 * (pos % 2) + 2 * q + j
        rows = rec_group[:, None] * GROUP_ROWS + (pos + q) % GROUP_ROWS
        cols = ucol[:, slot, pos // 2] * CLASSES + slot % CLASSES
        half = (rec[:, 8 * q + pos] >> (16 * j)) & 0xFFFF
        half = torch.where(half >= 2**15, half - 2**16, half)
        keep = rows < self.shape[0]
        return rows[keep], cols[keep], half[keep].to(torch.int16)

    def decoded(self) -> torch.Tensor:
        """The dense weight the format holds (summed over slots: value-0 slots add nothing)."""
        rows, cols, bits = self.stored()
        dense = torch.zeros(self.shape, dtype=torch.float32)
        dense.index_put_((rows, cols), bits.view(self.dtype).float(), accumulate=True)
        return dense.to(self.dtype).to(self.device)


def gather_reference(x: torch.Tensor, weight: GatherWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) in fp32, in X's dtype, from the format decoded (finite X)."""
    return decoded_product(x, weight, bias)
