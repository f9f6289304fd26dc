"""The seed's Figure 3 from a cost model: sparse-tile and dense-tile time against sparsity, with the
dense / swing / sparse bands shaded, one panel per token count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..tiling import TileKind
from .model import CostModel

_BAND_COLOURS = {"sparse": "#d8ecd8", "swing": "#f3ecc8", "dense": "#f3d8d8"}


def plot_bands(model: CostModel, path, tile_shape=(64, 64), n_tokens=(1, 16, 128, 2048),
               swing_band: float = 0.10) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..partition import bands

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3.6 * len(n_tokens), 3.2))
    FigureCanvasAgg(fig)
    for i, n in enumerate(n_tokens):
        ax = fig.add_subplot(1, len(n_tokens), i + 1)
        b = bands(model, tile_shape, n, TileKind.BITMAP, swing_band)
        sparsity = 1.0 - b["density"]
        for band, colour in _BAND_COLOURS.items():
            sel = b["band"] == band
            if sel.any():
                ax.fill_between(sparsity, 0, 1, where=sel, color=colour, transform=ax.get_xaxis_transform(),
                                step="mid", label=f"{band} band")
        ax.plot(sparsity, b["sparse_us"] * 1e3, color="#1b7f3b", label="bitmap tile")
        ax.plot(sparsity, b["dense_us"] * 1e3, color="#b22222", label="dense tile")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, float(np.max(np.r_[b["sparse_us"], b["dense_us"]])) * 1.1e3)
        ax.set_xlabel("tile sparsity")
        ax.set_title(f"N = {n}")
        if i == 0:
            ax.set_ylabel("ns per tile (amortised)")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{tile_shape[0]}x{tile_shape[1]} tiles, cost model: {model.source}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
