"""kernels: GPU kernels that execute a Plan's work list in one persistent launch."""

from .launch import BACKENDS, default_backend, plan_matmul

__all__ = ["plan_matmul", "default_backend", "BACKENDS"]
