"""benchmarks/launch_floor.py: the empty launches are made as the kernels' are (one int argument, the
grid, 256 threads and the dynamic shared memory asked for), each as often as the row says, and the
script refuses to run without a GPU."""

import pytest
import torch

from scripts import load_benchmark

from cross.kernels import cuda_backend

launch_floor = load_benchmark("launch_floor")


def test_launches_as_the_kernels_are(monkeypatch):
    calls = []
    monkeypatch.setattr(cuda_backend, "_launch", lambda func, grid, threads, smem, ptrs, ints, cooperative:
                        calls.append((func, grid, threads, smem, ptrs.values, ints, cooperative)))
    run = launch_floor.launcher("function", 264, 112 * 1024, 2)
    assert not calls
    run()
    assert calls == [("function", 264, 256, 112 * 1024, (), (0,), False)] * 2
    launch_floor.launcher("function", 264, 0, 1, cooperative=True)()
    assert calls[-1] == ("function", 264, 256, 0, (), (0,), True)
    assert b"void empty(int)" in launch_floor.SOURCE and max(launch_floor.SMEM) * 2 <= 227 * 1024


def test_refuses_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        launch_floor.main([])
