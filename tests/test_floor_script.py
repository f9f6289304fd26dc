"""benchmarks/wgmma24_floor.py's builds: an ablation build is launched with the full build's blocks per
SM (its fewer registers would let a STREAM launch size itself to more blocks), and the normal build is
back, unpinned, afterwards."""

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
