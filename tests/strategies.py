"""Random pipeline cases, drawn by one generator that hypothesis (tests/test_properties.py) or plain
`random` (benchmarks/fuzz_gpu.py, on a GPU) drives, and the fp64 oracle both check against.

A Case is a few numbers (shape, tile shape, density, pattern, dtype, plan options, token shape and a
seed for the tensors); `build(case, device)` makes the tensors from it. Hypothesis shrinks and prints
the Case, so a failing draw is replayed from its printed repr alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from cross.partition import DEFAULT_BUCKETS
from cross.tiling import TileKind

TILE_SHAPES = ((16, 32), (32, 64), (64, 64))
PATTERNS = ("uniform", "clustered", "empty_lines", "single", "zero")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BALANCES = ("none", "intra", "full")
UNIT_MODES = ("split", "mixed")
NAN_POLICIES = ("propagate", "ignore")
KIND_SETS = ((TileKind.DENSE, TileKind.BITMAP), (TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX),
             (TileKind.BITMAP,), (TileKind.INDEX,), (TileKind.DENSE,))
MAX_SIDE = 300
MAX_TOKENS = 300


class RandomSource:
    """Plain random draws (seeded), with each range's ends drawn more often: that is where bugs are."""

    def __init__(self, rng: random.Random, edge: float = 0.15):
        self.rng, self.edge = rng, edge

    def integers(self, lo: int, hi: int) -> int:
        if self.rng.random() < self.edge:
            return self.rng.choice((lo, hi))
        return self.rng.randint(lo, hi)

    def floats(self, lo: float, hi: float) -> float:
        if self.rng.random() < self.edge:
            return self.rng.choice((lo, hi))
        return self.rng.uniform(lo, hi)

    def choice(self, options):
        return self.rng.choice(list(options))


