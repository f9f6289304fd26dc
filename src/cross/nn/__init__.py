"""nn: SparseLinear, the in-place model conversion sparsify_ / unsparsify_, and saved compiled
models (save / load)."""

from .linear import SparseLinear
from .serialize import PlanDeviceWarning, load, save
from .sparsify import LayerReport, SparsifyReport, sparsify_, unsparsify_

__all__ = ["SparseLinear", "sparsify_", "unsparsify_", "SparsifyReport", "LayerReport", "save", "load",
           "PlanDeviceWarning"]
