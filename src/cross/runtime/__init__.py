"""runtime: executing a packed plan (reference executor on any device, Triton kernels on GPUs)."""

from .dispatch import KernelFallbackWarning, ReferencePathWarning, check_input, execute
from .measure import PlanCheckWarning, measure_plan, measure_weight
from .reference import decode_executed_tiles, reference_matmul

__all__ = ["KernelFallbackWarning", "PlanCheckWarning", "ReferencePathWarning", "execute", "check_input",
           "reference_matmul", "decode_executed_tiles", "measure_plan", "measure_weight"]
