"""pack: the plan's per-tile formats turned into device buffers and kernel tables."""

from .formats import TiledWeight
from .packed import PackedBucket, PackedWeight, pack, pack_tiled

__all__ = ["TiledWeight", "PackedWeight", "PackedBucket", "pack", "pack_tiled"]
