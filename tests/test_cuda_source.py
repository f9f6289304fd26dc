"""The CUDA plan kernel's source compiles for sm_90 in every variant the launcher and the
benchmarks build, without register spills in the normal builds. A compile check for machines
without a GPU (where nvcc is installed); the GPU tests check what the kernels compute."""

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc")

#: defines of the variants: the normal build, and the forced decodes of benchmarks/kernel_ablation.py
VARIANTS = {"normal": [], "scatter": ["-DDECODE_REGS=0"], "regs": ["-DDECODE_REGS=1", "-DREGS_MIN_NNZ=0"],
            "cp-async": ["-DBULK_COPY=0"], "cores": ["-DDECODE_CORES=1"]}


def disassemble(cubin):
    """The cubin's SASS, a line an instruction (the disassembler that ships with Triton, else the CUDA one)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not tool.exists():
        tool = shutil.which("nvdisasm")
    if tool is None:
        pytest.skip("needs nvdisasm")
    out = subprocess.run([str(tool), "-c", str(cubin)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/", line)]


def compile_kernel(tmp_path, tile_k, block_n, is_bf16, vals, defines):
    from cross.costmodel.roofline import plan_kernel_stages

    stages = plan_kernel_stages((64, tile_k), block_n, vals)

    src = resources.files("cross.kernels").joinpath("plan_matmul.cu")
    cmd = [NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
           "-DTILE_M=64", f"-DTILE_K={tile_k}", f"-DBLOCK_N={block_n}", f"-DIS_BF16={int(is_bf16)}",
           f"-DSTAGES={stages}", f"-DVALS_BYTES={vals}", *defines, str(src)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("tile_k, block_n", [(64, 16), (64, 32), (64, 64), (128, 16)])
@pytest.mark.parametrize("is_bf16", [True, False], ids=["bf16", "fp16"])
def test_kernel_source_compiles(variant, tile_k, block_n, is_bf16, tmp_path):
    vals = {16: 3072, 32: 1024}.get(block_n, 8192)  # rooms of a 70% and a 90% weight: 6 blocks per SM
    out = compile_kernel(tmp_path, tile_k, block_n, is_bf16, vals, VARIANTS[variant])
    assert out.returncode == 0, out.stderr[-3000:]
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)]
    assert spills, out.stderr[-3000:]
    if variant in ("normal", "cores"):
        assert max(spills) == 0, out.stderr[-3000:]
        # the blocks per SM the launch counts on for this build (resident_programs) fit in the SM's
        # 64 K registers
        from cross.costmodel.roofline import H100

        blocks = H100.resident_programs((64, tile_k), block_n, vals) // H100.n_units
        regs = max(int(v) for v in re.findall(r"Used (\d+) registers", out.stderr))
        assert regs * 128 * blocks <= 65536, out.stderr[-3000:]


def test_cores_threshold_is_the_launchers():
    """The source's default one-token CUDA-core threshold is the launcher's (which passes its own)."""
    from cross.kernels.cuda_backend import CORES_MAX_DENSITY

    src = resources.files("cross.kernels").joinpath("plan_matmul.cu").read_text()
    percent = re.search(r"#define CORES_MAX_NNZ \(TILE_M \* TILE_K \* (\d+) / 100\)", src)
    assert percent and int(percent.group(1)) == round(100 * CORES_MAX_DENSITY)


@pytest.mark.parametrize("warps,variant", [(16, ""), (5, ""), (16, "-DXPREFETCH=1"), (8, "-DTOGETHER=2"),
                                           (16, "-DSLICE_ABLATE=1"), (16, "-DSLICE_ABLATE=2"), (16, "-DELEMS=1"),
                                           (5, "-DELEMS=1"), (8, "-DELEMS=1 -DTOGETHER=2"),
                                           (16, "-DELEMS=1 -DSLICE_ABLATE=2")])
@pytest.mark.parametrize("is_bf16", [True, False], ids=["bf16", "fp16"])
def test_slice_kernel_source_compiles(warps, variant, is_bf16, tmp_path):
    """slice_mma.cu with its headers from the package as NVRTC gets them, for both formats, and its
    variants to measure (two positions at a time with the registers of 8 consumer warps) and profiling
    builds, without spills."""
    kernels = resources.files("cross.kernels")
    cmd = [NVCC, "-arch=sm_90a", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
           f"-I{kernels}", f"-DWARPS={warps}", f"-DIS_BF16={int(is_bf16)}", *variant.split(),
           str(kernels.joinpath("slice_mma.cu"))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"Used \d+ registers", out.stderr), out.stderr[-2000:]
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr))
    assert spills == 0, out.stderr[-2000:]


@pytest.mark.parametrize("variant", ["-DSPARSE=1 -DDECODE=32", "-DSPARSE=1 -DDECODE=0 -DWGS=1",
                                     "-DSPARSE=0 -DDECODE=32"])
def test_wgmma_probe_compiles(variant, tmp_path):
    """benchmarks/wgmma_probe.cu (wgmma.mma_async with A in registers, sparse and dense) assembles for
    sm_90a without spills, and ptxas keeps its mma asynchronous (no serialization warning)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = root / "benchmarks" / "wgmma_probe.cu"
    cmd = [NVCC, "-arch=sm_90a", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "p.cubin"),
           "-I", str(root / "src" / "cross" / "kernels"), *variant.split(), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "serializ" not in out.stderr, out.stderr[-2000:]
    assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]


