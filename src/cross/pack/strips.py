"""The strip format: a weight for the tensor-core strip kernel (``kernels/strip_mma.cu``), which
loads it straight into the A operands of ``mma.m16n8k16`` (16 weight rows x 16 columns, 8 tokens)
for 8 or 16 tokens per pass: a bit per pair of weight elements and 4 bytes per pair that holds a
nonzero, so that a lane's A register is a stored word or zero, with no decode of its elements.

Layout. A strip is 16 mt rows (mt m-tiles of 16); a step 16 columns; a chunk 4 steps. In an mma
the lane ``4 g + q`` holds rows g and g + 8 at four of the step's columns; the product does not
depend on which four, so the format gives lane q of every row group the step's columns
``4 q .. 4 q + 3`` (X's operand is read with the same assignment). Per step and m-tile a lane owns
4 pairs, its 4 A registers: (row g, columns 0-1), (row g + 8, columns 0-1), (row g, columns 2-3),
(row g + 8, columns 2-3). A pair with a nonzero is stored whole (its zero, if any, as +0.0), an
empty pair not at all; a bit per pair says which (bit 4 (mt j + t) + r of a lane's chunk word:
step j, m-tile t, register r: the stream's order, so that the words before a register are a
popcount of the bits below its own). Against a bit per element and 2 bytes per nonzero this stores the zero of
a half-empty pair, ~1.3x the bytes at 70%, and spares the kernel every per-element instruction.

Work. Block b takes strips ``[b S / B, (b + 1) S / B)``; its warp w takes chunks
``[w c, (w + 1) c)`` (c = ceil(chunks per strip / warps)) of each of them, so a strip's warps sum
disjoint column ranges, combined in the block in warp order (deterministic). A lane's pairs over
all its warp's chunks form one stream (step by step, m-tile by m-tile, register by register); lane
t's stream is column t of the warp's region (int32 [rows, 32]): a warp's loads of its 32 lanes' next
words fall in 32 different banks whatever their positions, and the region is padded only at its
end, not per chunk (lanes consume at different rates).

Staging. The kernel copies a warp's region into a ring of ``ring`` rows in shared memory,
``depth`` chunks ahead of the chunk it computes: chunk c needs rows ``[lo_c, hi_c)`` (the rows its
lanes read: a lane reads four words from its position at every step), and copying chunk c + depth
overwrites the rows ``ring`` below ``hi_{c+depth}``, so the packer keeps
``hi_{c+depth} - lo_c <= ring`` by moving lagging lanes forward: chunk c starts each lane at least
at row ``floor_c`` (table ``chunks``: floor, hi). The floors are the only padding inside a region.

    values  int32 [R, 32]        all warps' regions, one after another
    masks   int32 [C, 32]        per warp chunk and lane: the pair bits
    chunks  int32 [C, 2]         per warp chunk: floor (row), hi (exclusive, running max)
    heads   int32 [blocks * warps, 8]: first strip, end strip, first chunk of a strip, chunks per
                                 strip, first row of the region, first chunk in masks/chunks, 0, 0

The layout depends on the launch (blocks, warps): a StripWeight is built for the GPU that runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_weight
from .rows import _as_int16, _as_int32, _pair_words, _stored_halves

ROWS = 16  # rows per strip: the mma's M
STEP = 16  # columns per step: the mma's K
CHUNK = 4  # steps per chunk: a lane's pair bits of a chunk are one word (16 per m-tile)
CHUNK_COLS = STEP * CHUNK
WINDOW = 4  # words a lane reads from its position at every step (its m-tile's up to 4 stored pairs)
PAIRS = 4  # pairs (A registers) per lane, step and m-tile
_DTYPES = (torch.bfloat16, torch.float16)


def lane_slots(weight: torch.Tensor, mt: int = 1) -> torch.Tensor:
    """The weight (padded to whole strips of 16 mt rows and whole chunks) as
    [strips, chunks, steps, lanes, 8 mt]: lane 4 g + q's elements of each step, m-tile by m-tile
    (rows 16 t + g at columns 4q..4q+3, then rows 16 t + g + 8)."""
    m, k = weight.shape
    s, ch = -(-m // (ROWS * mt)), -(-k // CHUNK_COLS)
    w = torch.zeros(s * ROWS * mt, ch * CHUNK_COLS, dtype=weight.dtype, device=weight.device)
    w[:m, :k] = weight
    # (s, t, half, g, c, j, q, i) -> (s, c, j, g, q, t, half, i)
    w = w.view(s, mt, 2, 8, ch, CHUNK, 4, 4).permute(0, 4, 5, 3, 6, 1, 2, 7)
    return w.reshape(s, ch, CHUNK, 32, 8 * mt)


def pair_words(weight: torch.Tensor, mt: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each lane's A registers per step and m-tile as 32-bit words (the lower column in the low half;
    zeros, -0.0 included, as +0.0) and whether each holds a nonzero: two [strips, chunks, steps,
    lanes, 4 mt] tensors (int32, bool), registers (row g, cols 0-1), (g + 8, 0-1), (g, 2-3), (g + 8, 2-3)."""
    half, nz = _stored_halves(lane_slots(weight, mt))  # [S, CH, 4, 32, 8 mt]: (t, half, i)
    s_, ch = half.shape[:2]
    # (t, half, i = 2 ip + e) -> (t, ip, half, e): register r = 2 ip + half
    half = half.view(s_, ch, CHUNK, 32, mt, 2, 2, 2).permute(0, 1, 2, 3, 4, 6, 5, 7)
    nz = nz.view(s_, ch, CHUNK, 32, mt, 2, 2, 2).permute(0, 1, 2, 3, 4, 6, 5, 7)
    words = _pair_words(half)
    return (words.reshape(s_, ch, CHUNK, 32, PAIRS * mt).contiguous(),
            nz.any(-1).reshape(s_, ch, CHUNK, 32, PAIRS * mt).contiguous())


