"""PackedWeight: a weight in the formats its Plan chose, plus the tables the kernels walk.

Built once (``pack``), then only read: the runtime uploads it to the device and launches.

Tables, int32:
    tiles        [T, 4]     (tile column, value offset, meta offset, nnz) of every executed tile, in
                            the plan's order
    row_sections [ti, 5]    where the DENSE, BITMAP, INDEX and EMPTY runs of each tile-row start in
                            ``tiles``, then its end
Where a bucket's plan runs the row kernel, the weight is also kept in the row format
(``rows``, pack/rows.py); where one runs the slice kernel, in the slice format (``slices``,
pack/slices.py); where one runs the warpgroup 2:4 kernel, in its format (``wgmma24``,
pack/wgmma24.py). Where no bucket runs the tile kernel, ``without_tiles`` drops the tile
formats (``tiled``: None) and the row format is the weight's only copy; ``tiled_weight()`` rebuilds
them from it (saving, another plan's buckets).
Per bucket (PackedBucket; also for buckets that fall back to dense, so their plan can be forced):
    items        [W, 4]     (tile-row, start, stop, slot): slot -1 writes the output tile directly;
                            otherwise the item's fp32 partial goes to workspace slot ``slot`` and the
                            last of the tile-row's items to finish sums the slots in order
                            (deterministic, whatever the finishing order)
    row_parts    [ti, 2]    (first slot, number of items) of every tile-row
    unit_ptr     [U + 1], unit_order [2, U]  as in the Plan
    counters     [ti * max_token_tiles]  arrival counters of split tile-rows, zero between launches
                            (the last arrival resets its counter), so a launch needs no memset;
                            one launch per bucket at a time
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import check_weight, dtype_name
from ..partition.balance import SECTION_ORDER
from ..partition.plan import BucketPlan, Plan
from ..tiling import TileKind
from .formats import TiledWeight
from .rows import RowWeight
from .slices import SliceWeight
from .wgmma24 import Wgmma24Weight

_I32_MAX = 2**31 - 1


#: Token count one kernel launch covers at most (larger inputs are processed in chunks).
MAX_LAUNCH_TOKENS = 8192


@dataclass(frozen=True, eq=False)
class PackedBucket:
    plan: BucketPlan
    items: torch.Tensor
    row_parts: torch.Tensor
    unit_ptr: torch.Tensor
    unit_order: torch.Tensor
    n_slots: int
    counters: torch.Tensor

    @property
    def max_token_tiles(self) -> int:
        return -(-min(self.plan.n_max, MAX_LAUNCH_TOKENS) // self.plan.block_n)

    def to(self, device) -> "PackedBucket":
        return PackedBucket(self.plan, self.items.to(device), self.row_parts.to(device), self.unit_ptr.to(device),
                            self.unit_order.to(device), self.n_slots, torch.zeros_like(self.counters, device=device))


@dataclass(frozen=True, eq=False)
class PackedWeight:
    plan: Plan
    tiled: TiledWeight | None  # None: dropped (``without_tiles``), the row format holds the weight
    tiles: torch.Tensor
    row_sections: torch.Tensor
    buckets: tuple[PackedBucket, ...]
    max_sparse_nnz: int = 0  # largest nnz of a BITMAP/INDEX tile (sizes kernel buffers without a device sync)
    has_index: bool = False  # any INDEX tile (plain Python facts: cheap to check, and constant under torch.compile)
    has_dense: bool = False
    median_bitmap_nnz: int = -1  # median nnz of the BITMAP tiles (-1: none): picks the one-token CUDA build
    rows: RowWeight | None = None  # the row format, where a bucket's plan runs the row kernel
    slices: SliceWeight | None = None  # the slice format, where a bucket's plan runs the slice kernel
    wgmma24: Wgmma24Weight | None = None  # the 2:4 format, where a bucket's plan runs the warpgroup 2:4 kernel

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.shape

    @property
    def device(self) -> torch.device:
        return self.tiles.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tiled.dtype if self.tiled is not None else self.rows.dtype

    @property
    def nnz(self) -> int:
        return int(self.tiled.nnz.sum()) if self.tiled is not None else self.rows.nnz

    @property
    def dense_nbytes(self) -> int:
        m, k = self.shape
        return m * k * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Device bytes: the formats plus the kernel tables."""
        return sum(self.nbytes_by_format().values())

    def nbytes_by_format(self) -> dict[str, int]:
        """Device bytes of each format held, by the kernel that reads it (``KERNELS``: 'tiles', 'rows',
        'slices', 'wgmma24'), and of the kernel tables ('tables': the tile table, the row sections and
        the buckets' work lists); formats not held are left out. Sums to ``nbytes``."""
        out = {kernel: fmt.nbytes for kernel, fmt in (("tiles", self.tiled), ("rows", self.rows),
                                                      ("slices", self.slices), ("wgmma24", self.wgmma24))
               if fmt is not None}
        out["tables"] = self.tiles.numel() * 4 + self.row_sections.numel() * 4 + sum(
            4 * (b.items.numel() + b.row_parts.numel() + b.unit_ptr.numel() + b.unit_order.numel()) for b in self.buckets)
        return out

    def bucket_for(self, n: int) -> PackedBucket:
        for pb in self.buckets:
            if pb.plan.contains(n):
                return pb
        raise ValueError(f"n_tokens: expected 1..{self.plan.buckets[-1].n_max}, got {n}")

    def with_plan(self, plan: Plan, built: "PackedWeight | None" = None) -> "PackedWeight":
        """The same buffers under ``plan``: this weight's plan with other bucket choices
        (``Plan.with_buckets``), so no table changes; a format the plan runs and this weight lacks is
        built (a warpgroup 2:4 format in another layout than the plan's options name, in theirs).
        ``built``: a weight of the same tiles (an earlier ``with_plan`` of this one) whose formats are
        taken where this weight lacks them and the plan runs them, in place of building them again."""
        _check_same_work(self, plan)
        if built is not None:
            _check_same_work(self, built.plan)
        buckets = tuple(replace(pb, plan=bp) for pb, bp in zip(self.buckets, plan.buckets))
        tiled = self.tiled
        if tiled is None and any(b.kernel == "tiles" for b in plan.buckets):
            tiled = built.tiled if built is not None and built.tiled is not None else self.tiled_weight()
        source = _DenseOnce(self)
        layout = wgmma24_layout(plan)
        spare = {} if built is None else {"rows": built.rows, "slices": built.slices, "wgmma24": (
            built.wgmma24 if built.wgmma24 is not None and built.wgmma24.layout == layout else None)}

        def held_or_built(kernel, own, build):
            if own is not None:
                return own
            if spare.get(kernel) is not None and _runs(plan, kernel, False):
                return spare[kernel]
            return build(plan, source)

        rows = held_or_built("rows", self.rows, _rows_for)
        slices = held_or_built("slices", self.slices, _slices_for)
        own24 = self.wgmma24 if self.wgmma24 is not None and self.wgmma24.layout == layout else None
        wgmma24 = held_or_built("wgmma24", own24, _wgmma24_for)
        return replace(self, plan=plan, buckets=buckets, tiled=tiled, rows=rows, slices=slices, wgmma24=wgmma24)

    def tiled_weight(self) -> TiledWeight:
        """The tile formats: the ones held, or rebuilt from the row format where they were dropped."""
        if self.tiled is not None:
            return self.tiled
        return TiledWeight.from_dense(self.rows.to_dense(), self.plan.kinds, self.plan.tile_shape)

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense tensor (exact), from whichever format is held."""
        return self.tiled.to_dense() if self.tiled is not None else self.rows.to_dense()

    def without_tiles(self) -> "PackedWeight":
        """This weight without its tile formats, where no bucket needs them: every bucket's plan runs
        the row kernel, or falls back to a dense product the caller holds. The kernel tables stay
        (they are small); ``tiled_weight()`` rebuilds the formats. Raises unless the row format is held."""
        if self.rows is None:
            raise ValueError("without_tiles: expected a weight with the row format (the tiles are its only copy)")
        return replace(self, tiled=None)

    def without_rows(self) -> "PackedWeight":
        """This weight without its row format, where no bucket runs the row kernel (a near win the
        measured check did not take falls back). Raises unless the tile formats are held."""
        if self.tiled is None:
            raise ValueError("without_rows: expected a weight with the tile formats (the row format is its only copy)")
        return replace(self, rows=None)

    def without_slices(self) -> "PackedWeight":
        """This weight without its slice format, where no bucket runs the slice kernel (a candidate
        the measured check did not take falls back). The slice format is never the only copy."""
        return replace(self, slices=None)

    def without_wgmma24(self) -> "PackedWeight":
        """This weight without its warpgroup 2:4 format, where no bucket runs that kernel (a candidate
        the measured check did not take falls back). The format is never the only copy."""
        return replace(self, wgmma24=None)

    def to(self, device) -> "PackedWeight":
        return PackedWeight(self.plan, None if self.tiled is None else self.tiled.to(device), self.tiles.to(device),
                            self.row_sections.to(device), tuple(b.to(device) for b in self.buckets),
                            self.max_sparse_nnz, self.has_index, self.has_dense, self.median_bitmap_nnz,
                            None if self.rows is None else self.rows.to(device),
                            None if self.slices is None else self.slices.to(device),
                            None if self.wgmma24 is None else self.wgmma24.to(device))


def _pack_bucket(bp: BucketPlan, n_rows: int) -> PackedBucket:
    items = bp.items.astype(np.int64)
    rows = items[:, 0]
    nparts = np.bincount(rows, minlength=n_rows)
    split = nparts[rows] > 1
    # slots of one tile-row are consecutive, in item order
    order = np.lexsort((np.arange(len(items)), rows))
    slot = np.full(len(items), -1, dtype=np.int64)
    split_sorted = order[split[order]]
    slot[split_sorted] = np.arange(split_sorted.size)
    first = np.full(n_rows, -1, dtype=np.int64)
    if split_sorted.size:
        r = rows[split_sorted]
        first_idx = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        first[r[first_idx]] = slot[split_sorted[first_idx]]
    table = np.concatenate([items, slot[:, None]], axis=1).astype(np.int32)
    row_parts = np.stack([first, nparts], axis=1).astype(np.int32)
    as_t = lambda a: torch.from_numpy(np.array(a, dtype=np.int32))  # noqa: E731
    max_tt = -(-min(bp.n_max, MAX_LAUNCH_TOKENS) // bp.block_n)
    counters = torch.zeros(n_rows * max_tt, dtype=torch.int32)
    return PackedBucket(bp, as_t(table), as_t(row_parts), as_t(bp.unit_ptr), as_t(bp.unit_order), int(split_sorted.size), counters)


def _check_same_work(weight: PackedWeight, plan: Plan) -> None:
    """Raises unless ``plan`` is ``weight``'s plan with other bucket choices (the same tiles and work lists)."""
    if plan.shape != weight.plan.shape or not all(np.array_equal(getattr(plan, k), getattr(weight.plan, k))
                                                  for k in ("tile_ptr", "tile_col", "tile_kind")):
        raise ValueError("with_plan: expected this weight's plan with other bucket choices, got another layout")
    weight.plan.with_buckets(plan.buckets)  # raises unless the work lists are the same


