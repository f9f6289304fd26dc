"""nn: SparseLinear and the in-place model conversion sparsify_ / unsparsify_."""

from .linear import SparseLinear
from .sparsify import LayerReport, SparsifyReport, sparsify_, unsparsify_

__all__ = ["SparseLinear", "sparsify_", "unsparsify_", "SparsifyReport", "LayerReport"]