def _floors(counts: torch.Tensor, n_chunks: torch.Tensor, ring: int, depth: int, mt: int):
    """Per warp [W, C] chunk floors and running hi (rows) and each lane's start position (words)
    [W, C, 32], from the values per warp chunk and lane ``counts`` [W, C, 32] (chunks past a warp's
    ``n_chunks`` hold none): the least floors that keep ``hi_{c+depth} - lo_c <= ring``."""
    w_, c_, _ = counts.shape
    floor = torch.zeros(w_, c_, dtype=torch.int64, device=counts.device)
    valid = torch.arange(c_, device=counts.device)[None, :] < n_chunks[:, None]
    for _ in range(4 * c_ + 8):
        p = torch.zeros(w_, 32, dtype=torch.int64, device=counts.device)
        starts = []
        for c in range(c_):
            p = torch.maximum(p, floor[:, c:c + 1])
            starts.append(p)
            p = p + counts[:, c]
        start = torch.stack(starts, 1)  # [W, C, 32]
        end = start + counts
        lo = start.min(2).values
        hi = torch.where(valid, end.max(2).values + WINDOW, 0).cummax(1).values
        ahead = torch.cat([hi[:, depth:], hi[:, -1:].expand(w_, min(depth, c_))], 1)[:, :c_]
        short = valid & (ahead - lo > ring)
        if not bool(short.any()):
            return floor, hi, start
        floor = torch.where(short, torch.maximum(floor, ahead - ring), floor)
    raise ValueError(f"strip format: {ring} ring rows cannot hold {depth} chunks ahead of this weight's denser "
                     f"chunks (at most {16 * mt} rows each); use a larger ring or a smaller depth")


