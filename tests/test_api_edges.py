"""Edges of the user-facing API: arguments users plausibly get wrong give an error naming the
problem, the sparsify_ / unsparsify_ round trip keeps what training depends on (tied weights,
requires_grad flags), and a sparsified model's state dict is its dense model's."""

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (lazily, by the CLI)

import cross
from cross.cli.main import main
from cross.nn import SparseLinear, sparsify_, unsparsify_


def pruned_linear(rng, out_features=64, in_features=128, bias=True, density=0.3) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=rng))
        linear.weight.mul_(torch.rand(out_features, in_features, generator=rng) < density)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=rng))
    return linear


def assert_close_to_dense(model: nn.Module, dense: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- tied weights
def test_unsparsify_keeps_two_linears_sharing_a_weight_tied(rng):
    a = pruned_linear(rng)
    b = nn.Linear(128, 64)
    b.weight = a.weight
    model = nn.ModuleDict({"a": a, "b": b})
    x = torch.randn(5, 128, generator=rng)
    with torch.no_grad():
        want = a(x), b(x)
    assert sparsify_(model, keep_dense=False, progress=False).n_swapped == 2
    with torch.no_grad():
        torch.testing.assert_close(model["a"](x), want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model["b"](x), want[1], rtol=1e-5, atol=1e-5)
    assert unsparsify_(model) == 2
    assert model["a"].weight is model["b"].weight and model["a"].bias is not model["b"].bias
    assert len(list(model.parameters())) == 3
    with torch.no_grad():
        assert torch.equal(model["a"](x), want[0]) and torch.equal(model["b"](x), want[1])


def test_unsparsify_ties_a_head_to_its_embedding_again(rng):
    embedding = nn.Embedding(64, 128)
    head = pruned_linear(rng, bias=False)
    embedding.weight = head.weight  # an LM head tied to the input embedding
    model = nn.ModuleDict({"embed": embedding, "head": head})
    sparsify_(model, keep_dense=False, progress=False)
    assert isinstance(model["head"], SparseLinear)
    unsparsify_(model)
    assert model["head"].weight is model["embed"].weight


# ---------------------------------------------------------------------------------- requires_grad
def test_unsparsify_keeps_the_bias_flag_of_a_frozen_weight(rng, tmp_path):
    linear = pruned_linear(rng)
    linear.weight.requires_grad_(False)  # frozen weight, trained bias (BitFit)
    model = nn.Sequential(linear)
    sparsify_(model, keep_dense=False, progress=False)
    cross.save(model, tmp_path / "saved")
    loaded = nn.Sequential(pruned_linear(rng))
    cross.load(tmp_path / "saved", loaded)
    for m in (model, loaded):
        unsparsify_(m)
        assert not m[0].weight.requires_grad and m[0].bias.requires_grad


# ---------------------------------------------------------------------------------- state dict
def _toy(rng):
    return nn.Sequential(pruned_linear(rng), nn.ReLU(), pruned_linear(rng, 32, 64, bias=False))


@pytest.mark.parametrize("keep_dense", [False, True])
def test_state_dict_is_the_dense_models(rng, keep_dense):
    """A sparsified model's state dict is its dense model's (weight decoded, or the dense copy kept):
    it loads strictly into a fresh dense model, which then computes what the dense model did."""
    import copy

    model = _toy(rng)
    model[0].weight.data[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    dense = copy.deepcopy(model)
    for i in (0, 2):  # every plan forced, with or without the dense copy
        model[i] = SparseLinear.from_dense(model[i], keep_dense=keep_dense)
        assert (model[i].dense_weight is not None) == keep_dense
    state, want = model.state_dict(), dense.state_dict()
    assert list(state) == list(want)
    for key in want:
        assert torch.equal(state[key].nan_to_num(), want[key].nan_to_num()), key
        assert torch.equal(state[key].isnan(), want[key].isnan()), key
    fresh = _toy(rng)
    fresh.load_state_dict(state)
    x = torch.randn(5, 128, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), dense(x), equal_nan=True)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(want)  # the weights it was packed from: accepted, nothing changes
        model.load_state_dict(state)
        assert all(isinstance(model[i], SparseLinear) for i in (0, 2))
        assert torch.equal(model(x).nan_to_num(), before.nan_to_num())


def test_loading_another_weight_into_a_sparsified_model_is_refused(rng):
    model = _toy(rng)
    sparsify_(model, keep_dense=False, progress=False)
    other = _toy(rng).state_dict()
    with pytest.raises(RuntimeError, match=r"0\.weight: expected the weight this SparseLinear was packed from"):
        model.load_state_dict(other)
    wrong = {**model.state_dict(), "2.weight": torch.zeros(32, 65)}
    with pytest.raises(RuntimeError, match=r"size mismatch for 2\.weight"):
        model.load_state_dict(wrong)
    biases = {"0.bias": model[0].bias.clone()}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"0\.weight\", \"2\.weight\""):
        model.load_state_dict(biases)
    model.load_state_dict(biases, strict=False)  # the weights are optional when not strict


