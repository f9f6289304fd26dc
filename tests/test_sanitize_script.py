"""benchmarks/sanitize.py cuts the GPU test set into parts that together cover it exactly once."""


import pytest
from scripts import load_benchmark

sanitize = load_benchmark("sanitize")


@pytest.mark.parametrize("n_ids, n_chunks", [(0, 3), (1, 4), (10, 3), (334, 12), (5, 5)])
def test_chunks_cover_every_test_once_in_order(n_ids, n_chunks):
    ids = [f"t{i}" for i in range(n_ids)]
    parts = [sanitize.chunk(ids, n_chunks, i) for i in range(n_chunks)]
    assert sum(parts, []) == ids
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_chunk_index_is_checked():
    with pytest.raises(ValueError, match="chunk"):
        sanitize.chunk(["a"], 2, 2)


def test_summary_pattern_reads_both_tools():
    text = "========= ERROR SUMMARY: 0 errors\n========= RACECHECK SUMMARY: 3 hazards displayed (0 errors, 3 warnings)"
    assert [(k, int(n)) for k, n, _ in sanitize.SUMMARY.findall(text)] == [("ERROR", 0), ("RACECHECK", 3)]


def test_select_keeps_the_tests_pytest_k_picks():
    """--select: the GPU tests of a file that ``-k`` picks, and only those (collected on the CPU)."""
    every = sanitize.gpu_tests(["tests/test_wgmma24.py"])
    picked = sanitize.gpu_tests(["tests/test_wgmma24.py"], "stream or splits")
    assert picked and set(picked) < set(every)
    assert all("stream" in t or "splits" in t for t in picked)
    assert [t for t in every if "stream" in t or "splits" in t] == picked
