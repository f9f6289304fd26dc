"""CostModel: predict(kind, tile_shape, density, n_tokens) -> microseconds.

Measured tables (``cross profile``) take precedence where they cover a tile kind and shape; the
analytic roofline of ``roofline.py`` answers everything else. Tables are JSON files with their
provenance (device, driver, library versions), so a plan can say which model made it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .._checks import check_tile_shape
from ..tiling import TileKind
from .roofline import H100, GPUSpec, dense_matmul_us, row_matmul_us, tile_cost_us

TABLE_FORMAT = "cross.costmodel/1"


@dataclass(frozen=True)
class TileTable:
    """Measured amortised microseconds of one (kind, tile shape) over a density x token-count grid."""

    kind: TileKind
    tile_shape: tuple[int, int]
    density: np.ndarray  # [D], increasing, in [0, 1]
    n_tokens: np.ndarray  # [T], increasing, >= 1
    us: np.ndarray  # [T, D]

    def __post_init__(self):
        # normalised so that lookups by (kind, tuple of ints) find tables given as (int, list)
        object.__setattr__(self, "kind", TileKind(int(self.kind)))
        object.__setattr__(self, "tile_shape", check_tile_shape(self.tile_shape))
        d, n, us = (np.asarray(a, dtype=np.float64) for a in (self.density, self.n_tokens, self.us))
        if d.ndim != 1 or n.ndim != 1 or us.shape != (n.size, d.size):
            raise ValueError(f"TileTable {self.kind.name}{self.tile_shape}: expected us of shape (len(n_tokens), len(density)) = {(n.size, d.size)}, got {us.shape}")
        if d.size == 0 or n.size == 0:
            raise ValueError(f"TileTable {self.kind.name}{self.tile_shape}: expected at least one density and one token count, got {d.size} and {n.size}")
        if np.any(np.diff(d) <= 0) or np.any(np.diff(n) <= 0):
            raise ValueError(f"TileTable {self.kind.name}{self.tile_shape}: expected strictly increasing density and n_tokens")
        # log2(n_tokens) is interpolated: n_tokens < 1 would give NaN predictions
        if d[0] < 0 or d[-1] > 1 or n[0] < 1:
            raise ValueError(f"TileTable {self.kind.name}{self.tile_shape}: expected density in [0, 1] and n_tokens >= 1, got density [{d[0]}, {d[-1]}], n_tokens from {n[0]}")
        if not np.all(np.isfinite(us)) or np.any(us < 0):
            raise ValueError(f"TileTable {self.kind.name}{self.tile_shape}: expected finite non-negative times")
        for name, a in (("density", d), ("n_tokens", n), ("us", us)):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def predict(self, density, n_tokens: int) -> np.ndarray:
        """Linear in density, linear in log2(n_tokens) between measured token counts; clamped at the ends."""
        logn = np.log2(self.n_tokens)
        x = math.log2(max(1, n_tokens))
        i = int(np.clip(np.searchsorted(logn, x) - 1, 0, max(0, logn.size - 2)))
        rows = [np.interp(density, self.density, self.us[i])]
        if logn.size > 1:
            w = float(np.clip((x - logn[i]) / (logn[i + 1] - logn[i]), 0.0, 1.0))
            rows.append(np.interp(density, self.density, self.us[i + 1]))
            return (1 - w) * rows[0] + w * rows[1]
        return rows[0]

    def to_dict(self) -> dict:
        return {"kind": self.kind.name, "tile_shape": list(self.tile_shape), "density": self.density.tolist(),
                "n_tokens": self.n_tokens.tolist(), "us": self.us.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TileTable":
        try:
            kind = TileKind[d["kind"]]
        except (KeyError, TypeError):
            got = d.get("kind") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"TileTable: expected kind in {[k.name for k in TileKind]}, got {got!r}") from None
        return cls(kind, tuple(d["tile_shape"]), np.array(d["density"]), np.array(d["n_tokens"]), np.array(d["us"]))


@dataclass(frozen=True)
class CostModel:
    """Tile costs for planning. ``tables`` override the roofline where they exist."""

    spec: GPUSpec = H100
    tables: tuple[TileTable, ...] = ()
    provenance: dict = field(default_factory=dict)
    #: measured latency of one work item per token tile, (n_tokens, us) pairs with n_tokens
    #: increasing; empty: ``spec.item_us`` at every token count
    item_us_by_tokens: tuple = ()

    def __post_init__(self):
        pairs = tuple((float(n), float(us)) for n, us in self.item_us_by_tokens)
        n = [p[0] for p in pairs]
        if any(b <= a for a, b in zip(n, n[1:])) or any(v < 1 for v in n) or any(not math.isfinite(us) or us < 0 for _, us in pairs):
            raise ValueError(f"item_us_by_tokens: expected (n_tokens >= 1 increasing, finite us >= 0) pairs, got {pairs}")
        object.__setattr__(self, "item_us_by_tokens", pairs)

    @property
    def source(self) -> str:
        if self.tables:
            p = self.provenance
            return f"measured on {p.get('device', '?')} ({p.get('created', '?')})"
        return f"roofline ({self.spec.name})"

    def _table(self, kind: int, tile_shape) -> TileTable | None:
        for t in self.tables:
            if t.kind == kind and t.tile_shape == tuple(tile_shape):
                return t
        return None

    def predict(self, kind, tile_shape, density, n_tokens: int):
        """Amortised microseconds of one tile; ``density`` may be an array (returns an array)."""
        kind = TileKind(int(kind))
        table = self._table(kind, tile_shape)
        out = table.predict(density, n_tokens) if table is not None else tile_cost_us(self.spec, kind, tuple(tile_shape), density, n_tokens)
        return float(out) if np.ndim(out) == 0 else out

    def dense_us(self, rows: int, cols: int, n_tokens: int, element_size: int = 2) -> float:
        """Predicted time of the dense product with the same weight (the baseline to beat)."""
        return dense_matmul_us(self.spec, rows, cols, n_tokens, element_size)

    def row_us(self, rows: int, cols: int, entries: int, n_tokens: int) -> float:
        """Predicted time of the row kernel over ``entries`` row-format entries of an rows x cols weight."""
        return row_matmul_us(self.spec, rows, cols, entries, n_tokens)

    @property
    def launch_us(self) -> float:
        return self.spec.launch_us

    def item_latency(self, n_tokens: int) -> float:
        """Latency of one work item per token tile at ``n_tokens`` (linear in log2 n between the
        measured token counts, clamped at the ends)."""
        if not self.item_us_by_tokens:
            return self.spec.item_us
        n, us = zip(*self.item_us_by_tokens)
        return float(np.interp(math.log2(max(1, n_tokens)), np.log2(n), us))

    @property
    def n_programs(self) -> int:
        return self.spec.n_programs

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "provenance": dict(self.provenance), "spec": self.spec.to_dict(),
                "tables": [t.to_dict() for t in self.tables],
                "item_us_by_tokens": [list(p) for p in self.item_us_by_tokens]}

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"cost model: expected format {TABLE_FORMAT!r}, got {got!r}")
        known = {f.name for f in fields(GPUSpec)}
        spec_d = d.get("spec", {})
        unknown = set(spec_d) - known
        if unknown:
            raise ValueError(f"cost model spec: unexpected fields {sorted(unknown)}")
        spec = GPUSpec(**spec_d)
        tables = tuple(TileTable.from_dict(t) for t in d.get("tables", []))
        return cls(spec, tables, dict(d.get("provenance", {})), tuple(map(tuple, d.get("item_us_by_tokens", []))))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "CostModel":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"cost model file {path}: expected JSON, got a parse error ({e})") from None
        return cls.from_dict(d)


def default_cost_model() -> CostModel:
    """The model planning uses when none is given: the one ``cross profile`` measured on this GPU
    (same device, driver and library versions), else the roofline with H100 defaults."""
    from .profile import cached_model

    return cached_model() or CostModel()