def test_save_stores_the_packed_form_without_decoding(rng, tmp_path, monkeypatch):
    from cross.pack import PackedWeight

    model = _toy(rng)
    sparsify_(model, keep_dense=False, progress=False)

    def refuse(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(PackedWeight, "to_dense", refuse)
    cross.save(model, tmp_path / "saved")
    monkeypatch.undo()
    loaded = _toy(rng)
    cross.load(tmp_path / "saved", loaded)
    assert torch.equal(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_autocast_to_the_layers_dtype_casts_the_input(rng):
    """Under autocast to a bf16 layer's dtype, an fp32 input (a LayerNorm's output, say) is cast, as
    nn.Linear does; outside autocast a dtype mismatch is an error."""
    linear = pruned_linear(rng).to(torch.bfloat16)
    sparse = SparseLinear.from_dense(linear, keep_dense=False)
    x = torch.randn(5, 128, generator=rng)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, want = sparse(x), linear(x)
    assert y.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want.float(), rtol=2e-2, atol=2e-2)
    with torch.no_grad(), pytest.raises(TypeError, match="expected dtype bfloat16"):
        sparse(x)


def test_autocast_to_another_dtype_gives_its_dtype(rng):
    """An fp32 layer under autocast to bf16: computed in fp32, given in bf16 as nn.Linear's output is."""
    linear = pruned_linear(rng)
    sparse = SparseLinear.from_dense(linear, keep_dense=False)
    x = torch.randn(5, 128, generator=rng)
    with torch.no_grad():
        exact = linear(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, want = sparse(x), linear(x)
    assert y.dtype == want.dtype == torch.bfloat16
    # the fp32 product rounded once (half a bf16 ulp; computed in bf16 it is off by up to 0.1 here)
    torch.testing.assert_close(y.float(), exact, rtol=2 ** -8, atol=1e-5)


def test_autocast_through_layers_of_another_dtype(rng):
    """Sparse fp32 layers chained under bf16 autocast: each takes the previous one's bf16 output (cast
    to fp32) and gives bf16, as nn.Linear layers do; a bf16 layer under fp16 autocast the same way."""
    model = nn.Sequential(pruned_linear(rng, 128, 128), nn.ReLU(), pruned_linear(rng, 64, 128))
    first, second = model[0], model[2]
    with torch.no_grad():
        x = torch.randn(5, 128, generator=rng)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16
        # each layer's fp32 product, rounded to bf16 as autocast hands it on
        h = torch.relu(first(x).bfloat16().float())
        want = second(h).bfloat16()
        # the sparse sums' order may round an element of h to the bf16 neighbour (2^-8 of it): the second
        # layer carries that through its weights' magnitudes; then one bf16 step of the output itself
        bound = 2 ** -8 * (h.abs() @ second.weight.abs().t()) + 2 ** -7 * want.float().abs() + 1e-4
        sparsify_(model, keep_dense=False, progress=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
        assert got.dtype == torch.bfloat16
        assert bool(((got.float() - want.float()).abs() <= bound).all()), (got.float() - want.float()).abs().max()
        half = SparseLinear.from_dense(pruned_linear(rng).to(torch.bfloat16), keep_dense=False)
        with torch.autocast("cpu", dtype=torch.float16):
            assert half(x).dtype == torch.float16 and half(x.bfloat16()).dtype == torch.float16


# ---------------------------------------------------------------------------------- bad arguments
def test_meta_weights_are_refused_naming_the_layer():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    with pytest.raises(ValueError, match="^0: weight: expected a weight with values, got one on the meta device"):
        sparsify_(model, progress=False)
    with pytest.raises(ValueError, match="linear.weight: expected a weight with values"):
        SparseLinear.from_dense(model[0], keep_dense=False)
    report = sparsify_(model, filter_fn=lambda module, fqn: False, progress=False)  # filtered out: not read
    assert report.n_swapped == 0 and len(report.layers) == 2


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_sparsify_min_sparsity_not_a_number(rng, value):
    with pytest.raises(ValueError, match="min_sparsity: expected a fraction in"):
        sparsify_(nn.Sequential(pruned_linear(rng)), min_sparsity=value, progress=False)


def test_sparsify_tokens_not_a_sequence(rng):
    with pytest.raises(TypeError, match=r"tokens: expected a sequence of token counts, e\.g\. \(1,\)"):
        sparsify_(nn.Sequential(pruned_linear(rng)), tokens=1, progress=False)


def test_sparsify_tokens_beyond_the_buckets(rng):
    import numpy as np

    model = nn.Sequential(pruned_linear(rng))
    sparsify_(model, tokens=(16,), buckets=np.array([[1, 1], [2, 16]]), progress=False, keep_dense=False)
    model = nn.Sequential(pruned_linear(rng))
    with pytest.raises(ValueError, match=r"tokens: 64 is beyond the last bucket of buckets=\(\(1, 1\), \(2, 16\)\)"):
        sparsify_(model, tokens=(1, 64), buckets=((1, 1), (2, 16)), progress=False)
    assert type(model[0]) is nn.Linear  # refused before any layer was touched
    sparsify_(model, tokens=(1, 16), buckets=((1, 1), (2, 16)), progress=False, keep_dense=False)
    assert type(model[0]) is SparseLinear


def test_load_with_the_arguments_of_save(rng, tmp_path):
    model = nn.Sequential(pruned_linear(rng))
    sparsify_(model, keep_dense=False, progress=False)
    cross.save(model, tmp_path / "saved")
    with pytest.raises(TypeError, match=r"path: expected the directory of a saved model, got a Sequential"):
        cross.load(model, tmp_path / "saved")
    with pytest.raises(TypeError, match="model: expected an nn.Module or None, got str"):
        cross.load(tmp_path / "saved", "model")


# ---------------------------------------------------------------------------------- CLI
def _cli_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    _out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cross"), err
    return lines[0]


def _config_dir(tmp_path, config: str = '{"model_type": "bert"}'):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(config)
    return path


@pytest.mark.parametrize("device, message", [
    ("gpu", "device 'gpu': expected cpu or cuda"),
    ("meta", "device meta: expected cpu or cuda (or cuda:INDEX), got meta"),
])
def test_cli_bad_device(device, message, tmp_path, capsys):
    assert message in _cli_error(capsys, "run", _config_dir(tmp_path), "--device", device)


def test_cli_model_dir_transformers_cannot_load(tmp_path, capsys):
    pytest.importorskip("transformers")
    model_dir = _config_dir(tmp_path)
    (model_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")  # a tokenizer, no weights
    line = _cli_error(capsys, "compile", model_dir, "--out", tmp_path / "out", "--device", "cpu")
    assert "expected a model and tokenizer that transformers can load" in line


@pytest.mark.parametrize("command", ["run", "compile"])
def test_cli_model_dir_without_a_tokenizer(command, tmp_path, capsys):
    """Without a vocabulary transformers may build a tokenizer that maps every word to [UNK]."""
    model_dir = _config_dir(tmp_path)
    (model_dir / "tokenizer_config.json").write_text("{}")
    args = [command, model_dir, "--device", "cpu"] + (["--out", tmp_path / "out"] if command == "compile" else [])
    line = _cli_error(capsys, *args)
    assert "expected a tokenizer that knows words, got one that maps 'hello world, this is a test' to unknown" in line


def test_cli_tokenizers_without_a_vocabulary_file_load(tmp_path):
    """Byte-level tokenizers need no vocabulary file; a real vocabulary passes the check."""
    transformers = pytest.importorskip("transformers")
    from cross.cli.hf import _check_tokenizer

    _check_tokenizer(tmp_path, transformers.ByT5Tokenizer())
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", ",", "this", "is", "a", "test"]))
    _check_tokenizer(tmp_path, transformers.BertTokenizer(str(vocab)))


@pytest.mark.parametrize("command", [
    lambda t, out: ["analyze", t / "w.safetensors", "--out", out],
    lambda t, out: ["plan", t / "w.safetensors", "--out", out],
    lambda t, out: ["compile", t / "model", "--out", out],
    lambda t, out: ["demo", "--out", out],
    lambda t, out: ["bench", "kernels", "--out", out],
    lambda t, out: ["bench", "model", "--out", out],
], ids=["analyze", "plan", "compile", "demo", "bench kernels", "bench model"])
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_cli_out_is_a_file(command, where, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" if where == "a file" else tmp_path / "file" / "sub"
    line = _cli_error(capsys, *command(tmp_path, out))
    assert "argument --out: expected a folder to write to" in line and "is a file" in line


# ---------------------------------------------------------------------------------- torch's fused paths
def _encoder(rng):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=rng)))
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    cross.prune.magnitude_prune_(encoder, 0.7)
    return encoder


def _encoder_outputs(encoder, x, mask):
    with torch.inference_mode():
        plain, masked = encoder(x), encoder(x, src_key_padding_mask=mask)
    return plain, masked[~mask]  # the fused path writes zeros at padded positions, the modules do not


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the dense encoder's fused path
def test_transformer_encoder_runs_its_sparse_linears_as_modules(rng, tmp_path):
    """nn.TransformerEncoderLayer's fused inference path reads linear1/linear2.weight and would
    bypass the SparseLinears: sparsify_ turns it off, unsparsify_ turns it back on."""
    encoder = _encoder(rng)
    x = torch.randn(2, 5, 64, generator=rng)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    want = _encoder_outputs(encoder, x, mask)
    report = cross.sparsify_(encoder, keep_dense=False, progress=False)
    assert report.n_swapped == 4 and isinstance(encoder.layers[1].linear2, SparseLinear)
    assert not encoder.use_nested_tensor and all(layer._forward_pre_hooks for layer in encoder.layers)
    for got, ref in zip(_encoder_outputs(encoder, x, mask), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

    cross.save(encoder, tmp_path / "enc")
    fresh = _encoder(rng)
    cross.load(tmp_path / "enc", fresh)
    for got, ref in zip(_encoder_outputs(fresh, x, mask), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

    assert cross.unsparsify_(encoder) == 4
    assert encoder.use_nested_tensor and not any(layer._forward_pre_hooks for layer in encoder.layers)
    for got, ref in zip(_encoder_outputs(encoder, x, mask), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_import_cross_gives_the_prune_helpers():
    import subprocess
    import sys

    code = "import cross; print(cross.prune.magnitude_prune_.__name__, cross.prune.wanda_prune_.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["magnitude_prune_", "wanda_prune_"]


# ---------------------------------------------------------------------------------- the CPU path said
def test_sparsify_on_the_cpu_says_the_layers_run_on_the_reference_executor(rng):
    from cross.runtime import ReferencePathWarning

    model = nn.Sequential(pruned_linear(rng), nn.ReLU(), pruned_linear(rng, 32, 64))
    with pytest.warns(ReferencePathWarning, match=r"sparsify_: 2 sparse layer\(s\) on the CPU \(0, \.\.\.\) run") as record:
        sparsify_(model, keep_dense=False, progress=False)
    assert len(record) == 1 and record[0].filename == __file__  # one warning, pointing at the caller
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferencePathWarning)
        sparsify_(nn.Sequential(pruned_linear(rng)), filter_fn=lambda m, n: False, progress=False)  # none swapped


def test_cli_sparsity_with_prune_none(tmp_path, capsys):
    line = _cli_error(capsys, "run", _config_dir(tmp_path), "--sparsity", "0.7", "--prune", "none")
    assert "--sparsity 0.7: expected --prune wanda or magnitude with it" in line


@pytest.mark.parametrize("lines", ["many", "few"])
def test_cli_output_into_a_closed_pipe(lines):
    """`cross ... | head`: no BrokenPipeError traceback, whether the pipe closes while the command
    writes (many lines) or before its buffered output is flushed (a few lines)."""
    import subprocess
    import sys

    few = ["--shapes", "llama-up", "--sparsities", "0.5", "--ns", "1", "--methods", "dense"] if lines == "few" else []
    proc = subprocess.Popen([sys.executable, "-m", "cross", "bench", "kernels", "--dry-run", *few],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": "src", "PYTHONUNBUFFERED": ""})
    if lines == "many":
        proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_float64_models_prune_and_are_refused_by_sparsify_naming_the_layer(rng):
    model = nn.Sequential(nn.Linear(64, 32)).double()
    cross.prune.magnitude_prune_(model, 0.7)
    assert float((model[0].weight == 0).double().mean()) == pytest.approx(0.7, abs=1 / 64)
    cross.prune.wanda_prune_(model, [torch.randn(4, 64, generator=rng).double()], 0.8)
    assert float((model[0].weight == 0).double().mean()) == pytest.approx(0.8, abs=1 / 64)
    with pytest.raises(TypeError, match=r"^0: weight: expected dtype in \(float32, float16, bfloat16\), got float64"):
        sparsify_(model, progress=False)


def test_sparsify_says_when_there_is_nothing_to_do(rng):
    with pytest.warns(UserWarning, match=r"nothing to do: Sequential holds no nn\.Linear layers \(subclasses"):
        report = sparsify_(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3)), progress=False)
    assert report.n_swapped == 0 and str(report).endswith("no nn.Linear layers")
    model = nn.Sequential(pruned_linear(rng))
    sparsify_(model, keep_dense=False, progress=False)
    with pytest.warns(UserWarning, match=r"\(1 SparseLinear already: sparsify_ ran on it before\)"):
        sparsify_(model, progress=False)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_fused_paths_off_after_sparsify_on_a_part(rng):
    """sparsify_ on the encoder's layers alone cannot reach the encoder: fused_paths_off does."""
    encoder = _encoder(rng)
    x = torch.randn(2, 5, 64, generator=rng)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    want = _encoder_outputs(encoder, x, mask)
    sparsify_(encoder.layers, keep_dense=False, progress=False)
    assert encoder.use_nested_tensor  # the part's sparsify_ did not see the encoder
    cross.nn.fused_paths_off(encoder)
    for got, ref in zip(_encoder_outputs(encoder, x, mask), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_load_into_a_meta_model_is_refused(rng, tmp_path):
    model = nn.Sequential(pruned_linear(rng), nn.ReLU())
    sparsify_(model, keep_dense=False, progress=False)
    cross.save(model, tmp_path / "saved")
    with torch.device("meta"):
        fresh = nn.Sequential(nn.Linear(128, 64), nn.ReLU())
    with pytest.raises(ValueError, match=r"model: expected a model with its tensors in memory, got '0.weight' "
                                         r"\(and 1 more\) on the meta device"):
        cross.load(tmp_path / "saved", fresh)


def test_weights_tied_between_sparse_layers_stay_tied_through_save_and_load(rng, tmp_path):
    def model_of_two():
        model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
        model[2].weight = model[0].weight
        return model

    model = model_of_two()
    cross.prune.magnitude_prune_(model, 0.7)
    sparsify_(model, keep_dense=False, progress=False)
    cross.save(model, tmp_path / "saved")
    fresh = model_of_two()
    cross.load(tmp_path / "saved", fresh)
    unsparsify_(fresh)
    assert fresh[0].weight is fresh[2].weight and float((fresh[0].weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)


def test_an_edit_of_the_state_dict_leaves_the_layer_as_it_was(rng):
    """The state dict's weight is a copy: zeroing it in place changes neither the dense copy the
    fallback buckets use nor the packed form."""
    layer = SparseLinear.from_dense(pruned_linear(rng), keep_dense=True)
    x = torch.randn(5, 128, generator=rng)
    with torch.no_grad():
        before = layer(x)
        layer.state_dict()["weight"].zero_()
        assert torch.equal(layer(x), before) and layer.dense_weight.abs().sum() > 0
