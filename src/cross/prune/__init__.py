"""Pruning helpers that turn dense models into realistic unstructured-sparse inputs for the
pipeline (magnitude and Wanda). They make test and benchmark data; they are not the product.

filter_fn(module, fqn) -> bool selects nn.Linear modules, in torchao's sparsify_ argument order.
"""

from .magnitude import magnitude_prune, magnitude_prune_
from .wanda import wanda_prune, wanda_prune_

__all__ = ["magnitude_prune", "magnitude_prune_", "wanda_prune", "wanda_prune_"]
