"""WeightProfile against direct numpy counting, the uniformity measure, and the heatmaps."""

import json
import math
import struct
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch

from cross.analyze import WeightProfile, profile_weight
from cross.analyze.heatmap import plot_profiles_grid, plot_tile_sparsity

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70)]
TILE_SHAPES = [(16, 16), (64, 64), (32, 128)]
DENSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_weight(shape, density, rng, dtype=torch.float32):
    """Uniform-random mask at `density`; kept values in +-[0.5, 1.5) so none rounds to zero."""
    values = (torch.rand(shape, generator=rng) + 0.5) * torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0)
    keep = torch.rand(shape, generator=rng) < density
    return (values * keep).to(dtype)


def numpy_tile_nnz(nz: np.ndarray, tm: int, tk: int) -> np.ndarray:
    m, k = nz.shape
    return np.array(
        [[nz[i : i + tm, j : j + tk].sum() for j in range(0, k, tk)] for i in range(0, m, tm)], dtype=np.int64
    )


def check_against_numpy(profile: WeightProfile, weight: torch.Tensor):
    nz = weight.float().numpy() != 0  # NaN != 0 is True, as in the profile
    assert profile.shape == tuple(weight.shape)
    assert profile.nnz == nz.sum()
    assert profile.density == pytest.approx(nz.mean())
    np.testing.assert_array_equal(profile.row_nnz, nz.sum(axis=1))
    np.testing.assert_array_equal(profile.col_nnz, nz.sum(axis=0))
    for (tm, tk), stats in profile.tiles.items():
        np.testing.assert_array_equal(stats.nnz, numpy_tile_nnz(nz, tm, tk))
        np.testing.assert_array_equal(stats.size, numpy_tile_nnz(np.ones_like(nz), tm, tk))
        assert stats.nnz.sum() == profile.nnz
        assert stats.size.sum() == weight.numel()
        assert np.all((stats.density >= 0) & (stats.density <= 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_counts_match_numpy(shape, density, dtype, rng):
    weight = random_weight(shape, density, rng, dtype)
    profile = profile_weight(weight, TILE_SHAPES)
    check_against_numpy(profile, weight)
    assert profile.dtype == str(dtype).removeprefix("torch.")
    assert list(profile.tiles) == TILE_SHAPES


def structured_weights(rng):
    """name -> (weight, what the profile must show)."""
    empty_rows = random_weight((100, 300), 0.5, rng)
    empty_rows[[0, 3, 99]] = 0
    one_tile = torch.zeros(130, 70)
    one_tile[64:128, :64] = 1.0
    nans = torch.zeros(17, 33)
    nans[0, 0], nans[5, 20], nans[16, 32] = float("nan"), float("inf"), float("-inf")
    return {
        "empty_rows": (empty_rows, dict(empty_rows=3)),
        "all_zero": (torch.zeros(130, 70), dict(nnz=0, empty_rows=130, empty_fraction=1.0, full_fraction=0.0)),
        "all_dense": (torch.ones(130, 70), dict(nnz=130 * 70, empty_rows=0, empty_fraction=0.0, full_fraction=1.0)),
        "one_dense_tile": (one_tile, dict(nnz=64 * 64, empty_rows=66, empty_fraction=5 / 6, full_fraction=1 / 6)),
        "nan_inf": (nans, dict(nnz=3, empty_rows=14)),
    }


@pytest.mark.parametrize("name", ["empty_rows", "all_zero", "all_dense", "one_dense_tile", "nan_inf"])
def test_structures(name, rng):
    weight, expected = structured_weights(rng)[name]
    profile = profile_weight(weight, [(64, 64)])
    check_against_numpy(profile, weight)
    stats = profile.tile((64, 64))
    assert profile.row_stats.empty == expected["empty_rows"]
    assert profile.row_stats.n_lines == weight.shape[0] and profile.row_stats.length == weight.shape[1]
    if "nnz" in expected:
        assert profile.nnz == expected["nnz"]
    if "empty_fraction" in expected:
        assert stats.empty_fraction == pytest.approx(expected["empty_fraction"])
        assert stats.full_fraction == pytest.approx(expected["full_fraction"])
    assert math.isfinite(stats.cv) and math.isfinite(stats.cv_ratio)


@pytest.mark.parametrize(
    "weight", [torch.zeros(130, 70), torch.ones(130, 70), torch.ones(17, 33)], ids=["zero", "dense", "one_tile"]
)
def test_forced_placement_is_uniform(weight):
    """Density 0, density 1 or a single tile leave nothing to vary: cv 0 and cv_ratio exactly 1."""
    stats = profile_weight(weight, [(64, 64)]).tile((64, 64))
    assert stats.cv == 0.0
    assert stats.uniform_cv == 0.0
    assert stats.cv_ratio == 1.0


@pytest.mark.parametrize("density", [0.1, 0.5, 0.99])
@pytest.mark.parametrize(
    "shape, tile_shape", [((2048, 1024), (64, 64)), ((1000, 1000), (16, 16)), ((2000, 1000), (32, 128))], ids=str
)
def test_cv_ratio_near_one_for_uniform_random(shape, tile_shape, density, rng):
    """Bounds are 6+ standard deviations of the estimate at these tile counts (500-4000 tiles)."""
    stats = profile_weight(random_weight(shape, density, rng), [tile_shape]).tile(tile_shape)
    assert 0.75 < stats.cv_ratio < 1.25


def test_cv_ratio_large_for_clustered(rng):
    """Tile rows alternating 10% and 90% density: the spread of Figure 2, far beyond chance."""
    rows = torch.arange(1024)[:, None]
    density = torch.where((rows // 64) % 2 == 0, 0.1, 0.9).expand(1024, 1024)
    weight = (torch.rand(1024, 1024, generator=rng) < density).float()
    stats = profile_weight(weight, [(64, 64)]).tile((64, 64))
    assert stats.cv == pytest.approx(0.8, rel=0.05)  # std 0.4 around mean 0.5
    assert stats.cv_ratio > 50
    one_tile = profile_weight(structured_weights(rng)["one_dense_tile"][0]).tile((64, 64))
    assert one_tile.cv_ratio > 10


def test_quantiles(rng):
    stats = profile_weight(random_weight((256, 256), 0.5, rng), [(16, 16)]).tile((16, 16))
    q = stats.quantiles((0.0, 0.5, 1.0))
    assert q[0] == stats.density.min() and q[2] == stats.density.max()
    assert q[0] <= q[1] <= q[2]
    with pytest.raises(ValueError, match=r"qs: expected quantiles in \[0, 1\], got \[1.5\]"):
        stats.quantiles([1.5])


def test_immutable(rng):
    profile = profile_weight(random_weight((100, 300), 0.5, rng), [(16, 16)])
    stats = profile.tile((16, 16))
    for array in (profile.row_nnz, profile.col_nnz, stats.nnz, stats.size, stats.density):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 7
    with pytest.raises(FrozenInstanceError):
        profile.nnz = 0
    with pytest.raises(TypeError):
        profile.tiles[(64, 64)] = stats


def test_summary_and_to_dict(rng):
    profile = profile_weight(random_weight((100, 300), 0.3, rng), [(16, 16), (64, 64)])
    text = profile.summary()
    assert len(text.splitlines()) == 3 + 2
    assert "100 x 300" in text and "tiles 16x16" in text and "tiles 64x64" in text

    small = json.loads(json.dumps(profile.to_dict()))
    assert small["nnz"] == profile.nnz and small["shape"] == [100, 300]
    assert "row_nnz" not in small and "nnz" not in small["tiles"][0]
    assert [t["tile_shape"] for t in small["tiles"]] == [[16, 16], [64, 64]]
    assert small["rows"]["max"] == profile.row_nnz.max()

    full = json.loads(json.dumps(profile.to_dict(arrays=True)))
    assert full["row_nnz"] == profile.row_nnz.tolist()
    assert full["tiles"][1]["nnz"] == profile.tile((64, 64)).nnz.tolist()


@pytest.mark.parametrize(
    "weight, tile_shapes, error, message",
    [
        (torch.zeros(4), [(16, 16)], ValueError, r"expected a 2-D tensor .* got 1-D"),
        (torch.zeros(2, 3, 4), [(16, 16)], ValueError, r"expected a 2-D tensor .* got 3-D"),
        (torch.zeros(4, 4, dtype=torch.int32), [(16, 16)], TypeError, r"expected dtype in .* got int32"),
        (np.zeros((4, 4)), [(16, 16)], TypeError, r"expected a torch.Tensor, got ndarray"),
        (torch.zeros(0, 4), [(16, 16)], ValueError, r"expected a non-empty tensor"),
        (torch.zeros(4, 4), [(48, 64)], ValueError, r"expected powers of two >= 16, got \(48, 64\)"),
        (torch.zeros(4, 4), [(8, 8)], ValueError, r"expected powers of two >= 16, got \(8, 8\)"),
        (torch.zeros(4, 4), (64, 64), TypeError, r"tile_shape: expected a pair of ints, got 64"),
        (torch.zeros(4, 4), [], ValueError, r"expected at least one tile shape, got none"),
    ],
    ids=["1d", "3d", "int", "numpy", "empty", "not_pow2", "too_small", "bare_pair", "no_tiles"],
)
def test_bad_inputs(weight, tile_shapes, error, message):
    with pytest.raises(error, match=message):
        profile_weight(weight, tile_shapes)


def test_unprofiled_tile_shape():
    with pytest.raises(KeyError, match=r"expected one of \[\(64, 64\)\], got \(32, 32\)"):
        profile_weight(torch.ones(4, 4)).tile((32, 32))


@pytest.mark.gpu
def test_profile_on_gpu_matches_cpu(rng):
    weight = random_weight((130, 70), 0.5, rng, torch.bfloat16)
    on_gpu = profile_weight(weight.cuda(), TILE_SHAPES)
    check_against_numpy(on_gpu, weight)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "shape, tile_shape", [((17, 33), (16, 16)), ((2752, 1024), (16, 16)), ((1024, 2752), (16, 16))],
    ids=["small", "172x64", "64x172"],
)
def test_heatmap_writes_png(shape, tile_shape, tmp_path, rng):
    profile = profile_weight(random_weight(shape, 0.3, rng), [tile_shape, (64, 64)])
    path = plot_tile_sparsity(profile, tmp_path / "heat.png", tile_shape=tile_shape, title="layer")
    assert path == tmp_path / "heat.png"
    width, height = png_size(path)
    assert 200 < width < 2000 and 200 < height < 2000
    from_stats = plot_tile_sparsity(profile.tile(tile_shape), tmp_path / "stats.png")
    png_size(from_stats)


def test_profiles_grid_writes_png(tmp_path, rng):
    profiles = {
        f"layer{i}.{name}": profile_weight(random_weight(shape, 0.3, rng), [(16, 16)])
        for i in range(2)
        for name, shape in [("q", (128, 128)), ("up", (344, 128)), ("down", (128, 344))]
    }
    path = plot_profiles_grid(profiles, tmp_path / "grid.png", (16, 16), ncols=4)
    width, height = png_size(path)
    assert width > height and width < 3000


def test_heatmap_errors(tmp_path, rng):
    profile = profile_weight(random_weight((64, 64), 0.3, rng), [(16, 16), (64, 64)])
    with pytest.raises(ValueError, match=r"tile_shape: expected one of \[\(16, 16\), \(64, 64\)\] .* got None"):
        plot_tile_sparsity(profile, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"tile_shape: expected \(16, 16\) .* got \(64, 64\)"):
        plot_tile_sparsity(profile.tile((16, 16)), tmp_path / "x.png", tile_shape=(64, 64))
    with pytest.raises(TypeError, match="expected a TileStats or WeightProfile, got Tensor"):
        plot_tile_sparsity(torch.ones(4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="named_profiles: expected at least one layer, got none"):
        plot_profiles_grid({}, tmp_path / "x.png", (16, 16))
