"""The Plan: immutable, serialisable data saying how one weight is stored and executed.

Layer level (shared by every token-count bucket):
    kinds      uint8 [ti, tj]  TileKind of every tile (the stored formats)
    swing      bool  [ti, tj]  tiles in the swing band at the plan's first bucket
    tile_ptr   int32 [ti + 1]  the executed tiles of tile-row i are tile_col[tile_ptr[i]:tile_ptr[i+1]]
    tile_col   int32 [T]       tile column of each executed tile
    tile_kind  uint8 [T]       kind of each executed tile; within a tile-row the order is
                               DENSE, BITMAP, INDEX, then EMPTY (EMPTY only where non-finite inputs
                               must reach the output: nan_policy="propagate"), columns ascending
Per bucket (BucketPlan), the work list:
    items      int32 [W, 3]    (tile-row, start, stop): a run of tile_col one program computes
                               into one output tile; start == stop writes zeros (bias)
    unit_ptr   int32 [U + 1]   the items of unit u are items[unit_ptr[u]:unit_ptr[u+1]]
    unit_order int32 [2, U]    program p runs unit unit_order[t % 2, p] on token tile t
                               (alternating between adjacent token tiles: inter-batch balancing)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..tiling import TileGrid, TileKind

PLAN_FORMAT = "cross.plan/6"
#: Formats this version reads: /1 had no measured times (BucketPlan.measured_us, measured_dense_us),
#: /2 no row kernel (BucketPlan.kernel), /3 no slice kernel, /4 no warpgroup 2:4 kernel, /5 no
#: alternatives (BucketPlan.alternatives).
READABLE_PLAN_FORMATS = ("cross.plan/1", "cross.plan/2", "cross.plan/3", "cross.plan/4", "cross.plan/5", PLAN_FORMAT)
#: What runs a bucket's plan: "tiles", the plan kernel over the tiles' work list; "rows", the
#: row kernel (up to 16 tokens) over the weight's row format (pack/rows.py); "slices", the slice
#: kernel (up to 16 tokens, sm_90+) over the weight's slice format (pack/slices.py); "wgmma24", the
#: warpgroup 2:4 kernel (sm_90a) over the weight's 2:4 format (pack/wgmma24.py)
KERNELS = ("tiles", "rows", "slices", "wgmma24")
#: The kernels by name in reasons and warnings
KERNEL_NAMES = {"tiles": "tile", "rows": "row", "slices": "slice", "wgmma24": "warpgroup 2:4"}


def _readable() -> str:
    return " or ".join(repr(f) for f in READABLE_PLAN_FORMATS)


def _frozen(a, dtype) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a, dtype=dtype))
    a.setflags(write=False)
    return a


def _header_digest(header: dict) -> str:
    """sha256 of the header's canonical JSON, its own digest left out."""
    rest = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def bucket_name(n_min: int, n_max: int) -> str:
    """A token-count bucket as a column name: N1, N2-16, ..., N513+ for the open-ended last one."""
    if n_min == n_max:
        return f"N{n_min}"
    return f"N{n_min}-{n_max}" if n_max < 2**31 - 1 else f"N{n_min}+"


