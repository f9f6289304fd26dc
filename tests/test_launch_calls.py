"""The driver calls of the CUDA launchers (kernels/cuda_backend.py), on CPU: a fake driver records
each cuLaunchKernel, the kernels' builds are stubbed, and each launcher's call is compared with the
kernel's signature (grid, block, shared memory, the stream, arguments and their C types in kernel
order). The GPU tests check that the kernels compute the right thing with these calls."""

import ctypes
import functools
import types

import pytest

from cross.kernels import cuda_backend


def _members(*names):
    return types.SimpleNamespace(**{m: m for m in names})  # an enum's members, by name


class _FakeDriver:
    CUtensorMapDataType = _members("CU_TENSOR_MAP_DATA_TYPE_BFLOAT16", "CU_TENSOR_MAP_DATA_TYPE_FLOAT16")
    CUtensorMapInterleave = _members("CU_TENSOR_MAP_INTERLEAVE_NONE")
    CUtensorMapSwizzle = _members("CU_TENSOR_MAP_SWIZZLE_128B")
    CUtensorMapL2promotion = _members("CU_TENSOR_MAP_L2_PROMOTION_L2_128B")
    CUtensorMapFloatOOBfill = _members("CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE")
    cuuint64_t = cuuint32_t = int

    def __init__(self):
        self.calls = []
        self.encoded = []  # cuTensorMapEncodeTiled's arguments, a call each

    def cuTensorMapEncodeTiled(self, *args):
        self.encoded.append(args)
        return (0, "x's map")

    def CUstream(self, handle):
        return ("stream", handle)

    def cuLaunchKernel(self, func, gx, gy, gz, bx, by, bz, smem, stream, args, extra):
        self.calls.append(dict(func=func, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem, stream=stream,
                               args=args, extra=extra))
        return (0, None)

    def cuLaunchCooperativeKernel(self, func, gx, gy, gz, bx, by, bz, smem, stream, args):
        self.calls.append(dict(func=func, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem, stream=stream,
                               args=args, extra=0, cooperative=True))
        return (0, None)


@pytest.fixture
def driver(monkeypatch):
    fake = _FakeDriver()
    monkeypatch.setattr(cuda_backend, "_bindings", lambda: (fake, None))
    monkeypatch.setattr(cuda_backend.torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=77))
    monkeypatch.setattr(cuda_backend.torch.cuda, "current_device", lambda: 0)
    for name in ("_strip_kernel", "_sparse24_kernel", "_slice_kernel", "_row_kernel", "_decode_kernel"):
        monkeypatch.setattr(cuda_backend, name, lambda *a, _n=name: (_n, a))
    monkeypatch.setattr(cuda_backend, "_wgmma24_kernel", lambda *a: (("_wgmma24_kernel", a), 5000, 2))
    monkeypatch.delenv(cuda_backend.COOPERATIVE_ENV, raising=False)
    monkeypatch.setenv(cuda_backend.REDUCE_ENV, "0")  # STREAM's deterministic end (the reductions' own test unsets it)
    monkeypatch.setattr(cuda_backend, "workspace", lambda floats: types.SimpleNamespace(data_ptr=lambda: 7 * floats))
    monkeypatch.setattr(cuda_backend, "_kernel", lambda *a: ("module", ("_kernel", a), 4096))
    monkeypatch.delenv(cuda_backend.DEFINES_ENV, raising=False)
    caches = (cuda_backend.wgmma24_xtma, cuda_backend.x_tensor_map)
    for cache in caches:
        cache.cache_clear()
    yield fake
    for cache in caches:
        cache.cache_clear()


def _ptrs(n):
    return cuda_backend.Pointers(tuple(types.SimpleNamespace(data_ptr=lambda i=i: 1000 + i) for i in range(n)), True)


def _check_call(call, func, grid, threads, smem, values, n_ptrs, objects=()):
    """``objects``: arguments after the ints passed as the bindings' objects (C type None)."""
    assert call["func"] == func
    assert call["grid"] == (grid, 1, 1) and call["block"] == (threads, 1, 1) and call["smem"] == smem
    assert call["stream"] == ("stream", 77) and call["extra"] == 0
    args, kinds = call["args"]
    assert tuple(args) == tuple(values) + tuple(objects) and all(type(v) is int for v in args[:len(values)])
    assert tuple(kinds) == (ctypes.c_void_p,) * n_ptrs + (ctypes.c_int,) * (len(values) - n_ptrs) + (None,) * len(objects)


