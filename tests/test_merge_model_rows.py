"""benchmarks/merge_model_rows.py: a model table from a base table and later runs' rows, each later
row in its base row's place, dropped phases out, the report written again; the figure marks the
compiled rows' lines."""

import pytest

from cross.bench import report
from cross.bench.models import FIELDS, model_command
from cross.bench.report import read_csv, start_csv
from scripts import load_benchmark

merge = load_benchmark("merge_model_rows")


def _row(model, phase, batch, sparsity, speedup, **kw):
    name = "llama" if model.startswith("llama") else model
    return dict(model=model, phase=phase, batch=batch, tokens=batch * (512 if phase == "prefill" else 1),
                sparsity=sparsity, dense_ms=6.0, cross_ms=round(6.0 / speedup, 4), speedup=speedup,
                weight_bytes_dense=100, weight_bytes_cross=80, sparse_layers="4/4", min_cosine=0.9995,
                timing="graph", dense_apart_ms="", command=model_command(name, sparsity, **kw))


def _base():
    return [_row(m, p, b, s, round(1.0 + s / 10, 3)) for s in (0.5, 0.7)
            for m, p, b in (("bert", "encoder", 8), ("llama-32L", "prefill", 1), ("llama-32L", "decode", 1),
                            ("llama-32L", "decode", 8), ("llama-32L", "decode", 16))]


def _later(sparsity):
    return [_row("llama-32L", "decode", b, sparsity, round(1.4 + b / 100, 3), phases=("decode-1", "decode-16"), compile=True)
            for b in (1, 16)]


def test_later_rows_replace_the_base_and_dropped_phases_leave(tmp_path):
    base, a, b = tmp_path / "model.csv", tmp_path / "a.csv", tmp_path / "b.csv"
    start_csv(base, FIELDS, _base())
    start_csv(a, FIELDS, _later(0.5))
    start_csv(b, FIELDS, _later(0.7))
    out = tmp_path / "out"
    assert merge.main([str(base), str(a), str(b), "--drop", "llama-32L:decode-8", "--device", "GPU X",
                       "--out", str(out)]) == 0
    rows = read_csv(out / "model.csv")
    # the base's order (model, sparsity, phase), decode-8 gone, the compiled decode rows in place
    assert [(r["model"], r["phase"], r["batch"], r["sparsity"]) for r in rows] == [
        ("bert", "encoder", "8", "0.5"), ("bert", "encoder", "8", "0.7"),
        ("llama-32L", "prefill", "1", "0.5"), ("llama-32L", "decode", "1", "0.5"), ("llama-32L", "decode", "16", "0.5"),
        ("llama-32L", "prefill", "1", "0.7"), ("llama-32L", "decode", "1", "0.7"), ("llama-32L", "decode", "16", "0.7")]
    by = {(r["phase"], r["batch"], r["sparsity"]): r for r in rows if r["model"] == "llama-32L"}
    assert by[("decode", "16", "0.7")]["speedup"] == "1.56" and "--compile" in by[("decode", "16", "0.7")]["command"]
    assert by[("prefill", "1", "0.7")]["speedup"] == "1.07" and "--compile" not in by[("prefill", "1", "0.7")]["command"]
    text = (out / "model.md").read_text()
    assert "device: GPU X, bf16" in text
    # one note per command, the sparsity as <s>, with its rows' count and sparsities
    assert "- 4 rows at 50%, 70%: `cross bench model --models llama --sparsities <s> --phases decode-1,decode-16 --compile" in text
    assert "- 2 rows at 50%, 70%: `cross bench model --models llama --sparsities <s> --out" in text  # the prefill
    assert "- 2 rows at 50%, 70%: `cross bench model --models bert --sparsities <s> --out" in text
    assert "compiled (`--compile`" in text and "siblings stacked" not in text
    assert (out / "model.png").read_bytes().startswith(b"\x89PNG")


def test_a_drop_that_matches_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no rows of llama-32L:decode-4"):
        merge.merge(_base(), [], [("llama-32L", "decode", 4)])
    for bad in ("llama-32L", "llama-32L:decode", ":decode-8"):
        with pytest.raises(SystemExit):
            merge.main(["x.csv", "y.csv", "--drop", bad, "--device", "d", "--out", "o"])


def test_the_figure_marks_compiled_rows(tmp_path, monkeypatch):
    seen = {}

    def figure(panels, path, *args, **kw):
        seen.update(panels)
        path.write_bytes(b"\x89PNG")
        return path

    monkeypatch.setattr(report, "speedup_figure", figure)
    rows = [*_base(), *_later(0.5)]
    report.write_model_report([r for r in rows if not (r["phase"] == "decode" and r["batch"] == 1
                                                       and "--compile" not in r["command"])], tmp_path, [])
    assert set(seen[("", "llama-32L")]) == {"prefill, batch 1", "decode, batch 8", "decode, batch 16",
                                            "decode, batch 1, compiled", "decode, batch 16, compiled"}
    assert set(seen[("", "bert")]) == {"encoder, batch 8"}
