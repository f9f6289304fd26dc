"""Containers for a tiled sparse weight: every tile stored in its own format.

One weight, cut by a TileGrid, becomes two flat buffers plus per-tile tables:

- ``values`` (weight dtype, 1-D): for a DENSE tile all ``tile_rows * tile_cols`` elements, row-major,
  zero-padded at the matrix edge; for a BITMAP or INDEX tile its nonzeros in row-major order. Each
  tile's run starts on a multiple of ``ALIGN`` elements, so kernels load values with 16-byte
  vectors.
- ``meta`` (int32, 1-D): for a BITMAP tile ``n_words = tile_rows * tile_cols / 32`` words, row-major,
  bit ``b`` of word ``w`` in row ``r`` standing for column ``32 * w + b``, followed by ``n_words``
  int16 prefixes (two per int32 word, low half first): the number of nonzeros of the tile before
  each word, so a decoder finds any element's rank with one popcount. For an INDEX tile one int16
  in-tile position ``r * tile_cols + c`` per nonzero (two per int32 word, low half first). Each
  tile's run starts on a multiple of ``META_ALIGN`` words.
- per tile: ``kinds`` (TileKind), ``nnz``, ``value_offset`` and ``meta_offset`` (-1 where unused).

EMPTY tiles store nothing. NaN and Inf count as nonzero: they are stored values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_weight, dtype_name, SUPPORTED_DTYPES
from ..tiling import TileGrid, TileKind

ALIGN = 8  # elements: 16 bytes of bf16 / fp16
META_ALIGN = 4  # int32 words: 16 bytes
_BITMAP_WORD = 32
_INDEX_MAX_TILE = 1 << 15  # in-tile positions are int16


def _round_up(x: torch.Tensor, m: int) -> torch.Tensor:
    return (x + (m - 1)) // m * m


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def value_len(kind: torch.Tensor, nnz: torch.Tensor, tile_elems: int) -> torch.Tensor:
    """Elements each tile occupies in ``values`` (padding included)."""
    dense = torch.full_like(nnz, tile_elems)
    sparse = _round_up(nnz, ALIGN)
    zero = torch.zeros_like(nnz)
    return torch.where(kind == TileKind.DENSE, dense, torch.where(kind == TileKind.EMPTY, zero, sparse))


def meta_len(kind: torch.Tensor, nnz: torch.Tensor, tile_elems: int) -> torch.Tensor:
    """int32 words each tile occupies in ``meta`` (padding included)."""
    n_words = tile_elems // _BITMAP_WORD
    bitmap = torch.full_like(nnz, int(_round_up(torch.tensor(n_words + (n_words + 1) // 2), META_ALIGN)))
    index = _round_up((nnz + 1) // 2, META_ALIGN)
    zero = torch.zeros_like(nnz)
    return torch.where(kind == TileKind.BITMAP, bitmap, torch.where(kind == TileKind.INDEX, index, zero))


@dataclass(frozen=True, eq=False)
class TiledWeight:
    """A weight stored tile by tile. Build with :meth:`from_dense`; :meth:`to_dense` inverts it exactly.

    Tensors (all on one device):
        kinds        uint8 [ti, tj]   TileKind of each tile
        nnz          int32 [ti, tj]   nonzeros of each tile
        value_offset int64 [ti, tj]   first element of the tile in ``values`` (-1 for EMPTY)
        meta_offset  int64 [ti, tj]   first word of the tile in ``meta`` (-1 for EMPTY and DENSE)
        values       dtype [n_values] the stored elements
        meta         int32 [n_meta]   bitmap words and int16 index pairs
    """

    grid: TileGrid
    kinds: torch.Tensor
    nnz: torch.Tensor
    value_offset: torch.Tensor
    meta_offset: torch.Tensor
    values: torch.Tensor
    meta: torch.Tensor

    def __post_init__(self):
        self.validate()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, kinds, tile_shape) -> "TiledWeight":
        """Pack ``weight`` (M x K) with the given per-tile kinds ([ti, tj], TileKind values)."""
        weight = check_weight(weight).detach()  # packed buffers must not hold the caller's autograd graph
        grid = TileGrid.for_weight(weight, tile_shape)
        kinds = torch.as_tensor(np.array(kinds, dtype=np.uint8), dtype=torch.uint8).to(weight.device)
        if tuple(kinds.shape) != grid.shape:
            raise ValueError(f"kinds: expected shape {grid.shape} for a {grid.rows}x{grid.cols} weight in {grid.tile_shape} tiles, got {tuple(kinds.shape)}")
        if int(kinds.max()) > max(TileKind):
            raise ValueError(f"kinds: expected TileKind values 0..{int(max(TileKind))}, got {int(kinds.max())}")
        tm, tk = grid.tile_shape
        if tk % _BITMAP_WORD:
            raise ValueError(f"tile_shape: expected tile columns a multiple of {_BITMAP_WORD}, got {tk}")
        if (kinds == TileKind.INDEX).any() and tm * tk > _INDEX_MAX_TILE:
            raise ValueError(f"INDEX tiles: expected at most {_INDEX_MAX_TILE} elements per tile (int16 positions), got {tm * tk}")

        tiles = grid.tiles(weight).reshape(grid.shape[0] * grid.shape[1], tm * tk)  # [n_tiles, tm*tk]
        nz = tiles != 0
        nnz = nz.sum(1).to(torch.int32)
        flat_kinds = kinds.reshape(-1)
        bad = (flat_kinds == TileKind.EMPTY) & (nnz > 0)
        if bad.any():
            t = int(bad.nonzero()[0, 0])
            raise ValueError(f"tile {divmod(t, grid.shape[1])} is marked EMPTY: expected 0 nonzeros, got {int(nnz[t])}")

        n64 = nnz.to(torch.int64)
        vlen = value_len(flat_kinds, n64, tm * tk)
        mlen = meta_len(flat_kinds, n64, tm * tk)
        voff = _exclusive_cumsum(vlen)
        moff = _exclusive_cumsum(mlen)
        values = weight.new_zeros(int(vlen.sum()))
        meta = torch.zeros(int(mlen.sum()), dtype=torch.int32, device=weight.device)

        dense = flat_kinds == TileKind.DENSE
        if dense.any():
            dst = voff[dense][:, None] + torch.arange(tm * tk, device=weight.device)
            values[dst.reshape(-1)] = tiles[dense].reshape(-1)

        sparse = (flat_kinds == TileKind.BITMAP) | (flat_kinds == TileKind.INDEX)
        if sparse.any():
            # a sparse tile's nonzeros, row-major, go to its run starting at voff: boolean selection
            # keeps that order, so each nonzero's slot is its tile's voff plus its rank in the tile
            snz = nz[sparse]
            counts = n64[sparse]
            starts = voff[sparse] - (torch.cumsum(counts, 0) - counts)
            dst = torch.repeat_interleave(starts, counts) + torch.arange(int(counts.sum()), device=weight.device)
            values[dst] = tiles[sparse][snz]

        bitmap = flat_kinds == TileKind.BITMAP
        if bitmap.any():
            bits = nz[bitmap].reshape(-1, tm * tk // _BITMAP_WORD, _BITMAP_WORD).to(torch.int32)
            # distinct powers of two summed in int32 wrap around exactly as their bitwise OR would
            words = (bits << torch.arange(_BITMAP_WORD, device=weight.device, dtype=torch.int32)).sum(-1, dtype=torch.int32)
            counts = bits.sum(-1, dtype=torch.int32)
            prefix = (torch.cumsum(counts, 1, dtype=torch.int32) - counts).to(torch.int16)
            nw = words.shape[1]
            dst = moff[bitmap][:, None] + torch.arange(nw, device=weight.device)
            meta[dst.reshape(-1)] = words.reshape(-1)
            meta16 = meta.view(torch.int16)
            dst16 = 2 * (moff[bitmap][:, None] + nw) + torch.arange(nw, device=weight.device)
            meta16[dst16.reshape(-1)] = prefix.reshape(-1)

        index = flat_kinds == TileKind.INDEX
        if index.any():
            inz = nz[index]
            rank = torch.cumsum(inz, 1) - 1
            pos = torch.arange(tm * tk, device=weight.device).expand_as(inz)
            meta16 = meta.view(torch.int16)
            dst = 2 * moff[index][:, None] + rank
            meta16[dst[inz]] = pos[inz].to(torch.int16)

        empty = flat_kinds == TileKind.EMPTY
        voff = torch.where(empty, -1, voff)
        moff = torch.where(empty | dense, -1, moff)
        shape = grid.shape
        return cls(grid, kinds, nnz.reshape(shape), voff.reshape(shape), moff.reshape(shape), values, meta)

    # ---------------------------------------------------------------- inverse
    def tile_dense(self, i: int, j: int) -> torch.Tensor:
        """One tile decoded to a dense [tile_rows, tile_cols] tensor (padding included)."""
        return self.decode(self.kinds[i, j].reshape(1), self.value_offset[i, j].reshape(1),
                           self.meta_offset[i, j].reshape(1), self.nnz[i, j].reshape(1))[0]

    def decode(self, kinds: torch.Tensor, value_offset: torch.Tensor, meta_offset: torch.Tensor,
               nnz: torch.Tensor) -> torch.Tensor:
        """Tiles given by their (kind, offsets, nnz) decoded to dense [n, tile_rows, tile_cols]; under
        torch.compile the ``cross::decode_tiles`` operator, so that it takes the decode whole."""
        args = (self.values, self.meta, kinds, value_offset, meta_offset, nnz, list(self.grid.tile_shape))
        return decode_tiles(*args) if torch.compiler.is_compiling() else _decode_tiles(*args)

    def to_dense(self) -> torch.Tensor:
        """The M x K weight, exactly as packed."""
        ti, tj = self.grid.shape
        tiles = self.decode(self.kinds.reshape(-1), self.value_offset.reshape(-1), self.meta_offset.reshape(-1),
                            self.nnz.reshape(-1))
        return self.grid.untile(tiles.reshape(ti, tj, *self.grid.tile_shape)).contiguous()

    # ---------------------------------------------------------------- facts
    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Bytes of the packed form: values, metadata and the per-tile tables."""
        tables = self.kinds.numel() * (1 + 4 + 8 + 8)
        return self.values.numel() * self.values.element_size() + self.meta.numel() * 4 + tables

    @property
    def dense_nbytes(self) -> int:
        return self.grid.rows * self.grid.cols * self.values.element_size()

    def kind_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.kinds.reshape(-1).to(torch.int64), minlength=len(TileKind)).tolist()
        return {k.name: counts[k] for k in TileKind}

    def to(self, device) -> "TiledWeight":
        move = lambda t: t.to(device)  # noqa: E731
        return TiledWeight(self.grid, move(self.kinds), move(self.nnz), move(self.value_offset),
                           move(self.meta_offset), move(self.values), move(self.meta))

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check types, shapes and that every tile's runs lie inside the buffers."""
        g = self.grid
        expect = {
            "kinds": (torch.uint8, g.shape),
            "nnz": (torch.int32, g.shape),
            "value_offset": (torch.int64, g.shape),
            "meta_offset": (torch.int64, g.shape),
        }
        for name, (dtype, shape) in expect.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected {dtype_name(dtype)} {shape}, got {dtype_name(t.dtype)} {tuple(t.shape)}")
        if self.values.dim() != 1 or self.values.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"values: expected a 1-D float tensor, got {dtype_name(self.values.dtype)} {tuple(self.values.shape)}")
        if self.meta.dim() != 1 or self.meta.dtype != torch.int32:
            raise ValueError(f"meta: expected a 1-D int32 tensor, got {dtype_name(self.meta.dtype)} {tuple(self.meta.shape)}")
        devices = {t.device for t in (self.kinds, self.nnz, self.value_offset, self.meta_offset, self.values, self.meta)}
        if len(devices) != 1:
            raise ValueError(f"expected all buffers on one device, got {sorted(map(str, devices))}")
        if self.values.is_meta:  # shapes and types checked; meta tensors hold no offsets to check
            return
        if int(self.kinds.max()) > max(TileKind):
            raise ValueError(f"kinds: expected TileKind values, got {int(self.kinds.max())}")

        tm, tk = g.tile_shape
        kinds = self.kinds.reshape(-1).to(torch.int64)
        nnz = self.nnz.reshape(-1).to(torch.int64)
        sizes = torch.as_tensor(g.tile_sizes().reshape(-1), device=nnz.device)
        if (nnz < 0).any() or (nnz > sizes).any():
            raise ValueError("nnz: expected 0 <= nnz <= elements of the tile for every tile")
        if ((kinds == TileKind.EMPTY) & (nnz != 0)).any():
            raise ValueError("EMPTY tiles: expected nnz == 0")
        vlen = value_len(kinds, nnz, tm * tk)
        mlen = meta_len(kinds, nnz, tm * tk)
        for name, off, length, buf in (("value_offset", self.value_offset, vlen, self.values),
                                       ("meta_offset", self.meta_offset, mlen, self.meta)):
            off = off.reshape(-1)
            used = length > 0
            if ((off[used] < 0) | (off[used] + length[used] > buf.numel())).any():
                raise ValueError(f"{name}: expected every tile's run inside the buffer of {buf.numel()}, got one outside")
        if (self.value_offset.reshape(-1)[vlen > 0] % ALIGN).any():
            raise ValueError(f"value_offset: expected multiples of {ALIGN}")
        if (self.meta_offset.reshape(-1)[mlen > 0] % META_ALIGN).any():
            raise ValueError(f"meta_offset: expected multiples of {META_ALIGN}")


