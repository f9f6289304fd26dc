"""What the warpgroup 2:4 kernel (kernels/wgmma24.cu) reads, on a GPU of compute capability 9.0: with
X the identity, Y^T is the weight as the sparse mma decoded it, so a misread A register, metadata
nibble or B descriptor shows as a pattern (which rows, which columns), not only as an error.

A 64 x 64 2:4 weight of small integers (exact in bf16) runs in one block of one warpgroup; where
Y^T differs from W it prints both corners and the row and column sums, then tries the descriptor's
byte offsets swapped (-DB_LBO=512 -DB_SBO=128 through CROSS_CUDA_DEFINES). Then random weights and
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

SWAPPED = "-DB_LBO=512 -DB_SBO=128"


def identity_check() -> bool:
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(64, 64)
    for r in range(64):
        for j in range(16):
            for p in torch.randperm(4, generator=gen)[:2]:
                w[r, 4 * j + int(p)] = float(torch.randint(1, 200, (1,), generator=gen))
    w = w.bfloat16().cuda()
    sw = Wgmma24Weight.from_dense(w, 1, 1)
    x = torch.zeros(64, 64, dtype=torch.bfloat16, device="cuda")
    x[:, :] = torch.eye(64, dtype=torch.bfloat16)
    want = w.float().cpu()
    for extra in ("", SWAPPED):
        os.environ[cuda_backend.DEFINES_ENV] = extra
        cuda_backend._wgmma24_kernel.cache_clear()
        got = wgmma24_matmul(x, sw, split=1).t().float().cpu()
        bad = got != want
        print(f"identity X, defines {extra or 'as built'!r}: {int(bad.sum())} of {want.numel()} elements wrong")
        if not bad.any():
            return extra == ""
        torch.set_printoptions(linewidth=200)
        print("W[0:4, 0:16]\n", want[:4, :16].int(), "\nY^T[0:4, 0:16]\n", got[:4, :16].int())
        print("W[8:10, 0:16]\n", want[8:10, :16].int(), "\nY^T[8:10, 0:16]\n", got[8:10, :16].int())
        print("W[0:2, 32:48]\n", want[:2, 32:48].int(), "\nY^T[0:2, 32:48]\n", got[:2, 32:48].int())
        print("rows wrong:", bad.any(1).nonzero().flatten().tolist())
        print("columns wrong:", bad.any(0).nonzero().flatten().tolist())
    return False


def random_checks() -> bool:
    os.environ[cuda_backend.DEFINES_ENV] = ""
    cuda_backend._wgmma24_kernel.cache_clear()
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
