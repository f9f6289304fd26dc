"""cli: the `cross` command (analyze, plan, run, demo) over the library's pipeline stages."""

from .main import main

__all__ = ["main"]
