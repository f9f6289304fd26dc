"""Stage 1 of the pipeline: measure where a weight's nonzeros are (WeightProfile) and draw it.

The heatmaps live in `cross.analyze.heatmap`, imported on use so that profiling never pulls in
matplotlib.
"""

from .profile import LineStats, TileStats, WeightProfile, profile_weight

__all__ = ["LineStats", "TileStats", "WeightProfile", "profile_weight"]