def test_strip_launch(driver):
    cuda_backend.strip_launch(5, 16, 8, 64, 3, 2, 12345, _ptrs(7), 300, 520, 11, 528, 300)
    _check_call(driver.calls[0], ("_strip_kernel", (0, True, 16, 8, 64, 3, 2, 12345)), 5, 256, 12345,
                tuple(range(1000, 1007)) + (300, 520, 11, 528, 300), 7)


def test_sparse24_launch(driver):
    cuda_backend.sparse24_launch(132, 16, 16, 2, True, 9000, _ptrs(5), 300, 520, 11, 528, 300, 10, 9)
    _check_call(driver.calls[0], ("_sparse24_kernel", (0, True, 16, 16, 2, True, 9000)), 132, 512, 9000,
                tuple(range(1000, 1005)) + (300, 520, 11, 528, 300, 10, 9), 5)


@pytest.mark.parametrize("producers,elements", [(1, False), (3, False), (1, True)])
def test_slice_launch(driver, producers, elements):
    cuda_backend.slice_launch(132, 15, 7000, _ptrs(6), 300, 11008, 11, 11008, 300, 38, 3, 3, producers, elements)
    _check_call(driver.calls[0], ("_slice_kernel", (0, True, 15, elements)), 132, (15 + producers) * 32, 7000,
                tuple(range(1000, 1006)) + (300, 11008, 11, 11008, 300, 38, 3, 3), 6)


@pytest.mark.parametrize("n_tok, ntok, tiles", [(16, 16, 1), (100, 128, 1), (300, 128, 3)])
def test_wgmma24_launch(driver, n_tok, ntok, tiles):
    """Split 3: one block per row block, token tile and part of K (clusters of 3 consecutive blocks),
    no workspace."""
    cuda_backend.wgmma24_launch(43, ntok, 2, 2, 3, 64, _ptrs(5), 11008, 4096, n_tok, 4096, 11008, 64, 132)
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 3, 64, ntok, False, False, False, False, False, False)), 43 * tiles * 3,
                256, 5000, (1000, 1001, 1002, 1003, 0, 1004) + (11008, 4096, n_tok, 4096, 11008, 64), 6, ("x's map",))


@pytest.mark.parametrize("n_tok, ntok, tiles", [(16, 16, 1), (300, 128, 3)])
def test_wgmma24_launch_stream(driver, n_tok, ntok, tiles):
    """Split 0: the SMs' resident blocks (2 per SM in the fake build) over the units, with a workspace
    of two slots of R x NTOK floats per block."""
    cuda_backend.wgmma24_launch(43, ntok, 2, 2, 0, 64, _ptrs(5), 11008, 4096, n_tok, 4096, 11008, 64, 132)
    ws = 7 * 2 * 264 * 256 * ntok
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 0, 64, ntok, False, False, False, False, False, False)), 264,
                256, 5000, (1000, 1001, 1002, 1003, ws, 1004) + (11008, 4096, n_tok, 4096, 11008, 64), 6, ("x's map",))


@pytest.mark.parametrize("sized", [False, True])
def test_wgmma24_launch_compressed(driver, sized):
    """The compressed layout's build (sized records: their build too; the same pointers, the sizes being
    at the front of the values)."""
    cuda_backend.wgmma24_launch(43, 16, 2, 2, 3, 1024, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132, True, True,
                                sized)
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 3, 1024, 16, True, True, sized, False, False, False)), 43 * 3, 256,
                5000, (1000, 1001, 1002, 1003, 0, 1004) + (11008, 4096, 16, 4096, 11008, 64), 6, ("x's map",))


def test_wgmma24_launch_propagate(driver):
    """propagate=True launches the PROPAGATE build (its key's propagate flag), with the same arguments."""
    cuda_backend.wgmma24_launch(43, 16, 2, 2, 3, 64, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132, propagate=True)
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 3, 64, 16, False, False, False, False, True, False)),
                43 * 3, 256, 5000, (1000, 1001, 1002, 1003, 0, 1004) + (11008, 4096, 16, 4096, 11008, 64), 6, ("x's map",))


def test_wgmma24_launch_lone(driver):
    """lone=True (the compressed layout's lone halves) launches the LONE build (its key's last flag), with
    the compressed layout's arguments."""
    cuda_backend.wgmma24_launch(43, 16, 2, 2, 3, 1024, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132, True, True,
                                True, lone=True)
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 3, 1024, 16, True, True, True, False, False, True)),
                43 * 3, 256, 5000, (1000, 1001, 1002, 1003, 0, 1004) + (11008, 4096, 16, 4096, 11008, 64), 6, ("x's map",))


