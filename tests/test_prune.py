"""Magnitude and Wanda pruning: exact counts, the right weights kept, model-level plumbing."""

import pytest
import torch
from torch import nn

from cross.prune import magnitude_prune, magnitude_prune_, wanda_prune, wanda_prune_

SHAPES = [(1, 1), (17, 33), (100, 300), (130, 70)]
SPARSITIES = [0.0, 0.5, 0.9, 0.99]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def seeded(rng: torch.Generator, build):
    """Run `build` (a module constructor that draws from the global RNG) with a seed taken from
    the test's generator, so the printed seed replays it, without touching the global state."""
    seed = int(torch.randint(2**31, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def random_signs(shape, rng: torch.Generator) -> torch.Tensor:
    """+-1 each; not randn().sign(), which is 0 about once in 3e7 draws (an exact-zero normal)."""
    return torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0)


def zeros_per_row(weight: torch.Tensor) -> torch.Tensor:
    return (weight == 0).sum(dim=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_magnitude_exact_count_keeps_largest(shape, sparsity, dtype, rng):
    weight = ((torch.rand(shape, generator=rng) + 0.01) * random_signs(shape, rng)).to(dtype)
    before = weight.clone()
    pruned = magnitude_prune(weight, sparsity)
    n_prune = round(sparsity * weight.numel())
    assert pruned.dtype == dtype and pruned.shape == weight.shape
    assert int((pruned == 0).sum()) == n_prune
    assert torch.equal(weight, before)  # a new tensor, the input untouched
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])
    if 0 < n_prune < weight.numel():
        assert weight[~kept].abs().max() <= weight[kept].abs().min()


def test_magnitude_ties_go_to_lower_index():
    pruned = magnitude_prune(torch.ones(4, 5), 0.5)
    assert torch.equal(pruned.flatten(), torch.tensor([0.0] * 10 + [1.0] * 10))


def test_magnitude_keeps_nan():
    weight = torch.tensor([[float("nan"), 0.1, 2.0, -3.0]])
    pruned = magnitude_prune(weight, 0.5)
    assert torch.isnan(pruned[0, 0]) and pruned[0, 1] == 0 and pruned[0, 2] == 0 and pruned[0, 3] == -3.0


