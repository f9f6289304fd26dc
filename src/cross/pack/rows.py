"""The row format: a weight's nonzeros row by row as 32-bit entries, for the row kernel
(``kernels/row_gemv.cu``), which multiplies them on CUDA cores with every lane busy, for up to 8
tokens per pass over the entries.

    entries  int32 [E]      entry = (bits of the value in the weight's 16-bit dtype) << 16 | column;
                            row r's run is entries[row_ptr[r]:row_ptr[r + 1]], columns ascending,
                            padded to a multiple of ``ROW_ALIGN`` entries (16 bytes) with entries of
                            value 0 and column K (the kernel keeps a zero there)
    row_ptr  int32 [M + 1]  run offsets, multiples of ``ROW_ALIGN``

Four bytes per nonzero, against the BITMAP tiles' two plus a bit per element: fewer bytes above
~87.5% sparsity, more below, but no zero costs an instruction and no lane idles. NaN and Inf count
as nonzero, as in the tile formats. Columns are 16 bits: K <= ``MAX_COLS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_weight

ROW_ALIGN = 4
MAX_COLS = 65535  # column K (the padding's) must fit in 16 bits too
_DTYPES = (torch.bfloat16, torch.float16)


def _round_up(x: torch.Tensor, m: int) -> torch.Tensor:
    return (x + (m - 1)) // m * m


@dataclass(frozen=True, eq=False)
class RowWeight:
    """A weight in the row format (see the module docstring). Build with :meth:`from_dense`."""

    shape: tuple[int, int]
    dtype: torch.dtype
    entries: torch.Tensor
    row_ptr: torch.Tensor
    nnz: int

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "RowWeight":
        """The row format of a 2-D bf16 or fp16 weight with at most ``MAX_COLS`` columns (on its device)."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"row format: expected a bfloat16 or float16 weight (16-bit entries), got {weight.dtype}")
        m, k = weight.shape
        if k > MAX_COLS:
            raise ValueError(f"row format: expected at most {MAX_COLS} columns (16-bit column indices), got {k}")
        nonzero = weight != 0  # NaN != 0: stored
        counts = nonzero.sum(1, dtype=torch.int64)
        padded = _round_up(counts, ROW_ALIGN)
        row_ptr = torch.zeros(m + 1, dtype=torch.int64, device=weight.device)
        torch.cumsum(padded, 0, out=row_ptr[1:])
        total = int(row_ptr[-1])
        if total > 2**31 - 1:
            raise ValueError(f"row format: expected at most {2**31 - 1} entries (int32 offsets), got {total}")
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: columns ascending within a row
        first = torch.zeros(m + 1, dtype=torch.int64, device=weight.device)
        torch.cumsum(counts, 0, out=first[1:])
        rank = torch.arange(rows.numel(), device=weight.device) - first[rows]
        bits = weight.view(torch.int16)[rows, cols].to(torch.int64) & 0xFFFF
        packed = (bits << 16) | cols
        entries = torch.full((total,), k, dtype=torch.int64, device=weight.device)
        entries[row_ptr[rows] + rank] = packed
        entries = torch.where(entries >= 2**31, entries - 2**32, entries).to(torch.int32)
        return cls((m, k), weight.dtype, entries, row_ptr.to(torch.int32), int(rows.numel()))

    @property
    def device(self) -> torch.device:
        return self.entries.device

    @property
    def nbytes(self) -> int:
        return 4 * (self.entries.numel() + self.row_ptr.numel())

    def to(self, device) -> "RowWeight":
        return RowWeight(self.shape, self.dtype, self.entries.to(device), self.row_ptr.to(device), self.nnz)

    def columns_values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, column, value) of every entry, padding included (column K, value 0)."""
        e = self.entries.to(torch.int64) & 0xFFFFFFFF
        cols = e & 0xFFFF
        bits = (e >> 16).to(torch.int32)
        bits = torch.where(bits >= 2**15, bits - 2**16, bits).to(torch.int16)
        values = bits.view(self.dtype)
        counts = torch.diff(self.row_ptr.to(torch.int64))
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), counts)
        return rows, cols, values

    def to_dense(self) -> torch.Tensor:
        """The dense weight (exact)."""
        m, k = self.shape
        rows, cols, values = self.columns_values()
        keep = cols < k
        dense = torch.zeros(m, k, dtype=self.dtype, device=self.device)
        dense[rows[keep], cols[keep]] = values[keep]
        return dense


def rows_reference(x: torch.Tensor, weight: RowWeight, bias: torch.Tensor | None = None,
                   propagate: bool = True) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) from the row format in fp32, in X's dtype: what the row
    kernel computes. ``propagate``: where X has an Inf or NaN in a column where row r
    has a zero, row r is NaN, as in the dense product (the zeros are not stored)."""
    m, k = weight.shape
    rows, cols, values = weight.columns_values()
    xf = torch.cat([x.float(), x.new_zeros(x.shape[0], 1, dtype=torch.float32)], 1)  # column K: the padding's zero
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
