"""benchmarks/wgmma24_sequence.py's reading of the block times of launches run back to back: the gap
between launches, the blocks' starts and ends, and the medians per weight shape."""

import pytest
import torch
from scripts import load_benchmark

sequence = load_benchmark("wgmma24_sequence")


def _times(starts, ends):
    """u64 [blocks, 3] (start, end, SM) in ns."""
    return torch.tensor([[s, e, i] for i, (s, e) in enumerate(zip(starts, ends))], dtype=torch.int64)


def test_launch_phases_read_each_launch_from_its_first_start():
    a = _times([1000, 1100], [6000, 8000])  # a second launch starts 1.5 us after a's last end
    b = _times([9700, 9500, 10500], [13500, 15500, 14500])
    first, second = sequence.launch_phases([a, b])
    assert first == dict(gap=None, starts=0.1, first_end=5.0, median_end=6.0, span=7.0)
    assert second == dict(gap=pytest.approx(1.5), starts=pytest.approx(1.0), first_end=pytest.approx(4.0),
                          median_end=pytest.approx(5.0), span=pytest.approx(6.0))


def test_by_shape_takes_medians_over_each_shapes_launches():
    phases = [dict(gap=None, starts=0.1, first_end=5.0, median_end=6.0, span=7.0),
              dict(gap=1.0, starts=0.2, first_end=3.0, median_end=4.0, span=5.0),
              dict(gap=2.0, starts=0.3, first_end=6.0, median_end=7.0, span=9.0),
              dict(gap=3.0, starts=0.4, first_end=4.0, median_end=5.0, span=6.0)]
    rows = sequence.by_shape(phases, ["qkv", "o", "qkv", "o"], {"qkv": 18e6, "o": 6e6})
    assert [r["shape"] for r in rows] == ["qkv", "o"]
    qkv, o = rows
    assert qkv["launches"] == 2 and qkv["gap_us"] == 2.0  # the first launch has no gap: the other one's
    assert qkv["span_us"] == 8.0 and qkv["tb_s"] == pytest.approx(18e6 / 8.0 / 1e6)  # 2.25 TB/s
    assert o["gap_us"] == 2.0 and o["starts_us"] == pytest.approx(0.3) and o["median_end_us"] == 4.5
    assert o["mb"] == 6.0 and set(sequence.FIELDS) == set(o)


def test_launches_without_block_times_are_left_out():
    a = _times([1000, 1100], [6000, 8000])
    b = _times([9700, 9500], [13500, 15500])
    phases = sequence.launch_phases([a, None, b])  # the launch between (clusters) has no times
    assert phases[1] is None and phases[2]["gap"] is None  # nor a gap after it
    rows = sequence.by_shape(phases, ["qkv", "o", "qkv"], {"qkv": 18e6, "o": 6e6})
    assert [r["shape"] for r in rows] == ["qkv"] and rows[0]["launches"] == 2 and rows[0]["gap_us"] is None


def test_end_split_reads_the_summing_blocks_wait_and_end():
    # 8 units of 4 per output over 3 blocks: block 0 [0, 2) and block 1 [2, 5) share output 0 (block 1
    # holds its last units at its start), blocks 1 and 2 [5, 8) share output 1; blocks 0 and 1 sum
    times = _times([0, 0, 0], [9000, 10000, 7000])
    units = torch.tensor([[1000, 3000, 0], [1000, 2500, 4000], [1500, 2000, 6000]], dtype=torch.int64)
    end = sequence.end_split(times, units, total=8, chunks=4)
    # block 0: arrivals 3.0 (its own) and 2.5 (block 1's unit 3): waits 0, ends 6.0 after;
    # block 1: 4.0 (its own) and 6.0 (block 2's unit 7): waits 2.0, ends 4.0 after
    assert end == dict(wait=1.0, end=5.0, end_min=4.0, end_max=6.0)
    assert sequence.end_split(times, units[:, :2], total=8, chunks=4) is None  # a stamp missing


