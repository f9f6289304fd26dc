"""TiledWeight: exact round trips per tile and per matrix, the byte count, alignment, validation."""

import dataclasses

import numpy as np
import pytest
import torch

from cross.pack.formats import ALIGN, META_ALIGN, TiledWeight
from cross.tiling import TileGrid, TileKind
from weights import STRUCTURES, random_weight, structured_weight

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70), (64, 64)]
TILE_SHAPES = [(16, 32), (32, 64), (64, 64), (128, 64)]
DENSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KIND_ASSIGNMENTS = ["dense", "bitmap", "index", "mix"]
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
TABLE_BYTES_PER_TILE = 1 + 4 + 8 + 8  # kinds uint8, nnz int32, value_offset and meta_offset int64


def kinds_for(assignment, nnz, rng):
    """Per-tile kinds: one kind everywhere or a random mix; EMPTY exactly where nnz == 0."""
    if assignment == "mix":
        draw = torch.randint(1, 4, nnz.shape, generator=rng).numpy()
        kinds = np.asarray([TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX], dtype=np.uint8)[draw - 1]
    else:
        kinds = np.full(nnz.shape, TileKind[assignment.upper()], dtype=np.uint8)
    kinds[nnz == 0] = TileKind.EMPTY
    return kinds


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


def round_up(x, m):
    return -(-x // m) * m


def expected_lengths(kinds, nnz, tile_elems):
    """(values elements, meta words) per tile, from the format description."""
    vlen = np.where(kinds == TileKind.DENSE, tile_elems, np.where(kinds == TileKind.EMPTY, 0, round_up(nnz, ALIGN)))
    words = tile_elems // 32
    mlen = np.where(kinds == TileKind.BITMAP, round_up(words + round_up(words, 2) // 2, META_ALIGN),
                    np.where(kinds == TileKind.INDEX, round_up(-(-nnz // 2), META_ALIGN), 0))
    return vlen, mlen


def check_tiled(tw: TiledWeight, weight: torch.Tensor, kinds: np.ndarray):
    """Round trip (bit-exact), every tile on its own, nnz, byte count and alignment."""
    grid = TileGrid.for_weight(weight, tw.grid.tile_shape)
    assert tw.grid == grid and tw.dtype == weight.dtype
    np.testing.assert_array_equal(tw.kinds.numpy(), kinds)
    nnz = grid.tile_nnz(weight)
    np.testing.assert_array_equal(tw.nnz.numpy(), nnz)

    dense = tw.to_dense()
    assert dense.shape == weight.shape and dense.dtype == weight.dtype
    assert torch.equal(bits(dense), bits(weight))

    padded = grid.tiles(weight)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            assert torch.equal(bits(tw.tile_dense(i, j)), bits(padded[i, j])), f"tile {(i, j)} kind {TileKind(int(kinds[i, j])).name}"

    tm, tk = grid.tile_shape
    vlen, mlen = expected_lengths(kinds.astype(np.int64), nnz, tm * tk)
    assert tw.values.numel() == vlen.sum() and tw.meta.numel() == mlen.sum()
    assert tw.nbytes == vlen.sum() * weight.element_size() + 4 * mlen.sum() + TABLE_BYTES_PER_TILE * kinds.size

    voff, moff = tw.value_offset.numpy(), tw.meta_offset.numpy()
    check_bitmap_meta(tw, padded, kinds, moff)
    assert np.all(voff[vlen > 0] % ALIGN == 0) and np.all(moff[mlen > 0] % META_ALIGN == 0)
    assert np.all(voff[kinds == TileKind.EMPTY] == -1)
    assert np.all(moff[(kinds == TileKind.EMPTY) | (kinds == TileKind.DENSE)] == -1)
    # runs do not overlap: sorted by offset, each ends before the next starts
    for off, length in ((voff, vlen), (moff, mlen)):
        used = length > 0
        o, n = off[used], length[used]
        order = np.argsort(o)
        assert np.all(o[order][:-1] + n[order][:-1] <= o[order][1:])


def check_bitmap_meta(tw, padded, kinds, moff):
    """A BITMAP tile's meta run: its bit words (bit b of word w = element 32 w + b of the row-major
    tile), then one int16 per word, the tile's nonzeros before that word."""
    tm, tk = tw.grid.tile_shape
    words = tm * tk // 32
    meta16 = tw.meta.view(torch.int16)
    for i, j in zip(*np.nonzero(kinds == TileKind.BITMAP)):
        nz = (padded[i, j] != 0).reshape(words, 32).to(torch.int64)
        expect = (nz << torch.arange(32)).sum(1)
        got = tw.meta[moff[i, j] : moff[i, j] + words].to(torch.int64) & 0xFFFFFFFF
        assert torch.equal(got, expect), f"bitmap words of tile {(i, j)}"
        before = torch.cumsum(nz.sum(1), 0) - nz.sum(1)
        start = 2 * (moff[i, j] + words)
        assert torch.equal(meta16[start : start + words].to(torch.int64), before), f"prefixes of tile {(i, j)}"


@pytest.mark.parametrize("assignment", KIND_ASSIGNMENTS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("tile_shape", TILE_SHAPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip(shape, tile_shape, density, assignment, rng):
    weight = random_weight(shape, density, rng)
    nnz = TileGrid.for_weight(weight, tile_shape).tile_nnz(weight)
    kinds = kinds_for(assignment, nnz, rng)
    check_tiled(TiledWeight.from_dense(weight, kinds, tile_shape), weight, kinds)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("assignment", KIND_ASSIGNMENTS)
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("tile_shape", [(32, 64), (128, 64)], ids=str)
def test_round_trip_structures(structure, tile_shape, assignment, dtype, rng):
    weight = structured_weight(structure, rng, dtype)
    nnz = TileGrid.for_weight(weight, tile_shape).tile_nnz(weight)
    kinds = kinds_for(assignment, nnz, rng)
    check_tiled(TiledWeight.from_dense(weight, kinds, tile_shape), weight, kinds)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", [TileKind.DENSE, TileKind.BITMAP, TileKind.INDEX], ids=lambda k: k.name)
def test_nan_payloads_and_signed_infinities_bit_exact(kind, dtype, rng):
    """Non-finite values are stored values: quiet/signalling NaN payloads and both infinities survive."""
    weight = random_weight((40, 70), 0.5, rng, dtype)
    specials = {torch.float32: [0x7FC00001, 0x7F800001, -0x00400001, 0x7F800000, -0x00800000],  # qNaN, sNaN, -qNaN, +inf, -inf
                torch.float16: [0x7E01, 0x7C01, -0x0201, 0x7C00, -0x0400],
                torch.bfloat16: [0x7FC1, 0x7F81, -0x0041, 0x7F80, -0x0080]}[dtype]
    flat = bits(weight).reshape(-1)
    positions = torch.randperm(weight.numel(), generator=rng)[: len(specials)]
    flat[positions] = torch.tensor(specials, dtype=flat.dtype)
    weight = flat.view(dtype).reshape(40, 70)
    assert weight.isnan().sum() == 3 and weight.isinf().sum() == 2
    nnz = TileGrid.for_weight(weight, (32, 32)).tile_nnz(weight)
    kinds = np.where(nnz > 0, kind, TileKind.EMPTY).astype(np.uint8)
    check_tiled(TiledWeight.from_dense(weight, kinds, (32, 32)), weight, kinds)


@pytest.mark.parametrize("density", [0.5, 0.9, 0.99, 1.0])
def test_index_positions_reach_int16_limit(density, rng):
    """The largest INDEX tile (32768 elements) uses in-tile position 32767, the int16 maximum."""
    weight = random_weight((128, 256), density, rng)
    weight[-1, -1] = 1.0
    kinds = np.array([[TileKind.INDEX]], dtype=np.uint8)
    check_tiled(TiledWeight.from_dense(weight, kinds, (128, 256)), weight, kinds)


@pytest.mark.parametrize("density", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tile_shape", [(32, 64), (64, 64), (128, 64)], ids=str)
def test_bitmap_bytes(tile_shape, density, rng):
    """A bf16 BITMAP weight costs n/8 bytes of bits, n/16 of int16 per-word prefixes and 2 bytes
    per nonzero (+ per-tile padding to 16 bytes)."""
    weight = random_weight((256, 256), density, rng, torch.bfloat16)
    grid = TileGrid.for_weight(weight, tile_shape)
    kinds = np.full(grid.shape, TileKind.BITMAP, dtype=np.uint8)
    tw = TiledWeight.from_dense(weight, kinds, tile_shape)
    n, nnz, tiles = weight.numel(), int((weight != 0).sum()), kinds.size
    payload = tw.nbytes - TABLE_BYTES_PER_TILE * tiles
    bits_and_prefixes = n / 8 + n / 16
    assert bits_and_prefixes + 2 * nnz <= payload <= bits_and_prefixes + 2 * nnz + 2 * (ALIGN - 1) * tiles
    if density <= 0.8:  # break-even: 3/16 + 2 d = 2 bytes per element at d ~ 0.9
        assert tw.nbytes < tw.dense_nbytes
    if density == 1.0:
        assert tw.nbytes > tw.dense_nbytes


@pytest.mark.parametrize("kind", [TileKind.BITMAP, TileKind.INDEX], ids=lambda k: k.name)
def test_sparse_kinds_on_all_zero_tiles(kind, rng):
    """BITMAP / INDEX may be chosen for a tile without nonzeros (it then stores no values)."""
    weight = random_weight((64, 128), 0.5, rng)
    weight[:, 64:] = 0
    kinds = np.array([[kind, kind]], dtype=np.uint8)
    tw = TiledWeight.from_dense(weight, kinds, (64, 64))
    check_tiled(tw, weight, kinds)
    assert tw.nnz[0, 1] == 0


def test_kind_counts_and_device_move(rng):
    weight = structured_weight("one_dense_tile", rng)
    nnz = TileGrid.for_weight(weight, (64, 64)).tile_nnz(weight)
    kinds = kinds_for("bitmap", nnz, rng)
    tw = TiledWeight.from_dense(weight, kinds, (64, 64))
    assert tw.kind_counts() == {"EMPTY": 5, "DENSE": 0, "BITMAP": 1, "INDEX": 0}
    moved = tw.to("cpu")
    assert torch.equal(moved.to_dense(), weight) and moved.nbytes == tw.nbytes


# ---------------------------------------------------------------------------- validation
def _good(rng):
    weight = random_weight((64, 128), 0.5, rng)
    weight[:, 64:] = 0
    return weight, np.array([[TileKind.BITMAP, TileKind.EMPTY]], dtype=np.uint8)


FROM_DENSE_ERRORS = {
    "weight_1d": (lambda w, k: (w[0], k, (64, 64)), ValueError, "expected a 2-D tensor"),
    "weight_3d": (lambda w, k: (w[None], k, (64, 64)), ValueError, "expected a 2-D tensor"),
    "weight_int": (lambda w, k: (w.to(torch.int32), k, (64, 64)), TypeError, r"expected dtype in \(float32, float16, bfloat16\), got int32"),
    "weight_not_tensor": (lambda w, k: (w.numpy(), k, (64, 64)), TypeError, "expected a torch.Tensor, got ndarray"),
    "kinds_shape": (lambda w, k: (w, k.T, (64, 64)), ValueError, r"kinds: expected shape \(1, 2\) .* got \(2, 1\)"),
    "kinds_value": (lambda w, k: (w, np.full_like(k, 7), (64, 64)), ValueError, "kinds: expected TileKind values 0..3, got 7"),
    "empty_with_nonzeros": (lambda w, k: (w, np.zeros_like(k), (64, 64)), ValueError, r"tile \(0, 0\) is marked EMPTY: expected 0 nonzeros, got \d+"),
    "index_tile_too_large": (lambda w, k: (torch.ones(256, 256), np.full((1, 1), TileKind.INDEX), (256, 256)), ValueError, "INDEX tiles: expected at most 32768 elements per tile"),
    "tile_not_power_of_two": (lambda w, k: (w, k, (48, 64)), ValueError, r"expected powers of two >= 16, got \(48, 64\)"),
    "tile_too_narrow_for_bitmap_words": (lambda w, k: (w, np.ones((4, 8)), (16, 16)), ValueError, "expected tile columns a multiple of 32"),
}


@pytest.mark.parametrize("case", list(FROM_DENSE_ERRORS))
def test_from_dense_errors(case, rng):
    build, exc, match = FROM_DENSE_ERRORS[case]
    with pytest.raises(exc, match=match):
        TiledWeight.from_dense(*build(*_good(rng)))


def _corrupt(tw: TiledWeight, name: str):
    """A copy of tw with one field damaged."""
    voff, moff = tw.value_offset.clone(), tw.meta_offset.clone()
    if name == "value_offset_past_end":
        voff[0, 0] = tw.values.numel() - ALIGN
        return dict(value_offset=voff)
    if name == "value_offset_negative":
        voff[0, 0] = -8
        return dict(value_offset=voff)
    if name == "value_offset_misaligned":
        voff[0, 0] = 3
        return dict(value_offset=voff, values=torch.cat([tw.values, tw.values.new_zeros(8)]))
    if name == "meta_offset_past_end":
        moff[0, 0] = tw.meta.numel()
        return dict(meta_offset=moff)
    if name == "meta_offset_misaligned":
        moff[0, 0] = 1
        return dict(meta_offset=moff, meta=torch.cat([tw.meta, tw.meta.new_zeros(4)]))
    if name == "values_int_dtype":
        return dict(values=tw.values.to(torch.int32))
    if name == "values_2d":
        return dict(values=tw.values[None])
    if name == "meta_int64":
        return dict(meta=tw.meta.to(torch.int64))
    if name == "offset_int32":
        return dict(value_offset=voff.to(torch.int32))
    if name == "nnz_int64":
        return dict(nnz=tw.nnz.to(torch.int64))
    if name == "kinds_wrong_shape":
        return dict(kinds=tw.kinds.reshape(2, 1))
    if name == "kinds_out_of_range":
        k = tw.kinds.clone()
        k[0, 0] = 9
        return dict(kinds=k)
    if name == "nnz_above_tile_size":
        n = tw.nnz.clone()
        n[0, 0] = 64 * 64 + 1
        return dict(nnz=n)
    if name == "empty_with_nnz":
        n = tw.nnz.clone()
        n[0, 1] = 3
        return dict(nnz=n)
    if name == "kinds_as_list":
        return dict(kinds=tw.kinds.tolist())
    raise ValueError(name)


CORRUPTIONS = {
    "value_offset_past_end": (ValueError, "value_offset: expected every tile's run inside the buffer"),
    "value_offset_negative": (ValueError, "value_offset: expected every tile's run inside the buffer"),
    "value_offset_misaligned": (ValueError, "value_offset: expected multiples of 8"),
    "meta_offset_past_end": (ValueError, "meta_offset: expected every tile's run inside the buffer"),
    "meta_offset_misaligned": (ValueError, "meta_offset: expected multiples of 4"),
    "values_int_dtype": (ValueError, "values: expected a 1-D float tensor, got int32"),
    "values_2d": (ValueError, "values: expected a 1-D float tensor"),
    "meta_int64": (ValueError, "meta: expected a 1-D int32 tensor, got int64"),
    "offset_int32": (ValueError, r"value_offset: expected int64 \(1, 2\), got int32 \(1, 2\)"),
    "nnz_int64": (ValueError, "nnz: expected int32"),
    "kinds_wrong_shape": (ValueError, r"kinds: expected uint8 \(1, 2\), got uint8 \(2, 1\)"),
    "kinds_out_of_range": (ValueError, "kinds: expected TileKind values, got 9"),
    "nnz_above_tile_size": (ValueError, "nnz: expected 0 <= nnz <= elements of the tile"),
    "empty_with_nnz": (ValueError, "EMPTY tiles: expected nnz == 0"),
    "kinds_as_list": (TypeError, "kinds: expected a torch.Tensor, got list"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupted_tiled_weight_rejected_at_construction(case, rng):
    tw = TiledWeight.from_dense(*_good(rng), (64, 64))
    exc, match = CORRUPTIONS[case]
    with pytest.raises(exc, match=match):
        dataclasses.replace(tw, **_corrupt(tw, case))
