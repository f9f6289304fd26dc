"""runtime: executing a packed plan (reference executor on any device, Triton kernels on GPUs)."""

from .reference import decode_executed_tiles, reference_matmul

__all__ = ["reference_matmul", "decode_executed_tiles"]
