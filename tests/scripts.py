"""The benchmark scripts (benchmarks/*.py) as modules for the tests, sys.path as it was before: some
scripts put src/ or benchmarks/ first on it, where benchmarks/kernels.py would shadow other modules."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/<name>.py, executed as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module
