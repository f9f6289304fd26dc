"""Counts behind the warpgroup 2:4 kernel's overflow (docs/perf-notes.md, "The overflow as a second
sparse mma"), on the CPU, for uniform random weights.

The first build added a group's third and fourth nonzeros on CUDA cores: for each m-tile and row half,
the 4 lanes of lane group g looped over the entries of row 16 w + 8 hf + g (one entry per step, NTOK / 4
tokens per lane, two 2-byte shared loads of X per 8 tokens). This counts, per chunk, that loop's warp
steps (a warp runs as many steps as its fullest lane group) against the steps if every lane group had
the mean, and the shared-memory wavefronts per load of X (the most distinct 4-byte words any bank
serves to the warp's active lanes) in X's no-swizzle K-major layout (``plain``), in a 128-byte swizzled
one (``swizzle``), and with each row's entries reordered so that the lanes of a step meet in fewer
banks (``--greedy``). The build that replaced it runs the overflow as a second sparse mma; the bytes of
its two layouts (slots, compressed) are printed.

    PYTHONPATH=src python benchmarks/wgmma24_overflow_count.py --shape 11008x4096 --sparsities 0.5,0.7,0.9
"""

import argparse

import numpy as np
import torch

from cross.pack.wgmma24 import Wgmma24Weight

ROWS, CHUNK = 256, 64  # the default block: two warpgroups of two m-tiles


def entries(m, k, sparsity, seed):
    """The overflow entries of a uniform weight as (step unit, lane group, column in the chunk), the unit
    being (row block, chunk, warpgroup, warp, m-tile, row half), by row and column; and the weight."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) >= sparsity)).bfloat16()
    rb_, nc = -(-m // ROWS), -(-k // CHUNK)
    nz = torch.zeros(rb_ * ROWS, nc * CHUNK, dtype=torch.bool)
    nz[:m, :k] = w != 0
    over = nz & (nz.view(rb_ * ROWS, -1, 4).cumsum(-1).view_as(nz) > 2)
    r, col = over.nonzero(as_tuple=True)
    rb, rr, chunk, c = r // ROWS, r % ROWS, col // CHUNK, col % CHUNK
    mtile, wv, hf, g = rr // 64, (rr % 64) // 16, (rr % 16) // 8, rr % 8
    unit = (((((rb * nc + chunk) * 2 + mtile // 2) * 4 + wv) * 2 + mtile % 2) * 2 + hf).numpy()
    g, c = g.numpy(), c.numpy()
    order = np.lexsort((c, g, unit))
    return unit[order], g[order], c[order], rb_ * nc * 2 * 4 * 2 * 2, w


def positions(unit, g):
    """Each entry's step: its place in its row's list (the arrays sorted by unit, lane group)."""
    key = unit * 8 + g
    first = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    return np.arange(len(key)) - np.repeat(first, np.diff(np.r_[first, len(key)]))


def greedy(unit, g, c):
    """Each row's entries reordered step by step: each active row (fewest left first) takes an entry
    whose bank group (``bin_of``) no other row of the step has taken, or shares a word with it."""
    step = np.empty(len(unit), dtype=np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(unit)) + 1, len(unit)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = {}
        for i in range(a, b):
            rows.setdefault(int(g[i]), []).append(i)
        j = 0
        while rows:
            used = {}
            for r in sorted(rows, key=lambda r: len(rows[r])):
                pick = next((i for i in rows[r] if used.get(bin_of(c[i]), c[i] >> 1) == c[i] >> 1), rows[r][0])
                rows[r].remove(pick)
                used.setdefault(bin_of(c[pick]), c[pick] >> 1)
                step[pick] = j
                if not rows[r]:
                    del rows[r]
            j += 1
    return step


def bin_of(c):
    """The banks' group of column c's words in the swizzled layout (lanes of one step conflict only
    within a group, and not where they read the same word)."""
    return int(((c >> 1) & 3) | (((c >> 3) & 1) << 2))


def wavefronts(unit, g, c, step, layout, ntok=128):
    """Total wavefronts of the loop's 2-byte loads of X, per load instruction of one token pair."""
    total = 0
    for b in (0, 1):  # tokens 2 q and 2 q + 1 of each 8
        q = np.tile(np.arange(4), len(unit))
        cc, t = np.repeat(c, 4), 2 * q + b
        if layout == "plain":
            addr = (cc >> 5) * (ntok * 64) + ((cc & 31) >> 3) * 128 + t * 16 + (cc & 7) * 2
        else:
            addr = t * 128 + (((cc >> 3) ^ t) << 4) + (cc & 7) * 2
        word = addr >> 2
        inst = np.repeat(unit.astype(np.int64) * 64 + step, 4)
        key = np.unique((inst * 32 + (word & 31)) * 65536 + word)  # distinct words per (instruction, bank)
        bank, per_bank = np.unique(key // 65536, return_counts=True)
        most = np.zeros(int(bank.max() // 32) + 1, dtype=np.int64)
        np.maximum.at(most, bank // 32, per_bank)
        total += int(most.sum())
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="11008x4096")
    ap.add_argument("--sparsities", default="0.7")
    ap.add_argument("--greedy", action="store_true", help="also the reordered entries (slow: a Python loop)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    m, k = (int(v) for v in args.shape.split("x"))
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        unit, g, c, units, w = entries(m, k, sparsity, args.seed)
        chunks = units // 32  # (row block, chunk) pairs
        step = positions(unit, g)
        counts = np.bincount(unit * 8 + g, minlength=units * 8).reshape(units, 8)
        steps = int(counts.max(1).sum())
        print(f"{args.shape} {sparsity:.0%}: {len(unit)} entries, {len(unit) / chunks / ROWS:.2f} per row and "
              f"chunk; {steps / chunks / 8:.1f} loop steps per warp and chunk, {steps / (len(unit) / 8):.2f}x the "
              f"steps if every lane group had the mean")
        for layout in ("plain", "swizzle"):
            print(f"  {layout:>7}: {wavefronts(unit, g, c, step, layout) / (2 * steps):.2f} wavefronts per load")
        if args.greedy:
            order = greedy(unit, g, c)
            spread = wavefronts(unit, g, c, order, "swizzle") / (2 * steps)
            print(f"  swizzle, reordered: {spread:.2f} wavefronts per load")
        sw, cw = Wgmma24Weight.from_dense(w), Wgmma24Weight.from_dense(w, compressed=True)
        print(f"  format: {sw.nbytes / 1e6:.1f} MB ({sw.nbytes / (2 * m * k):.3f} of dense), "
              f"{sw.n_groups} overflow words, {sw.slots} slots per chunk; compressed: {cw.nbytes / 1e6:.1f} MB "
              f"({cw.nbytes / (2 * m * k):.3f} of dense), {cw.slots} slots per chunk")


if __name__ == "__main__":
    main()