def test_end_split_step_by_step():
    # the same launch as above, with the summing blocks' end stamped step by step (BLOCK_TIMES=3)
    times = _times([0, 0, 0], [9000, 10000, 7000])
    units = torch.tensor([[1000, 3000, 0], [1000, 2500, 4000], [1500, 2000, 6000]], dtype=torch.int64)
    steps = torch.tensor([[3500, 4000, 7000, 8000],  # block 0: mmas done 0.5 after its last unit, ...
                          [4300, 4500, 8000, 9600],  # block 1: mmas 0.3, stores 0.2, wait 3.5, sums 1.6, exit 0.4
                          [0, 0, 0, 0]], dtype=torch.int64)  # block 2 does not sum
    end = sequence.end_split(times, units, total=8, chunks=4, steps=steps)
    assert end["end"] == 5.0 and end["wait"] == 1.0  # as without steps
    # block 0: mmas 0.5, stores 0.5, wait 3.0, sums 1.0, exit 1.0; the medians of two are their means
    assert end["step_mmas"] == pytest.approx(0.4) and end["step_stores"] == pytest.approx(0.35)
    assert end["step_wait"] == pytest.approx(3.25) and end["step_sums"] == pytest.approx(1.3)
    assert end["step_exit"] == pytest.approx(0.7)
    # each block on its own SM: both sums alone on theirs
    assert (end["n_shared"], end["n_alone"], end["sums_shared"]) == (0, 2, None)
    assert end["sums_alone"] == pytest.approx(1.3)
    times[:, 2] = torch.tensor([0, 1, 0])  # block 2 on block 0's SM, ending at 7.0 us, as block 0's wait ends
    assert sequence.end_split(times, units, total=8, chunks=4, steps=steps)["n_shared"] == 0
    times[2, 1] = 7500  # block 2 still running when block 0's wait ends
    end = sequence.end_split(times, units, total=8, chunks=4, steps=steps)
    assert (end["n_shared"], end["n_alone"]) == (1, 1)
    assert end["sums_shared"] == pytest.approx(1.0) and end["sums_alone"] == pytest.approx(1.6)
    assert sequence.shared_split(end) == ("the sums with another block of the launch running on the SM 1.00 us "
                                          "(1 blocks), alone on it 1.60 us (1 blocks)")
    steps[1, 0] = 0  # a summing block's stamp missing
    assert sequence.end_split(times, units, total=8, chunks=4, steps=steps) is None


def test_reduce_end_split_reads_the_last_arrivals_steps():
    # the launch above under END_RED: output 0 split over blocks 0 and 1, output 1 over blocks 1 and 2;
    # block 0 arrived last at output 0 (its last output), block 2 at output 1 (its first output: its
    # stamps count, its last unit being output 1's), block 1 at neither
    times = _times([0, 0, 0], [9000, 10000, 7000])
    units = torch.tensor([[1000, 3000, 0], [1000, 2500, 4000], [1500, 2000, 6000]], dtype=torch.int64)
    steps = torch.tensor([[3500, 3700, 4700, 6700],  # block 0: mmas 0.5, reductions 0.2, arrive 1.0, read-back 2.0, exit 2.3
                          [0, 0, 0, 0],
                          [6400, 6500, 6600, 6800]], dtype=torch.int64)  # block 2: 0.4, 0.1, 0.1, 0.2, exit 0.2
    end = sequence.reduce_end_split(times, units, total=8, chunks=4, steps=steps)
    assert end["n"] == 2
    for name, want in (("step_mmas", 0.45), ("step_reductions", 0.15), ("step_arrive", 0.55),
                       ("step_readback", 1.1), ("step_exit", 1.25)):
        assert end[name] == pytest.approx(want), name
    steps[0] = torch.tensor([2600, 2700, 2800, 2900])  # stamped before its last unit landed: an earlier replay's
    end = sequence.reduce_end_split(times, units, total=8, chunks=4, steps=steps)
    assert end["n"] == 1 and end["step_readback"] == pytest.approx(0.2)
    steps[2] = 0
    assert sequence.reduce_end_split(times, units, total=8, chunks=4, steps=steps) is None


def test_per_shape_options():
    assert sequence.by_name("qkv=64,gate_up=128", "rows") == {"qkv": 64, "gate_up": 128}
    assert sequence.by_name("", "splits") == {}
    for bad in ("qkv", "qkv=x", "attn=2", "qkv=-1"):
        with pytest.raises(SystemExit, match="--per-sm takes name=count"):
            sequence.by_name(bad, "per_sm")
    assert set(sequence.ROWS) == {64, 128, 256}
    assert all(64 * wgs * mt == rows for rows, (wgs, mt) in sequence.ROWS.items())
