"""What the warpgroup 2:4 kernel (kernels/wgmma24.cu) reads, on a GPU of compute capability 9.0: with
X the identity, Y^T is the weight as the sparse mma decoded it, so a misread A register, metadata
nibble or B descriptor shows as a pattern (which rows, which columns), not only as an error.

A 64 x 64 2:4 weight of small integers (exact in bf16) runs in one block of one warpgroup; where
Y^T differs from W it prints corners and the wrong rows and columns, then tries the descriptor's
byte offsets swapped (-DB_LBO=512 -DB_SBO=128 through CROSS_CUDA_DEFINES, with X by every thread's
copies, -DXTMA=0: the no-swizzle layout those offsets describe). Then a weight of 1-4
nonzeros per group (the overflow's second mma) in both layouts. Then random weights and
inputs at each block size (16, 32, 64, 128 tokens, several token tiles), splits of K and overflow,
in both layouts (slots, and the compressed one), against the fp64 product, outputs poisoned with NaN.

    PYTHONPATH=src python benchmarks/wgmma24_layout_check.py
"""

from __future__ import annotations

import os

import torch

from cross.kernels import cuda_backend
from cross.kernels.launch import wgmma24_matmul
from cross.pack.wgmma24 import Wgmma24Weight

SWAPPED = "-DXTMA=0 -DB_LBO=512 -DB_SBO=128"


def _small_integers(per_group: int, seed: int) -> torch.Tensor:
    """A 64 x 64 weight of integers 1..199 (exact in bf16), ``per_group`` random nonzeros per group of 4
    (or 1..4 at random where per_group is 0)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(64, 64)
    for r in range(64):
        for j in range(16):
            count = per_group or int(torch.randint(1, 5, (1,), generator=gen))
            for p in torch.randperm(4, generator=gen)[:count]:
                w[r, 4 * j + int(p)] = float(torch.randint(1, 200, (1,), generator=gen))
    return w.bfloat16().cuda()


def _show(want, got):
    bad = got != want
    torch.set_printoptions(linewidth=200)
    print("W[0:4, 0:16]\n", want[:4, :16].int(), "\nY^T[0:4, 0:16]\n", got[:4, :16].int())
    print("W[8:10, 0:16]\n", want[8:10, :16].int(), "\nY^T[8:10, 0:16]\n", got[8:10, :16].int())
    print("W[0:2, 32:48]\n", want[:2, 32:48].int(), "\nY^T[0:2, 32:48]\n", got[:2, 32:48].int())
    print("rows wrong:", bad.any(1).nonzero().flatten().tolist())
    print("columns wrong:", bad.any(0).nonzero().flatten().tolist())


def identity_check() -> bool:
    x = torch.eye(64, dtype=torch.bfloat16, device="cuda")
    w = _small_integers(2, 0)
    sw = Wgmma24Weight.from_dense(w, 1, 1)
    want = w.float().cpu()
    ok = None
    for extra in ("", SWAPPED):
        os.environ[cuda_backend.DEFINES_ENV] = extra
        cuda_backend.wgmma24_defines_changed()
        got = wgmma24_matmul(x, sw, split=1).t().float().cpu()
        bad = got != want
        print(f"identity X, 2:4 weight, defines {extra or 'as built'!r}: {int(bad.sum())} of {want.numel()} "
              "elements wrong")
        if not bad.any():
            ok = extra == ""
            break
        _show(want, got)
    os.environ[cuda_backend.DEFINES_ENV] = ""
    cuda_backend.wgmma24_defines_changed()
    w = _small_integers(0, 1)  # 1 to 4 nonzeros per group: the overflow operand too
    want = w.float().cpu()
    for compressed in (False, True):
        got = wgmma24_matmul(x, Wgmma24Weight.from_dense(w, 1, 1, compressed), split=1).t().float().cpu()
        bad = got != want
        print(f"identity X, 1-4 nonzeros per group, {'compressed' if compressed else 'slots'} layout: "
              f"{int(bad.sum())} of {want.numel()} elements wrong")
        if bad.any():
            _show(want, got)
            ok = False
    return bool(ok)


def random_checks() -> bool:
    os.environ[cuda_backend.DEFINES_ENV] = ""
    cuda_backend.wgmma24_defines_changed()
    gen = torch.Generator().manual_seed(1)
    ok = True
    for m, k, wgs, mt, split, density in [(256, 256, 2, 2, 1, 0.5), (1000, 1032, 2, 2, 3, 0.3),
                                          (4096, 4096, 2, 2, None, 0.3), (11008, 4096, 2, 2, None, 0.1)]:
        w = (torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)).bfloat16().cuda()
        for sw, n in ((Wgmma24Weight.from_dense(w, wgs, mt, compressed=c), n)
                      for c in (False, True) for n in (1, 16, 30, 64, 128, 200)):
            x = torch.randn(n, k, generator=gen).bfloat16().cuda()
            y = torch.full((n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
            wgmma24_matmul(x, sw, out=y, split=split)
            ref = x.double() @ w.double().t()
            err = float(((y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt())).nan_to_num(1e9).max())
            ok &= err < 2e-2
            print(f"{m}x{k} density {density} {'compressed' if sw.compressed else 'slots'} {sw.slots} split {split} "
                  f"N {n}: max relative error {err:.3g}")
    return ok


if __name__ == "__main__":
    print("identity:", "ok" if identity_check() else "WRONG")
    print("random:", "ok" if random_checks() else "WRONG")