class HypothesisSource:
    """The same draws through hypothesis, which then shrinks them."""

    def __init__(self, draw):
        self.draw = draw

    def integers(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return self.draw(st.integers(lo, hi))

    def floats(self, lo: float, hi: float) -> float:
        from hypothesis import strategies as st

        return self.draw(st.floats(lo, hi))

    def choice(self, options):
        from hypothesis import strategies as st

        return self.draw(st.sampled_from(list(options)))


@dataclass(frozen=True)
class Case:
    m: int  # out_features
    k: int  # in_features
    tile_shape: tuple[int, int]
    density: float
    pattern: str
    dtype: str
    bias: bool
    w_nonfinite: int  # NaN / +-Inf entries put into the weight
    lead: tuple[int, ...]  # X is [*lead, K]; () is a single 1-D token
    x_nonfinite: int  # NaN / +-Inf entries put into X (only with nan_policy 'propagate')
    balance: str
    unit_mode: str
    n_programs: int
    nan_policy: str
    allowed_kinds: tuple[int, ...]
    swing_band: float
    buckets: tuple[tuple[int, int], ...]
    seed: int

    @property
    def n_tokens(self) -> int:
        return math.prod(self.lead)

    def plan_options(self) -> dict:
        """Keyword arguments of make_plan / SparseLinear.from_dense."""
        return {"tile_shape": self.tile_shape, "balance": self.balance, "unit_mode": self.unit_mode,
                "n_programs": self.n_programs, "nan_policy": self.nan_policy,
                "allowed_kinds": tuple(TileKind(k) for k in self.allowed_kinds), "swing_band": self.swing_band,
                "buckets": self.buckets}

    def replay(self) -> str:
        """A line of Python that rebuilds this case."""
        return f"Case(**{asdict(self)!r})"


def _lead(src, n_tokens: int, n_dims: int) -> tuple[int, ...]:
    """Leading dimensions with product n_tokens (a 1-D X, n_dims 0, is one token)."""
    if n_dims == 0:
        return ()
    dims = []
    rest = n_tokens
    for _ in range(n_dims - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0] if rest else [0, 1, 2]
        d = src.choice(divisors)
        dims.append(d)
        rest = rest // d if d else rest
    if 0 in dims:  # the product is already 0
        return (*dims, src.integers(0, 3))
    return (*dims, rest)


def _buckets(src) -> tuple[tuple[int, int], ...]:
    """The default buckets, or 1-4 buckets cut at random token counts (the last one open-ended)."""
    if src.choice((True, False)):
        return DEFAULT_BUCKETS
    cuts = sorted({src.integers(1, 2 * MAX_TOKENS) for _ in range(src.integers(0, 3))})
    bounds = [0, *cuts, 2**31 - 1]
    return tuple((lo + 1, hi) for lo, hi in zip(bounds, bounds[1:]))


def draw_case(src, nonfinite: bool | None = None, pattern: str | None = None) -> Case:
    """One case from a source of draws. nonfinite: True forces NaN/Inf inputs (and nan_policy
    'propagate'), False rules them out, None draws either. pattern: one of PATTERNS, or None to draw it."""
    n_dims = src.integers(0, 3)
    n_tokens = 1 if n_dims == 0 else src.integers(0, MAX_TOKENS)
    nan_policy = "propagate" if nonfinite else src.choice(NAN_POLICIES)
    if nonfinite:
        x_nonfinite = src.integers(1, 4)
    elif nonfinite is None and nan_policy == "propagate":
        x_nonfinite = src.choice((0, 0, 0, 1, 3))
    else:
        x_nonfinite = 0
    return Case(
        m=src.integers(1, MAX_SIDE), k=src.integers(1, MAX_SIDE), tile_shape=src.choice(TILE_SHAPES),
        density=src.floats(0.0, 1.0), pattern=pattern or src.choice(PATTERNS), dtype=src.choice(DTYPES),
        bias=src.choice((True, False)), w_nonfinite=src.choice((0, 0, 0, 2)) if nonfinite is not False else 0,
        lead=_lead(src, n_tokens, n_dims), x_nonfinite=x_nonfinite,
        balance=src.choice(BALANCES), unit_mode=src.choice(UNIT_MODES), n_programs=src.integers(1, 300),
        nan_policy=nan_policy, allowed_kinds=tuple(int(k) for k in src.choice(KIND_SETS)),
        swing_band=src.choice((0.0, 0.1, 0.5)), buckets=_buckets(src), seed=src.integers(0, 2**32 - 1))


def cases(nonfinite: bool | None = None, pattern: str | None = None):
    """The hypothesis strategy of Cases."""
    from hypothesis import strategies as st

    return st.composite(lambda draw: draw_case(HypothesisSource(draw), nonfinite, pattern))()


def random_case(rng: random.Random, nonfinite: bool | None = None, pattern: str | None = None) -> Case:
    return draw_case(RandomSource(rng), nonfinite, pattern)


# ---------------------------------------------------------------------- tensors
class Drawn(NamedTuple):
    weight: torch.Tensor  # [M, K] with zeros, the case's dtype
    x: torch.Tensor  # [*lead, K]
    bias: torch.Tensor | None  # [M] or None
    options: dict  # make_plan / SparseLinear.from_dense keyword arguments


def _mask(case: Case, g: torch.Generator) -> torch.Tensor:
    m, k, d = case.m, case.k, case.density
    if case.pattern == "zero":
        return torch.zeros(m, k, dtype=torch.bool)
    if case.pattern == "single":
        mask = torch.zeros(m * k, dtype=torch.bool)
        mask[int(torch.randint(m * k, (1,), generator=g))] = True
        return mask.reshape(m, k)
    if case.pattern == "clustered":  # blocks of random size, each all in or all out
        br, bc = (int(v) for v in torch.randint(1, 65, (2,), generator=g))
        blocks = torch.rand(-(-m // br), -(-k // bc), generator=g) < d
        return blocks.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:m, :k]
    mask = torch.rand(m, k, generator=g) < d
    if case.pattern == "empty_lines":  # scattered rows and columns, and a run of each, emptied
        mask[torch.rand(m, generator=g) < 0.3] = False
        mask[:, torch.rand(k, generator=g) < 0.3] = False
        r0, c0 = int(torch.randint(m, (1,), generator=g)), int(torch.randint(k, (1,), generator=g))
        mask[r0 : r0 + int(torch.randint(1, 80, (1,), generator=g))] = False
        mask[:, c0 : c0 + int(torch.randint(1, 80, (1,), generator=g))] = False
    return mask


def _poison(t: torch.Tensor, count: int, g: torch.Generator) -> None:
    """Put NaN, +Inf and -Inf (in turn) at `count` random entries of t, in place."""
    flat = t.view(-1)
    if count == 0 or flat.numel() == 0:
        return
    where = torch.randint(flat.numel(), (count,), generator=g)
    flat[where] = torch.tensor([math.nan, math.inf, -math.inf])[torch.arange(count) % 3].to(t.dtype)


def build(case: Case, device="cpu") -> Drawn:
    """The case's tensors (on ``device``): kept weights of magnitude in [0.5, 1.5) with random signs
    (never rounding to zero in any dtype), standard-normal X, bias in [-1, 1)."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    values = (torch.rand(case.m, case.k, generator=g) + 0.5) * torch.where(torch.rand(case.m, case.k, generator=g) < 0.5, -1.0, 1.0)
    weight = torch.where(_mask(case, g), values, torch.zeros(())).to(dtype)
    _poison(weight, case.w_nonfinite, g)
    x = torch.randn(*case.lead, case.k, generator=g).to(dtype)
    _poison(x, case.x_nonfinite, g)
    bias = (torch.rand(case.m, generator=g) * 2 - 1).to(dtype) if case.bias else None
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Drawn(move(weight), move(x), move(bias), case.plan_options())


# ---------------------------------------------------------------------- the oracle
def dense_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """X @ W^T (+ b) in fp64, [*lead, M]."""
    y = x.double() @ weight.double().T
    return y + bias.double() if bias is not None else y


def error_bound(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
    """Largest error allowed per output entry: the product summed in fp32 in any order and rounded
    once to the output dtype. Summing K products (each exact for fp16 / bf16 inputs, rounded once
    for fp32) and the bias in fp32 errs by at most (K + 2) u (|X| @ |W|^T + |b|) with u = 2^-24,
    whatever the order (so GPU kernels are held to it too); the final rounding by eps(dtype) |Y|,
    or, where Y is subnormal in the output dtype, by the subnormals' spacing eps * smallest_normal."""
    scale = x.double().abs() @ weight.double().abs().T
    if bias is not None:
        scale = scale + bias.double().abs()
    info = torch.finfo(x.dtype)
    return info.eps * ref.abs() + info.eps * info.smallest_normal + (x.shape[-1] + 2) * 2.0**-24 * scale


def mismatch(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> str:
    """'' if y = X @ W^T (+ b) as the fp64 dense product has it: y in X's dtype and shape [*lead, M],
    NaN and +-Inf at the same places, every finite entry within error_bound; otherwise what differs."""
    x, weight = x.cpu(), weight.cpu()
    bias = None if bias is None else bias.cpu()
    ref = dense_reference(x, weight, bias)
    if y.dtype != x.dtype or tuple(y.shape) != tuple(ref.shape):
        return f"expected {x.dtype} {tuple(ref.shape)}, got {y.dtype} {tuple(y.shape)}"
    y64 = y.double().cpu()
    if not torch.equal(y64.isnan(), ref.isnan()):
        return f"NaN at {int((y64.isnan() != ref.isnan()).sum())} places other than the dense product's"
    if not torch.equal(y64.isinf(), ref.isinf()) or not torch.equal(y64[ref.isinf()], ref[ref.isinf()]):
        return "+-Inf at places other than the dense product's"
    fin = ref.isfinite()
    err, bound = (y64 - ref).abs()[fin], error_bound(x, weight, bias, ref)[fin]
    if bool((err > bound).any()):
        worst = int(torch.argmax(err - bound))
        return (f"{int((err > bound).sum())} entries off by more than the bound: worst {float(err[worst]):.3g} "
                f"> {float(bound[worst]):.3g}")
    return ""


@torch.no_grad()
def check_sparse_linear(case: Case, device="cpu") -> tuple[str, str]:
    """The case through SparseLinear on ``device`` with keep_dense=False (every bucket runs its
    plan). Returns (mismatch message, '' if right; what ran: 'cuda' / 'triton' kernel, 'reference'
    executor, or 'nothing' for 0 tokens)."""
    from torch import nn

    from cross import SparseLinear
    from cross.runtime.dispatch import bucket_index

    weight, x, bias, options = build(case, device)
    linear = nn.Linear(case.k, case.m, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    layer = SparseLinear.from_dense(linear, keep_dense=False, **options)
    y = layer(x)
    if case.n_tokens == 0:
        ran = "nothing"
    else:
        args = layer._kernels.get(bucket_index(layer.packed, case.n_tokens))
        ran = args.backend if args is not None else "reference"
    return mismatch(y, x, weight, bias), ran