@pytest.mark.parametrize("wgs,mt,split,overflow,ntok,compressed", [
    (2, 2, 1, 0, 128, False), (2, 2, 4, 1, 128, False), (1, 1, 1, 1, 128, False), (2, 1, 8, 1, 64, False),
    (1, 2, 3, 0, 32, False), (2, 2, 3, 1, 16, False), (2, 2, 2, 0, 16, False),
    (2, 2, 3, 1, 16, True), (2, 2, 1, 1, 128, True), (1, 2, 2, 0, 64, True),
    (2, 2, 0, 1, 16, False), (2, 2, 0, 1, 16, True), (2, 2, 0, 0, 128, False), (2, 2, 8, 1, 16, True)])
@pytest.mark.parametrize("is_bf16", [True, False], ids=["bf16", "fp16"])
@pytest.mark.parametrize("tuning", ["", "-DREFILL_LATE=0", "-DXPRE=1", "-DXTMA=0", "-DBLOCK_TIMES=2", "-DMASK_CHAIN=0"])
def test_wgmma24_kernel_source_compiles(wgs, mt, split, overflow, ntok, compressed, is_bf16, tuning, tmp_path,
                                        monkeypatch):
    """wgmma24.cu (the warpgroup 2:4 kernel, both layouts, clusters and STREAM) with the defines the
    launcher gives it (X by tensor copies, XTMA), and with those it gives under CROSS_CUDA_DEFINES for the
    refill right after the barrier (REFILL_LATE=0), X by bulk copies (XPRE=1), X by every thread's 16-byte
    copies (XTMA=0), the ablation's unit times (BLOCK_TIMES=2) and the masked words at popcounts (MASK_CHAIN=0),
    assembles for sm_90a without spills, and ptxas keeps its mma asynchronous (no serialization warning)."""
    from cross.kernels import cuda_backend

    kernels = resources.files("cross.kernels")
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, tuning)
    cuda_backend.wgmma24_defines_changed()
    defines = cuda_backend.wgmma24_defines(is_bf16, wgs, mt, split, 1024 if compressed else 64 * overflow, ntok,
                                           compressed, bool(overflow))
    cuda_backend.wgmma24_defines_changed()
    cmd = [NVCC, "-arch=sm_90a", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
           f"-I{kernels}", *defines, str(kernels.joinpath("wgmma24.cu"))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "serializ" not in out.stderr, out.stderr[-2000:]
    assert re.search(r"Used \d+ registers", out.stderr), out.stderr[-2000:]
    assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]


