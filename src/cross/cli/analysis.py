"""Profiles as table rows and heatmap files: what `cross analyze` and the demo report about sparsity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..analyze import WeightProfile

PROFILE_HEADER = ("layer", "shape", "dtype", "sparsity", "tiles empty", "tiles full",
                  "tile density p5", "p50", "p95", "cv_ratio")
#: A grid figure holds at most this many panels; every layer still gets its own PNG in `analyze`.
GRID_LIMIT = 48


def profile_row(name: str, profile: WeightProfile, tile: tuple[int, int]) -> list[str]:
    stats = profile.tile(tile)
    p5, p50, p95 = stats.quantiles((0.05, 0.5, 0.95))
    return [name, "x".join(map(str, profile.shape)), profile.dtype, f"{profile.sparsity:.1%}",
            f"{stats.empty_fraction:.1%}", f"{stats.full_fraction:.1%}", f"{p5:.1%}", f"{p50:.1%}", f"{p95:.1%}",
            f"{stats.cv_ratio:.2f}"]


def safe_filename(name: str) -> str:
    """A layer name as a file name: path separators and spaces become '_'."""
    return "".join("_" if c in '/\\: *?"<>|' else c for c in name)


def layer_heatmap(profile: WeightProfile, name: str, out_dir: Path, tile: tuple[int, int]) -> Path:
    """One layer's tile-sparsity PNG as ``out_dir/<layer>.png``."""
    from ..analyze.heatmap import plot_tile_sparsity

    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_tile_sparsity(profile, out_dir / f"{safe_filename(name)}.png", tile_shape=tile, title=name)


def grid_heatmap(profiles: Mapping[str, WeightProfile], path: Path, tile: tuple[int, int], ncols: int = 6) -> Path:
    """The first GRID_LIMIT layers in one PNG (one panel each, a shared 0-100% colour scale)."""
    from ..analyze.heatmap import plot_profiles_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_profiles_grid(dict(list(profiles.items())[:GRID_LIMIT]), path, tile_shape=tile, ncols=ncols)