@dataclass(frozen=True, eq=False)
class BucketPlan:
    """How to run the layer for token counts in [n_min, n_max]."""

    n_min: int
    n_max: int
    n_design: int  # token count the costs were predicted at
    block_n: int  # the kernel's token tile
    fallback: bool  # True: run the dense product instead
    items: np.ndarray
    unit_ptr: np.ndarray
    unit_order: np.ndarray
    unit_us: np.ndarray  # float64 [U] predicted amortised load of each unit
    predicted_us: float  # predicted time of the plan kernel (for "slices", which has no cost model, the
    # time of the kernel the prediction chose before the bucket became the slice kernel's candidate)
    dense_us: float  # predicted time of the dense product
    reason: str = ""
    # times measured on the GPU at n_design (cross.runtime.measure), None where not measured
    measured_us: float | None = None
    measured_dense_us: float | None = None
    kernel: str = "tiles"  # KERNELS; the work list is kept for the others too (a forced tile run)
    # other KERNELS the measured check times against ``kernel`` before it decides (it keeps the
    # fastest and empties this); unmeasured, only ``kernel`` runs
    alternatives: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"bucket [{self.n_min}, {self.n_max}]: expected kernel in {KERNELS}, got {self.kernel!r}")
        alternatives = self.alternatives
        if isinstance(alternatives, str) or not all(isinstance(a, str) for a in alternatives):
            raise TypeError(f"bucket [{self.n_min}, {self.n_max}]: expected alternatives as a sequence of kernel "
                            f"names, got {alternatives!r}")
        alternatives = tuple(alternatives)
        if (not set(alternatives) <= set(KERNELS) or self.kernel in alternatives
                or len(set(alternatives)) != len(alternatives)):
            raise ValueError(f"bucket [{self.n_min}, {self.n_max}]: expected alternatives among {KERNELS}, each once "
                             f"and not the bucket's kernel {self.kernel!r}, got {alternatives!r}")
        if alternatives and self.measured_us is not None:
            raise ValueError(f"bucket [{self.n_min}, {self.n_max}]: expected no alternatives in a measured bucket (the "
                             f"measured check keeps the fastest kernel), got {alternatives!r}")
        object.__setattr__(self, "alternatives", alternatives)
        measured = (self.measured_us, self.measured_dense_us)
        if (measured[0] is None) != (measured[1] is None) or not all(
                v is None or (math.isfinite(v) and v > 0) for v in measured):
            raise ValueError(f"bucket [{self.n_min}, {self.n_max}]: expected both measured times (positive, finite) "
                             f"or neither, got {measured}")
        object.__setattr__(self, "items", _frozen(self.items, np.int32).reshape(-1, 3))
        object.__setattr__(self, "unit_ptr", _frozen(self.unit_ptr, np.int32))
        object.__setattr__(self, "unit_order", _frozen(self.unit_order, np.int32).reshape(2, -1))
        object.__setattr__(self, "unit_us", _frozen(self.unit_us, np.float64))

    @property
    def n_units(self) -> int:
        return int(self.unit_ptr.size - 1)

    @property
    def imbalance(self) -> float:
        """Max over mean of the units' predicted loads (1.0 is perfect)."""
        mean = float(self.unit_us.mean()) if self.unit_us.size else 0.0
        return float(self.unit_us.max() / mean) if mean > 0 else 1.0

    @property
    def speedup(self) -> float:
        """Predicted dense time over the time this bucket runs at (1.0 on fallback)."""
        return 1.0 if self.fallback else self.dense_us / max(self.predicted_us, 1e-9)

    def contains(self, n: int) -> bool:
        return self.n_min <= n <= self.n_max

    @property
    def measured(self) -> bool:
        return self.measured_us is not None

    def with_measurement(self, plan_us: float, dense_us: float, margin: float, *, kernel: str | None = None,
                         others: dict[str, float] | None = None) -> "BucketPlan":
        """This bucket with measured times recorded and the choice made from them: the plan runs
        only if it measured ``margin`` faster than the dense product (the prediction is replaced).
        ``kernel``: the kernel ``plan_us`` was measured on, the fastest of those timed (default the
        bucket's); ``others``: the other kernels timed, name to us (the reason lists them). The
        result has no alternatives left."""
        kernel = self.kernel if kernel is None else kernel
        fallback = plan_us * (1 + margin) >= dense_us
        why = f"measured {plan_us:.1f} us is not {margin:.0%} under dense {dense_us:.1f} us" if fallback else ""
        if others:
            why += ("; " if why else "") + f"the {KERNEL_NAMES[kernel]} kernel, fastest of those timed " \
                f"({plan_us:.1f} us; " + ", ".join(f"{KERNEL_NAMES[k]} {us:.1f} us" for k, us in
                                                   sorted(others.items(), key=lambda kv: kv[1])) + ")"
        return replace(self, fallback=bool(fallback), reason=why, measured_us=float(plan_us),
                       measured_dense_us=float(dense_us), kernel=kernel, alternatives=())


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything decided about one M x K weight (see the module docstring for the arrays)."""

    shape: tuple[int, int]
    tile_shape: tuple[int, int]
    dtype: str
    nan_policy: str
    kinds: np.ndarray
    swing: np.ndarray
    tile_ptr: np.ndarray
    tile_col: np.ndarray
    tile_kind: np.ndarray
    buckets: tuple[BucketPlan, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "tile_shape", tuple(int(v) for v in self.tile_shape))
        for name, dt in (("kinds", np.uint8), ("swing", bool), ("tile_ptr", np.int32), ("tile_col", np.int32), ("tile_kind", np.uint8)):
            object.__setattr__(self, name, _frozen(getattr(self, name), dt))
        object.__setattr__(self, "buckets", tuple(self.buckets))
        self.validate()

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.shape[0], self.shape[1], *self.tile_shape)

    def bucket_for(self, n: int) -> BucketPlan:
        for b in self.buckets:
            if b.contains(n):
                return b
        raise ValueError(f"n_tokens: expected 1..{self.buckets[-1].n_max}, got {n}")

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self.kinds.reshape(-1), minlength=len(TileKind))
        return {k.name: int(counts[k]) for k in TileKind}

    def with_buckets(self, buckets, **provenance) -> "Plan":
        """This plan with other bucket decisions (same token ranges and work lists: only the choice
        and the times may differ), ``provenance`` added."""
        buckets = tuple(buckets)
        same = len(buckets) == len(self.buckets) and all(
            (a.n_min, a.n_max, a.n_design, a.block_n) == (b.n_min, b.n_max, b.n_design, b.block_n)
            and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("items", "unit_ptr", "unit_order"))
            for a, b in zip(buckets, self.buckets))
        if not same:
            raise ValueError("with_buckets: expected the plan's own buckets with other choices or times, got other work lists")
        return replace(self, buckets=buckets, provenance={**self.provenance, **provenance})

    @property
    def fully_dense_fallback(self) -> bool:
        return all(b.fallback for b in self.buckets)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Structural invariants: shapes agree, every executed tile is listed once, every work item
        is a run inside one tile-row, and every (tile-row) output is covered by the items."""
        grid = self.grid
        ti, tj = grid.shape
        if self.kinds.shape != (ti, tj) or self.swing.shape != (ti, tj):
            raise ValueError(f"plan: expected kinds/swing of shape {(ti, tj)}, got {self.kinds.shape} / {self.swing.shape}")
        if self.nan_policy not in ("propagate", "ignore"):
            raise ValueError(f"nan_policy: expected 'propagate' or 'ignore', got {self.nan_policy!r}")
        if self.tile_ptr.shape != (ti + 1,) or self.tile_ptr[0] != 0 or np.any(np.diff(self.tile_ptr) < 0):
            raise ValueError(f"plan: expected tile_ptr of {ti + 1} non-decreasing offsets from 0")
        n_t = int(self.tile_ptr[-1])
        if self.tile_col.shape != (n_t,) or self.tile_kind.shape != (n_t,):
            raise ValueError(f"plan: expected {n_t} tile_col / tile_kind entries, got {self.tile_col.shape} / {self.tile_kind.shape}")
        if n_t and (self.tile_col.min() < 0 or self.tile_col.max() >= tj):
            raise ValueError(f"plan: expected tile columns in [0, {tj}), got [{self.tile_col.min()}, {self.tile_col.max()}]")
        rows = np.repeat(np.arange(ti), np.diff(self.tile_ptr))
        if n_t and not np.array_equal(self.kinds[rows, self.tile_col], self.tile_kind):
            raise ValueError("plan: expected tile_kind to agree with kinds")
        listed = np.zeros((ti, tj), dtype=np.int64)
        np.add.at(listed, (rows, self.tile_col), 1)
        nonempty = self.kinds != TileKind.EMPTY
        if np.any(listed[nonempty] != 1):
            raise ValueError("plan: expected every non-empty tile listed exactly once")
        if np.any(listed > 1):
            raise ValueError("plan: expected no tile listed twice")
        if not self.buckets:
            raise ValueError("plan: expected at least one bucket")
        prev = 0
        for b in self.buckets:
            if b.n_min != prev + 1 or b.n_max < b.n_min:
                raise ValueError(f"plan: expected buckets to cover token counts contiguously from 1, got [{b.n_min}, {b.n_max}] after {prev}")
            prev = b.n_max
            self._validate_bucket(b, ti, n_t)

    def _validate_bucket(self, b: BucketPlan, ti: int, n_t: int) -> None:
        where = f"bucket [{b.n_min}, {b.n_max}]"
        if b.block_n < 16 or b.block_n & (b.block_n - 1):
            raise ValueError(f"{where}: expected block_n a power of two >= 16, got {b.block_n}")
        u = b.n_units
        if u < 1 or b.unit_ptr[0] != 0 or np.any(np.diff(b.unit_ptr) < 0) or b.unit_ptr[-1] != len(b.items):
            raise ValueError(f"{where}: expected unit_ptr to be offsets 0..{len(b.items)}")
        if b.unit_order.shape != (2, u) or any(sorted(o.tolist()) != list(range(u)) for o in b.unit_order):
            raise ValueError(f"{where}: expected unit_order to hold two permutations of {u} units")
        if b.unit_us.shape != (u,):
            raise ValueError(f"{where}: expected unit_us of {u} entries")
        # the work list is checked in fallback buckets too: a forced or re-planned run would use it
        row, start, stop = b.items[:, 0], b.items[:, 1], b.items[:, 2]
        if np.any(row < 0) or np.any(row >= ti):
            raise ValueError(f"{where}: expected item rows in [0, {ti})")
        if np.any(start > stop) or np.any(start < self.tile_ptr[row]) or np.any(stop > self.tile_ptr[row + 1]):
            raise ValueError(f"{where}: expected every item inside its tile-row's run of tiles")
        covered = np.zeros(n_t + 1, dtype=np.int64)
        np.add.at(covered, start, 1)
        np.add.at(covered, stop, -1)
        if n_t and np.any(np.cumsum(covered)[:n_t] != 1):
            raise ValueError(f"{where}: expected every executed tile in exactly one work item")
        if not np.array_equal(np.unique(row), np.arange(ti)):
            raise ValueError(f"{where}: expected every tile-row to have at least one work item")

    # ------------------------------------------------------------------ files
    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"kinds": self.kinds, "swing": self.swing.astype(np.uint8), "tile_ptr": self.tile_ptr,
               "tile_col": self.tile_col, "tile_kind": self.tile_kind}
        for i, b in enumerate(self.buckets):
            for name in ("items", "unit_ptr", "unit_order", "unit_us"):
                out[f"bucket{i}.{name}"] = getattr(b, name)
        return out

    def to_header(self) -> dict:
        buckets = []
        for b in self.buckets:
            d = {f.name: getattr(b, f.name) for f in fields(b) if f.name not in ("items", "unit_ptr", "unit_order", "unit_us")}
            buckets.append({k: (bool(v) if isinstance(v, (bool, np.bool_)) else list(v) if isinstance(v, tuple) else v)
                            for k, v in d.items()})
        return {"format": PLAN_FORMAT, "shape": list(self.shape), "tile_shape": list(self.tile_shape), "dtype": self.dtype,
                "nan_policy": self.nan_policy, "buckets": buckets, "provenance": self.provenance}

    def save(self, path) -> Path:
        """One safetensors file: arrays as tensors, the rest as JSON in the header, with checksums."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        header = self.to_header()
        header["sha256"] = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in arrays.items()}
        header["header_sha256"] = _header_digest(header)
        save_file(arrays, str(path), metadata={"cross.plan": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path) -> "Plan":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {path}: not found")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for damaged files
            raise ValueError(f"plan file {path}: expected a safetensors file, got an unreadable one ({e})") from None
        if "cross.plan" not in meta:
            raise ValueError(f"plan file {path}: expected a 'cross.plan' header, got keys {sorted(meta)}")
        try:
            header = json.loads(meta["cross.plan"])
        except json.JSONDecodeError as e:
            raise ValueError(f"plan file {path}: expected a JSON 'cross.plan' header, got a parse error ({e}): the file is corrupted") from None
        if not isinstance(header, dict) or header.get("format") not in READABLE_PLAN_FORMATS:
            got = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise ValueError(f"plan file {path}: expected plan format {_readable()}, got {got!r}")
        # the array checksums alone leave the header's own fields (shape, dtype, buckets) unprotected
        if header.get("header_sha256") != _header_digest(header):
            raise ValueError(f"plan file {path}: checksum mismatch in the header: the file is corrupted")
        return cls.from_parts(header, arrays, source=str(path))

    @classmethod
    def from_parts(cls, header: dict, arrays: dict, source: str = "plan") -> "Plan":
        if header.get("format") not in READABLE_PLAN_FORMATS:
            raise ValueError(f"{source}: expected plan format {_readable()}, got {header.get('format')!r}")
        for k, digest in header.get("sha256", {}).items():
            if k not in arrays:
                raise ValueError(f"{source}: expected array {k!r}, got none")
            if hashlib.sha256(np.ascontiguousarray(arrays[k]).tobytes()).hexdigest() != digest:
                raise ValueError(f"{source}: checksum mismatch in {k!r}: the file is corrupted")
        buckets = []
        for i, bd in enumerate(header["buckets"]):
            buckets.append(BucketPlan(**bd, **{n: arrays[f"bucket{i}.{n}"] for n in ("items", "unit_ptr", "unit_order", "unit_us")}))
        return cls(tuple(header["shape"]), tuple(header["tile_shape"]), header["dtype"], header["nan_policy"],
                   arrays["kinds"], arrays["swing"].astype(bool), arrays["tile_ptr"], arrays["tile_col"],
                   arrays["tile_kind"], tuple(buckets), header.get("provenance", {}))

    def summary(self) -> str:
        counts = self.kind_counts()
        lines = [f"Plan {self.shape[0]}x{self.shape[1]} {self.dtype}, tiles {self.tile_shape[0]}x{self.tile_shape[1]}: "
                 + ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) + f" (swing {int(self.swing.sum())})"]
        for b in self.buckets:
            what = "dense fallback" if b.fallback else f"{b.kernel + ' kernel ' if b.kernel != 'tiles' else ''}{b.predicted_us:8.1f} us vs dense {b.dense_us:8.1f} us ({b.speedup:.2f}x), imbalance {b.imbalance:.3f}"
            if b.measured:
                what += f"; measured {b.measured_us:.1f} us vs dense {b.measured_dense_us:.1f} us"
            if b.alternatives:
                what += f"; the measured check also times the {', '.join(b.alternatives)} kernel(s)"
            lines.append(f"  N {b.n_min:>5}-{b.n_max:<5} block_n {b.block_n:>3}: {what}")
        return "\n".join(lines)
