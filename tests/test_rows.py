"""The row format and the row kernel (one to 16 tokens).

On the CPU: the format round-trips exactly, its reference matches the fp64 dense product
(non-finite inputs included), the planner gives one-token buckets the row kernel only where it
should, plans and saved models carry the choice, and the kernel source compiles (with nvcc). With a
GPU (`-m gpu`): the kernel against the fp64 dense product over shapes, densities, row structures,
dtypes and non-finite inputs, outputs poisoned with NaN before every launch.
"""

import re
import shutil
import subprocess
from importlib import resources

import pytest
import torch

import cross
from cross.costmodel.roofline import ROW_MAX_K, row_kernel_fits
from cross.pack import pack
from cross.pack.rows import GROUP, MAX_COLS, SCALE_BIT, RowWeight, rows_reference
from cross.partition import make_plan
from cross.runtime.dispatch import execute

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}


def make_weight(m, k, density, structure, dtype, gen):
    w = torch.randn(m, k, generator=gen) * (torch.rand(m, k, generator=gen) < density)
    if structure == "uneven":  # empty rows, full rows, and rows of every length between
        w[::3] = 0
        w[1::7] = torch.randn(len(range(1, m, 7)), k, generator=gen)
        keep = torch.rand(m, 1, generator=gen) * k > torch.arange(k)[None, :]
        w[2::5] *= keep[2::5]
    return torch.where(w == 0, 0.0, w).to(dtype)  # no -0.0: zeros are not stored, so they come back as +0