def two_scales(rng):
    """Two layers, |w| uniform in [0, 1) and in [0, 10)."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(64, 64, generator=rng) - 0.5)
        model[1].weight.copy_(10 * (torch.rand(64, 64, generator=rng) - 0.5))
    return model


def test_magnitude_layer_vs_global_scope(rng):
    layer = magnitude_prune_(two_scales(rng), 0.5, scope="layer")
    assert layer == {"0": 0.5, "1": 0.5}

    model = two_scales(rng)
    before = torch.cat([model[0].weight.flatten(), model[1].weight.flatten()])
    glob = magnitude_prune_(model, 0.5, scope="global")
    # One threshold t over both: the small layer loses t, the large one t / 10 (t about 0.91).
    assert glob["0"] > 0.85 and glob["1"] < 0.15
    assert (glob["0"] + glob["1"]) / 2 == 0.5
    kept = torch.cat([model[0].weight.flatten(), model[1].weight.flatten()]) != 0
    assert before[~kept].abs().max() <= before[kept].abs().min()


def test_magnitude_filter_fn(rng):
    model = two_scales(rng)
    untouched = model[1].weight.clone()
    result = magnitude_prune_(model, 0.9, filter_fn=lambda module, name: name == "0")
    assert result == {"0": round(0.9 * 4096) / 4096}
    assert torch.equal(model[1].weight, untouched)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(sparsity=1.0), ValueError, r"sparsity: expected a number in \[0, 1\), got 1.0"),
        (dict(sparsity=-0.1), ValueError, r"sparsity: expected a number in \[0, 1\), got -0.1"),
        (dict(sparsity="0.5"), ValueError, r"sparsity: expected a number in \[0, 1\), got '0.5'"),
        (dict(sparsity=0.5, scope="row"), ValueError, r"scope: expected one of \('layer', 'global'\), got 'row'"),
        (
            dict(sparsity=0.5, filter_fn=lambda m, n: False),
            ValueError,
            r"expected at least one nn.Linear selected by filter_fn, got none \(the model has 2\)",
        ),
    ],
    ids=["one", "negative", "string", "scope", "no_match"],
)
def test_magnitude_errors(kwargs, error, message, rng):
    with pytest.raises(error, match=message):
        magnitude_prune_(two_scales(rng), **kwargs)


def test_model_errors():
    with pytest.raises(ValueError, match=r"got none \(the model has 0\)"):
        magnitude_prune_(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(TypeError, match="model: expected an nn.Module, got Tensor"):
        magnitude_prune_(torch.ones(4, 4), 0.5)
    with pytest.raises(ValueError, match=r"expected a 2-D tensor"):
        magnitude_prune(torch.ones(4), 0.5)


def scaled_features(rng, n_tokens=64):
    """Inputs whose features 0-3 are 100x larger than features 4-7, and a first layer whose
    weights on features 0-3 are 10x smaller: Wanda (|w| * norm) keeps features 0-3, magnitude
    pruning would keep 4-7."""
    x = torch.randn(n_tokens, 8, generator=rng)
    x[:, :4] *= 100
    model = seeded(rng, lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    sign = random_signs((16, 8), rng)
    magnitude = torch.rand(16, 8, generator=rng) + 1.0
    magnitude[:, :4] /= 10
    with torch.no_grad():
        model[0].weight.copy_(sign * magnitude)
    return model, x


def test_wanda_keeps_high_norm_features(rng):
    model, x = scaled_features(rng)
    first = model[0].weight.clone()
    assert torch.all(magnitude_prune(first, 0.5)[:, :4] == 0)  # norms ignored: the wrong half
    wanda_prune_(model, x, 0.5)
    assert torch.all(model[0].weight[:, :4] != 0)
    assert torch.all(model[0].weight[:, 4:] == 0)
    assert torch.equal(model[0].weight, wanda_prune(first, x.norm(dim=0), 0.5))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_wanda_per_row_exact(sparsity, rng):
    model, x = scaled_features(rng)
    result = wanda_prune_(model, x, sparsity)
    for name, k in [("0", 8), ("2", 16)]:
        layer = model[int(name)].weight
        assert torch.all(zeros_per_row(layer) == round(sparsity * k))
        assert result[name] == round(sparsity * k) / k


def test_wanda_batches_accumulate(rng):
    """A list of batches gives the norms of their concatenation."""
    model, x = scaled_features(rng, n_tokens=96)
    copy = seeded(rng, lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    copy.load_state_dict(model.state_dict())
    wanda_prune_(model, [x[:32], x[32:]], 0.5)
    wanda_prune_(copy, x, 0.5)
    for a, b in zip(model.parameters(), copy.parameters()):
        assert torch.equal(a, b)


def test_wanda_forward_fn_and_restores_state(rng):
    model, x = scaled_features(rng)
    model.train()
    model[2].eval()
    calls = []

    def forward_fn(m, inputs):
        calls.append(m.training)
        return m(inputs["features"])

    wanda_prune_(model, {"features": x}, 0.5, forward_fn=forward_fn, filter_fn=lambda m, name: name == "2")
    assert calls == [False]  # calibration runs in eval mode
    assert model.training and model[0].training and not model[2].training
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert torch.all(model[0].weight != 0)
    assert torch.all(zeros_per_row(model[2].weight) == 8)


def test_wanda_restores_hooks_on_error(rng):
    model, _ = scaled_features(rng)
    with pytest.raises(RuntimeError):
        wanda_prune_(model, torch.ones(4, 3), 0.5)  # wrong feature count: the forward fails
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "inputs, message",
    [
        (None, r"calibration_inputs: expected the inputs of a forward pass, got None"),
        ([], r"calibration_inputs: expected .* got an empty list"),
        ("text", r"calibration_inputs: expected a tensor, a dict of tensors, or a non-empty list of them, got str"),
    ],
    ids=["none", "empty", "str"],
)
def test_wanda_missing_calibration(inputs, message, rng):
    model, _ = scaled_features(rng)
    with pytest.raises(ValueError, match=message):
        wanda_prune_(model, inputs, 0.5)


class WithUnusedHead(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.body(x)


def test_wanda_unused_linear(rng):
    body, x = scaled_features(rng)
    model = WithUnusedHead(body)
    with pytest.raises(ValueError, match=r"got none for \['unused'\]"):
        wanda_prune_(model, x, 0.5)
    wanda_prune_(model, x, 0.5, filter_fn=lambda m, name: name != "unused")
    assert torch.all(model.unused.weight != 0)


def test_wanda_prune_errors(rng):
    weight = torch.randn(4, 8, generator=rng)
    with pytest.raises(ValueError, match=r"input_norms: expected a tensor of shape \(8,\) .* got \(4,\)"):
        wanda_prune(weight, torch.ones(4), 0.5)
    with pytest.raises(ValueError, match="input_norms: expected nonnegative norms"):
        wanda_prune(weight, -torch.ones(8), 0.5)
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\), got 1"):
        wanda_prune(weight, torch.ones(8), 1)


def test_wanda_tiny_bert(rng, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    model = seeded(rng, lambda: transformers.BertModel(config))
    batch = {
        "input_ids": torch.randint(100, (2, 16), generator=rng),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    result = wanda_prune_(model, [batch, batch], 0.5)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(result) == set(linears) and len(linears) == 13
    for name, module in linears.items():
        assert result[name] == 0.5
        assert torch.all(zeros_per_row(module.weight) == module.in_features // 2), name
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()


class _TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_a_head_tied_to_an_embedding_is_left_out(method, rng):
    model = _TiedHead()
    before = model.emb.weight.clone()
    with pytest.warns(UserWarning, match=r"pruning leaves out \['head'\]: their weights are also held") as record:
        if method == "magnitude":
            report = magnitude_prune_(model, 0.7)
        else:
            report = wanda_prune_(model, torch.randn(6, 32, generator=rng), 0.7,
                                  forward_fn=lambda m, x: m.head(m.body(x)))
    assert record[0].filename == __file__
    assert list(report) == ["body"] and torch.equal(model.emb.weight, before)


def test_a_weight_shared_by_two_linears_counts_once_under_a_global_threshold(rng):
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16))
    model[1].weight = model[0].weight
    report = magnitude_prune_(model, 0.5, scope="global")
    assert list(report) == ["0", "2"]
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2))
    assert zeros == 256  # half of the 512 distinct weights, not of 768 counted with the shared one twice


def test_wanda_calibration_without_tokens_is_refused():
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match=r"expected every selected nn.Linear to see calibration tokens, got none"):
        wanda_prune_(model, torch.randn(0, 64), 0.5)


def test_wanda_calibration_of_the_wrong_width_gets_the_models_error(rng):
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(4x63 and 64x64\)"):
        wanda_prune_(model, torch.randn(4, 63, generator=rng), 0.5)