@pytest.mark.parametrize("split,compressed", [(8, False), (0, True)])
@pytest.mark.parametrize("ablate", [1, 3, 4, 8, 11, 65])
def test_wgmma24_ablation_builds_compile(split, compressed, ablate, tmp_path):
    """The ablation builds of benchmarks/wgmma24_floor.py (ABLATE 1: no mmas; 3: no copies either; 4:
    the launch alone; 8: no end's sums; 11: neither copies nor the end; 65: no mmas, the weight's copies
    alone) assemble at 16 tokens, for the clusters and for STREAM; bit 2 without bit 1 is refused by the
    source itself."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def build(value):
        return subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", "-cubin", "-o", str(tmp_path / "k.cubin"),
                               f"-I{kernels}", *wgmma24_defines(True, 2, 2, split, 1024 if compressed else 64, 16,
                                                                compressed, True),
                               f"-DABLATE={value}", str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)

    out = build(ablate)
    assert out.returncode == 0, out.stderr[-3000:]
    refused = build(2)
    assert refused.returncode != 0 and "needs bit 1" in refused.stderr


@pytest.mark.parametrize("split,compressed", [(2, False), (0, False), (0, True)])
@pytest.mark.parametrize("ntok", [16, 128])
def test_wgmma24_xtma_builds_compile(ntok, split, compressed, tmp_path):
    """XTMA=1 (X by tensor copies through its tensor map, the kernel's last parameter: 128 bytes aligned
    to 64) assembles without spills for the clusters and STREAM, both layouts; its PTX has the 2-d tensor
    copies and the 128-byte-swizzle B descriptors; with XPRE it is refused."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")
    common = [NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}",
              *wgmma24_defines(True, 2, 2, split, 1024 if compressed else 64, ntok, compressed, compressed),
              "-DXTMA=1", str(kernels.joinpath("wgmma24.cu"))]
    out = subprocess.run([*common[:3], "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), *common[3:]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]
    ptx = subprocess.run([*common[:3], "-ptx", "-o", str(tmp_path / "k.ptx"), *common[3:]], capture_output=True,
                         text=True)
    assert ptx.returncode == 0, ptx.stderr[-3000:]
    text = (tmp_path / "k.ptx").read_text()
    assert "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes" in text
    assert re.search(r"\.param \.align 64 \.b8 wgmma24_param_12\[128\]", text)
    # descriptor fields: 128-byte swizzle (1 at bit 62), stride 1024 bytes and leading offset 16, in 16-byte units
    assert f"{1 << 62 | (1024 >> 4) << 32 | (16 >> 4) << 16}" in text
    refused = subprocess.run([*common[:3], "-cubin", "-o", str(tmp_path / "k.cubin"), "-DXPRE=1", *common[3:]],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "XPRE 0" in refused.stderr


@pytest.mark.parametrize("extra", ["", "-DXPRE=1", "-DA_SMEM=1"])
@pytest.mark.parametrize("ntok", [16, 128])
def test_wgmma24_rotate_builds_compile(ntok, extra, tmp_path, monkeypatch):
    """ROTATE=1 (a cluster block walks its chunks from its row block's turn, wrapping) assembles for the
    clusters' builds without spills (the default's, XPRE's and A_SMEM's, their defines as the launcher
    gives them with those CROSS_CUDA_DEFINES), and its PTX differs from the build without it; a STREAM
    build refuses it."""
    from cross.kernels import cuda_backend

    kernels = resources.files("cross.kernels")
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, extra)
    cuda_backend.wgmma24_defines_changed()
    defines = {split: cuda_backend.wgmma24_defines(True, 2, 2, split, 64, ntok) for split in (0, 2)}
    cuda_backend.wgmma24_defines_changed()

    def build(split, rotate, what="-cubin"):
        out = tmp_path / ("k.ptx" if what == "-ptx" else "k.cubin")
        run = subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", what, "-Xptxas", "-v", "-o", str(out), f"-I{kernels}",
                              *defines[split], f"-DROTATE={rotate}",
                              str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)
        return run, (out.read_text() if what == "-ptx" and run.returncode == 0 else None)

    out, _ = build(2, 1)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]
    assert build(2, 1, "-ptx")[1] != build(2, 0, "-ptx")[1]
    refused, _ = build(0, 1)
    assert refused.returncode != 0 and "STREAM must be 0" in refused.stderr


