"""Checks shared by the runtime tests of the opt-in kernels (the slice and warpgroup 2:4 kernels,
whose buckets are candidates the measured check decides): a layer's result against the fp64
product, its candidate buckets run on the GPU (eager, CUDA graph, torch.compile), and the measured
check timing them or refusing a wrong kernel."""

from dataclasses import replace

import pytest
import torch

import cross


def linear_of(w, bias=True):
    """An nn.Linear holding ``w`` (and a random bias), in its dtype and on its device."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin.to(w.device)


def top(bucket) -> int:
    """A bucket's largest token count to test: its top, or its design count where it is open-ended."""
    return bucket.n_max if bucket.n_max <= 8192 else bucket.n_design


def check_product(x, w, bias, y):
    """y against the fp64 product: same shape and dtype, finite, within bf16 rounding of its scale."""
    ref = x.double() @ w.double().t() + (bias.double() if bias is not None else 0)
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert bool(torch.isfinite(y).all()), "non-finite output (unwritten?)"
    err = (y.double() - ref).abs() / (ref.abs() + ref.pow(2).mean().sqrt() + 1e-30)
    assert float(err.max()) < 2e-2


def check_saved_model(tmp_path, fmt, zeros, tokens, **options):
    """A two-layer bf16 model (``zeros`` of each weight zero), sparsified with ``options`` and its plans
    forced: both layers hold the format ``fmt`` (a PackedWeight field), give the dense model's result
    on ``tokens`` tokens (the reference executor), and, saved and loaded, hold it again, keep their
    kernels and give the same result exactly."""
    gen = torch.Generator().manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 256)).to(torch.bfloat16)
    with torch.no_grad():
        for lin in model:
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) >= zeros)
    x = torch.randn(tokens, 512, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        want = model(x)
        cross.sparsify_(model, keep_dense=False, progress=False, **options)
        assert all(getattr(m.packed, fmt) is not None for m in model)
        got = model(x)
        cross.save(model, tmp_path / "m")
        layers = cross.load(tmp_path / "m")
        assert all(getattr(layers[n].packed, fmt) is not None for n in layers)
        assert [b.kernel for b in layers["0"].plan.buckets] == [b.kernel for b in model[0].plan.buckets]
        again = layers["1"](layers["0"](x))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())
    assert torch.equal(again, got)


