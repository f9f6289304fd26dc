"""cross: unstructured sparse nn.Linear layers faster than dense on GPUs."""

__version__ = "0.1.0"
