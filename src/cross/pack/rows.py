"""The row format: a weight's nonzeros row by row in 3 bytes each, for the row kernel
(``kernels/row_gemv.cu``), which multiplies them on CUDA cores with every lane busy, for up to 8
tokens per pass over the entries.

    values   int16 [E]      the entries' values (bits of the weight's 16-bit dtype); row r's run is
                            values[row_ptr[r]:row_ptr[r + 1]], columns ascending, padded to a
                            multiple of ``GROUP`` entries with entries of value 0
    meta     int32 [E / 4]  the columns, one 64-bit word (two int32: low, high) per group of
                            ``GROUP`` entries: the group's first column in bits 0-15 of the low
                            word, then each later entry's column as its step (0-63) from the one
                            before: entries 1-2 in bits 16-21 and 22-27 of the low word, entries 3-7
                            in bits 0-5, ..., 24-29 of the high word
    row_ptr  int32 [M + 1]  run offsets, multiples of ``GROUP``

A step longer than ``MAX_STEP`` between two nonzeros of a row is bridged by entries of value 0,
``MAX_STEP`` columns apart; padding entries repeat the last column (step 0). So every entry of
value 0 is padding or a bridge, never a stored weight: NaN and Inf are stored values, zeros (and
-0.0) never are. Three bytes per nonzero against the BITMAP tiles' two plus a bit per element: fewer
bytes above ~83% sparsity, 0.75 of dense at 50%; no zero costs an instruction and no lane idles.
Columns are 16 bits: K <= ``MAX_COLS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_weight

GROUP = 8  # entries per column word: a lane's 16-byte load of values
MAX_STEP = 63  # 6-bit steps
MAX_COLS = 65536  # first columns are 16 bits
_STEP_BITS = (16, 22, 32, 38, 44, 50, 56)  # bit of entry 1..7's step in the group's 64-bit word
_DTYPES = (torch.bfloat16, torch.float16)


def _round_up(x: torch.Tensor, m: int) -> torch.Tensor:
    return (x + (m - 1)) // m * m


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 values as int32 (two's complement)."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


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
    def from_dense(cls, weight: torch.Tensor) -> "RowWeight":
        """The row format of a 2-D bf16 or fp16 weight with at most ``MAX_COLS`` columns (on its device)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"row format: expected a bfloat16 or float16 weight (16-bit values), got {weight.dtype}")
        m, k = weight.shape
        if k > MAX_COLS:
            raise ValueError(f"row format: expected at most {MAX_COLS} columns (16-bit column indices), got {k}")
        dev = weight.device
        nonzero = weight != 0  # NaN != 0: stored
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: columns ascending within a row
        bits = weight.view(torch.int16)[rows, cols]
        # bridges: a step longer than MAX_STEP from the row's previous nonzero gets value-0 entries
        # MAX_STEP columns apart before it
        first_in_row = torch.ones_like(rows, dtype=torch.bool)
        first_in_row[1:] = rows[1:] != rows[:-1]
        prev = torch.cat([cols.new_zeros(1), cols[:-1]])
        bridges = torch.where(first_in_row, 0, (cols - prev - 1) // MAX_STEP)
        if int(bridges.sum()):
            reps = bridges + 1
            src = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), reps)  # the nonzero each entry serves
            offset = torch.arange(src.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
            is_real = offset == bridges[src]
            e_rows = rows[src]
            e_cols = torch.where(is_real, cols[src], prev[src] + MAX_STEP * (offset + 1))
            e_bits = torch.where(is_real, bits[src], 0)
        else:
            e_rows, e_cols, e_bits = rows, cols, bits

        counts = torch.bincount(e_rows, minlength=m)
        row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        torch.cumsum(_round_up(counts, GROUP), 0, out=row_ptr[1:])
        total = int(row_ptr[-1])
        if total > 2**31 - 1:
            raise ValueError(f"row format: expected at most {2**31 - 1} entries (int32 offsets), got {total}")
        first = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        torch.cumsum(counts, 0, out=first[1:])
        pos = row_ptr[e_rows] + torch.arange(e_rows.numel(), device=dev) - first[e_rows]
        values = torch.zeros(total, dtype=torch.int16, device=dev)
        values[pos] = e_bits
        # padding repeats its row's last column: every position takes the column of the last entry at
        # or before it (positions of padding belong to the row whose entries precede them)
        col_at = torch.empty(total, dtype=torch.int64, device=dev)
        col_at[pos] = e_cols
        filled = torch.zeros(total, dtype=torch.int64, device=dev)
        filled[pos] = pos
        filled = torch.cummax(filled, 0).values
        col_at = col_at[filled] if total else col_at
        groups = col_at.view(-1, GROUP)
        steps = torch.diff(groups, dim=1)
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > MAX_STEP):
            raise AssertionError("row format: a step outside 0..MAX_STEP (bridging failed)")
        word = groups[:, 0].clone()
        for i, bit in enumerate(_STEP_BITS):
            word |= steps[:, i] << bit
        meta = torch.stack([_as_int32(word), _as_int32(word >> 32)], 1).reshape(-1)
        return cls((m, k), weight.dtype, values, meta.contiguous(), row_ptr.to(torch.int32), int(rows.numel()))

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
        for i, bit in enumerate(_STEP_BITS):
            cols[:, i + 1] = (word >> bit) & MAX_STEP
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
