"""The README's code runs as it stands: its "Use it" block, in a fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def use_it_block() -> str:
    section = README.read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "expected one python block under 'Use it'"
    return blocks[0]


@pytest.mark.slow
def test_use_it_block_runs():
    checks = ("assert y.shape == (1, 4096) and bool(torch.isfinite(y).all())\n"
              "assert not any(isinstance(m, cross.SparseLinear) for m in model.modules())\n")
    proc = subprocess.run([sys.executable, "-c", use_it_block() + checks], capture_output=True, text=True, timeout=600,
                          cwd=README.parent, env={**os.environ, "PYTHONPATH": str(README.parent / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\d of 2 layers sparse", proc.stdout), proc.stdout