def check_candidates_run(w, kernel, args_type, gen, **options):
    """A layer of ``w`` (on a GPU) whose candidates run (no dense copy, no measured check): every
    bucket that offers ``kernel`` (its candidates, and the buckets that time it as an alternative,
    taken as the measured check could take them) resolves ``args_type`` arguments and gives the
    product at each end and the middle of its token counts, outputs poisoned, then in a CUDA graph
    and under torch.compile."""
    from cross.partition import make_plan

    k = w.shape[1]
    lin = linear_of(w)
    offered = make_plan(w, **options)
    plan = offered.with_buckets(replace(b, kernel=kernel, alternatives=()) if kernel in b.alternatives else b
                                for b in offered.buckets)
    sl = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense=False, measure=False)
    runs = [i for i, b in enumerate(sl.plan.buckets) if b.kernel == kernel]
    assert runs and all(isinstance(sl._kernels[i], args_type) for i in runs)
    with torch.no_grad():
        for i in runs:
            b = sl.plan.buckets[i]
            for n in sorted({b.n_min, (b.n_min + top(b)) // 2, top(b)}):
                x = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
                check_product(x, w, lin.bias, sl(x))
        n = top(sl.plan.buckets[runs[-1]])
        static = torch.randn(n, k, generator=gen).to(torch.bfloat16).cuda()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = sl(static)
        out.fill_(float("nan"))
        static.copy_(torch.randn(n, k, generator=gen).to(torch.bfloat16))
        graph.replay()
        check_product(static, w, lin.bias, out)
        compiled = torch.compile(sl, fullgraph=True)
        check_product(static, w, lin.bias, compiled(static))


def check_measured_candidates(w, kernel, fmt, **options):
    """The measured check times every bucket that offers ``kernel`` (its candidates, and the buckets
    that time it as an alternative): each ends measured and runs what it timed fastest exactly where
    that measured the margin faster than dense; the layer keeps its format (``fmt``, a PackedWeight
    field) exactly where some bucket runs the kernel; its results are the product's. Which kernel wins
    where is the GPU's business: the benchmarks report it."""
    from cross.partition import make_plan

    lin = linear_of(w)
    offered = make_plan(w, **options)
    spans = {(b.n_min, b.n_max) for b in offered.buckets if kernel in (b.kernel, *b.alternatives)}
    assert spans
    sl = cross.SparseLinear.from_dense(lin, plan=offered)
    timed = [b for b in sl.plan.buckets if (b.n_min, b.n_max) in spans]
    assert len(timed) == len(spans) and all(b.measured and not b.alternatives for b in timed)
    for b in timed:
        assert b.fallback == (b.measured_us * 1.03 >= b.measured_dense_us)
    runs = any(b.kernel == kernel and not b.fallback for b in sl.plan.buckets)
    assert (getattr(sl.packed, fmt) is None) == (not runs)
    with torch.no_grad():
        for b in timed:
            x = torch.randn(top(b), w.shape[1], dtype=torch.bfloat16, device="cuda")
            check_product(x, w, lin.bias, sl(x))


def check_wrong_kernel_refused(monkeypatch, w, kernel, fmt, name, **options):
    """A kernel whose result disagrees with the dense product (here: scaled by 1.5) is not timed:
    its buckets fall back, a PlanCheckWarning names it (``name``), the layer drops its format and
    keeps the dense copy."""
    import cross.runtime.measure as measure

    real = measure.execute
    monkeypatch.setattr(measure, "execute", lambda *a, **kw: real(*a, **kw) * 1.5)
    with pytest.warns(measure.PlanCheckWarning, match=f"{name}'s result disagrees"):
        sl = cross.SparseLinear.from_dense(linear_of(w), **options)
    cands = [b for b in sl.plan.buckets if b.kernel == kernel]
    assert cands and all(b.fallback and not b.measured and "disagreed" in b.reason for b in cands)
    assert getattr(sl.packed, fmt) is None and sl.dense_kept


def nonfinite_inputs(n, k, gen, dtype=torch.bfloat16):
    """X [n, k] (``dtype``, finite, no zeros) with Inf and NaN put in: token 0 +Inf in column 3, token 1 -Inf in
    columns 5 and k - 1, token 2 +Inf in column 7 and -Inf in column 70 % k, token 3 a NaN in column 11,
    the last token +Inf in column 13; the other tokens finite."""
    x = torch.randn(n, k, generator=gen).to(dtype)
    x = torch.where(x == 0, torch.ones_like(x), x)
    inf, nan = float("inf"), float("nan")
    for t, c, v in ((0, 3, inf), (1, 5, -inf), (1, k - 1, -inf), (2, 7, inf), (2, 70 % k, -inf), (3, 11, nan),
                    (n - 1, 13, inf)):
        if t < n:
            x[t, c] = v
    return x


def assert_dense_nonfinite(y, ref):
    """y (the kernel's, bf16 or fp16) has exactly ref's NaNs and Infs (with their signs), and its finite values
    are ref's to bf16's rounding (ref: the dense product in fp32, computed on the CPU)."""
    got = y.float().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), f"{int((torch.isnan(got) != torch.isnan(ref)).sum())} NaNs differ"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(got), inf) and torch.equal(got[inf], ref[inf]), "Infs differ"
    fin = torch.isfinite(ref)
    if fin.any():  # (a token with an Inf or a NaN alone has none)
        err = (got[fin] - ref[fin]).abs() / (ref[fin].abs() + ref[fin].pow(2).mean().sqrt())
        assert float(err.max()) < 2e-2




def dense_terms(x, w):
    """X @ W^T in fp32 on the CPU as the sums of every term x[t, c] w[r, c], zeros included (no library
    shortcut past zeros: 0 x Inf is NaN here)."""
    wf = w.float()
    return torch.cat([(x[t:t + 4].float()[:, None, :] * wf[None]).sum(-1) for t in range(0, x.shape[0], 4)])
