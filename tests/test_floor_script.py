"""benchmarks/wgmma24_floor.py's builds: an ablation build is launched with the full build's blocks per
SM (its fewer registers would let a STREAM launch size itself to more blocks), and the normal build is
back, unpinned, afterwards; the blocks per SM it reports are the launched builds'."""

import functools
import os

from scripts import load_benchmark

from cross.kernels import cuda_backend

floor = load_benchmark("wgmma24_floor")


def test_ablation_builds_are_launched_with_the_full_builds_grid(monkeypatch):
    builds = []

    @functools.lru_cache(maxsize=None)
    def fake_build(*args):
        builds.append((os.environ.get(cuda_backend.DEFINES_ENV), args))
        return ("function", 1234, 4)  # an ablation build: 4 blocks fit

    monkeypatch.setattr(cuda_backend, "_wgmma24_kernel", fake_build)
    monkeypatch.setattr(floor, "BUILD", fake_build)
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, "")  # restored as it was after the test
    floor.build_with("-DABLATE=3", 2)
    assert cuda_backend._wgmma24_kernel(0, True, 2, 2, 0, 64, 16) == ("function", 1234, 2)
    assert builds == [("-DABLATE=3", (0, True, 2, 2, 0, 64, 16))]
    floor.build_with("-DABLATE=4", 2)  # a fresh build for the new defines, not the cached one
    cuda_backend._wgmma24_kernel(0, True, 2, 2, 0, 64, 16)
    assert builds[-1][0] == "-DABLATE=4"
    floor.build_with("")
    assert cuda_backend._wgmma24_kernel is fake_build
    assert cuda_backend._wgmma24_kernel(0, True, 2, 2, 0, 64, 16) == ("function", 1234, 4)
    assert builds[-1][0] == ""


def test_without_overflow_keeps_each_groups_first_two_nonzeros():
    """--without-overflow's weight: each group of 4 columns keeps its first two nonzeros and loses the rest,
    so that its packing has no overflow operand (the launcher's OVER=0 build) where the weight's had one."""
    import torch

    from cross.pack.wgmma24 import Wgmma24Weight

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(128, 256, generator=gen) * (torch.rand(128, 256, generator=gen) < 0.6)
    w2 = floor.without_overflow(w)
    groups, kept = w.reshape(128, -1, 4), w2.reshape(128, -1, 4)
    for r, g in ((3, 5), (17, 40), (100, 63)):  # spot checks by hand: the first two nonzeros in column order
        nz = [i for i in range(4) if groups[r, g, i] != 0][:2]
        assert [i for i in range(4) if kept[r, g, i] != 0] == nz
    assert ((kept != 0).sum(-1) <= 2).all()
    assert torch.equal(kept[kept != 0], groups[kept != 0])  # what stays is unchanged
    assert ((groups != 0).sum(-1).clamp(max=2) == (kept != 0).sum(-1)).all()  # and no more goes than must
    assert Wgmma24Weight.from_dense(w.bfloat16(), compressed=True).overflow
    assert not Wgmma24Weight.from_dense(w2.bfloat16(), compressed=True).overflow


def test_blocks_per_sm_are_the_launched_builds(monkeypatch):
    """The blocks per SM the script reports are those of the build the launch takes: its own flags (sized
    records, lone halves, PROPAGATE, and END_RED exactly where a STREAM launch of that many tokens reduces), under
    the defines set last."""
    from types import SimpleNamespace

    calls = []

    @functools.lru_cache(maxsize=None)
    def fake_build(*args):
        calls.append((os.environ.get(cuda_backend.DEFINES_ENV), args))
        return ("function", 1234, 3)

    monkeypatch.setattr(cuda_backend, "_wgmma24_kernel", fake_build)
    monkeypatch.setattr(floor, "BUILD", fake_build)
    monkeypatch.setattr(floor.torch.cuda, "current_device", lambda: 5)
    monkeypatch.setattr(cuda_backend, "stream_reduce", lambda: True)
    monkeypatch.setattr(cuda_backend, "REDUCE_MAX_TOKENS", 64)
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, "")
    args = SimpleNamespace(wgs=1, mt=2, slots=24, compressed=True, over=True, sized=True, propagate=False, lone=True)
    floor.build_with("-DSTAGES=4")
    assert floor.launched_per_sm(args, 0, 64) == 3
    assert calls[-1] == ("-DSTAGES=4", (5, True, 1, 2, 0, 24, 64, True, True, True, True, False, True))
    floor.launched_per_sm(args, 0, 128)  # past REDUCE_MAX_TOKENS: the deterministic end's build
    assert calls[-1][1][10] is False
    floor.launched_per_sm(args, 2, 16)  # clusters never reduce
    assert calls[-1][1][4:11] == (2, 24, 16, True, True, True, False)
    floor.build_with("")