@pytest.mark.parametrize("split", [2, 0])
def test_wgmma24_launch_xtma(driver, split):
    """The default build's launch (XTMA): X's tensor map encoded (16-bit [N][K], the row stride in bytes,
    boxes of 64 columns by the token tile, 128-byte swizzle, zeros past the tensor) once per address and
    geometry, and passed by value after the ints (C type None: the binding's object)."""
    for n_tok in (300, 300, 20):
        cuda_backend.wgmma24_launch(43, 128, 2, 2, split, 64, _ptrs(5), 11008, 4104, n_tok, 4112, 11008, 65, 132)
    map_of = lambda n: ("CU_TENSOR_MAP_DATA_TYPE_BFLOAT16", 2, 1000, [4104, n], [8224], [64, 128], [1, 1],  # noqa: E731
                        "CU_TENSOR_MAP_INTERLEAVE_NONE", "CU_TENSOR_MAP_SWIZZLE_128B",
                        "CU_TENSOR_MAP_L2_PROMOTION_L2_128B", "CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE")
    assert driver.encoded == [map_of(300), map_of(20)]  # the second launch of 300 tokens reuses the first's map
    for call, n_tok in zip(driver.calls, (300, 300, 20)):
        args, kinds = call["args"]
        assert args[-7:] == (11008, 4104, n_tok, 4112, 11008, 65, "x's map")
        assert kinds == (ctypes.c_void_p,) * 6 + (ctypes.c_int,) * 6 + (None,)


@pytest.mark.parametrize("defines", ["-DXTMA=0", "-DXPRE=1", "-DA_SMEM=1"])
def test_wgmma24_launch_without_xtma(driver, monkeypatch, defines):
    """Builds that copy X otherwise (CROSS_CUDA_DEFINES -DXTMA=0: every thread's 16-byte copies; XPRE and
    A_SMEM keep those ways) encode no map and pass none."""
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, defines)
    cuda_backend.wgmma24_launch(43, 128, 2, 2, 2, 64, _ptrs(5), 11008, 4104, 300, 4112, 11008, 65, 132)
    assert driver.encoded == []
    _check_call(driver.calls[0], ("_wgmma24_kernel", (0, True, 2, 2, 2, 64, 128, False, False, False, False, False, False)), 43 * 3 * 2,
                256, 5000, (1000, 1001, 1002, 1003, 0, 1004) + (11008, 4104, 300, 4112, 11008, 65), 6)


def test_wgmma24_stream_cooperative(driver, monkeypatch):
    """STREAM launches by cuLaunchCooperativeKernel with the same arguments (CROSS_STREAM_COOPERATIVE unset
    or 1), cluster launches by cuLaunchKernel; 0: STREAM by cuLaunchKernel too; another value refused."""
    stream = (43, 16, 2, 2, 0, 64, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132)
    cluster = (43, 16, 2, 2, 3, 1024, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132)
    cuda_backend.wgmma24_launch(*stream)
    monkeypatch.setenv(cuda_backend.COOPERATIVE_ENV, "0")
    cuda_backend.wgmma24_launch(*stream)
    monkeypatch.setenv(cuda_backend.COOPERATIVE_ENV, "1")
    cuda_backend.wgmma24_launch(*stream)
    cuda_backend.wgmma24_launch(*cluster)
    assert [c.get("cooperative", False) for c in driver.calls] == [True, False, True, False]
    ws = 7 * 2 * 264 * 256 * 16
    _check_call(driver.calls[2], ("_wgmma24_kernel", (0, True, 2, 2, 0, 64, 16, False, False, False, False, False, False)), 264,
                256, 5000, (1000, 1001, 1002, 1003, ws, 1004) + (11008, 4096, 16, 4096, 11008, 64), 6, ("x's map",))
    monkeypatch.setenv(cuda_backend.COOPERATIVE_ENV, "yes")
    with pytest.raises(ValueError, match="CROSS_STREAM_COOPERATIVE: expected 0 or 1"):
        cuda_backend.wgmma24_launch(*stream)


