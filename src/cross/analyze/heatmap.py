"""Tile-sparsity heatmaps like the CROSS paper's Figure 2: one cell per tile, coloured by the
tile's sparsity (1 - density) on a fixed 0-100% scale, so layers and models compare by eye.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot: nothing
global (backend, current figure) changes on import or on call, and it works headless.
Axes are in the weight's own rows and columns, with partial edge tiles drawn at their true size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_tile_shape
from .profile import TileStats, WeightProfile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import QuadMesh
    from matplotlib.figure import Figure

CMAP = "viridis"
DPI = 120


def _resolve(stats_or_profile: TileStats | WeightProfile, tile_shape: Sequence[int] | None) -> TileStats:
    if isinstance(stats_or_profile, TileStats):
        if tile_shape is not None and check_tile_shape(tile_shape) != stats_or_profile.tile_shape:
            raise ValueError(
                f"tile_shape: expected {stats_or_profile.tile_shape} (the TileStats' own) or None, "
                f"got {tuple(tile_shape)}"
            )
        return stats_or_profile
    if isinstance(stats_or_profile, WeightProfile):
        if tile_shape is not None:
            return stats_or_profile.tile(tile_shape)
        if len(stats_or_profile.tiles) != 1:
            raise ValueError(
                f"tile_shape: expected one of {sorted(stats_or_profile.tiles)} for a profile with "
                f"several tile shapes, got None"
            )
        return next(iter(stats_or_profile.tiles.values()))
    raise TypeError(f"expected a TileStats or WeightProfile, got {type(stats_or_profile).__name__}")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw(ax: Axes, stats: TileStats) -> QuadMesh:
    grid = stats.grid
    row_edges = np.minimum(np.arange(grid.n_tile_rows + 1) * grid.tile_rows, grid.rows)
    col_edges = np.minimum(np.arange(grid.n_tile_cols + 1) * grid.tile_cols, grid.cols)
    mesh = ax.pcolormesh(
        col_edges, row_edges, 100.0 * stats.sparsity, cmap=CMAP, vmin=0.0, vmax=100.0, rasterized=True
    )
    ax.set_xlim(0, grid.cols)
    ax.set_ylim(grid.rows, 0)  # row 0 at the top, as the matrix is written
    ax.set_xlabel("column (in_features)")
    ax.set_ylabel("row (out_features)")
    return mesh


def _describe(stats: TileStats) -> str:
    tm, tk = stats.tile_shape
    return f"{stats.grid.rows}x{stats.grid.cols}, sparsity {1.0 - stats.overall_density:.1%}, tiles {tm}x{tk}"


def _panel_size(rows: int, cols: int, long_side: float) -> tuple[float, float]:
    """Width and height (inches) for a heatmap of a rows x cols weight, aspect clamped to 1:4
    so that a very tall or very wide layer still gets a readable panel."""
    aspect = min(max(rows / cols, 0.25), 4.0)
    if aspect >= 1.0:
        return long_side / aspect, long_side
    return long_side, long_side * aspect


def plot_tile_sparsity(
    stats_or_profile: TileStats | WeightProfile,
    path: str | os.PathLike,
    tile_shape: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG heatmap of per-tile sparsity of one weight; returns the path written.

    tile_shape picks the TileStats of a profile with several; title, if given, heads the
    default line (shape, overall sparsity, tile shape).
    """
    stats = _resolve(stats_or_profile, tile_shape)
    width, height = _panel_size(stats.grid.rows, stats.grid.cols, long_side=7.0)
    # room for the colour bar and the title; a tall layer's narrow panel would clip its title
    fig = _figure(max(width + 1.5, 4.5), height + 0.8)
    ax = fig.add_subplot()
    mesh = _draw(ax, stats)
    ax.set_title(_describe(stats) if title is None else f"{title}\n{_describe(stats)}")
    fig.colorbar(mesh, ax=ax, label="tile sparsity (%)")
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_profiles_grid(
    named_profiles: Mapping[str, TileStats | WeightProfile],
    path: str | os.PathLike,
    tile_shape: Sequence[int] | None = None,
    ncols: int = 4,
) -> Path:
    """Write one PNG with a heatmap per named layer (a model-level report) and one shared colour
    bar; returns the path written. Panels share the 0-100% scale, not the axes: layers differ in
    shape."""
    if not named_profiles:
        raise ValueError("named_profiles: expected at least one layer, got none")
    if ncols < 1:
        raise ValueError(f"ncols: expected a positive int, got {ncols}")
    panels = {name: _resolve(p, tile_shape) for name, p in named_profiles.items()}
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(3.6 * ncols + 1.0, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, stats) in zip(axes, panels.items()):
        mesh = _draw(ax, stats)
        ax.set_title(f"{name}\n{_describe(stats)}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(mesh, ax=axes.tolist(), label="tile sparsity (%)")
    path = Path(path)
    fig.savefig(path, format="png")
    return path