@pytest.mark.parametrize("wgs,mt,ntok", [(2, 2, 16), (2, 2, 32), (2, 2, 64), (1, 1, 16), (1, 2, 64), (2, 1, 32)])
@pytest.mark.parametrize("stamps", ["", "-DBLOCK_TIMES=3"])
def test_wgmma24_end_red_builds_compile(wgs, mt, ntok, stamps, tmp_path):
    """The END_RED=1 build (STREAM's end by fp32 reductions and the output's last arrival; the runtime's
    default up to 64 tokens), with and without the end's stamps, assembles for the compressed layout's
    STREAM at 64-256 rows per block up to 64 tokens without spills, and its reductions are the four-float
    vector form; so does the 128-token build (a tuning setting: its share read back in pieces)."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")
    common = [NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}",
              *wgmma24_defines(True, wgs, mt, 0, 1024, ntok, True, True), "-DEND_RED=1", *stamps.split(),
              str(kernels.joinpath("wgmma24.cu"))]
    for tokens in (ntok, 128) if not stamps else (ntok,):
        args = [d.replace(f"-DNTOK={ntok}", f"-DNTOK={tokens}") for d in common[2:]]
        out = subprocess.run([*common[:2], "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), *args],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]
        ptx = subprocess.run([*common[:2], "-ptx", "-o", str(tmp_path / "k.ptx"), *args], capture_output=True, text=True)
        assert ptx.returncode == 0, ptx.stderr[-3000:]
        assert (tmp_path / "k.ptx").read_text().count("red.relaxed.gpu.global.add.v4.f32") == mt * tokens // 2 // 4


def test_wgmma24_end_fence_build(tmp_path):
    """END_FENCE=1 (a diagnostic: END_RED's arrival split by thread 0's fence before the increment) adds one
    GPU-scope acq_rel fence to the stamped END_RED build's PTX; refused without END_RED."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def ptx(*extra):
        out = subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-ptx", "-o", str(tmp_path / "k.ptx"),
                              *wgmma24_defines(True, 2, 2, 0, 1024, 16, True, True), "-DBLOCK_TIMES=3", *extra,
                              str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)
        return out, (tmp_path / "k.ptx").read_text() if out.returncode == 0 else ""

    out, plain = ptx("-DEND_RED=1")
    assert out.returncode == 0, out.stderr[-3000:]
    out, fenced = ptx("-DEND_RED=1", "-DEND_FENCE=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert fenced.count("fence.acq_rel.gpu") == plain.count("fence.acq_rel.gpu") + 1
    refused, _ = ptx("-DEND_FENCE=1")
    assert refused.returncode != 0 and "needs END_RED=1" in refused.stderr


@pytest.mark.parametrize("split,compressed,ntok,is_bf16", [(2, False, 16, True), (2, False, 128, True), (0, True, 16, True),
                                                           (0, False, 64, True), (0, True, 16, False), (2, False, 16, False)])
def test_wgmma24_propagate_builds_compile(split, compressed, ntok, is_bf16, tmp_path):
    """PROPAGATE=1 (non-finite inputs as in the dense product: a vote on X's part of every unit, the rare
    path's sums from global memory) assembles with the launcher's defines (XTMA), STREAM's END_RED ones
    too, bf16 and fp16, its PTX holding the block's vote (bar.red.or) and X folded in the dtype's own
    max.NaN.xorsign.abs; with XPRE it is refused."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")
    common = [NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}",
              *wgmma24_defines(is_bf16, 2, 2, split, 1024 if compressed else 64, ntok, compressed, compressed),
              *(["-DEND_RED=1"] if split == 0 and ntok <= 64 else []), "-DPROPAGATE=1",
              str(kernels.joinpath("wgmma24.cu"))]
    out = subprocess.run([*common[:3], "-cubin", "-o", str(tmp_path / "k.cubin"), *common[3:]], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ptx = subprocess.run([*common[:3], "-ptx", "-o", str(tmp_path / "k.ptx"), *common[3:]], capture_output=True,
                         text=True)
    text = (tmp_path / "k.ptx").read_text()
    assert ptx.returncode == 0 and "bar.red.or.pred" in text
    assert f"max.NaN.xorsign.abs.{'bf16x2' if is_bf16 else 'f16x2'}" in text
    refused = subprocess.run([*common[:3], "-cubin", "-o", str(tmp_path / "k.cubin"), *common[3:-1], "-DXTMA=0",
                              "-DXPRE=1", common[-1]], capture_output=True, text=True)
    assert refused.returncode != 0 and "XPRE and A_SMEM must be 0" in refused.stderr


def test_wgmma24_propagate_tuning_builds(tmp_path):
    """FOLD_EARLY=1 (a tuning build: PROPAGATE's X word loaded before the unit's mmas, folded after them)
    assembles at 16 tokens with the same folds (max.NaN.xorsign.abs) as the default PROPAGATE build and a
    different order; at 32 tokens, where a unit's fold is more than one 8-byte word a thread, it changes
    nothing. ABLATE=128 (the end's vote without the block's barrier) keeps the folds and drops bar.red.or;
    refused without PROPAGATE."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def build(ntok, *extra, propagate=("-DPROPAGATE=1",)):
        return subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-ptx", "-o", str(tmp_path / "k.ptx"),
                               *wgmma24_defines(True, 2, 2, 0, 1024, ntok, True, True), "-DEND_RED=1", *propagate,
                               *extra, str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)

    def ptx(ntok, *extra):
        out = build(ntok, *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        return (tmp_path / "k.ptx").read_text()

    fold = "max.NaN.xorsign.abs.bf16x2"
    plain, early, no_barrier = ptx(16), ptx(16, "-DFOLD_EARLY=1"), ptx(16, "-DABLATE=128")
    assert early != plain and early.count(fold) == plain.count(fold) > 0
    assert ptx(32, "-DFOLD_EARLY=1") == ptx(32)
    assert "bar.red.or" in plain and "bar.red.or" not in no_barrier and no_barrier.count(fold) == plain.count(fold)
    refused = build(16, "-DABLATE=128", propagate=())
    assert refused.returncode != 0 and "needs PROPAGATE=1" in refused.stderr


def test_wgmma24_prologue_tuning_builds(tmp_path):
    """EARLY=1 (a tuning build: thread 0 sets up the mbarriers and issues the prologue's copies before the
    block's first barrier) puts the first bulk and tensor copies ahead of the first bar.sync, where the
    default build has them after it; PREFETCH_MAP=1 adds the tensor map's prefetch; BLOCK_TIMES=4 (the
    prologue's stamps) reads the timer at four more places than the unit times' build. EARLY without bulk
    copies and PREFETCH_MAP without the tensor map are refused."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def build(*extra):
        return subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-ptx", "-o", str(tmp_path / "k.ptx"),
                               *wgmma24_defines(True, 2, 2, 0, 1024, 16, True, True), "-DEND_RED=1", *extra,
                               str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)

    def ptx(*extra):
        out = build(*extra)
        assert out.returncode == 0, out.stderr[-3000:]
        return (tmp_path / "k.ptx").read_text()

    def first(text, what):
        return text.index(what)

    plain, early = ptx("-DXTMA=1"), ptx("-DXTMA=1", "-DEARLY=1")
    for copy in ("cp.async.bulk.shared", "cp.async.bulk.tensor"):
        assert first(plain, "bar.sync") < first(plain, copy)
        assert first(early, copy) < first(early, "bar.sync")
    assert "prefetch.tensormap" not in plain and "prefetch.tensormap" in ptx("-DXTMA=1", "-DPREFETCH_MAP=1")
    timer = "%globaltimer"
    assert ptx("-DXTMA=1", "-DBLOCK_TIMES=4").count(timer) == ptx("-DXTMA=1", "-DBLOCK_TIMES=2").count(timer) + 4
    refused = build("-DXTMA=0", "-DBULK=0", "-DEARLY=1")
    assert refused.returncode != 0 and "EARLY issues" in refused.stderr
    refused = build("-DXTMA=0", "-DPREFETCH_MAP=1")
    assert refused.returncode != 0 and "PREFETCH_MAP prefetches" in refused.stderr


def test_wgmma24_end_ticket_build(tmp_path):
    """END_TICKET=1 (a tuning build: END_RED's last arrival chosen by a ticket drawn under the block's last unit)
    draws tickets by a relaxed atomic increment (one that ptxas does not aggregate over the warp: its reply
    is not read before the unit's mmas) and counts the other arrivals by a release add, with no acq_rel
    increment left; at 16 and 128 tokens it assembles without spills; without END_RED it changes nothing; with
    END_FENCE it is refused."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def build(ntok, *extra):
        return subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-ptx", "-o", str(tmp_path / "k.ptx"),
                               *wgmma24_defines(True, 2, 2, 0, 1024, ntok, True, True), *extra,
                               str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)

    def ptx(ntok, *extra):
        out = build(ntok, *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        return (tmp_path / "k.ptx").read_text()

    plain, ticket = ptx(16, "-DEND_RED=1"), ptx(16, "-DEND_RED=1", "-DEND_TICKET=1")
    assert "atom.acq_rel.gpu.global.inc" in plain and "atom.acq_rel" not in ticket
    assert "atom.relaxed.gpu.global.inc.u32" in ticket and "red.release.gpu.global.add.u32" in ticket
    assert ticket.count("red.relaxed.gpu.global.add.v4.f32") == plain.count("red.relaxed.gpu.global.add.v4.f32") > 0
    assert ptx(16, "-DEND_TICKET=1") == ptx(16)
    # BLOCK_TIMES=3: the last ticket's block stamps its end's four steps as END_RED's last arrival does
    timers = lambda *extra: ptx(16, "-DEND_RED=1", *extra).count("%globaltimer")  # noqa: E731
    assert (timers("-DEND_TICKET=1", "-DBLOCK_TIMES=3") - timers("-DEND_TICKET=1", "-DBLOCK_TIMES=2")
            == timers("-DBLOCK_TIMES=3") - timers("-DBLOCK_TIMES=2") > 0)
    for ntok in (16, 128):
        out = subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                              f"-I{kernels}", *wgmma24_defines(True, 2, 2, 0, 1024, ntok, True, True), "-DEND_RED=1",
                              "-DEND_TICKET=1", str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        assert sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)) == 0, out.stderr[-2000:]
        # the ticket's reply is read at the end only: no instruction between its atomic and the unit's
        # first mma reads it (a warp-aggregated add's shuffle did, waiting for the round trip there)
        sass = disassemble(tmp_path / "k.cubin")
        atom = next(i for i, line in enumerate(sass) if "ATOMG.E.INC" in line)
        reply = re.search(r"ATOMG\S*\s+PT,\s*(R\d+),", sass[atom]).group(1)
        mma = next(i for i in range(atom, len(sass)) if "HGMMA" in sass[i])
        assert not [line for line in sass[atom + 1:mma] if re.search(rf"\b{reply}\b", line)], sass[atom:mma]
    refused = build(16, "-DEND_RED=1", "-DEND_TICKET=1", "-DEND_FENCE=1")
    assert refused.returncode != 0 and "END_TICKET's arrivals" in refused.stderr


