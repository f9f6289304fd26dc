"""costmodel: how long a tile of each kind takes, measured or predicted from a roofline."""

from .model import CostModel, TileTable, default_cost_model
from .roofline import H100, GPUSpec, block_n_for

__all__ = ["CostModel", "TileTable", "GPUSpec", "H100", "block_n_for", "default_cost_model"]
