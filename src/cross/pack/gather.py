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
the other's half is a value-0 entry in the same 8-column block). The pairs of pair class q of a group
of 8 rows are pooled, sorted by their columns, and dealt alternately to two sequences (o = 0, 1): a
group has 8 sequences (q, o), one pair of each per step. A step stores its 8 pairs' words, their rows
(a nibble each, nibble 2 q + o) and per slot the step of its column from the slot's previous step, in
units of 8 columns (the class is the slot's): a signed byte. Steps longer than 127 units get value-0
pairs between (bridges); a group's sequences are padded with value-0 pairs to its longest, rounded
up to a multiple of 4 steps.

Records. Four steps are a record of 52 words (208 bytes, what a lane loads in four 16-byte loads):

    words 0-31   the pairs' words, pair class q's at 8 q + 2 c + o (c: the record's step)
    words 32-35  the row nibbles, pair class q's in word 32 + q: step c's byte c (nibble o, o = 0, 1)
    words 36-51  the column steps, slot k's four (one per step) in word 36 + k, step c in byte c

A group's records are consecutive and split into segments of ``seg_quads`` records, the kernel's unit
of work (a warp's): ``segs`` [S, 4] (group, first record, records, 0), and per segment and slot the
column (in units of 8) before its first step: ``starts`` [S, 16]. ``group_seg`` [G + 1]: each group's
first segment.

Bytes: 52 per 16 slots, 3.25 per slot: at uniform 90% sparsity ~0.19 of dense with the padding, at
70% ~0.52, at 50% ~0.85.

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
RECORD_WORDS = 52
RECORD_BYTES = 4 * RECORD_WORDS
DELTA_BYTE = 4 * 36  # the column steps' first byte in a record
MAX_STEP = 127  # the longest column step a slot's signed byte holds, in units of 8 columns
SEG_QUADS = 8  # records per segment: a warp's unit of work
MAX_K = 8 * 32767  # columns a start (int16, units of 8) can reach


def _ffill_groups(val: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Along dim 0, each unset entry (-1) takes the last set entry above it; rows where ``first`` (a
    group's first step) is unset become 0, so nothing is carried across groups."""
    val = torch.where((val < 0) & first[:, None], 0, val)
    idx = torch.where(val >= 0, torch.arange(val.shape[0], device=val.device)[:, None], -1)
    idx = torch.cummax(idx, 0).values
    return torch.gather(val, 0, idx)


@dataclass(frozen=True, eq=False)
class GatherWeight:
    """A weight in the gather format (module docstring). Build with :meth:`from_dense`."""

    shape: tuple[int, int]
    dtype: torch.dtype
    records: torch.Tensor  # int32 [Q, RECORD_WORDS]
    segs: torch.Tensor  # int32 [S, 4]
    starts: torch.Tensor  # int16 [S, SLOTS]
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
        """Device bytes: the records, segments, starts and the group table."""
        return sum(t.numel() * t.element_size() for t in (self.records, self.segs, self.starts, self.group_seg))

    @property
    def padding(self) -> float:
        """Slots that hold no nonzero (class padding, bridges, group padding), as a fraction of all slots."""
        return 1.0 - self.nnz / max(1, SLOTS * self.steps)

    def to(self, device) -> "GatherWeight":
        return GatherWeight(self.shape, self.dtype, self.records.to(device), self.segs.to(device),
                            self.starts.to(device), self.group_seg.to(device), self.nnz, self.seg_quads)

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
        # pooled per (group, pair class), by column, dealt to the sequences o = 0, 1
        pool = (prow // GROUP_ROWS) * 4 + pq
        order = torch.argsort(pool * (2 * k) + pu.sum(1))
        pu, pv, prow, pool = pu[order], pv[order], prow[order], pool[order]
        rank, _ = _segment_rank(pool, n_groups * 4)
        seq = pool * 2 + rank % 2  # (group, q, o)
        order = torch.argsort(seq * (n_pairs + 1) + rank // 2)
        pu, pv, prow, seq = pu[order], pv[order], prow[order], seq[order]
        pu, pv, prow, seq = _bridged(pu, pv, prow, seq)
        # steps: each group's sequences padded to its longest, rounded up to QUAD
        t, seq_len = _segment_rank(seq, n_groups * 8)
        g_steps = (seq_len.view(n_groups, 8).max(1).values + QUAD - 1) // QUAD * QUAD
        g_first = torch.cumsum(g_steps, 0) - g_steps
        n_steps = int(g_steps.sum())
        grp, qo = seq // 8, seq % 8
        q, o = qo // 2, qo % 2
        step = g_first[grp] + t
        words = torch.zeros((n_steps, 8), dtype=torch.int64)
        words[step, 2 * q + o] = pv[:, 0] | (pv[:, 1] << 16)
        nib = torch.zeros((n_steps, 8), dtype=torch.int64)
        nib[step, 2 * q + o] = prow % GROUP_ROWS
        ucol = torch.full((n_steps, SLOTS), -1, dtype=torch.int64)
        slot = 8 * o + 2 * q
        ucol[step, slot] = pu[:, 0]
        ucol[step, slot + 1] = pu[:, 1]
        first = torch.zeros(n_steps, dtype=torch.bool)
        first[g_first[g_steps > 0]] = True
        ucol = _ffill_groups(ucol, first)
        delta = torch.zeros_like(ucol)
        delta[1:] = ucol[1:] - ucol[:-1]
        delta[first] = 0
        if delta.numel() and int(delta.abs().max()) > MAX_STEP:  # the bridges bound every step
            raise AssertionError("gather format: a column step beyond a byte")
        rho = (nib << (4 * torch.arange(8))).sum(1)
        # records of QUAD steps
        n_rec = n_steps // QUAD
        rec = torch.zeros((n_rec, RECORD_WORDS), dtype=torch.int64)
        wq = words.view(n_rec, QUAD, 4, 2).permute(0, 2, 1, 3).reshape(n_rec, 32)  # [rec][q][c][o]
        rec[:, :32] = wq
        rb = (rho.view(n_rec, QUAD, 1) >> (8 * torch.arange(4))) & 0xFF  # [rec][c][q]: byte q of step c
        rec[:, 32:36] = (rb << (8 * torch.arange(QUAD)).view(1, QUAD, 1)).sum(1)
        db = (delta & 0xFF).view(n_rec, QUAD, SLOTS).permute(0, 2, 1)  # [rec][slot][c]
        rec[:, 36:] = (db << (8 * torch.arange(QUAD))).sum(-1)
        # segments of seg_quads records per group
        g_rec = g_steps // QUAD
        g_segs = (g_rec + seg_quads - 1) // seg_quads
        group_seg = torch.zeros(n_groups + 1, dtype=torch.int64)
        group_seg[1:] = torch.cumsum(g_segs, 0)
        n_seg = int(group_seg[-1])
        s_group = torch.repeat_interleave(torch.arange(n_groups), g_segs)
        s_rank = torch.arange(n_seg) - group_seg[s_group]
        s_first = g_first[s_group] // QUAD + s_rank * seg_quads
        s_len = torch.minimum(torch.full_like(s_first, seg_quads), g_first[s_group] // QUAD + g_rec[s_group] - s_first)
        segs = torch.stack([s_group, s_first, s_len, torch.zeros_like(s_len)], 1)
        c0 = s_first * QUAD
        starts = ucol[c0] - delta[c0] if n_seg else torch.zeros((0, SLOTS), dtype=torch.int64)
        dev = weight.device
        return cls((m, k), weight.dtype, _as_int32(rec).to(dev), segs.to(torch.int32).to(dev),
                   starts.to(torch.int16).to(dev), group_seg.to(torch.int32).to(dev), int(rows.numel()), seg_quads)

    def stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, 16-bit patterns as int16) of every slot, padding included (value 0), decoded from
        the records as the kernel reads them."""
        rec = self.records.cpu().to(torch.int64) & 0xFFFFFFFF
        n_rec = rec.shape[0]
        words = rec[:, :32].view(n_rec, 4, QUAD, 2).permute(0, 2, 1, 3).reshape(-1, 8)  # [step][2q + o]
        rb = (rec[:, 32:36, None] >> (8 * torch.arange(QUAD))) & 0xFF  # [rec][q][c]
        rho = (rb.permute(0, 2, 1) << (8 * torch.arange(4))).sum(-1).reshape(-1)  # per step: byte q, nibbles 2 q + o
        db = (rec[:, 36:, None] >> (8 * torch.arange(QUAD))) & 0xFF  # [rec][slot][c]
        delta = db.permute(0, 2, 1).reshape(-1, SLOTS)
        delta = torch.where(delta >= 128, delta - 256, delta)
        segs = self.segs.cpu().to(torch.int64)
        ucol = torch.zeros_like(delta)
        step_group = torch.zeros(delta.shape[0], dtype=torch.int64)
        for s in range(segs.shape[0]):  # each segment's columns from its starts, as a warp walks them
            g, first, n = (int(v) for v in segs[s, :3])
            a, b = first * QUAD, (first + n) * QUAD
            ucol[a:b] = self.starts[s].cpu().to(torch.int64) + torch.cumsum(delta[a:b], 0)
            step_group[a:b] = g
        k_slot = torch.arange(SLOTS)
        o, q, j = k_slot // 8, (k_slot % 8) // 2, k_slot % 2
        cols = ucol * CLASSES + (k_slot % CLASSES)
        nib = (rho[:, None] >> (4 * (2 * q + o))) & 0xF
        rows = step_group[:, None] * GROUP_ROWS + nib
        half = (words[:, 2 * q + o] >> (16 * j)) & 0xFFFF
        half = torch.where(half >= 2**15, half - 2**16, half)
        keep = rows < self.shape[0]
        return rows[keep], cols[keep], half[keep].to(torch.int16)

    def decoded(self) -> torch.Tensor:
        """The dense weight the format holds (summed over slots: value-0 slots add nothing)."""
        rows, cols, bits = self.stored()
        dense = torch.zeros(self.shape, dtype=torch.float32)
        dense.index_put_((rows, cols), bits.view(self.dtype).float(), accumulate=True)
        return dense.to(self.dtype).to(self.device)


def _bridged(pu, pv, prow, seq):
    """Pairs sorted by (sequence, step) with value-0 pairs inserted where a half's column (units of 8)
    steps by more than MAX_STEP from the sequence's previous pair, the steps split evenly."""
    n = seq.numel()
    if not n:
        return pu, pv, prow, seq
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = seq[1:] != seq[:-1]
    prev = torch.where(first[:, None], pu, torch.cat([pu[:1], pu[:-1]]))
    d = pu - prev
    nb = ((d.abs() + MAX_STEP - 1) // MAX_STEP - 1).clamp_min(0).max(1).values
    if not int(nb.sum()):
        return pu, pv, prow, seq
    reps = nb + 1
    src = torch.repeat_interleave(torch.arange(n), reps)
    off = torch.arange(src.numel()) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    real = off == nb[src]
    u = prev[src] + torch.div(d[src] * (off + 1)[:, None], reps[src][:, None], rounding_mode="floor")
    v = torch.where(real[:, None], pv[src], 0)
    return u, v, prow[src], seq[src]


def gather_reference(x: torch.Tensor, weight: GatherWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) in fp32, in X's dtype, from the format decoded (finite X)."""
    return decoded_product(x, weight, bias)