def test_wgmma24_stream_reduce(driver, monkeypatch):
    """STREAM launches of up to 64 tokens build END_RED and take the GPU's zeroed reduction area as their
    workspace, the same one each launch (CROSS_STREAM_REDUCE unset, or 1 even under torch's deterministic
    algorithms); 128 tokens and cluster launches as before; none under the deterministic algorithms
    (CROSS_STREAM_REDUCE unset) or with 0; another value refused."""
    area = types.SimpleNamespace(data_ptr=lambda: 4242, numel=lambda: 132 * 4 * 256 * 64)  # reduce_area's size
    monkeypatch.setattr(cuda_backend, "reduce_area", lambda device: area if device == 0 else None)
    launch = functools.partial(_reduce_launch, driver)

    plain = lambda ntok: (False, 7 * 2 * 264 * 256 * ntok)  # noqa: E731  the deterministic end's build and workspace
    assert launch(16) == plain(16)  # CROSS_STREAM_REDUCE=0 (the fixture's)
    monkeypatch.delenv(cuda_backend.REDUCE_ENV)
    assert [launch(16), launch(64), launch(16)] == [(True, 4242)] * 3
    assert launch(128) == plain(128)
    assert launch(16, split=3) == (False, 0)
    monkeypatch.setattr(cuda_backend.torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert launch(16) == plain(16)
    monkeypatch.setenv(cuda_backend.REDUCE_ENV, "1")
    assert launch(16) == (True, 4242)
    monkeypatch.setenv(cuda_backend.REDUCE_ENV, "on")
    with pytest.raises(ValueError, match="CROSS_STREAM_REDUCE: expected 0 or 1"):
        launch(16)


def _reduce_launch(driver, ntok, split=0):
    """A launch of 11008x4096 for 16 tokens in blocks of ``ntok`` (STREAM, or clusters of ``split``): its
    build's END_RED and its workspace pointer."""
    cuda_backend.wgmma24_launch(43, ntok, 2, 2, split, 64, _ptrs(5), 11008, 4096, 16, 4096, 11008, 64, 132)
    call = driver.calls[-1]
    return call["func"][1][10], call["args"][0][4]  # the build's key: its reduce flag


def test_wgmma24_stream_reduce_128(driver, monkeypatch):
    """REDUCE_MAX_TOKENS raised to 128 (a tuning setting): 128-token STREAM launches build END_RED on the
    reduction area; an area too small for the launch's blocks x 256 rows x 128 tokens (allocated before the
    setting was raised) is refused before the launch, not overrun."""
    monkeypatch.delenv(cuda_backend.REDUCE_ENV)
    monkeypatch.setattr(cuda_backend, "REDUCE_MAX_TOKENS", 128)
    area = types.SimpleNamespace(data_ptr=lambda: 4242, numel=lambda: 264 * 256 * 128)  # the fixture's 264 blocks
    monkeypatch.setattr(cuda_backend, "reduce_area", lambda device: area)
    assert _reduce_launch(driver, 128) == (True, 4242)
    calls = len(driver.calls)
    area.numel = lambda: 264 * 256 * 128 - 1
    with pytest.raises(RuntimeError, match="need 8650752 floats, the area of cuda:0 holds 8650751"):
        _reduce_launch(driver, 128)
    assert len(driver.calls) == calls  # nothing launched
    assert _reduce_launch(driver, 64) == (True, 4242)  # 264 x 256 x 64 fits


def test_row_launch(driver):
    nt = sorted(cuda_backend.ROW_LAUNCHES)[-1]
    cuda_backend.row_launch(264, 4096, nt, _ptrs(7), True, 5, 4096, 11008)
    threads = cuda_backend.ROW_LAUNCHES[nt][0]
    _check_call(driver.calls[0], ("_row_kernel", (0, True, nt)), 264, threads, cuda_backend.row_smem(4096, nt),
                tuple(range(1000, 1007)) + (4096, 1, 5, 4096, 11008), 7)


def test_row_decode(driver):
    cuda_backend.row_decode(40, 200, _ptrs(4))
    _check_call(driver.calls[0], ("_decode_kernel", (0,)), 40, cuda_backend._DECODE_THREADS, 25 * 16,
                tuple(range(1000, 1004)) + (200,), 4)


def test_plan_launch(driver):
    ints = tuple(range(9))
    cuda_backend.launch(64, 64, 64, 16, 3072, _ptrs(13), ints)
    _check_call(driver.calls[0], ("_kernel", (0, 64, 64, 16, True, 3072, False)), 64, cuda_backend.NUM_THREADS,
                4096, tuple(range(1000, 1013)) + ints, 13)
