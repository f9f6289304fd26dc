"""The row format: a weight's nonzeros row by row in 3 bytes each, for the row kernel
(``kernels/row_gemv.cu``), which multiplies them on CUDA cores with every lane busy, for up to 8
tokens per pass over the entries.

    values   int16 [E]      the entries' values (bits of the weight's 16-bit dtype); row r's run is
                            values[row_ptr[r]:row_ptr[r + 1]], in units of ``GROUP`` entries
    meta     int32 [E / 4]  the columns, one 64-bit word (two int32: low, high) per unit: the
                            unit's first column in bits 0-15 of the low word, then each later
                            entry's step from the one before, in multiples of the unit's scale
                            2**s (0-63 steps): entries 1-2 in bits 16-21 and 22-27 of the low word,
                            entries 3-7 in bits 0-5, ..., 24-29 of the high word; s in bits 28-30 of
                            the low word
    row_ptr  int32 [M + 1]  run offsets, multiples of ``GROUP``

The units of a run: first the row's nonzeros of each class (column mod ``classes``), by column, 8
at a time (scale ``classes``), in turns over the classes: unit i of a run holds class i mod
``classes`` while every class has units left. The row kernel gives unit i to lane i mod 32, so the
lanes of a quarter warp read X at 8 different classes of columns at every step: their shared-memory
loads fall in different banks (random columns cost ~2.5 times the wavefronts). Then the rest of each
class (fewer than 8), by column, scale 1, padded to a multiple of 8 entries of value 0 repeating the
last column. A step longer than ``MAX_STEP`` (in units of the scale) is bridged by entries of value
0, ``MAX_STEP`` apart. So every entry of value 0 is padding or a bridge, never a stored weight: NaN
and Inf are stored values, zeros (and -0.0) never are. Three bytes per nonzero against the BITMAP
tiles' two plus a bit per element: fewer bytes above ~83% sparsity, 0.75 of dense at 50%; no zero
costs an instruction and no lane idles. Columns are 16 bits: K <= ``MAX_COLS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_weight

GROUP = 8  # entries per column word: a lane's 16-byte load of values
MAX_STEP = 63  # 6-bit steps
MAX_COLS = 65536  # first columns are 16 bits
CLASSES = 16  # column classes of the units (a power of two up to 128; 1: every run by column)
SCALE_BIT = 28  # bits 28-30 of the low word: log2 of the unit's step scale
_STEP_BITS = (16, 22, 32, 38, 44, 50, 56)  # bit of entry 1..7's step in the group's 64-bit word
_DTYPES = (torch.bfloat16, torch.float16)


def _round_up(x: torch.Tensor, m: int) -> torch.Tensor:
    return (x + (m - 1)) // m * m


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 values as int32 (two's complement)."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _as_int16(x: torch.Tensor) -> torch.Tensor:
    """The low 16 bits of int64 values as int16 (two's complement): 16-bit weights' bit patterns."""
    x = x & 0xFFFF
    return torch.where(x >= 2**15, x - 2**16, x).to(torch.int16)


def _stored_halves(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 16-bit weight's elements as int32 bit patterns with every zero (-0.0 included) as +0.0, and
    whether each is a nonzero: the rule of the formats that store pairs whole (strips, slices)."""
    bits = w.contiguous().view(torch.int16).to(torch.int32)
    nz = (bits & 0x7FFF) != 0
    return torch.where(nz, bits & 0xFFFF, 0), nz


def _pair_words(half: torch.Tensor) -> torch.Tensor:
    """Pairs of 16-bit patterns [..., 2] (int32, the lower column first) as int32 words, the lower
    column in the low half: a B or A register of an mma."""
    return _as_int32(half[..., 0].to(torch.int64) | (half[..., 1].to(torch.int64) << 16))


def _segment_rank(seg: torch.Tensor, n_segs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry of ``seg`` (sorted), its rank within its segment; and each segment's size."""
    counts = torch.bincount(seg, minlength=n_segs)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(seg.numel(), device=seg.device) - first[seg], counts


def _bridge(seg: torch.Tensor, pos: torch.Tensor, bits: torch.Tensor):
    """Entries sorted by (seg, pos) with value-0 entries MAX_STEP apart inserted wherever ``pos``
    steps by more than MAX_STEP within a segment (the first entry of a segment needs none)."""
    if seg.numel() == 0:
        return seg, pos, bits
    first = torch.ones_like(seg, dtype=torch.bool)
    first[1:] = seg[1:] != seg[:-1]
    prev = torch.cat([pos.new_zeros(1), pos[:-1]])
    bridges = torch.where(first, 0, (pos - prev - 1) // MAX_STEP)
    if not int(bridges.sum()):
        return seg, pos, bits
    reps = bridges + 1
    src = torch.repeat_interleave(torch.arange(seg.numel(), device=seg.device), reps)  # the entry each one serves
    offset = torch.arange(src.numel(), device=seg.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    is_real = offset == bridges[src]
    return (seg[src], torch.where(is_real, pos[src], prev[src] + MAX_STEP * (offset + 1)),
            torch.where(is_real, bits[src], 0))


def _padded_units(rows: torch.Tensor, cols: torch.Tensor, bits: torch.Tensor, m: int):
    """Entries sorted by (row, column) as units of GROUP: each row's padded to a multiple of GROUP with
    value-0 entries repeating its last column. Returns (unit rows [U], columns [U, GROUP], bits [U, GROUP])."""
    dev = rows.device
    rank, counts = _segment_rank(rows, m)
    ptr = torch.cumsum(_round_up(counts, GROUP), 0) - _round_up(counts, GROUP)
    total = int(_round_up(counts, GROUP).sum())
    pos = ptr[rows] + rank
    values = torch.zeros(total, dtype=torch.int16, device=dev)
    values[pos] = bits
    # padding repeats its row's last column: every position takes the column of the last entry at or
    # before it (positions of padding belong to the row whose entries precede them)
    col_at = torch.zeros(total, dtype=torch.int64, device=dev)
    col_at[pos] = cols
    filled = torch.zeros(total, dtype=torch.int64, device=dev)
    filled[pos] = pos
    filled = torch.cummax(filled, 0).values if total else filled
    unit_rows = torch.repeat_interleave(torch.arange(m, device=dev), _round_up(counts, GROUP) // GROUP)
    return unit_rows, col_at[filled].view(-1, GROUP), values.view(-1, GROUP)


@dataclass(frozen=True, eq=False)
class RowWeight:
    """A weight in the row format (see the module docstring). Build with :meth:`from_dense`."""

    shape: tuple[int, int]
    dtype: torch.dtype
    values: torch.Tensor
    meta: torch.Tensor
    row_ptr: torch.Tensor
    nnz: int

    @classmethod
    def from_dense(cls, weight: torch.Tensor, classes: int = CLASSES) -> "RowWeight":
        """The row format of a 2-D bf16 or fp16 weight with at most ``MAX_COLS`` columns (on its
        device); ``classes``: the column classes of its units (a power of two, 1 to 128)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"row format: expected a bfloat16 or float16 weight (16-bit values), got {weight.dtype}")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1 or classes > 128 \
                or classes & (classes - 1):
            raise ValueError(f"row format: expected classes a power of two from 1 to 128, got {classes!r}")
        m, k = weight.shape
        if k > MAX_COLS:
            raise ValueError(f"row format: expected at most {MAX_COLS} columns (16-bit column indices), got {k}")
        dev = weight.device
        shift = classes.bit_length() - 1
        # each row's nonzeros of one class, by column (steps of `classes` columns), bridged: the
        # nonzeros of the weight with its columns ordered by (class, column) come in that order
        by_class = torch.argsort(torch.arange(k, device=dev) & (classes - 1), stable=True)
        bits_all = weight.view(torch.int16)[:, by_class]
        rows, cols = (bits_all.view(weight.dtype) != 0).nonzero(as_tuple=True)  # NaN != 0: stored
        bits = bits_all[rows, cols]
        cols = by_class[cols]
        seg = rows * classes + (cols & (classes - 1))
        seg, q, bits = _bridge(seg, cols >> shift, bits)
        rank, counts = _segment_rank(seg, m * classes)
        full = rank < (counts // GROUP * GROUP)[seg]
        # the classes' units: unit j of class c in row r
        c_seg = seg[full].view(-1, GROUP)[:, 0]
        c_cols = ((q[full] << shift) | (seg[full] & (classes - 1))).view(-1, GROUP)
        c_bits = bits[full].view(-1, GROUP)
        c_turn = rank[full].view(-1, GROUP)[:, 0] // GROUP
        # the rest of each class (its stored weights; bridges are redone), by column, scale 1
        rest = ~full & (bits != 0)
        r_rows = seg[rest] // classes
        r_cols = (q[rest] << shift) | (seg[rest] & (classes - 1))
        r_bits = bits[rest]
        if classes > 1:
            order = torch.argsort(r_rows * k + r_cols)
            r_rows, r_cols, r_bits = r_rows[order], r_cols[order], r_bits[order]
        r_rows, r_cols, r_bits = _bridge(r_rows, r_cols, r_bits)
        p_rows, p_cols, p_bits = _padded_units(r_rows, r_cols, r_bits, m)
        # a run: the classes' units in turns (turn, then class), then the rest
        n_class = c_seg.numel()
        unit_rows = torch.cat([c_seg // classes, p_rows])
        within = torch.cat([c_turn * classes + (c_seg & (classes - 1)),
                            2**31 + torch.arange(p_rows.numel(), device=dev)])  # both < 2**32
        order = torch.argsort(unit_rows * 2**32 + within)
        u_cols = torch.cat([c_cols, p_cols])[order]
        u_bits = torch.cat([c_bits, p_bits])[order]
        u_shift = torch.cat([torch.full((n_class,), shift, dtype=torch.int64, device=dev),
                             torch.zeros(p_rows.numel(), dtype=torch.int64, device=dev)])[order]
        row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.bincount(unit_rows, minlength=m) * GROUP, 0, out=row_ptr[1:])
        total = int(row_ptr[-1])
        if total > 2**31 - 1:
            raise ValueError(f"row format: expected at most {2**31 - 1} entries (int32 offsets), got {total}")
        diffs = torch.diff(u_cols, dim=1)
        steps = diffs >> u_shift[:, None]
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > MAX_STEP
                              or not torch.equal(steps << u_shift[:, None], diffs)):
            raise AssertionError("row format: a step outside 0..MAX_STEP of its unit's scale (bridging failed)")
        word = u_cols[:, 0] | (u_shift << SCALE_BIT)
        for i, bit in enumerate(_STEP_BITS):
            word |= steps[:, i] << bit
        meta = torch.stack([_as_int32(word), _as_int32(word >> 32)], 1).reshape(-1)
        return cls((m, k), weight.dtype, u_bits.reshape(-1).contiguous(), meta.contiguous(),
                   row_ptr.to(torch.int32), int(rows.numel()))

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def n_entries(self) -> int:
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        return 2 * self.values.numel() + 4 * (self.meta.numel() + self.row_ptr.numel())

    def to(self, device) -> "RowWeight":
        return RowWeight(self.shape, self.dtype, self.values.to(device), self.meta.to(device), self.row_ptr.to(device),
                         self.nnz)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, column, value) of every entry, padding and bridges (value 0) included."""
        pairs = self.meta.view(-1, 2).to(torch.int64) & 0xFFFFFFFF
        word = pairs[:, 0] | (pairs[:, 1] << 32)
        cols = torch.empty(word.numel(), GROUP, dtype=torch.int64, device=self.device)
        cols[:, 0] = word & 0xFFFF
        shift = (word >> SCALE_BIT) & 7
        for i, bit in enumerate(_STEP_BITS):
            cols[:, i + 1] = ((word >> bit) & MAX_STEP) << shift
        cols = torch.cumsum(cols, 1).reshape(-1)
        counts = torch.diff(self.row_ptr.to(torch.int64))
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), counts)
        return rows, cols, self.values.view(self.dtype)

    def stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, column, value) of the stored weights (the entries of nonzero value)."""
        rows, cols, values = self.entries()
        keep = self.values != 0
        return rows[keep], cols[keep], values[keep]

    def to_dense(self) -> torch.Tensor:
        """The dense weight (exact)."""
        rows, cols, values = self.stored()
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        dense[rows, cols] = values
        return dense


def decoded_product(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) in fp32, in X's dtype, with W the format ``weight`` read as a
    dense tensor once (its ``decoded()``): every element multiplied, zeros included."""
    y = x.float() @ weight.decoded().float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def rows_reference(x: torch.Tensor, weight: RowWeight, bias: torch.Tensor | None = None,
                   propagate: bool = True) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) from the row format in fp32, in X's dtype: what the row
    kernel computes. ``propagate``: where X has an Inf or NaN in a column where row r
    has a zero, row r is NaN, as in the dense product (the zeros are not stored)."""
    m, _ = weight.shape
    rows, cols, values = weight.stored()
    xf = x.float()
    y = torch.zeros(x.shape[0], m, dtype=torch.float32, device=x.device)
    y.index_add_(1, rows, values.float()[None, :] * xf[:, cols])
    if propagate:
        bad = ~torch.isfinite(xf)
        hits = torch.zeros(x.shape[0], m, dtype=torch.float32, device=x.device)
        hits.index_add_(1, rows, bad[:, cols].float())
        y = torch.where(hits < bad.sum(1, keepdim=True), torch.nan, y)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
