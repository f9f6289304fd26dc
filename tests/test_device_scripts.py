"""The device-call scripts (benchmarks/*.sh) hand the benchmarks' define-valued options their values in a form
argparse takes: a value that starts with '-' and holds no space ('-DMASK_CHAIN=1') after a separate
'--builds' is read as an option of its own, and the step fails on the GPU machine after its start."""

import re
import shlex

import pytest
from scripts import BENCHMARKS

#: the benchmarks' options whose values are NVRTC defines (wgmma24_floor.py, wgmma24_ablate.py,
#: wgmma24_sequence.py)
DEFINE_OPTIONS = ("--builds", "--base", "--defines")


def commands(text: str) -> list[list[str]]:
    """The shell commands of a script, continuation lines joined, comments dropped, as shlex tokens."""
    joined = re.sub(r"\\\n", " ", text)
    return [tokens for tokens in (shlex.split(line, comments=True) for line in joined.splitlines()) if tokens]


def misread(tokens: list[str]) -> list[str]:
    """The define-valued options in ``tokens`` whose separate value argparse would take for an option."""
    return [f"{opt} {value}" for opt, value in zip(tokens, tokens[1:])
            if opt in DEFINE_OPTIONS and value.startswith("-") and " " not in value]


def test_misread_finds_a_lone_define_and_passes_the_forms_argparse_takes():
    assert misread(shlex.split('python3 x.py --builds "-DMASK_CHAIN=1" --n 16')) == ["--builds -DMASK_CHAIN=1"]
    assert misread(shlex.split("x.py --defines -DEND_RED=1")) == ["--defines -DEND_RED=1"]
    assert misread(shlex.split('x.py --builds=-DMASK_CHAIN=1 --base="-DXPRE=1"')) == []
    assert misread(shlex.split('x.py --defines "-DEARLY=1 -DPREFETCH_MAP=1"')) == []  # a space: a value
    assert commands("a --builds \\\n  -DX=1  # b\n\n# c\n") == [["a", "--builds", "-DX=1"]]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.sh")))
def test_device_scripts_pass_defines_as_values(script):
    found = [bad for tokens in commands((BENCHMARKS / script).read_text()) for bad in misread(tokens)]
    assert not found, f"{script}: write {', '.join(f for f in found)} as --option=VALUE"