def check(x, w, bias, y):
    ref = x.double() @ w.double().T
    if bias is not None:
        ref += bias.double()
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), "NaN where the dense product has none, or none where it has"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(y), inf) and torch.equal(y.double()[inf], ref[inf]), "Inf where the dense product has none"
    fin = torch.isfinite(ref)
    tol = TOL[x.dtype]
    scale = max(ref[fin].abs().max().item() if fin.any() else 0.0, 1e-3)
    torch.testing.assert_close(y.double()[fin], ref[fin], rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------------------------------- format
def units_of(rows):
    """Per unit of a RowWeight: its row, columns [GROUP], values [GROUP] (bits), scale's power."""
    r, cols, _ = rows.entries()
    word = rows.meta.view(-1, 2)[:, 0].long() & 0xFFFFFFFF
    return r.view(-1, GROUP)[:, 0], cols.view(-1, GROUP), rows.values.view(-1, GROUP), (word >> SCALE_BIT) & 7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
@pytest.mark.parametrize("classes", [1, 8, 16])
def test_round_trip_is_exact(dtype, density, classes):
    gen = torch.Generator().manual_seed(1)
    w = make_weight(67, 203, density, "uneven", dtype, gen)
    w[5, 7] = float("nan")  # NaN and Inf are stored values
    w[6, 0] = float("-inf")
    rows = RowWeight.from_dense(w, classes)
    assert torch.equal(rows.to_dense().view(torch.int16), w.view(torch.int16))
    assert rows.nnz == int((w != 0).sum()) == int((rows.values != 0).sum())
    assert rows.meta.numel() * 4 == rows.values.numel() and rows.nbytes == 3 * rows.n_entries + 4 * (67 + 1)
    lengths = torch.diff(rows.row_ptr.long())
    assert torch.all(lengths % GROUP == 0)
    r, cols, values = rows.entries()
    assert torch.all((cols >= 0) & (cols < w.shape[1]))
    # a unit's columns ascend (its stored weights strictly), all of one class where its scale is the
    # classes'; runs end fewer than GROUP entries after their last stored weight (padding)
    u_row, u_cols, u_vals, u_shift = units_of(rows)
    assert torch.all(torch.diff(u_cols, dim=1) >= 0)
    both = (u_vals[:, 1:] != 0) & (u_vals[:, :-1] != 0)
    assert torch.all(torch.diff(u_cols, dim=1)[both] > 0)
    shift = classes.bit_length() - 1
    assert set(u_shift.tolist()) <= {0, shift}
    of_class = u_shift == shift
    assert torch.all(u_cols[of_class] % classes == u_cols[of_class][:, :1] % classes)
    stored = rows.values != 0
    last_real = torch.zeros(67, dtype=torch.int64).scatter_reduce_(0, r[stored], torch.nonzero(stored)[:, 0], "amax",
                                                                   include_self=False)
    tail = rows.row_ptr[1:].long() - 1 - last_real
    has = lengths > 0
    assert torch.all(tail[has] < GROUP) and torch.all(tail[has] >= 0)


@pytest.mark.parametrize("classes", [8, 16])
def test_runs_take_the_classes_in_turns(classes):
    """Unit i of a run holds class i mod ``classes`` while every class has units left (the row kernel's
    lane i mod 32 then reads X without bank conflicts); the classes' units come before the rest."""
    gen = torch.Generator().manual_seed(2)
    w = make_weight(40, 4096, 0.3, "uniform", torch.bfloat16, gen)
    rows = RowWeight.from_dense(w, classes)
    u_row, u_cols, _, u_shift = units_of(rows)
    shift = classes.bit_length() - 1
    for row in range(40):
        mine = u_row == row
        cls = u_cols[mine][:, 0] % classes
        is_class = u_shift[mine] == shift
        n = int(is_class.sum())
        assert torch.all(is_class[:n]) and not torch.any(is_class[n:])  # class units first
        turns = min(int((cls[:n] == c).sum()) for c in range(classes))
        assert turns >= 2  # ~46 units of 8 per class at this density: the check below has work
        assert torch.equal(cls[:turns * classes], torch.arange(turns * classes) % classes)
        # a class's units take its nonzeros by column, 8 at a time
        for c in range(classes):
            own = u_cols[mine][:n][cls[:n] == c].reshape(-1)
            assert torch.all(torch.diff(own) >= 0)


def test_class_units_bridge_in_steps_of_the_classes():
    """A class's steps are counted in multiples of 16 columns: one longer than 63 of them is bridged;
    what is left of a class after its units of 8 goes to the rest, by column, at scale 1."""
    w = torch.zeros(1, 2048, dtype=torch.bfloat16)
    q = [0, 1, 2, 70, 71, 72, 73, 127]  # class 3: q 2 -> 70 needs a bridge at q = 65
    w[0, [3 + 16 * v for v in q]] = torch.arange(1, 9, dtype=torch.bfloat16)
    rows = RowWeight.from_dense(w, 16)
    assert torch.equal(rows.to_dense(), w)
    u_row, u_cols, u_vals, u_shift = units_of(rows)
    assert u_shift.tolist() == [4, 0]
    assert u_cols[0].tolist() == [3 + 16 * v for v in (0, 1, 2, 65, 70, 71, 72, 73)]
    assert u_vals[0, 3] == 0 and u_cols[1].tolist() == [3 + 16 * 127] * GROUP
    assert rows.row_ptr.tolist() == [0, 16]


def test_classes_must_be_a_power_of_two():
    w = torch.ones(2, 16, dtype=torch.bfloat16)
    for bad in (0, 3, 256, 2.0, True):
        with pytest.raises(ValueError, match="power of two"):
            RowWeight.from_dense(w, bad)


def test_layout_is_the_kernels():
    """values: the weight's bits; per 8 entries a 64-bit word: first column in bits 0-15, 6-bit steps
    from bit 16, 22, then 32, 38, ..., 56 (the high int32's bits 0, 6, ..., 24), as row_gemv.cu reads it;
    a step over 63 columns bridged by value-0 entries, padding repeats the last column."""
    w = torch.zeros(1, 160, dtype=torch.bfloat16)
    w[0, 3], w[0, 9], w[0, 100] = -1.5, 2.0, 1.0  # 9 -> 100: one bridge, at 72
    rows = RowWeight.from_dense(w)
    assert [v & 0xFFFF for v in rows.values.tolist()] == [0xBFC0, 0x4000, 0, 0x3F80, 0, 0, 0, 0]
    lo, hi = (v & 0xFFFFFFFF for v in rows.meta.tolist())
    assert lo == 3 | 6 << 16 | 63 << 22 and hi == 28
    assert rows.row_ptr.tolist() == [0, 8] and rows.entries()[1].tolist() == [3, 9, 72, 100, 100, 100, 100, 100]


@pytest.mark.parametrize("gap", [1, 62, 63, 64, 126, 127, 128, 1000])
def test_bridges_cover_every_step(gap):
    w = torch.zeros(2, 2048, dtype=torch.float16)
    w[0, 5], w[0, 5 + gap] = 1.0, -2.0
    w[1, 2047] = 3.0  # a first column needs no bridge
    rows = RowWeight.from_dense(w)
    assert torch.equal(rows.to_dense(), w)
    row0 = 2 + (gap - 1) // 63  # two nonzeros and the bridges between them
    assert rows.row_ptr.tolist() == [0, -(-row0 // GROUP) * GROUP, -(-row0 // GROUP) * GROUP + GROUP]


def test_widest_rows():
    w = torch.zeros(2, MAX_COLS, dtype=torch.bfloat16)
    w[0, 0], w[0, MAX_COLS - 1], w[1, MAX_COLS - 1] = 1.0, 2.0, -1.0
    rows = RowWeight.from_dense(w)
    assert torch.equal(rows.to_dense().view(torch.int16), w.view(torch.int16))


def test_refuses_what_the_format_cannot_hold():
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        RowWeight.from_dense(torch.zeros(4, 8))
    with pytest.raises(ValueError, match=f"at most {MAX_COLS} columns"):
        RowWeight.from_dense(torch.zeros(1, MAX_COLS + 1, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("bad", ["none", "inf", "nan", "covered_inf"])
def test_reference_is_the_dense_product(dtype, bad):
    gen = torch.Generator().manual_seed(2)
    w = make_weight(50, 96, 0.2, "uneven", dtype, gen)
    x = torch.randn(3, 96, generator=gen).to(dtype)
    bias = torch.randn(50, generator=gen).to(dtype)
    if bad == "inf":
        x[0, 5] = float("inf")
    elif bad == "nan":
        x[1, 40] = float("nan")
    elif bad == "covered_inf":  # rows with a nonzero at the Inf's column stay finite or Inf, the others NaN
        x[2, 11] = float("-inf")
        w[:10, 11] = 1.0
    y = rows_reference(x, RowWeight.from_dense(w), bias)
    check(x, w, bias, y)
    if bad == "covered_inf":
        assert torch.isinf(y[2, :10]).all()


def test_reference_ignores_non_finite_through_zeros_when_asked():
    w = torch.zeros(2, 8, dtype=torch.bfloat16)
    w[0, 1] = 1.0
    x = torch.zeros(1, 8, dtype=torch.bfloat16)
    x[0, 4] = float("inf")
    assert torch.isnan(rows_reference(x, RowWeight.from_dense(w))).all()
    assert torch.equal(rows_reference(x, RowWeight.from_dense(w), propagate=False), torch.zeros(1, 2, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------- planner
def _sparse(m, k, sparsity, dtype=torch.bfloat16, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return make_weight(m, k, 1 - sparsity, "uniform", dtype, gen)


def test_small_buckets_take_the_row_kernel_when_very_sparse():
    plan = make_plan(_sparse(2048, 1024, 0.95))
    spans = [(b.n_min, b.n_max, b.kernel, b.fallback) for b in plan.buckets[:3]]
    assert spans == [(1, 1, "rows", False), (2, 2, "rows", False), (3, 4, "rows", False)]
    assert plan.buckets[0].predicted_us <= plan.buckets[1].predicted_us < plan.buckets[2].predicted_us
    assert plan.buckets[3].n_max == 8 and plan.buckets[3].kernel == "rows"  # 5-8 tokens: one pass at 1024 columns
    from cross.costmodel.roofline import ROW_MAX_TOKENS

    # past 16 tokens: the tiles or the dense product, never the row kernel
    assert all(b.kernel == "tiles" for b in plan.buckets if b.n_min > ROW_MAX_TOKENS)
    assert "rows kernel" in plan.summary()


def test_row_cost_grows_with_tokens_and_passes():
    from cross.costmodel.roofline import H100, row_matmul_us

    one, two, three, eight, sixteen = (row_matmul_us(H100, 4096, 4096, 2_000_000, n) for n in (1, 2, 3, 8, 16))
    assert one == two < three < eight < sixteen  # two tokens ride one 32-bit load of X per column
    wide = row_matmul_us(H100, 4096, 16384, 2_000_000, 8)  # 16384 columns: two passes of 4 tokens
    assert wide > row_matmul_us(H100, 4096, 16384, 2_000_000, 4) + (one - H100.dense_launch_us) * 0.99


def test_passes_fit_shared_memory():
    from cross.costmodel.roofline import ROW_LAUNCH, SM_SHARED_BYTES, row_passes, row_smem

    for k in (8, 4096, 11008, 14464, 14528, 16384):
        for n in (1, 2, 3, 5, 8, 9, 16, 33):
            passes = row_passes(n, k)
            assert [p[0] for p in passes] == list(range(0, n, passes[0][1]))  # contiguous, from 0
            assert sum(p[1] for p in passes) == n
            for _, count, nt in passes:
                assert count <= nt and nt in (1, 2, 4, 8)
                assert nt == 1 or ROW_LAUNCH[nt][1] * (row_smem(k, nt) + 1024) <= SM_SHARED_BYTES
    # 4 and 8 tokens in one block of X per SM: one pass of 8 up to ~14 K columns
    assert row_passes(16, 4096)[0][2] == 8 and row_passes(16, 11008)[0][2] == 8 and row_passes(3, 4096) == [(0, 3, 4)]
    assert row_passes(8, 16384) == [(0, 4, 4), (4, 4, 4)]


def test_row_heads_cover_every_row_once():
    from cross.kernels.launch import ROW_COST_ENTRIES, row_blocks, row_heads

    gen = torch.Generator().manual_seed(7)
    for w in (_sparse(1000, 512, 0.9), make_weight(777, 256, 0.3, "uneven", torch.bfloat16, gen),
              torch.zeros(3000, 64, dtype=torch.bfloat16).index_put_((torch.tensor([0]), torch.tensor([0])),
                                                                     torch.tensor(1.0, dtype=torch.bfloat16))):
        rw = RowWeight.from_dense(w)
        m = w.shape[0]
        for blocks, warps in ((7, 4), (264, 16), (132, 32), (5000, 16)):
            heads = row_heads(rw.row_ptr, blocks, warps).view(blocks, warps, 4).long()
            r0, r1 = heads[:, 0, 0], heads[:, 0, 1]
            assert torch.equal(heads[..., 0], r0[:, None].expand(-1, warps)) and int(r0[0]) == 0 and int(r1[-1]) == m
            assert torch.equal(r0[1:], r1[:-1]) and bool((r1 >= r0).all())  # contiguous, in order
            row = r0[:, None] + torch.arange(warps)
            has = row < r1[:, None]
            ptr = rw.row_ptr.long()
            assert torch.equal(heads[..., 2][has], ptr[row[has]] >> 3) and torch.equal(heads[..., 3][has], ptr[row[has] + 1] >> 3)
            assert not heads[..., 2:][~has].any()
            # balanced by entries plus a cost per row: no block far over its share
            cost = (ptr[r1] - ptr[r0]) + ROW_COST_ENTRIES * (r1 - r0)
            share = (int(ptr[-1]) + ROW_COST_ENTRIES * m) / blocks
            most = int(torch.diff(ptr).max()) + ROW_COST_ENTRIES  # one row more than its share at worst
            assert int(cost.max()) <= share + most
        assert torch.equal(row_blocks(rw.row_ptr, 1), torch.tensor([0, m]))
    # one nonzero in 3000 rows: the rows are spread (a block of them all took 400 us on an H200)
    single = row_blocks(RowWeight.from_dense(w).row_ptr, 264)
    assert int(torch.diff(single).max()) <= 3000 // 264 + 2


def test_row_kernel_not_chosen_where_it_cannot_run_or_is_off():
    w = _sparse(2048, 1024, 0.95)
    assert make_plan(w, row_kernel=False).buckets[0].kernel == "tiles"
    assert make_plan(w.float()).buckets[0].kernel == "tiles"  # fp32: no 16-bit entries
    assert not row_kernel_fits(64, ROW_MAX_K + 8, "bfloat16") and not row_kernel_fits(64, 1020, "bfloat16")
    assert make_plan(nnz=None, shape=(2048, 1020), weight=_sparse(2048, 1020, 0.95)).buckets[0].kernel == "tiles"


def test_dense_weight_does_not_get_the_row_format():
    plan = make_plan(_sparse(512, 512, 0.0))
    assert all(b.kernel == "tiles" for b in plan.buckets)
    assert pack(_sparse(512, 512, 0.0), plan).rows is None


def test_packed_weight_carries_rows_and_runs_them():
    w = _sparse(1024, 512, 0.95)
    plan = make_plan(w)
    packed = pack(w, plan)
    assert packed.rows is not None and packed.nbytes > packed.tiled.nbytes + packed.rows.nbytes - 1
    x = torch.randn(1, 512).to(torch.bfloat16)
    check(x, w, None, execute(x, packed, force_plan=True))


def test_plan_file_keeps_the_kernel(tmp_path):
    plan = make_plan(_sparse(2048, 1024, 0.95))
    loaded = cross.partition.Plan.load(plan.save(tmp_path / "p.safetensors"))
    assert [b.kernel for b in loaded.buckets] == [b.kernel for b in plan.buckets]


def test_unknown_kernel_refused():
    b = make_plan(_sparse(256, 256, 0.9)).buckets[0]
    from dataclasses import replace

    with pytest.raises(ValueError, match="expected kernel in"):
        replace(b, kernel="columns")


def test_sparsified_model_with_rows_saves_and_loads(tmp_path):
    gen = torch.Generator().manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.Linear(2048, 512)).to(torch.bfloat16)
    with torch.no_grad():
        for lin in model:
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) < 0.05)
    x = torch.randn(1, 1024, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        want = model(x)
        cross.sparsify_(model, keep_dense=False)
        assert any(m.packed.rows is not None for m in model if isinstance(m, cross.SparseLinear))
        for m in model:
            if isinstance(m, cross.SparseLinear):
                assert [b["kernel"] for b in m.summary()["buckets"]] == [b.kernel for b in m.plan.buckets]
        got = model(x)
        cross.save(model, tmp_path / "m")
        layers = cross.load(tmp_path / "m")
        assert all((layers[n].packed.rows is None) == (model[int(n)].packed.rows is None) for n in layers)
        again = layers["1"](layers["0"](x))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())
    assert torch.equal(again, got)


def _rows_or_dense_plan(w):
    """w's plan with every tile-kernel bucket falling back to the dense product: no bucket runs the tiles."""
    from dataclasses import replace

    plan = make_plan(w)
    assert any(b.kernel == "rows" for b in plan.buckets) and any(b.kernel == "tiles" for b in plan.buckets)
    return plan.with_buckets([replace(b, fallback=True) if b.kernel == "tiles" else b for b in plan.buckets])


def _linear_of(w, bias=True):
    """A bf16 nn.Linear holding w."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def test_layer_drops_the_tiles_no_bucket_runs(tmp_path):
    gen = torch.Generator().manual_seed(5)
    w = _sparse(2048, 1024, 0.95)
    lin = _linear_of(w)
    plan = _rows_or_dense_plan(w)
    full = pack(w, plan)
    sl = cross.SparseLinear.from_dense(lin, plan=plan)
    assert sl.dense_kept and sl.packed.tiled is None and sl.packed.rows is not None
    assert sl.packed.nbytes == full.nbytes - full.tiled.nbytes
    assert sl.nnz == int((w != 0).sum()) and sl.dense_nbytes == 2048 * 1024 * 2 + 2048 * 2
    assert torch.equal(sl.to_dense_linear().weight.view(torch.int16), w.view(torch.int16))
    with torch.no_grad():
        n_tiles = next(b.n_min for b in plan.buckets if b.kernel == "tiles")
        for n in (1, 3, 8, n_tiles - 1, n_tiles):  # the row kernel's buckets (reference on the CPU), the dense product
            x = torch.randn(n, 1024, generator=gen).to(torch.bfloat16)
            check(x, w, lin.bias, sl(x))
        with pytest.raises(ValueError, match="dropped"):
            execute(x, sl.packed, force_plan=True)  # a tile-kernel bucket's plan cannot run without its tiles
        # rebuilt tiles are the ones packing made (same offsets: the kernel tables still hold)
        rebuilt = sl.packed.tiled_weight()
        assert all(torch.equal(getattr(rebuilt, a), getattr(full.tiled, a)) for a in ("values", "meta", "value_offset"))
        # another plan's buckets that run the tiles get them back
        again = sl.packed.with_plan(make_plan(w))
        assert again.tiled is not None and torch.equal(again.tiled.values, full.tiled.values)
        cross.save(torch.nn.Sequential(sl), tmp_path / "m")
        loaded = cross.load(tmp_path / "m")["0"]
        assert loaded.packed.tiled is None and loaded.dense_kept
        x = torch.randn(2, 1024, generator=gen).to(torch.bfloat16)
        assert torch.equal(loaded(x), sl(x))


def test_layer_keeps_the_tiles_it_runs():
    w = _sparse(2048, 1024, 0.95)
    sl = cross.SparseLinear.from_dense(_linear_of(w, bias=False), plan=_rows_or_dense_plan(w), keep_dense=False)
    assert sl.packed.tiled is not None  # the fallback buckets run their tile plan
    x = torch.randn(16, 1024).to(torch.bfloat16)
    with torch.no_grad():
        check(x, w, None, sl(x))


def test_decode_mode_drops_the_tiles_and_decodes_the_rows(tmp_path):
    """keep_dense='decode' with every bucket on the row kernel or falling back: the layer holds the
    row format alone, and the fallback buckets decode it (the reference decoder on the CPU, the
    decode_rows operator on a GPU) to exactly the weight."""
    gen = torch.Generator().manual_seed(6)
    w = _sparse(2048, 1024, 0.95)
    lin = _linear_of(w)
    plan = _rows_or_dense_plan(w)
    sl = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense="decode")
    kept = cross.SparseLinear.from_dense(lin, plan=plan)
    assert sl.packed.tiled is None and sl.dense_weight is None and sl.decode_fallback
    assert sl.nbytes == sl.packed.nbytes + 2048 * 2 and kept.nbytes == sl.nbytes + 2048 * 1024 * 2  # no dense copy
    n_tiles = next(b.n_min for b in plan.buckets if b.kernel == "tiles")
    with torch.no_grad():
        for n in (1, 8, n_tiles):  # row kernel (reference on the CPU), and a fallback bucket that decodes
            x = torch.randn(n, 1024, generator=gen).to(torch.bfloat16)
            assert torch.equal(sl(x), kept(x)), n
    cross.save(torch.nn.Sequential(sl), tmp_path / "m")
    loaded = cross.load(tmp_path / "m")["0"]
    assert loaded.packed.tiled is None and loaded.decode_fallback
    x = torch.randn(n_tiles, 1024, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(x), kept(x))


@pytest.mark.parametrize("classes", [1, 16])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_decode_rows_kernel_gives_the_weight(density, classes):
    """The row format's decoder (Triton; its interpreter without a GPU), and its operator."""
    import cross.runtime.op  # noqa: F401  (registers the operators)
    from cross.kernels.decode import decode_rows

    gen = torch.Generator().manual_seed(7)
    w = make_weight(37, 300, density, "uneven", torch.bfloat16, gen)
    w[3, 5], w[4, 299] = float("nan"), float("-inf")
    rows = RowWeight.from_dense(w.to(DEVICE), classes)
    out = torch.full((37, 300), 7.0, dtype=torch.bfloat16, device=DEVICE)  # zeroed by the decoder
    assert torch.equal(decode_rows(rows, out=out).cpu().view(torch.int16), w.view(torch.int16))
    got = torch.ops.cross.decode_rows(rows.values, rows.meta, rows.row_ptr, [37, 300], torch.bfloat16)
    assert torch.equal(got.cpu().view(torch.int16), w.view(torch.int16))


# ---------------------------------------------------------------------------------------- kernel source
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("is_bf16", [1, 0], ids=["bf16", "fp16"])
@pytest.mark.parametrize("nt", [1, 2, 4, 8])
def test_kernel_source_compiles(is_bf16, nt, tmp_path):
    from cross.kernels.cuda_backend import ROW_LAUNCHES

    threads, blocks = ROW_LAUNCHES[nt]
    src = resources.files("cross.kernels").joinpath("row_gemv.cu")
    out = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                          f"-DIS_BF16={is_bf16}", f"-DTHREADS={threads}", f"-DNT={nt}", str(src)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    regs = max(int(v) for v in re.findall(r"Used (\d+) registers", out.stderr))
    # the launch's blocks per SM fit in the SM's 64 K registers
    assert regs * threads * blocks <= 65536, out.stderr[-3000:]


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_decode_source_compiles(tmp_path):
    src = resources.files("cross.kernels").joinpath("row_decode.cu")
    out = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "d.cubin"),
                          str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(1, 8), (7, 64), (1000, 4096), (4096, 11008), (300, 16384)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("structure", ["uniform", "uneven"])
def test_gpu_row_kernel(dtype, shape, density, structure, rng):
    from cross.kernels.launch import row_args, row_launch

    gen = rng
    w = make_weight(*shape, density, structure, dtype, gen).cuda()
    rows = RowWeight.from_dense(w)
    args = row_args(rows)
    for n, bias in ((1, None), (2, torch.randn(shape[0], generator=gen).to(dtype).cuda()), (7, None), (16, None)):
        x = torch.randn(n, shape[1], generator=gen).to(dtype).cuda()  # fresh inputs each run
        out = torch.full((n, shape[0]), float("nan"), dtype=dtype, device="cuda")
        y = row_launch(x, args, bias, out=out)
        assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) outputs"
        check(x, w, bias, y)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("propagate", [True, False])
def test_gpu_row_kernel_non_finite_inputs(propagate):
    from cross.kernels.launch import row_args, row_launch

    gen = torch.Generator().manual_seed(5)
    w = make_weight(2000, 4096, 0.1, "uneven", torch.bfloat16, gen)
    w[:64, 100] = 1.0  # rows that cover the Inf's column
    w = w.cuda()
    rows = RowWeight.from_dense(w)
    args = row_args(rows, propagate)
    for n in (1, 3, 8, 12):  # one pass of each build, and two passes
        x = torch.randn(n, 4096, generator=gen).to(torch.bfloat16).cuda()
        x[0, 100] = float("inf")  # covered by rows 0-63
        x[n - 1, 7] = float("nan")
        if n > 2:
            x[1, 100] = float("-inf")
            x[1, 2000] = float("inf")
        out = torch.full((n, 2000), 7.0, dtype=torch.bfloat16, device="cuda")
        y = row_launch(x, args, out=out)
        want = rows_reference(x, rows, propagate=propagate)
        assert torch.equal(torch.isnan(y), torch.isnan(want))
        if propagate:
            check(x, w, None, y)
        else:
            assert torch.equal(torch.isinf(y), torch.isinf(want))
            fin = torch.isfinite(want)
            torch.testing.assert_close(y[fin].float(), want[fin].float(), rtol=2e-2, atol=2e-2 * want[fin].abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_runtime_runs_the_row_kernel_in_graphs_and_compile():
    from cross.kernels.launch import RowArgs

    w = _sparse(4096, 4096, 0.95).cuda()
    lin = torch.nn.Linear(4096, 4096, bias=True).to(torch.bfloat16).cuda()
    with torch.no_grad():
        lin.weight.copy_(w)
    sl = cross.SparseLinear.from_dense(lin, measure=False)
    assert sl.plan.buckets[0].kernel == "rows" and isinstance(sl._kernels[0], RowArgs)
    assert all(b.kernel == "rows" and isinstance(sl._kernels[i], RowArgs) for i, b in enumerate(sl.plan.buckets[:3]))
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        for n in (2, 3, 4, 6, 9, 16):  # the 2- and 3-4-token buckets (the row kernel), then the 5-8 and 9-16 ones
            xn = torch.randn(n, 4096, dtype=torch.bfloat16, device="cuda")
            check(xn, w, lin.bias, sl(xn))
        want = lin(x)
        check(x, w, lin.bias, sl(x))
        graph = torch.cuda.CUDAGraph()
        static = x.clone()
        with torch.cuda.graph(graph):
            out = sl(static)
        static.copy_(torch.randn_like(x))
        graph.replay()
        check(static, w, lin.bias, out)
        compiled = torch.compile(sl, fullgraph=True)
        check(x, w, lin.bias, compiled(x))
    assert want.shape == out.shape


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(37, 300), (4096, 11008), (11008, 4096)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.5, 1.0])
def test_gpu_decode_rows(shape, density, rng):
    """The row format's decode on the GPU (row_decode.cu), over a NaN-poisoned output: exactly the weight."""
    from cross.kernels.decode import decode_rows

    gen = rng
    w = make_weight(*shape, density, "uneven", torch.bfloat16, gen)
    w[3, 5], w[4, shape[1] - 1] = float("nan"), float("-inf")
    rows = RowWeight.from_dense(w.cuda())
    out = torch.full(shape, float("nan"), dtype=torch.bfloat16, device="cuda")
    assert torch.equal(decode_rows(rows, out=out).cpu().view(torch.int16), w.view(torch.int16))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_decode_mode_from_rows_in_graphs():
    """A decode-mode layer without tiles on the GPU: eager and replayed in a CUDA graph, the product
    (fp64 reference) and exactly what the layer that keeps a dense copy computes, at the row kernel's
    token counts and a fallback's. Both layers take the plan as given (no measured check: two checks
    could decide a bucket near the margin differently, and the layers would then differ by design)."""
    gen = torch.Generator().manual_seed(8)
    w = _sparse(2048, 1024, 0.95)
    lin = _linear_of(w).cuda()
    plan = _rows_or_dense_plan(w)
    sl = cross.SparseLinear.from_dense(lin, plan=plan, keep_dense="decode", measure=False)
    kept = cross.SparseLinear.from_dense(lin, plan=plan, measure=False)
    assert sl.packed.tiled is None and sl.dense_weight is None
    n_tiles = next(b.n_min for b in plan.buckets if b.kernel == "tiles")
    with torch.no_grad():
        for n in (1, 8, n_tiles):
            x = torch.randn(n, 1024, generator=gen).to(torch.bfloat16).cuda()
            check(x, lin.weight, lin.bias, sl(x))
            assert torch.equal(sl(x), kept(x)), n
            static = x.clone()
            sl(static)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = sl(static)
            static.copy_(torch.randn(n, 1024, generator=gen).to(torch.bfloat16).cuda())
            graph.replay()
            check(static, lin.weight, lin.bias, out)
            assert torch.equal(out, kept(static)), n
