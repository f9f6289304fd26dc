"""benchmarks/wgmma24_ablate.py's reading of block times: each SM's mean block time per launch, how well
one launch predicts the next, and the SMs fastest and slowest on average."""

import re

import torch
from scripts import load_benchmark

ablate = load_benchmark("wgmma24_ablate")


def _times(durations, sms):
    """u64 [blocks, 3] block times (start, end, SM) of blocks of the given durations on the given SMs."""
    start = torch.arange(len(durations), dtype=torch.int64) * 7
    return torch.stack([start, start + torch.tensor(durations), torch.tensor(sms)], 1)


def test_same_sms_fast_in_every_launch():
    """Two blocks on SM 0 are averaged; the ranking is by the mean over launches; a repeat of the same
    per-SM times correlates 1, a reversed one -1."""
    sms = [0, 0, 1, 2, 3, 4, 5]
    a = _times([10, 30, 100, 200, 300, 400, 500], sms)  # SM 0: 20 on average
    b = _times([20, 20, 110, 190, 310, 390, 510], sms)
    text = ablate.sm_repeatability([a, b], 6)
    assert float(re.search(r"correlation (-?[\d.]+)", text).group(1)) > 0.99
    assert "fastest SMs [0, 1, 2, 3, 4]" in text and "slowest [1, 2, 3, 4, 5]" in text
    flipped = _times([500, 500, 400, 300, 200, 100, 20], sms)
    assert float(re.search(r"correlation (-?[\d.]+)", ablate.sm_repeatability([a, flipped], 6)).group(1)) < -0.9


def test_unit_landings_split_the_first_and_last_blocks():
    """When units land, read per block: unit 0, the prologue's last, the first refill and the block's
    last unit (each block's share of the launch's units), over all blocks and for the tenth of the
    blocks that ended first and last."""
    blocks, per_block, ahead = 10, 5, 3
    start = torch.zeros(blocks, dtype=torch.int64)
    end = torch.tensor([1000 * (10 * j + per_block) for j in range(blocks)], dtype=torch.int64)
    times = torch.stack([start, end, torch.arange(blocks)], 1)
    units = torch.zeros(blocks, ablate.UNIT_TIMES, dtype=torch.int64)
    for j in range(blocks):
        units[j, :per_block] = torch.tensor([1000 * (10 * j + i) for i in range(per_block)])
    overall, first, last = ablate.unit_landings(times, units, blocks * per_block, ahead)
    assert "unit 0 0.0/45.0/90.0" in overall and "the last unit 4.0/49.0/94.0" in overall
    assert first.startswith("the tenth ending first: unit 0 0.0; unit 2 (the prologue's last) 2.0; "
                            "unit 3 (the first refill) 3.0; the last unit 4.0; the end 5.0")
    assert last.startswith("the tenth ending last: unit 0 90.0; unit 2 (the prologue's last) 92.0")
    assert "the end 95.0" in last


def test_prologue_steps_from_each_blocks_start():
    """--prologue: each step's stamp and unit 0's from the block's own start (not the first block's), over
    the blocks."""
    blocks = 5
    start = torch.arange(blocks, dtype=torch.int64) * 10_000  # blocks start 10 us apart
    times = torch.stack([start, start + 50_000, torch.arange(blocks)], 1)
    steps = start[:, None] + torch.tensor([100, 300, 400, 400]) * (1 + torch.arange(blocks))[:, None]
    units = torch.zeros(blocks, ablate.UNIT_TIMES, dtype=torch.int64)
    units[:, 0] = start + 1000
    text = ablate.prologue_steps(times, steps, units)
    assert "first unit found 0.10/0.30/0.50" in text and "copies issued 0.40/1.20/2.00" in text
    assert "unit 0 in place 1.00/1.00/1.00" in text


def test_again_reads_the_second_launchs_stamps(monkeypatch):
    """--again: what a second launch adds to a graph of two (timed against the one launch's time), and the
    blocks' times from the stamps the second launch wrote (each launch overwrites them)."""
    times = torch.zeros(4, 3, dtype=torch.int64)
    launches = []

    def run():
        launches.append(len(launches))
        scale = 1000 if len(launches) % 2 else 500  # the second of each pair: blocks twice as short
        times[:, 0] = torch.arange(4) * 10
        times[:, 1] = times[:, 0] + torch.tensor([2, 4, 4, 6]) * scale

    def graph_us(fn):
        fn()
        return 17.5

    monkeypatch.setattr(ablate, "graph_us", graph_us)
    monkeypatch.setattr(ablate.torch.cuda, "synchronize", lambda: None)
    text = ablate.again(run, times, 10.0, torch.zeros(4))
    assert len(launches) == 4  # two in the graph, two stamped
    assert "adds 7.50 us (17.50 for both)" in text
    assert "a block's time min/median/max 1.00/2.00/3.00 us" in text
    assert "its blocks end 1.00-3.03 us" in text