#: bit j of byte value v, for v in 0..255
_BYTE_BITS = (torch.arange(256)[:, None] >> torch.arange(8)) & 1 == 1


def _decode_tiles(values: torch.Tensor, meta: torch.Tensor, kinds: torch.Tensor, value_offset: torch.Tensor,
                 meta_offset: torch.Tensor, nnz: torch.Tensor, tile_shape: list[int]) -> torch.Tensor:
    """Tiles of a tiled weight's ``values`` and ``meta`` given by their (kind, offsets, nnz) decoded
    to dense [n, tile_rows, tile_cols] (``TiledWeight.decode``)."""
    tm, tk = tile_shape
    dev = values.device
    kinds, voff, moff = kinds.to(dev).to(torch.int64), value_offset.to(dev).to(torch.int64), meta_offset.to(dev).to(torch.int64)
    nnz = nnz.to(dev).to(torch.int64)
    tiles = values.new_zeros(kinds.numel(), tm * tk)
    ar = torch.arange(tm * tk, device=dev)

    dense = kinds == TileKind.DENSE
    if dense.any():
        tiles[dense] = values[voff[dense][:, None] + ar]

    bitmap = kinds == TileKind.BITMAP
    if bitmap.any():
        # a tile's bits by byte through a table (bit b of word w is element 32 w + b: the words'
        # little-endian bytes in order); its values are stored in the order of its set bits
        nw = tm * tk // _BITMAP_WORD
        words = meta[moff[bitmap][:, None] + torch.arange(nw, device=dev)].contiguous()
        bits = _BYTE_BITS.to(dev)[words.view(torch.uint8).long()].reshape(-1, tm * tk)
        counts = bits.sum(1)
        tile = torch.repeat_interleave(torch.arange(bits.shape[0], device=dev), counts)
        first = torch.cumsum(counts, 0) - counts  # each tile's first set bit in the flat order
        pos = bits.reshape(-1).nonzero().squeeze(1)  # tile by tile, elements ascending
        src = voff[bitmap][tile] + torch.arange(pos.numel(), device=dev) - first[tile]
        where = bitmap.nonzero().squeeze(1)[tile] * (tm * tk) + pos % (tm * tk)
        tiles.view(-1)[where] = values[src]

    index = kinds == TileKind.INDEX
    if index.any():
        n_idx = nnz[index]
        width = int(n_idx.max())
        slot = torch.arange(width, device=dev)
        valid = slot[None, :] < n_idx[:, None]
        pos16 = meta.view(torch.int16)
        src = (2 * moff[index])[:, None] + slot
        pos = pos16[src.clamp(max=pos16.numel() - 1)].to(torch.int64) & 0xFFFF
        vals = values[(voff[index][:, None] + slot).clamp(max=values.numel() - 1)]
        sub = tiles[index]
        rows = torch.arange(sub.shape[0], device=dev)[:, None].expand_as(pos)
        sub[rows[valid], pos[valid]] = vals[valid]
        tiles[index] = sub
    return tiles.reshape(-1, tm, tk)


decode_tiles = torch.library.custom_op("cross::decode_tiles", _decode_tiles, mutates_args=())


@decode_tiles.register_fake
def _(values, meta, kinds, value_offset, meta_offset, nnz, tile_shape):
    return values.new_empty((kinds.numel(), *tile_shape))