def _runs(plan: Plan, kernel: str, falls_back: bool) -> bool:
    """Some bucket of the plan runs ``kernel``, or nearly wins with it and falls back until the
    measured check times it. ``falls_back``: the layer runs its fallback buckets as the dense
    product, so a fallback bucket the check has already timed (a near win it did not take) does not
    count."""
    from ..partition.planner import is_near_win

    return any(b.kernel == kernel and not (b.fallback and falls_back and not is_near_win(b)) for b in plan.buckets)


class _DenseOnce:
    """A weight's ``to_dense()``, computed at most once: the formats beside the tiles each start
    from it (``dense``: the dense weight where the caller has it, so nothing is decoded)."""

    def __init__(self, weight, dense: torch.Tensor | None = None):
        self._weight, self._dense = weight, dense

    def to_dense(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = self._weight.to_dense()
        return self._dense


def _rows_for(plan: Plan, weight: "TiledWeight | _DenseOnce", falls_back: bool = False) -> RowWeight | None:
    """The row format (from ``weight.to_dense()``) where a bucket runs the row kernel (``_runs``), else None."""
    return RowWeight.from_dense(weight.to_dense()) if _runs(plan, "rows", falls_back) else None


def _slices_for(plan: Plan, weight: "TiledWeight | PackedWeight | _DenseOnce", falls_back: bool = False) -> SliceWeight | None:
    """The slice format (from ``weight.to_dense()``) where a bucket runs the slice kernel (``_runs``), else
    None: elements where the plan chose them (its options' ``slice_format``), else pairs."""
    if not _runs(plan, "slices", falls_back):
        return None
    elements = plan.provenance.get("options", {}).get("slice_format") == "elements"
    return SliceWeight.from_dense(weight.to_dense(), elements=elements)


def wgmma24_layout(plan: Plan) -> str:
    """The layout of the plan's warpgroup 2:4 format (its options' ``wgmma_layout``): 'compressed', 'lone'
    (the compressed layout with lone halves) or 'slots' ('auto' is packed in slots until the measured check
    chooses, and plans made before it are slots)."""
    layout = plan.provenance.get("options", {}).get("wgmma_layout")
    return layout if layout in ("compressed", "lone") else "slots"


def _wgmma24_for(plan: Plan, weight: "TiledWeight | PackedWeight | _DenseOnce", falls_back: bool = False) -> Wgmma24Weight | None:
    """The warpgroup 2:4 format (from ``weight.to_dense()``) where a bucket runs that kernel (``_runs``),
    else None: in the layout of the plan's options (``wgmma24_layout``), packed by ``Wgmma24Weight.for_layout``."""
    if not _runs(plan, "wgmma24", falls_back):
        return None
    return Wgmma24Weight.for_layout(weight.to_dense(), wgmma24_layout(plan))


def pack(weight: torch.Tensor, plan: Plan) -> PackedWeight:
    """Store ``weight`` in the plan's formats and build the kernel tables (on the weight's device)."""
    check_weight(weight)
    if tuple(weight.shape) != plan.shape:
        raise ValueError(f"pack: expected a weight of shape {plan.shape} for this plan, got {tuple(weight.shape)}")
    nnz = plan.grid.tile_nnz(weight)
    if np.any((plan.kinds == TileKind.EMPTY) & (nnz > 0)):
        raise ValueError("pack: expected the weight the plan was made for; it has nonzeros in tiles the plan marks EMPTY")
    return pack_tiled(TiledWeight.from_dense(weight, plan.kinds, plan.tile_shape), plan, dense=weight)


def pack_tiled(tiled: TiledWeight, plan: Plan, falls_back: bool = False,
               dense: torch.Tensor | None = None) -> PackedWeight:
    """The kernel tables for a weight already stored in the plan's formats (on its device): the
    second half of ``pack``, and how a saved model is rebuilt without its dense weight.
    ``falls_back``: the layer will run its fallback buckets as the dense product (no row format is
    built for a measured bucket that falls back). ``dense``: the weight as a dense tensor, where the
    caller has it (the other formats start from it; else from the tiles, decoded once)."""
    grid = plan.grid
    if tiled.grid != grid:
        raise ValueError(f"pack: expected a tiled weight on the plan's grid {grid}, got {tiled.grid}")
    kinds = plan.kinds
    if not np.array_equal(tiled.kinds.cpu().numpy(), kinds):
        raise ValueError("pack: expected the tiled weight's tile kinds to be the plan's, got different ones")
    if tiled.values.numel() > _I32_MAX or tiled.meta.numel() > _I32_MAX:
        raise ValueError(f"pack: expected at most {_I32_MAX} stored elements (int32 offsets), got {tiled.values.numel()}")
    nnz = tiled.nnz.cpu().numpy()

    rows = np.repeat(np.arange(grid.shape[0]), np.diff(plan.tile_ptr))
    cols = plan.tile_col.astype(np.int64)
    voff = tiled.value_offset.cpu().numpy()[rows, cols]
    moff = tiled.meta_offset.cpu().numpy()[rows, cols]
    tiles = np.stack([cols, np.maximum(voff, 0), np.maximum(moff, 0), nnz[rows, cols]], axis=1).astype(np.int32)

    sections = np.zeros((grid.shape[0], len(SECTION_ORDER) + 1), dtype=np.int64)
    sections[:, 0] = plan.tile_ptr[:-1]
    for s, kind in enumerate(SECTION_ORDER):
        count = np.bincount(rows[plan.tile_kind == kind], minlength=grid.shape[0])
        sections[:, s + 1] = sections[:, s] + count
    assert np.array_equal(sections[:, -1], plan.tile_ptr[1:])

    dev = tiled.device
    source = _DenseOnce(tiled, dense)
    buckets = tuple(_pack_bucket(bp, grid.shape[0]).to(dev) for bp in plan.buckets)
    sparse = np.isin(kinds, (TileKind.BITMAP, TileKind.INDEX))
    max_sparse_nnz = int(nnz[sparse].max()) if sparse.any() else 0
    bitmap = kinds == TileKind.BITMAP
    median_bitmap_nnz = int(np.median(nnz[bitmap])) if bitmap.any() else -1
    return PackedWeight(plan, tiled, torch.from_numpy(tiles).to(dev),
                        torch.from_numpy(sections.astype(np.int32)).to(dev), buckets, max_sparse_nnz,
                        bool((kinds == TileKind.INDEX).any()), bool((kinds == TileKind.DENSE).any()), median_bitmap_nnz,
                        _rows_for(plan, source, falls_back), _slices_for(plan, source, falls_back),
                        _wgmma24_for(plan, source, falls_back))


def describe(pw: PackedWeight) -> str:
    return (f"PackedWeight {pw.shape[0]}x{pw.shape[1]} {dtype_name(pw.dtype)}: {pw.nbytes / 1e6:.2f} MB "
            f"({pw.nbytes / pw.dense_nbytes:.2f} of dense)")
