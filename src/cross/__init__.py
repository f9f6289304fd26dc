"""cross: unstructured sparse nn.Linear layers faster than dense on GPUs."""

__version__ = "0.1.0"

from . import prune  # noqa: E402
from .nn import SparseLinear, compile, load, save, sparsify_, stack_siblings_, unsparsify_, unstack_siblings_  # noqa: E402  (after __version__: the planner reads it)

__all__ = ["__version__", "SparseLinear", "sparsify_", "unsparsify_", "stack_siblings_", "unstack_siblings_", "compile", "save", "load", "prune"]
