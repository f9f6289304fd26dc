"""benchmarks/wgmma24_stages_plot.py: the stages sweep's rows placed by their stages, the format's rows
at the stages the format gave them before the shallow pipeline."""

import importlib.util
import sys
from pathlib import Path

from cross.pack.wgmma24 import SHALLOW_TOKENS, stages

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("wgmma24_stages_plot", _DIR / "wgmma24_stages_plot.py")
plot = importlib.util.module_from_spec(_spec)
_path = list(sys.path)
try:  # the script puts src/ first on the path
    _spec.loader.exec_module(plot)
finally:
    sys.path[:] = _path


def _row(stages_, n, layout, sp, speedup):
    return dict(stages=stages_, shape="llama-up", M="11008", K="4096", N=str(n), sparsity=str(sp),
                layout=layout, speedup_vs_dense=str(speedup))


def test_format_stages_are_the_old_rule():
    """Above SHALLOW_TOKENS the format's stages are what pack/wgmma24.stages gives; up to it, what fits
    (at most 8), which the shallow pipeline caps."""
    for slots in (0, 32, 512, 1536, 5376):
        for c in (False, True):
            assert plot.format_stages(slots, 128, c) == stages(2, 2, slots, 128, c)
            for ntok in (16, 32, SHALLOW_TOKENS):
                assert plot.format_stages(slots, ntok, c) >= stages(2, 2, slots, ntok, c)
    assert plot.format_stages(512, 16, False) == 8 and plot.format_stages(512, 64, False) == 7


def test_panels_place_rows_by_stages():
    rows = [_row("format", 16, "slots", 0.7, 1.15), _row("4", 16, "slots", 0.7, 1.26),
            _row("format", 64, "slots", 0.7, 0.89), _row("3", 16, "compressed", 0.9, 1.53)]
    panels = plot.panels_of(rows, lambda r: 512)
    assert panels[("16 tokens", "llama-up 11008x4096")]["slots 70%"] == [(8, 1.15), (4, 1.26)]
    assert panels[("64 tokens", "llama-up 11008x4096")]["slots 70%"] == [(7, 0.89)]
    assert panels[("16 tokens", "llama-up 11008x4096")]["compressed 90%"] == [(3, 1.53)]
