"""pack: the plan's per-tile formats turned into device buffers and kernel tables."""

from .formats import TiledWeight
from .packed import PackedBucket, PackedWeight, pack

__all__ = ["TiledWeight", "PackedWeight", "PackedBucket", "pack"]