@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "slots"])
def test_wgmma24_mask_chain_build(compressed, tmp_path):
    """MASK_CHAIN=1 (the default; 0 is a tuning build) loads the masked words (the compressed layout's 2:4
    part and overflow, 2 m-tiles x 8 registers each; the slots layout's overflow) by predicated loads along a chain of
    predicated address steps, and scans the compressed record's counts by shuffles whose flags predicate
    the adds: in SASS one popcount an m-tile is left of the one a register, no branch is
    added (ptxas predicates the steps it is given as branches), and the loop's path from its barrier to the
    unit's last mma is shorter by most of an instruction a register (a select of the address's step would
    not be), with PROPAGATE too; no spills at 16 tokens, none more than the popcounts' build at 128 (whose
    STREAM build with PROPAGATE spills)."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")
    split, slots = (0, 1024) if compressed else (2, 64)

    def build(ntok, *extra):
        end = ("-DEND_RED=1",) if compressed and ntok <= 64 else ()
        out = subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-cubin", "-Xptxas", "-v",
                              "-o", str(tmp_path / "k.cubin"),
                              *wgmma24_defines(True, 2, 2, split, slots, ntok, compressed, True), *end, *extra,
                              str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr))
        return disassemble(tmp_path / "k.cubin"), spills

    def count(sass, op):
        return sum(re.search(rf"\b{op}\b", line) is not None for line in sass)

    def path(sass):  # the loop's barrier (the block's second) to the unit's last mma (the eighth)
        bars = [i for i, line in enumerate(sass) if "BAR.SYNC" in line]
        return [i for i, line in enumerate(sass) if "HGMMA" in line][7] - bars[1]

    registers = (2 if compressed else 1) * 2 * 8
    (plain, _), (chain, spills) = build(16, "-DMASK_CHAIN=0"), build(16)
    assert count(plain, "POPC") - count(chain, "POPC") == registers - registers // 8
    # the compressed record's scan: five shuffles whose own flags predicate the adds
    flagged = lambda sass: sum(re.search(r"SHFL\.UP P[0-6],", line) is not None for line in sass)  # noqa: E731
    assert flagged(plain) == 0 and flagged(chain) == (5 if compressed else 0)
    assert count(chain, "BRA") == count(plain, "BRA")
    assert path(plain) - path(chain) >= registers * 3 // 4  # ~2 instructions a register where there were ~4
    assert spills == 0
    (plain, _), (chain, spills) = build(16, "-DPROPAGATE=1", "-DMASK_CHAIN=0"), build(16, "-DPROPAGATE=1")
    assert path(plain) - path(chain) >= registers * 3 // 4 and spills == 0
    assert build(128, "-DPROPAGATE=1")[1] <= build(128, "-DPROPAGATE=1", "-DMASK_CHAIN=0")[1]


@pytest.mark.parametrize("wgs,mt,split,ntok", [(2, 2, 0, 16), (2, 2, 0, 64), (2, 2, 0, 128), (1, 2, 0, 64),
                                              (2, 1, 0, 16), (2, 2, 2, 16)])
@pytest.mark.parametrize("is_bf16", [True, False], ids=["bf16", "fp16"])
def test_wgmma24_lone_build(wgs, mt, split, ntok, is_bf16, tmp_path):
    """LONE=1 (the compressed layout's lone halves: the 2:4 registers' pairs by one chain of predicated word
    loads, then their lone halves by a second of 16-bit loads) assembles for the launcher's shapes, plain
    and with PROPAGATE, without spills (at 128 tokens no more than the build without halves) or serialized
    mmas; in SASS a 16-bit load for each of a thread's 2:4 registers (8 an m-tile) besides the mask's and
    the base's, and the path from the loop's barrier to the unit's last mma at 16 tokens at most 64
    instructions longer than without (each mask's bits set by R2P, not one LOP3 a bit). The slots layout
    refuses it."""
    from cross.kernels.cuda_backend import wgmma24_defines

    kernels = resources.files("cross.kernels")

    def build(*extra, compressed=True):
        end = ("-DEND_RED=1",) if not split and ntok <= 64 else ()
        out = subprocess.run([NVCC, "-arch=sm_90a", "-std=c++17", f"-I{kernels}", "-cubin", "-Xptxas", "-v",
                              "-o", str(tmp_path / "k.cubin"),
                              *wgmma24_defines(is_bf16, wgs, mt, split, 1024, ntok, compressed, True), *end, *extra,
                              str(kernels.joinpath("wgmma24.cu"))], capture_output=True, text=True)
        return out

    def sass_and_spills(out):
        assert out.returncode == 0, out.stderr[-3000:]
        assert "serializ" not in out.stderr, out.stderr[-2000:]
        return disassemble(tmp_path / "k.cubin"), sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr))

    def path(sass):  # the loop's barrier (the block's second) to the unit's last mma
        bars = [i for i, line in enumerate(sass) if "BAR.SYNC" in line]
        return [i for i, line in enumerate(sass) if "HGMMA" in line][4 * mt - 1] - bars[1]

    for extra in ((), ("-DPROPAGATE=1",)):
        plain, plain_spills = sass_and_spills(build(*extra))
        lone, spills = sass_and_spills(build(*extra, "-DLONE=1"))
        assert spills <= plain_spills if ntok == 128 else spills == 0
        assert sum("LDS.U16" in line for line in lone) >= 8 * mt + 2
        assert not any("LDS.U16" in line for line in plain)
        if ntok == 16:
            assert path(lone) - path(plain) <= 64
    refused = build("-DLONE=1", compressed=False)
    assert refused.returncode != 0 and "LONE is a form of the compressed layout" in refused.stderr
