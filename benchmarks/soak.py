"""Soak: many calls of random shapes through the runtime operator on a GPU, checking that nothing
fails, that results stay right (every 250th call against the fp32 product) and that device memory
does not grow.

    PYTHONPATH=src python benchmarks/soak.py --calls 10000
"""

import argparse
import time

import torch
import torch.nn as nn

import cross

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--calls", type=int, default=10000)
ap.add_argument("--layers", type=int, default=40)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
gen = torch.Generator().manual_seed(args.seed)


def rand_int(lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


layers = []
for i in range(args.layers):
    m, k = rand_int(1, 2048), rand_int(1, 2048)
    if i % 2 == 0:  # half the layers on the CUDA kernel's shapes (K % 8 == 0), half anywhere
        k = max(8, k // 8 * 8)
    density = float(torch.rand(1, generator=gen)) * 0.6 + 0.02
    dtype = torch.bfloat16 if i % 3 else torch.float16
    lin = nn.Linear(k, m, bias=bool(i % 2), dtype=dtype)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(m, k, generator=gen).lt(density).to(dtype))
    layers.append((lin.cuda(), cross.SparseLinear.from_dense(lin.cuda(), keep_dense=False)))

failures, checked = 0, 0
with torch.inference_mode():
    for warm in range(len(layers)):
        dense, sparse = layers[warm]
        x = torch.randn(3, dense.in_features, device="cuda", dtype=dense.weight.dtype)
        sparse(x)
        # the fp32 reference below makes cuBLAS allocate its workspace once; do it before the baseline
        x.float() @ dense.weight.float().T
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    t0 = time.time()
    for call in range(args.calls):
        dense, sparse = layers[rand_int(0, len(layers) - 1)]
        n = rand_int(1, 300)
        x = torch.randn(n, dense.in_features, device="cuda", dtype=dense.weight.dtype)
        y = sparse(x)
        if call % 250 == 0:
            ref = x.float() @ dense.weight.float().T + (dense.bias.float() if dense.bias is not None else 0)
            err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-6)).item()
            checked += 1
            if not err < 3e-2:
                failures += 1
                print(f"call {call}: {dense.out_features}x{dense.in_features} N={n}: relative error {err}")
        del x, y
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - base
print(f"{args.calls} calls over {len(layers)} layers in {time.time() - t0:.1f} s; {checked} checked, "
      f"{failures} wrong; device memory allocated after - before: {grown} bytes")
