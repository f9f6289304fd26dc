"""benchmarks/wgmma24_stages_plot.py: the bench's rows placed by the stages their builds had, and the
bench's record of those stages (the format's, or CROSS_CUDA_DEFINES' -DSTAGES, which wins)."""


import pytest

from cross.kernels import cuda_backend
from cross.pack.wgmma24 import stages
from scripts import load_benchmark

plot = load_benchmark("wgmma24_stages_plot")


def _row(stages_, n, layout, sp, speedup):
    return dict(stages=str(stages_), shape="llama-up", M="11008", K="4096", N=str(n), sparsity=str(sp),
                layout=layout, speedup_vs_dense=str(speedup))


def test_panels_place_rows_by_stages():
    rows = [_row(8, 16, "slots", 0.7, 1.15), _row(4, 16, "slots", 0.7, 1.26), _row(7, 64, "slots", 0.7, 0.89),
            _row(3, 16, "compressed", 0.9, 1.53)]
    panels = plot.panels_of(rows)
    assert panels[("16 tokens", "llama-up 11008x4096")]["slots 70%"] == [(8, 1.15), (4, 1.26)]
    assert panels[("64 tokens", "llama-up 11008x4096")]["slots 70%"] == [(7, 0.89)]
    assert panels[("16 tokens", "llama-up 11008x4096")]["compressed 90%"] == [(3, 1.53)]


def test_plot_writes_a_png(tmp_path):
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("stages,shape,M,K,N,sparsity,layout,speedup_vs_dense\n"
                        "4,llama-up,11008,4096,16,0.7,slots,1.26\n3,llama-up,11008,4096,16,0.7,slots,1.20\n")
    plot.main([str(csv_path)])
    assert (tmp_path / "s.png").stat().st_size > 1000
    bad = tmp_path / "old.csv"
    bad.write_text("shape,N\nllama-up,16\n")
    with pytest.raises(SystemExit, match="no rows with a stages column"):
        plot.main([str(bad)])


@pytest.mark.parametrize("compressed", [False, True])
def test_defined_stages(monkeypatch, compressed):
    """A build's stages are the format's unless CROSS_CUDA_DEFINES sets -DSTAGES (its last wins)."""
    monkeypatch.delenv(cuda_backend.DEFINES_ENV, raising=False)
    for ntok in (16, 64, 128):
        defines = cuda_backend.wgmma24_defines(True, 2, 2, 2, 512, ntok, compressed)
        assert cuda_backend.defined_stages(defines) == stages(2, 2, 512, ntok, compressed)
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, "-DSTAGES=5 -DREFILL_LATE=0 -DSTAGES=6")
    assert cuda_backend.defined_stages(cuda_backend.wgmma24_defines(True, 2, 2, 0, 512, 16, compressed)) == 6


@pytest.mark.parametrize("extra,xpre", [("", False), ("-DXPRE=1", True), ("-DXPRE=1 -DXPREFETCH=0", True),
                                        ("-DXPRE=1 -DXPRE=0", False), ("-DXPREFETCH=1", False)])
def test_xpre_read_from_the_defines(monkeypatch, extra, xpre):
    """Whether builds are XPRE ones: the last -DXPRE= in CROSS_CUDA_DEFINES, no other name that starts so."""
    monkeypatch.setenv(cuda_backend.DEFINES_ENV, extra)
    cuda_backend.wgmma24_xpre.cache_clear()
    try:
        assert cuda_backend.wgmma24_xpre() is xpre
    finally:
        cuda_backend.wgmma24_xpre.cache_clear()
