"""The slice format: a weight for the slice kernel (``kernels/slice_mma.cu``), which multiplies up to
16 tokens of X (the A operand of ``mma.m16n8k16``, held in registers) by the weight as the B operand
(8 rows x 16 columns per step), K split among a block's warps so that no warp reads X more than once.

Pairs. In the mma lane ``4 g + q`` holds two B registers of row g: the format gives it the step's
columns ``4 q .. 4 q + 3`` as two pairs (4q, 4q + 1) and (4q + 2, 4q + 3) (the product does not
depend on which columns a lane holds, as long as X's A registers follow: the kernel loads them as
columns 4q .. 4q + 3 of X, one 8-byte load per token). A pair with a nonzero is stored whole (its
zero, if any, as +0.0), an empty pair not at all. A step's 64 pairs are two halves of 32, one per half
warp (lanes 0-15: rows 0-3, lanes 16-31: rows 4-7); in a half, lane j's pairs are bits 2 j and
2 j + 1 of the half's mask, and the stored words follow the bit order, so that lane j's first word
is at the half's start plus the popcount of the mask's bits below 2 j.

Pieces. The K steps are split into ``warps * pieces`` pieces of ``sp`` steps (the columns padded
with zeros to ``ksp = warps * pieces * sp`` steps); each (consumer) warp of every block takes its
``pieces`` consecutive pieces (warp w from piece ``w * pieces``) and holds X's registers of one
piece at a time (4 sp registers). A piece's heads and words are one stream over the n-tiles (piece,
n-tile, step, half, bit): the words of a piece's consecutive n-tiles are one contiguous range (an
n-tile's last step's start plus that step's popcount is the next n-tile's first start); the kernel
copies a position's (piece and n-tile) words into shared memory as one range.

    heads   int32 [pieces_total * T + HEAD_PAD, 2 sp, 2]  per piece and n-tile (8 rows), per half and
                                    step: mask and start (word index); n-tiles of zeros past the
                                    last (read by no kernel now; kept for reads ahead)
    values  int32 [W + PAD_WORDS]   the stored pairs in stream order; padding (the kernel's copies
                                    read at most 3 words past a range's end)

Bytes per weight element: 16 / 128 per step for the heads (1/16 of dense) plus 2 bytes per stored
pair's element: at 70% sparsity 0.57 of dense, at 90% 0.25, at 50% 0.81.

Elements (``elements=True``, the kernel's ELEMS build). Each nonzero is stored alone (16 bits), so the
values take (1 - s) of dense. A step's lanes are four quarters of 8 (lanes 0-7, 8-15, 16-23, 24-31:
rows 2 h' and 2 h' + 1); in a quarter, lane jj = lane % 8 holds bits 4 jj .. 4 jj + 3 of the
quarter's mask, bit c for its column 4 q + c, and the stored elements follow the bit order, so that
its first element is at the quarter's start (an element index) plus the popcount of the mask below
bit 4 jj. The kernel loads the three words around it, shifts them to that element, and places its
0-4 values by two byte permutes from a 16-entry table indexed by its 4 bits.

    heads   int32 [pieces_total * T + HEAD_PAD, 4 sp, 2]  per piece and n-tile, per half, step and
                                    quarter: mask and start (element index)
    values  int32 [ceil(E / 2) + PAD_WORDS]   the E stored elements in stream order (piece, n-tile,
                                    step, half, quarter, bit), two per word, the first in the low half

Bytes: 8 / 64 per quarter-step for the heads (1/8 of dense) plus 2 per nonzero: at 50% 0.63 of dense,
at 70% 0.43, at 90% 0.23.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_weight
from .rows import _as_int16, _as_int32, _pair_words, _stored_halves, decoded_product

ROWS = 8  # rows per n-tile: the mma's N
STEP = 16  # columns per step: the mma's K
PAIRS = 64  # pairs per n-tile and step
HEAD_PAD = 4  # n-tiles of zero heads past the last piece (slice_mma.cu copies only real ones)
PAD_WORDS = 4096  # past the last word (slice_mma.cu's copies read at most 3 words past a range's end)
QUARTER = 32  # bits of an element mask: 8 lanes x 4 columns
_DTYPES = (torch.bfloat16, torch.float16)


def slice_steps(k: int, warps: int, max_steps: int = 16) -> tuple[int, int, int]:
    """(pieces per warp, steps per piece, padded steps) for K columns on ``warps`` warps: the fewest
    pieces whose steps fit ``max_steps`` (8 or 16: X's registers), each 8 or 16 steps (the kernel loads
    an n-tile's heads as one 8-byte load per lane of 2 sp lanes)."""
    align = 8
    if warps < 1 or max_steps not in (8, 16):
        raise ValueError(f"slice_steps: need warps >= 1 and max_steps 8 or 16, got {warps}, {max_steps}")
    ks = max(1, -(-k // STEP))
    pieces = -(-ks // (warps * max_steps))
    sp = -(-ks // (warps * pieces))
    sp = -(-sp // align) * align
    return pieces, sp, warps * pieces * sp


def default_warps(k: int, max_steps: int = 8, most: int = 16) -> int:
    """Warps per block for K columns: the fewest padded steps, weighed against fewer warps (each warp
    short of ``most`` costs 1/32 more: fewer warps hide less latency)."""
    return min(range(4, most + 1),
               key=lambda w: (slice_steps(k, w, max_steps)[2] * (1 + (most - w) / 32), -w))


def pair_words(weight: torch.Tensor, ksp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight (padded to whole n-tiles and ``ksp`` steps) as each half warp's pairs per n-tile
    and step, in bit order: words (int32, the lower column in the low half; zeros, -0.0 included, as
    +0.0) and whether each holds a nonzero, two [T, ksp, 2, 32] tensors."""
    m, k = weight.shape
    t = -(-m // ROWS)
    w = torch.zeros(t * ROWS, ksp * STEP, dtype=weight.dtype, device=weight.device)
    w[:m, :k] = weight
    half, nz = _stored_halves(w)
    # (T, half, gg, ksp, q, pair, e) -> (T, ksp, half, gg, q, pair, e): bit 8 gg + 2 q + pair
    half = half.view(t, 2, 4, ksp, 4, 2, 2).permute(0, 3, 1, 2, 4, 5, 6).reshape(t, ksp, 2, 32, 2)
    nz = nz.view(t, 2, 4, ksp, 4, 2, 2).permute(0, 3, 1, 2, 4, 5, 6).reshape(t, ksp, 2, 32, 2)
    return _pair_words(half).contiguous(), nz.any(-1).contiguous()


def element_bits(weight: torch.Tensor, ksp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight (padded to whole n-tiles and ``ksp`` steps) as each quarter warp's elements per
    n-tile and step, in bit order (lane jj's columns 4 q .. 4 q + 3 at bits 4 jj ..): bit patterns
    (int16) and whether each is a nonzero (-0.0 is not), two [T, ksp, 2, 2, 32] tensors."""
    m, k = weight.shape
    t = -(-m // ROWS)
    w = torch.zeros(t * ROWS, ksp * STEP, dtype=weight.dtype, device=weight.device)
    w[:m, :k] = weight
    bits = w.view(torch.int16)
    # rows g = 4 h + 2 quarter + g'' (lane jj = 4 g'' + q), columns 4 q + c:
    # (T, h, quarter, g'', ksp, q, c) -> (T, ksp, h, quarter, g'', q, c)
    bits = bits.view(t, 2, 2, 2, ksp, 4, 4).permute(0, 4, 1, 2, 3, 5, 6).reshape(t, ksp, 2, 2, QUARTER)
    return bits.contiguous(), (bits & 0x7FFF) != 0


@dataclass
class SliceWeight:
    shape: tuple[int, int]
    dtype: torch.dtype
    warps: int
    pieces: int
    sp: int
    heads: torch.Tensor
    values: torch.Tensor
    tile_words: torch.Tensor  # int64 [T]: stored words per n-tile (for balancing the blocks)
    elements: bool = False  # the element format (each nonzero alone) instead of pairs
    _ranges: dict = field(default_factory=dict, repr=False, compare=False)
    _decoded: list = field(default_factory=list, repr=False, compare=False)  # decoded(): to_dense(), kept

    @classmethod
    def from_dense(cls, weight: torch.Tensor, warps: int | None = None, max_steps: int = 8,
                   elements: bool = False) -> "SliceWeight":
        """Pack a 2-D bf16/fp16 weight for blocks of ``warps`` warps (None: ``default_warps``), each
        holding X for at most ``max_steps`` (8 or 16; the kernel takes 8) steps of 16 columns, as
        pairs or (``elements``) as elements; zeros (and -0.0) are not stored; NaN and Inf are."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"slice format: expected a bfloat16 or float16 weight (16-bit values), got {weight.dtype}")
        m, k = weight.shape
        if warps is None:
            warps = default_warps(k, max_steps)
        if not isinstance(warps, int) or not 1 <= warps <= 32:
            raise ValueError(f"SliceWeight: warps must be an int in 1..32, got {warps!r}")
        pieces, sp, ksp = slice_steps(k, warps, max_steps)
        if elements:
            return cls._elements(weight, warps, pieces, sp, ksp)
        words, stored = pair_words(weight, ksp)  # [T, ksp, 2, 32]
        t = words.shape[0]
        n_p = warps * pieces
        # stream order: (piece, n-tile, step, half, bit)
        words = words.view(t, n_p, sp, 2, 32).transpose(0, 1).reshape(n_p * t, sp, 2, 32)
        stored = stored.view(t, n_p, sp, 2, 32).transpose(0, 1).reshape(n_p * t, sp, 2, 32)
        dev = weight.device
        mask = _as_int32((stored.to(torch.int64) << torch.arange(32, device=dev)).sum(-1))  # [P T, sp, 2]
        counts = stored.sum(-1).reshape(-1)
        start = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        if total + PAD_WORDS >= 2**31:
            raise ValueError("SliceWeight: the weight is too large for 32-bit word positions")
        heads = torch.zeros(n_p * t + HEAD_PAD, 2, sp, 2, dtype=torch.int32, device=dev)
        heads[:n_p * t, :, :, 0] = mask.transpose(1, 2)
        heads[:n_p * t, :, :, 1] = start.view(n_p * t, sp, 2).transpose(1, 2).to(torch.int32)
        values = torch.zeros(total + PAD_WORDS, dtype=torch.int32, device=dev)
        values[:total] = words[stored]
        tile_words = stored.view(n_p, t, -1).sum((0, 2))
        return cls((m, k), weight.dtype, warps, pieces, sp, heads.view(n_p * t + HEAD_PAD, 2 * sp, 2).contiguous(),
                   values.contiguous(), tile_words)

    @classmethod
    def _elements(cls, weight: torch.Tensor, warps: int, pieces: int, sp: int, ksp: int) -> "SliceWeight":
        bits, stored = element_bits(weight, ksp)  # [T, ksp, 2, 2, 32]
        t, n_p, dev = bits.shape[0], warps * pieces, weight.device
        # stream order: (piece, n-tile, step, half, quarter, bit)
        bits = bits.view(t, n_p, sp, 2, 2, QUARTER).transpose(0, 1).reshape(n_p * t, sp, 2, 2, QUARTER)
        stored = stored.view(t, n_p, sp, 2, 2, QUARTER).transpose(0, 1).reshape(n_p * t, sp, 2, 2, QUARTER)
        mask = _as_int32((stored.to(torch.int64) << torch.arange(QUARTER, device=dev)).sum(-1))  # [P T, sp, 2, 2]
        counts = stored.sum(-1).reshape(-1)
        start = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        words = -(-total // 2)
        if 2 * (words + PAD_WORDS) >= 2**31:
            raise ValueError("SliceWeight: the weight is too large for 32-bit element positions")
        heads = torch.zeros(n_p * t + HEAD_PAD, 2, sp, 2, 2, dtype=torch.int32, device=dev)
        heads[:n_p * t, ..., 0] = mask.transpose(1, 2)  # (half, step, quarter)
        heads[:n_p * t, ..., 1] = start.view(n_p * t, sp, 2, 2).transpose(1, 2).to(torch.int32)
        halves = torch.zeros(2 * (words + PAD_WORDS), dtype=torch.int16, device=dev)
        halves[:total] = bits[stored]
        tile_words = (stored.view(n_p, t, -1).sum((0, 2)) + 1) // 2
        return cls(tuple(weight.shape), weight.dtype, warps, pieces, sp,
                   heads.view(n_p * t + HEAD_PAD, 4 * sp, 2).contiguous(), halves.view(torch.int32).contiguous(),
                   tile_words, elements=True)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def tiles(self) -> int:
        """n-tiles (8 rows each)."""
        return self.tile_words.shape[0]

    @property
    def ksp(self) -> int:
        """Steps (16 columns each) of the padded K."""
        return self.warps * self.pieces * self.sp

    @property
    def nbytes(self) -> int:
        """Device bytes of the format (heads and words)."""
        return self.heads.numel() * 4 + self.values.numel() * 4

    def to(self, device) -> "SliceWeight":
        return SliceWeight(self.shape, self.dtype, self.warps, self.pieces, self.sp, self.heads.to(device),
                           self.values.to(device), self.tile_words.to(device), self.elements)

    def ranges(self, blocks: int) -> tuple[torch.Tensor, int]:
        """n-tile ranges of ``blocks`` blocks (int32 [blocks + 1], on the weight's device), balanced by
        each n-tile's cost (its stored words plus 32 per step: the decode of an empty step), and the
        most n-tiles of a block; cached, so that a launch does no host work (CUDA graphs)."""
        if blocks < 1:
            raise ValueError(f"SliceWeight.ranges: blocks must be >= 1, got {blocks}")
        if blocks not in self._ranges:
            cost = (self.tile_words.to(torch.float64).cpu() + 32.0 * self.ksp).cumsum(0)
            goal = torch.arange(1, blocks, dtype=torch.float64) * float(cost[-1]) / blocks
            cuts = (torch.searchsorted(cost, goal) + 1).clamp(max=self.tiles)
            r = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.full((1,), self.tiles)]).cummax(0).values
            self._ranges[blocks] = (r.to(torch.int32).to(self.device), int((r[1:] - r[:-1]).max()))
        return self._ranges[blocks]

    def to_dense(self) -> torch.Tensor:
        """The weight, read as the kernel reads it: each lane's two words from its half's start plus
        the popcount of the mask below its bits, each register that word, the next, or zero."""
        if self.elements:
            return self._elements_to_dense()
        m, k = self.shape
        t, n_p, sp = self.tiles, self.warps * self.pieces, self.sp
        h = self.heads[:n_p * t].to(torch.int64).view(n_p * t, 2, sp, 2).transpose(1, 2)
        mask, start = h[..., 0] & 0xFFFFFFFF, h[..., 1]
        j = torch.arange(16, device=self.device)
        below = mask[..., None] & ((1 << (2 * j)) - 1)  # [P T, sp, 2, 16]
        pos = start[..., None] + _popcount(below)
        vals = self.values.to(torch.int64) & 0xFFFFFFFF
        w0, w1 = vals[pos], vals[pos + 1]
        p0 = ((mask[..., None] >> (2 * j)) & 1).bool()
        p1 = ((mask[..., None] >> (2 * j + 1)) & 1).bool()
        b0 = torch.where(p0, w0, 0)
        b1 = torch.where(p1, torch.where(p0, w1, w0), 0)
        pairs = torch.stack([b0, b1], -1)  # [P T, sp, 2, 16, 2]: (half, gg q, pair)
        halves = _as_int16(torch.stack([pairs & 0xFFFF, pairs >> 16], -1))  # [.., pair, e]
        w = halves.view(self.dtype).view(n_p, t, sp, 2, 4, 4, 2, 2)
        # (piece, T, step, half, gg, q, pair, e) -> (T, half, gg, piece, step, q, pair, e)
        w = w.permute(1, 3, 4, 0, 2, 5, 6, 7).reshape(t * ROWS, n_p * sp * STEP)
        return w[:m, :k].contiguous()

    def decoded(self) -> torch.Tensor:
        """``to_dense()``, read once and kept (seconds on the CPU for a 7B model's MLP weight)."""
        if not self._decoded:
            self._decoded.append(self.to_dense())
        return self._decoded[0]

    def _elements_to_dense(self) -> torch.Tensor:
        """The element format read as the kernel reads it: each lane's first element at its quarter's
        start plus the popcount of the mask below its bits, its values placed at its set bits in order."""
        m, k = self.shape
        t, n_p, sp = self.tiles, self.warps * self.pieces, self.sp
        h = self.heads[:n_p * t].to(torch.int64).view(n_p * t, 2, sp, 2, 2).transpose(1, 2)  # (step, half, quarter)
        mask, start = h[..., 0] & 0xFFFFFFFF, h[..., 1]
        jj = torch.arange(8, device=self.device)
        first = start[..., None] + _popcount(mask[..., None] & ((1 << (4 * jj)) - 1))  # [P T, sp, 2, 2, 8]
        nib = (mask[..., None] >> (4 * jj)) & 15
        c = torch.arange(4, device=self.device)
        bit = ((nib[..., None] >> c) & 1).bool()  # [.., 8, 4]
        rank = _popcount(nib[..., None] & ((1 << c) - 1))
        halves = self.values.view(torch.int16)
        vals = torch.where(bit, halves[(first[..., None] + rank).clamp(max=halves.numel() - 1)], 0)
        w = vals.view(self.dtype).view(n_p, t, sp, 2, 2, 2, 4, 4)
        # (piece, T, step, half, quarter, g'', q, c) -> (T, half, quarter, g'', piece, step, q, c)
        w = w.permute(1, 3, 4, 5, 0, 2, 6, 7).reshape(t * ROWS, n_p * sp * STEP)
        return w[:m, :k].contiguous()


def slices_reference(x: torch.Tensor, weight: SliceWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y[N, M] = X[N, K] @ W^T (+ bias) from the slice format in fp32, in X's dtype: what the slice
    kernel computes. Every weight element is multiplied, zeros included (0 x Inf is NaN), so
    non-finite inputs reach the outputs as in the dense product. The format is read once per
    SliceWeight (``decoded``)."""
    return decoded_product(x, weight, bias)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each non-negative int64 below 2**32 (two lookups in a table of 16-bit counts)."""
    table = _popcount_table(x.device)
    return table[x & 0xFFFF] + table[x >> 16]


_POPCOUNT_TABLES: dict = {}


def _popcount_table(device: torch.device) -> torch.Tensor:
    if device not in _POPCOUNT_TABLES:
        table = torch.zeros(1 << 16, dtype=torch.int64)
        for b in range(16):
            table += (torch.arange(1 << 16) >> b) & 1
        _POPCOUNT_TABLES[device] = table.to(device)
    return _POPCOUNT_TABLES[device]


def smem_bytes(warps: int, rt: int, elements: bool = False) -> int:
    """Dynamic shared memory of a slice_mma block (slice_mma.cu) of ``warps`` consumer warps: per warp
    the partial sums of ``rt`` n-tiles and two buffers of a piece's heads for them (512 + 2 x 128 bytes
    per n-tile; 512 + 2 x 256 for elements), the ring of words (1440 + 4 words), its slots' bases and
    ring places (8 words each) and 20 mbarriers; for elements, the block's 16-entry table (128 bytes)."""
    heads = 256 if elements else 128
    return warps * (rt * (512 + 2 * heads) + (1440 + 4) * 4 + 2 * 8 * 4 + 20 * 8) + (128 if elements else 0)
