"""Property tests of the whole CPU pipeline: profile -> make_plan -> pack -> execute (the reference
executor) against the fp64 dense product, on random cases from tests/strategies.py (the generator
benchmarks/fuzz_gpu.py drives on a GPU).

Cases: 1..300 rows and columns (mostly not multiples of the tile), tiles 16x32 / 32x64 / 64x64,
densities 0..1 in five patterns (uniform, clustered blocks, emptied rows and columns, a single
nonzero, all zero), fp32 / fp16 / bf16, every balance and unit mode, 1..300 programs, custom
token-count buckets, 0..300 tokens in 0..3 leading dims, NaN / Inf in the weight and, with
nan_policy 'propagate', in X. Hypothesis prints the failing Case; paste it to replay.
"""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cross
from cross.analyze import profile_weight
from cross.pack import pack
from cross.partition import make_plan
from cross.runtime import execute, reference_matmul
from strategies import PATTERNS, build, cases, check_sparse_linear, mismatch

ROOT = Path(__file__).resolve().parents[1]
#: bounded so that the file runs in well under 40 s on a 2-core CPU; hypothesis varies the draws per run
FAST = settings(max_examples=80, deadline=None, print_blob=True)


def _same_plan(a, b) -> bool:
    arrays = ("kinds", "swing", "tile_ptr", "tile_col", "tile_kind")
    if any(not np.array_equal(getattr(a, n), getattr(b, n)) for n in arrays) or len(a.buckets) != len(b.buckets):
        return False
    return all(p.fallback == q.fallback and np.array_equal(p.items, q.items) and np.array_equal(p.unit_order, q.unit_order)
               for p, q in zip(a.buckets, b.buckets))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("pattern", PATTERNS)  # each pattern gets its share of the examples
@settings(max_examples=20, deadline=None, print_blob=True)
@given(data=st.data())
def test_pipeline_matches_dense(pattern, data):
    case = data.draw(cases(pattern=pattern), label="case")
    weight, x, bias, options = build(case)
    profile = profile_weight(weight, [case.tile_shape])
    stats = profile.tile(case.tile_shape)
    assert profile.nnz == int(stats.nnz.sum()) == int(torch.count_nonzero(weight))

    plan = make_plan(nnz=stats.nnz, shape=profile.shape, dtype=profile.dtype, **options)
    assert _same_plan(plan, make_plan(weight, **options)), "planning from the profile and from the weight differ"
    packed = pack(weight, plan)
    assert torch.equal(_bits(packed.tiled.to_dense()), _bits(weight)), "packing lost or changed an element"

    y = execute(x, packed, bias)
    assert mismatch(y, x, weight, bias) == ""
    if case.n_tokens:  # every bucket's work list, not only the one these tokens pick
        x2 = x.reshape(-1, case.k)
        for pb in packed.buckets:
            got = reference_matmul(x2, packed, bias, bucket=pb).reshape(y.shape)
            assert mismatch(got, x, weight, bias) == "", f"bucket [{pb.plan.n_min}, {pb.plan.n_max}]"


@FAST
@given(case=cases(nonfinite=True))
def test_nonfinite_inputs_reach_the_outputs(case):
    """NaN / +-Inf in X with nan_policy 'propagate': the NaN and Inf masks of the dense product, even
    where the only weights they meet are in empty tiles."""
    weight, x, bias, options = build(case)
    assert options["nan_policy"] == "propagate" and (case.n_tokens == 0 or not x.isfinite().all())
    y = execute(x, pack(weight, make_plan(weight, **options)), bias)
    assert mismatch(y, x, weight, bias) == ""


@settings(max_examples=40, deadline=None, print_blob=True)
@given(case=cases())
def test_sparse_linear_and_saved_copy(case):
    """SparseLinear with keep_dense=False (every bucket on its plan, as benchmarks/fuzz_gpu.py runs it),
    and the same layer saved and loaded again: bit-identical outputs."""
    message, ran = check_sparse_linear(case)
    assert message == "" and ran in ("reference", "nothing")

    weight, x, bias, options = build(case)
    linear = nn.Linear(case.k, case.m, bias=case.bias, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    model = nn.Sequential(cross.SparseLinear.from_dense(linear, keep_dense=False, **options))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        cross.save(model, tmp)
        loaded = cross.load(tmp)["0"]
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0, equal_nan=True)


def test_fuzz_gpu_script_runs_on_the_cpu():
    """benchmarks/fuzz_gpu.py imports without a GPU, shows its help, and runs a few cases through the
    reference executor with --device cpu."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    script = [sys.executable, str(ROOT / "benchmarks" / "fuzz_gpu.py")]
    done = subprocess.run([*script, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--cases" in done.stdout and "--only" in done.stdout
    done = subprocess.run([*script, "--device", "cpu", "--cases", "6", "--seed", "3"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 cases, 0 failures" in done.stdout


def test_leading_dims_cover_the_token_count():
    """The generator's X shapes: leading dims whose product is the token count, 1-D X as one token."""
    from strategies import RandomSource, _lead
    import random

    src = RandomSource(random.Random(0))
    for n in (0, 1, 7, 12, 300):
        for dims in (1, 2, 3):
            lead = _lead(src, n, dims)
            assert len(lead) == dims and math.prod(lead) == n
    assert _lead(src, 1, 0) == ()
