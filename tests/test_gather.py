"""The gather format (pack/gather.py) and the gather kernel (kernels/gather_mma.cu).

CPU: the format decoded as the kernel reads it (each slot's 16-bit column, the rows from the
positions, the values from the pair words) gives the weight bit for bit over shapes and densities,
wide K and ragged groups; the kernel's lanes transcribed (the ldmatrix.trans row addresses with X's
swizzle, the one word a lane keeps per record, the mma's fragment layouts) give the product; the
blocks' groups are balanced.
GPU (`-m gpu`): the kernel against the fp64 product with outputs poisoned, fresh inputs, over shapes,
densities, token counts, dtypes, bias and warps.
"""

import pytest
import torch

from cross.pack.gather import GROUP_ROWS, QUAD, RECORD_BYTES, GatherWeight, gather_reference


def _sparse(m, k, density, gen, dtype=torch.bfloat16):
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)
    return w.to(dtype)


def _bits(t):
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize("m,k", [(8, 16), (13, 40), (64, 256), (100, 1024), (24, 4096)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("seg_quads", [1, 3, 8])
def test_round_trip(rng, m, k, density, seg_quads):
    w = _sparse(m, k, density, rng)
    w[0, 0] = -0.0  # no nonzero: not stored
    gw = GatherWeight.from_dense(w, seg_quads=seg_quads)
    assert torch.equal(_bits(gw.decoded()), _bits(torch.where(w == 0, torch.zeros_like(w), w)))
    nnz = int((w != 0).sum())
    rows, cols, vals = gw.stored()
    assert int((vals != 0).sum()) == nnz and gw.nnz == nnz
    segs = gw.segs.cpu()
    if segs.numel():
        assert int(segs[:, 2].min()) >= 1 and int(segs[:, 2].max()) <= seg_quads
    assert int(segs[:, 2].sum()) == gw.records.shape[0]  # the segments cover the records
    assert gw.records.shape == (gw.steps // QUAD, RECORD_BYTES // 4)


def test_wide_k_and_lone_rows(rng):
    """K = 65536 (columns up to 8 x 8191 units) and rows of very different lengths (one full row among
    nearly empty ones: the group's records are its longest (row, pair class)'s, the others padded)."""
    k = 65536
    w = _sparse(16, k, 0.0005, rng)
    w[3, 7] = 1.0
    w[3, k - 1] = 2.0
    w[9] = torch.randn(k, generator=rng).to(torch.bfloat16)
    w = torch.where(w == 0, torch.zeros_like(w), w)
    gw = GatherWeight.from_dense(w)
    assert torch.equal(_bits(gw.decoded()), _bits(w))
    assert gw.padding > 0.8


def test_fp16_and_ragged_rows(rng):
    w = _sparse(GROUP_ROWS * 5 + 3, 136, 0.3, rng, torch.float16)
    w = torch.where(w == 0, torch.zeros_like(w), w)
    assert torch.equal(_bits(GatherWeight.from_dense(w).decoded()), _bits(w))


@pytest.mark.parametrize("bad", ["dtype", "dim", "k"])
def test_from_dense_refuses_bad_input(bad):
    w = {"dtype": torch.zeros(8, 16), "dim": torch.zeros(8, dtype=torch.bfloat16),
         "k": torch.zeros(8, 12, dtype=torch.bfloat16)}[bad]
    with pytest.raises((TypeError, ValueError)):
        GatherWeight.from_dense(w)
    with pytest.raises(ValueError):
        GatherWeight.from_dense(torch.zeros(8, 16, dtype=torch.bfloat16), seg_quads=0)


def _x_offset(c, h, nt):
    """Byte offset of column c's token half h in X's shared copy: 32 c + 16 (h ^ bit 2 of c); 16 c at 8 tokens."""
    return 32 * c + ((h ^ ((c >> 2) & 1)) << 4) if nt == 16 else 16 * c


def _x_shared(x16, nt):
    """X's shared copy as the kernel stages it, as 16-bit values."""
    k = x16.shape[1]
    xs = torch.zeros(k * nt, dtype=torch.float64)
    for c in range(k):
        for h in range(nt // 8):
            off = _x_offset(c, h, nt) // 2
            xs[off:off + 8] = x16[8 * h:8 * h + 8, c]
    return xs


def _x_staged(x16, k, nt, threads, batch, swap):
    """X's shared copy as the kernel's staging loop writes it (gather_mma.cu, X_BATCH and X_SWAP): each
    thread's loads by the pointer walk over the 8 tokens of its units' half, its stores at the columns
    of each unit; and per warp and store instruction the 16-byte bank groups (byte offset mod 128 // 16)
    its 32 lanes reach. Checks that no byte is written twice."""
    n = x16.shape[0]
    xs = torch.full((k * nt,), float("nan"), dtype=torch.float64)
    written = torch.zeros(k * nt, dtype=torch.int64)
    groups = {}  # (warp, u0 round, batch, store) -> bank groups of its lanes
    x_units = k * nt // 16
    for tid in range(threads):
        for rnd, u0 in enumerate(range(tid, x_units, threads * batch)):
            h0 = u0 & 1 if nt == 16 else 0
            col0 = 2 * (u0 >> 1 if nt == 16 else u0)  # the pointer's column; units b threads further on
            w = [[(0.0, 0.0)] * 8 for _ in range(batch)]
            for j in range(8):
                for b in range(batch):
                    if 8 * h0 + j < n and u0 + b * threads < x_units:
                        col = col0 + (1 if nt == 16 else 2) * b * threads
                        w[b][j] = (float(x16[8 * h0 + j, col]), float(x16[8 * h0 + j, col + 1]))
            for b in range(batch):
                u = u0 + b * threads
                if u >= x_units:
                    break
                p, h = (u >> 1, u & 1) if nt == 16 else (u, 0)
                lo, hi = [v[0] for v in w[b]], [v[1] for v in w[b]]
                sw = (tid >> 2) & 1 if swap else 0
                for store, (c, vals) in enumerate(((2 * p + sw, hi if sw else lo), (2 * p + 1 - sw, lo if sw else hi))):
                    off = _x_offset(c, h, nt) // 2
                    xs[off:off + 8] = torch.tensor(vals, dtype=torch.float64)
                    written[off:off + 8] += 1
                    groups.setdefault((tid // 32, rnd, b, store), []).append((2 * off) % 128 // 16)
    assert int(written.max()) == 1
    return xs, groups


@pytest.mark.parametrize("k,nt,threads,batch", [(4096, 16, 1024, 4), (4096, 8, 1024, 4), (520, 16, 128, 4),
                                                (520, 8, 64, 1), (64, 16, 512, 2)])
def test_x_staging_transcribed(rng, k, nt, threads, batch):
    x16 = torch.zeros(16, k, dtype=torch.float64)
    x16[:nt - 3] = torch.randn(nt - 3, k, generator=rng).to(torch.bfloat16).double()
    for swap in (0, 1):
        xs, groups = _x_staged(x16, k, nt, threads, batch, swap)
        assert torch.equal(xs, _x_shared(x16, nt))
        full = [g for g in groups.values() if len(g) == 32]
        assert full
        # without the swap a warp's store reaches 4 bank groups (8 wavefronts for 512 bytes), with it all 8 (4)
        assert all(len(set(g)) == (8 if swap else 4) for g in full)


def _kernel_transcribed(x, gw, nt):
    """The kernel's lanes step by step in fp64: per segment and step, the ldmatrix.trans row addresses
    (lane i: slot (i % 8) + 8 (i // 16), half (i // 8) % 2; at 8 tokens lanes 0-15: slot (i % 8) + 8 (i // 8),
    half 0, two matrices), the A registers they give (lane t of matrix j: stored rows 2 (t % 4), 2 (t % 4) + 1
    at column t // 4; at 8 tokens matrices 0, 1 are registers 0, 2 and registers 1, 3 zero), the B registers
    (lane 4 g + q: pair (q, o) kept where its nibble is g), and the mma over the PTX fragment layouts."""
    m, k = gw.shape
    n = x.shape[0]
    x16 = torch.zeros(16, k, dtype=torch.float64)
    x16[:n] = x.double()
    xs = _x_shared(x16, nt)
    rec = gw.records.cpu().to(torch.int64) & 0xFFFFFFFF
    acc = torch.zeros(gw.groups, 16, 8, dtype=torch.float64)
    lanes = torch.arange(32)
    if nt == 16:
        kk, hh = (lanes % 8) + 8 * (lanes // 16), (lanes // 8) % 2
    else:
        kk, hh = (lanes % 8) + 8 * ((lanes // 8) % 2), torch.zeros_like(lanes)
    cls = kk % 8
    lane_off = torch.tensor([_x_offset(int(c), int(h), nt) for c, h in zip(cls, hh)])
    step = 8 * 2 * nt  # bytes per unit of a column step
    g4, q = lanes // 4, lanes % 4

    def half(word, j):
        v = int((word >> (16 * j)) & 0xFFFF)
        return torch.tensor(v - (v >> 15) * 65536, dtype=torch.int16).view(gw.dtype).double()

    for s, (grp, first, nq, _) in enumerate(gw.segs.cpu().tolist()):
        c = torch.zeros(16, 8, dtype=torch.float64)
        for i in range(nq):
            r = rec[first + i]
            for cc in range(QUAD):
                u = (r[32 + 2 * kk + cc // 2] >> (16 * (cc % 2))) & 0xFFFF
                addr = lane_off + step * u
                rows8 = torch.stack([xs[a // 2:a // 2 + 8] for a in addr.tolist()])  # [lane][8 values]
                a_regs = []  # per matrix j: lane t's two values
                for j in range(4 if nt == 16 else 2):
                    stored = rows8[8 * j:8 * j + 8]
                    a_regs.append(torch.stack([stored[2 * (lanes % 4), lanes // 4],
                                               stored[2 * (lanes % 4) + 1, lanes // 4]], 1))
                if nt == 8:  # registers 0 and 2 from the two matrices, 1 and 3 zero
                    a_regs = [a_regs[0], torch.zeros_like(a_regs[0]), a_regs[1], torch.zeros_like(a_regs[0])]
                a = torch.zeros(16, 16, dtype=torch.float64)
                for t in range(32):
                    g, qq = t // 4, t % 4
                    a[g, 2 * qq:2 * qq + 2] = a_regs[0][t]
                    a[g + 8, 2 * qq:2 * qq + 2] = a_regs[1][t]
                    a[g, 2 * qq + 8:2 * qq + 10] = a_regs[2][t]
                    a[g + 8, 2 * qq + 8:2 * qq + 10] = a_regs[3][t]
                pos = (g4 - q) % 8
                word = r[8 * q + pos]
                w0 = torch.where((pos == 2 * cc), word, 0)
                w1 = torch.where((pos == 2 * cc + 1), word, 0)
                b = torch.zeros(16, 8, dtype=torch.float64)
                for t in range(32):
                    g, qq = t // 4, t % 4
                    b[2 * qq, g], b[2 * qq + 1, g] = half(w0[t], 0), half(w0[t], 1)
                    b[2 * qq + 8, g], b[2 * qq + 9, g] = half(w1[t], 0), half(w1[t], 1)
                c += a @ b
        acc[grp] += c
    return acc.permute(1, 0, 2).reshape(16, -1)[:n, :m]


@pytest.mark.parametrize("m,k,density", [(16, 64, 0.5), (24, 520, 0.1), (13, 40, 1.0)])
@pytest.mark.parametrize("nt", [16, 8])
def test_kernel_transcribed(rng, m, k, density, nt):
    w = _sparse(m, k, density, rng)
    gw = GatherWeight.from_dense(w, seg_quads=2)
    x = torch.randn(nt - 5, k, generator=rng).to(torch.bfloat16)
    y = _kernel_transcribed(x, gw, nt)
    ref = x.double() @ w.double().t()
    assert torch.allclose(y, ref, rtol=1e-9, atol=1e-9)
    assert torch.allclose(gather_reference(x, gw).double(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


@pytest.mark.parametrize("blocks", [1, 7, 132])
def test_blocks_take_every_group_once_balanced(rng, blocks):
    from cross.kernels.launch import gather_blocks

    gw = GatherWeight.from_dense(_sparse(8 * 300 + 5, 512, 0.3, rng), seg_quads=2)
    edges, most = gather_blocks(gw.group_seg, blocks)
    assert int(edges[0]) == 0 and int(edges[-1]) == gw.groups and bool((edges[1:] >= edges[:-1]).all())
    assert most == int((edges[1:] - edges[:-1]).max())
    segs = (gw.group_seg[1:] - gw.group_seg[:-1]).to(torch.float64) + 0.25
    per_block = torch.stack([segs[int(a):int(b)].sum() for a, b in zip(edges[:-1], edges[1:])])
    assert float(per_block.max()) <= float(segs.sum()) / blocks + float(segs.max()) + 1e-9


def test_block_table_is_groups_and_their_segments(rng):
    """The kernel's table: per block (g0, g1, first segment, end segment), the segments those of its groups;
    made once per weight and block count, and dropped with the weight."""
    import gc

    from cross.kernels import launch

    gw = GatherWeight.from_dense(_sparse(8 * 40 + 3, 256, 0.3, rng), seg_quads=1)
    table, most = launch._gather_table(gw, 9)
    edges, most_b = launch.gather_blocks(gw.group_seg, 9)
    gs = gw.group_seg.to(torch.int64)
    assert most == most_b and table.shape == (9, 4)
    for b, (g0, g1, s0, s1) in enumerate(table.tolist()):
        assert (g0, g1) == (int(edges[b]), int(edges[b + 1])) and (s0, s1) == (int(gs[g0]), int(gs[g1]))
    assert launch._gather_table(gw, 9)[0] is table
    del gw, table
    gc.collect()
    assert len(launch._GATHER_TABLES) == 0


def _check(y, x, w, b):
    ref = x.double() @ w.double().t() + (0 if b is None else b.double())
    assert not torch.isnan(y).any()
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
    assert float(err.max()) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,density", [(m, k, d) for m, k in [(8, 16), (40, 200), (1000, 1032), (300, 6144)]
                                         for d in (0.0, 0.05, 0.3, 0.5, 1.0)]
                         + [(4096, 4096, 0.1), (4096, 4096, 0.3), (11008, 4096, 0.1), (11008, 4096, 0.5)])
def test_gpu_gather_kernel(m, k, density, rng):
    from cross.kernels.launch import gather_matmul

    w = _sparse(m, k, density, rng).cuda()
    gw = GatherWeight.from_dense(w)
    for n in (1, 7, 16, 21):
        x = torch.randn(n, k, generator=rng).to(torch.bfloat16).cuda()
        b = torch.randn(m, generator=rng).to(torch.bfloat16).cuda() if n % 2 == 0 else None
        y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
        gather_matmul(x, gw, b, out=y)
        _check(y, x, w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("warps", [1, 5, 16])
def test_gpu_gather_kernel_warps_fp16_strided(warps, rng):
    from cross.kernels.launch import gather_matmul

    w = _sparse(777, 520, 0.2, rng, torch.float16).cuda()
    x = torch.randn(13, 600, generator=rng).to(torch.float16).cuda()[:, 40:560]  # a strided view
    y = gather_matmul(x, GatherWeight.from_dense(w, seg_quads=1), warps=warps)
    ref = x.double() @ w.double().t()
    assert float(((y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())).max()) < 5e-3