@dataclass
class StripWeight:
    shape: tuple[int, int]
    dtype: torch.dtype
    blocks: int
    warps: int
    ring: int
    depth: int
    mt: int
    values: torch.Tensor
    masks: torch.Tensor
    chunks: torch.Tensor
    heads: torch.Tensor

    @classmethod
    def from_dense(cls, weight: torch.Tensor, blocks: int, warps: int = 8, ring: int = 64,
                   depth: int = 3, mt: int = 1) -> "StripWeight":
        """Pack a 2-D bf16/fp16 weight for ``blocks`` blocks of ``warps`` warps, each warp ``mt``
        m-tiles (16 rows each) at a time; zeros (and -0.0) are not stored; NaN and Inf are."""
        check_weight(weight)
        if weight.dtype not in _DTYPES:
            raise TypeError(f"strip format: expected a bfloat16 or float16 weight (16-bit values), got {weight.dtype}")
        if blocks < 1 or warps < 1 or mt not in (1, 2):
            raise ValueError(f"StripWeight: blocks and warps must be >= 1 and mt 1 or 2, got {blocks}, {warps}, {mt}")
        if ring & (ring - 1) or ring < STEP + WINDOW or depth < 1:
            raise ValueError(f"StripWeight: ring must be a power of two >= {STEP + WINDOW} and depth >= 1, "
                             f"got {ring}, {depth}")
        m, k = weight.shape
        dev = weight.device
        words, stored = pair_words(weight, mt)  # [S, CH, 4, 32, 4 mt]
        s_, ch = words.shape[:2]
        # bit 4 (mt j + t) + r of a lane's chunk word: step j, m-tile t, register r (the stream's order)
        shift = (4 * mt * torch.arange(CHUNK, device=dev)[:, None, None] + 4 * torch.arange(mt, device=dev)[None, :, None]
                 + torch.arange(PAIRS, device=dev)[None, None, :]).reshape(CHUNK, 1, PAIRS * mt)
        mask_words = (stored.to(torch.int64) << shift).sum((2, 4))  # [S, CH, 32]

        per = -(-ch // warps)  # chunks per strip per warp
        s0 = torch.arange(blocks, device=dev) * s_ // blocks
        s1 = (torch.arange(blocks, device=dev) + 1) * s_ // blocks
        n_strips = (s1 - s0).repeat_interleave(warps)  # [B*W]
        c0 = (torch.arange(warps, device=dev) * per).repeat(blocks)
        cn = (ch - c0).clamp(0, per)  # chunks per strip of each warp
        n_chunks = n_strips * cn
        cmax = int(n_chunks.max())
        bw = blocks * warps
        # warp chunk i of warp v: strip s0 + i // cn, chunk c0 + i % cn
        i = torch.arange(max(cmax, 1), device=dev)
        cn1 = cn.clamp(min=1)
        strip = s0.repeat_interleave(warps)[:, None] + i[None, :] // cn1[:, None]
        chunk = c0[:, None] + i[None, :] % cn1[:, None]
        valid = i[None, :] < n_chunks[:, None]
        strip, chunk = torch.where(valid, strip, 0), torch.where(valid, chunk, 0)
        counts = torch.where(valid[..., None], stored.sum((2, 4))[strip, chunk], 0)  # [BW, C, 32]
        floor, hi, start = _floors(counts, n_chunks, ring, depth, mt)
        rows = hi[:, -1] if hi.shape[1] else torch.zeros(bw, dtype=torch.int64, device=dev)
        rows = torch.where(n_chunks > 0, rows, 0)
        row0 = torch.cumsum(rows, 0) - rows
        ch0 = torch.cumsum(n_chunks, 0) - n_chunks

        # every stored pair's word in the values array
        v_idx, c_idx = valid.nonzero(as_tuple=True)  # warp chunks in order
        sel = stored[strip[v_idx, c_idx], chunk[v_idx, c_idx]]  # [n, 4, 32, 4 mt]
        val = words[strip[v_idx, c_idx], chunk[v_idx, c_idx]]
        sel_l = sel.permute(0, 2, 1, 3).reshape(-1, 32, CHUNK * PAIRS * mt)  # per lane, its pairs in order
        val_l = val.permute(0, 2, 1, 3).reshape(-1, 32, CHUNK * PAIRS * mt)
        rank = torch.cumsum(sel_l.to(torch.int64), 2) - 1
        pos = start[v_idx, c_idx][:, :, None] + rank  # word in the lane's stream
        lane = torch.arange(32, device=dev)[None, :, None]
        flat = (row0[v_idx][:, None, None] + pos) * 32 + lane
        total_rows = int(rows.sum())
        values = torch.zeros(max(total_rows, 1) * 32, dtype=torch.int32, device=dev)
        values[flat[sel_l]] = val_l[sel_l]
        values = values.view(-1, 32)

        masks = _as_int32(mask_words[strip[v_idx, c_idx], chunk[v_idx, c_idx]])  # [n, 32]
        table = torch.stack([floor[v_idx, c_idx], hi[v_idx, c_idx]], 1).to(torch.int32)
        heads = torch.zeros(bw, 8, dtype=torch.int32, device=dev)
        heads[:, 0] = s0.repeat_interleave(warps).to(torch.int32)
        heads[:, 1] = s1.repeat_interleave(warps).to(torch.int32)
        heads[:, 2] = c0.to(torch.int32)
        heads[:, 3] = cn.to(torch.int32)
        heads[:, 4] = row0.to(torch.int32)
        heads[:, 5] = ch0.to(torch.int32)
        if total_rows >= 2**31 // 32:
            raise ValueError("StripWeight: the weight is too large for 32-bit offsets")
        # contiguous: the kernel reads raw buffers (indexing a permuted tensor can keep its strides)
        return cls((m, k), weight.dtype, blocks, warps, ring, depth, mt, values.contiguous(),
                   masks.reshape(-1, 32).contiguous(), table.reshape(-1, 2).contiguous(), heads.contiguous())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.masks, self.chunks, self.heads))

    def to(self, device) -> "StripWeight":
        t = [getattr(self, f).to(device) for f in ("values", "masks", "chunks", "heads")]
        return StripWeight(self.shape, self.dtype, self.blocks, self.warps, self.ring, self.depth, self.mt, *t)

    def to_dense(self) -> torch.Tensor:
        """The weight, read as the kernel reads it: each lane from its position (its last
        chunk's end, or the chunk's floor if that is further) in its warp's region, within the
        rows the ring holds at that chunk (an error if a read falls outside them)."""
        m, k = self.shape
        mt = self.mt
        s_, ch = -(-m // (ROWS * mt)), -(-k // CHUNK_COLS)
        dev = self.device
        vals = self.values.to(torch.int64) & 0xFFFFFFFF
        out = torch.zeros(s_, ch, CHUNK, 32, PAIRS * mt, dtype=torch.int64, device=dev)
        heads = self.heads.tolist()
        table = self.chunks.tolist()
        masks = self.masks.to(torch.int64) & 0xFFFFFFFF
        lane = torch.arange(32, device=dev)[:, None].expand(32, PAIRS * mt)
        shift = (4 * torch.arange(mt, device=dev)[:, None] + torch.arange(PAIRS, device=dev)[None, :]).reshape(-1)
        for v, (s0, s1, c0, cn, row0, t0, _, _) in enumerate(heads):
            n = (s1 - s0) * cn
            p = torch.zeros(32, dtype=torch.int64, device=dev)
            for i in range(n):
                floor, hi = table[t0 + i]
                ahead = table[t0 + min(i + self.depth, n - 1)][1]
                lo_ring = ahead - self.ring  # rows below this were overwritten
                p = torch.maximum(p, torch.full_like(p, floor))
                for j in range(CHUNK):
                    bit = ((masks[t0 + i][:, None] >> (shift + 4 * mt * j)) & 1).bool()  # [32, 4 mt]
                    pos = p[:, None] + torch.cumsum(bit.to(torch.int64), 1) - 1
                    if int(p.min()) < max(lo_ring, 0) or int((p + WINDOW).max()) > hi:
                        raise RuntimeError(f"strip format: warp {v} chunk {i} reads outside its ring")
                    got = vals[(row0 + pos).clamp(0, vals.shape[0] - 1), lane]
                    out[s0 + i // cn, c0 + i % cn, j] = torch.where(bit, got, 0)
                    p = p + bit.sum(1)
        halves = torch.stack([out & 0xFFFF, out >> 16], -1)  # [.., 4 mt, 2]: (t, ip, half) then e
        halves = halves.view(s_, ch, CHUNK, 32, mt, 2, 2, 2).permute(0, 1, 2, 3, 4, 6, 5, 7)  # (t, half, ip, e)
        bits = _as_int16(halves).reshape(s_, ch, CHUNK, 32, 8 * mt)
        w = bits.view(self.dtype).view(s_, ch, CHUNK, 8, 4, mt, 2, 4)  # (s, c, j, g, q, t, half, i)
        w = w.permute(0, 5, 6, 3, 1, 2, 4, 7).reshape(s_ * ROWS * mt, ch * CHUNK_COLS)
        return w[:m, :k].contiguous()


def strips_reference(x: torch.Tensor, weight: StripWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ bias) in fp32 from the format as the kernel reads it, in x's dtype: dense
    semantics for non-finite inputs (the kernel multiplies every element, zeros included)."""
    w = weight.to_dense().to(torch.float32)
    y = x.to(torch.float32) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def smem_bytes(k: int, nt: int, warps: int, ring: int, depth: int, mt: int = 1) -> int:
    """Dynamic shared memory of a strip_mma block (strip_mma.cu's layout): X, each warp's ring and
    mask slots, the partial sums, the mbarriers."""
    sx = math.ceil(k / CHUNK_COLS) * CHUNK_COLS + 16
    mslots = 1 << max(1, math.ceil(math.log2(depth + 1)))
    return (nt * sx * 2 + warps * ((ring + WINDOW - 1) * 128 + mslots * 128) + warps * mt * (nt // 8) * 32 * 16
            + warps * mslots * 8)
