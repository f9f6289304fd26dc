"""stack_siblings_ / unstack_siblings_: sibling layers as views of one stacked product.

Outputs are checked against an fp64 product of the siblings' own weights, the round trip bit for
bit, and the reuse of the stacked product by counting the stacked layer's calls.
"""

from __future__ import annotations

import copy
import warnings
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cross
from cross.nn import SiblingLinear, SparseLinear, sparsify_, stack_siblings_, unsparsify_, unstack_siblings_
from cross.nn.sparsify import SPARSE
from cross.prune import magnitude_prune_
from runtime_checks import check_product
from test_nn import WINNING, seeded


class Attention(nn.Module):
    """The pattern stack_siblings_ looks for: q, k, v read one input; o reads their result."""

    def __init__(self, d=24, kv=8, bias=True):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=bias), nn.Linear(d, kv, bias=bias)
        self.v_proj, self.o_proj = nn.Linear(d, kv, bias=bias), nn.Linear(d + 2 * kv, d, bias=bias)

    def forward(self, x):
        return self.o_proj(torch.cat([self.q_proj(x), self.k_proj(x).relu(), self.v_proj(x) * 2], -1))


class Block(nn.Module):
    def __init__(self, d=24, bias=True):
        super().__init__()
        self.attn = Attention(d, bias=bias)
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, 40, bias=bias), nn.Linear(d, 40, bias=bias), \
            nn.Linear(40, d, bias=bias)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def reference(layers, x):
    """fp64 outputs of each layer from its own weight."""
    return [torch.nn.functional.linear(x.double(), m.weight.double(), None if m.bias is None else m.bias.double())
            for m in layers]


def counting(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_stack_finds_siblings_and_keeps_the_function(bias, rng):
    model = seeded(rng, lambda: nn.Sequential(Block(bias=bias), Block(bias=bias)))
    dense = copy.deepcopy(model)
    x = torch.randn(3, 5, 24, generator=rng)
    groups = stack_siblings_(model)
    assert sorted(groups) == [["0.attn.q_proj", "0.attn.k_proj", "0.attn.v_proj"], ["0.gate_proj", "0.up_proj"],
                              ["1.attn.q_proj", "1.attn.k_proj", "1.attn.v_proj"], ["1.gate_proj", "1.up_proj"]]
    q, k, v = model[0].attn.q_proj, model[0].attn.k_proj, model[0].attn.v_proj
    assert all(isinstance(m, SiblingLinear) for m in (q, k, v)) and type(model[0].attn.o_proj) is nn.Linear
    assert k.lead is q and v.lead is q and q.stacked.weight.shape == (40, 24)
    assert (k.in_features, k.out_features) == (24, 8) and torch.equal(k.weight, dense[0].attn.k_proj.weight)
    assert ("0.attn.q_proj.stacked.weight" in model.state_dict()
            and not any(".k_proj." in key or ".v_proj." in key for key in model.state_dict()))
    assert len(list(model.parameters())) == len(list(dense.parameters())) - (12 if bias else 6)  # 5 weights -> 2 a block
    with torch.no_grad():
        for s, d in ((q, dense[0].attn.q_proj), (k, dense[0].attn.k_proj), (v, dense[0].attn.v_proj)):
            got = s(x)
            torch.testing.assert_close(got.double(), reference([d], x)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


def test_stacked_product_runs_once_per_input(rng):
    block = seeded(rng, Block)
    stack_siblings_(block)
    calls, mlp_calls = counting(block.attn.q_proj.stacked), counting(block.gate_proj.stacked)
    x = torch.randn(4, 24, generator=rng)
    with torch.no_grad():
        block(x)
        assert calls[0] == 1 and mlp_calls[0] == 1
        a = block.attn
        q, k = a.q_proj(x), a.k_proj(x)
        assert calls[0] == 2 and a.q_proj._cache is not None
        y = torch.randn(4, 24, generator=rng)
        with pytest.warns(cross.nn.SiblingInputWarning, match="attn.q_proj / attn.k_proj / attn.v_proj") as caught:
            v_other = a.v_proj(y)  # another input: computed again, from y
        assert caught[0].filename == __file__
        assert calls[0] == 3
        want = reference([a.v_proj], y)[0]
        torch.testing.assert_close(v_other.double(), want, rtol=1e-5, atol=1e-5)
        a.q_proj(x), a.q_proj(x)  # q twice: the second is computed again
        assert calls[0] == 5


class Mutating(nn.Module):
    """A parent that changes its input in place between the siblings' calls."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(24, 24), nn.Linear(24, 8), nn.Linear(24, 8)

    def forward(self, x):
        q = self.q_proj(x)
        x.mul_(-1)
        return q, self.k_proj(x), self.v_proj(x)


def test_input_changed_in_place_between_siblings(rng):
    """With a version counter (outside inference mode) a change in place between the siblings' calls
    is seen and the product computed again, eager and compiled."""
    module = seeded(rng, Mutating)
    stack_siblings_(module)
    calls = counting(module.q_proj.stacked)
    compiled = torch.compile(module, backend="eager")
    # eagerly: q's product, then k's (v shares k's); compiled: each sibling runs the stacked layer whole
    for run, products in ((module, 2), (compiled, 3)):
        calls[0] = 0
        with torch.no_grad():
            x = torch.randn(2, 24, generator=rng)
            x0 = x.clone()
            q, k, v = run(x)
        torch.testing.assert_close(q.double(), reference([module.q_proj], x0)[0], rtol=1e-5, atol=1e-5)
        for sibling, y in ((module.k_proj, k), (module.v_proj, v)):
            torch.testing.assert_close(y.double(), reference([sibling], -x0)[0], rtol=1e-5, atol=1e-5)
        assert calls[0] == products


def test_inference_tensor_changed_in_place_is_the_documented_limit(rng):
    """Inference tensors have no version counter: a change in place between the siblings' calls
    goes unseen, and k is computed from the input as it was at q's call (the limit the module's
    docstring states)."""
    module = seeded(rng, Mutating)
    stack_siblings_(module)
    with torch.inference_mode():
        x = torch.randn(2, 24, generator=rng)
        x0 = x.clone()
        _, k, _ = module(x)
    torch.testing.assert_close(k.double(), reference([module.k_proj], x0)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::cross.nn.SiblingInputWarning")  # q called again before v
def test_product_lives_one_call_of_the_parent(rng):
    """The parent's forward hooks drop the shared product; a sibling called outside it shares it
    only until the stacked weight changes, and copies hold none."""
    block = seeded(rng, Block)
    stack_siblings_(block)
    attn = block.attn
    x = torch.randn(3, 24, generator=rng, requires_grad=True)
    attn(x)
    assert attn.q_proj._cache is None and block.gate_proj._cache is None
    attn.q_proj(x)  # outside the parent's call: kept for k and v, with its autograd graph
    assert attn.q_proj._cache is not None
    copied = copy.deepcopy(block)
    assert copied.attn.q_proj._cache is None and copied.attn.k_proj.lead is copied.attn.q_proj
    with torch.no_grad():
        attn.q_proj.stacked.weight.zero_()
        k = attn.k_proj(x)
        assert float(k.abs().max()) == float(attn.k_proj.bias.abs().max())  # the zeroed weight's product
        xh = x.detach().half()
        attn.half().q_proj(xh)
        stacked = attn.q_proj.stacked
        stacked.weight = nn.Parameter(torch.zeros_like(stacked.weight))  # a new weight object, same version
        assert torch.equal(attn.k_proj(xh), attn.k_proj.bias.expand(3, -1))  # from it, not from the shared product


def test_cross_attention_is_not_stacked_by_name(rng):
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.encoder_attn = Attention(), Attention()

    model = seeded(rng, Decoder)
    assert stack_siblings_(model) == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]]
    assert type(model.encoder_attn.k_proj) is nn.Linear


def test_unstack_gives_the_layers_back_exactly(rng):
    model = seeded(rng, lambda: nn.Sequential(Block(), Block(bias=False)))
    dense = copy.deepcopy(model)
    stack_siblings_(model)
    assert unstack_siblings_(model) == 10
    assert not any(isinstance(m, SiblingLinear) for m in model.modules())
    got, want = model.state_dict(), dense.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def test_groups_given_and_refused(rng):
    block = seeded(rng, Block)
    assert stack_siblings_(block, groups=[["attn.k_proj", "attn.v_proj"]]) == [["attn.k_proj", "attn.v_proj"]]
    assert type(block.attn.q_proj) is nn.Linear and isinstance(block.attn.v_proj, SiblingLinear)
    fresh = seeded(rng, Block)
    with pytest.raises(ValueError, match="one in_features"):
        stack_siblings_(fresh, groups=[["attn.q_proj", "down_proj"]])
    with pytest.raises(ValueError, match="no attribute|no such|has no"):
        stack_siblings_(fresh, groups=[["attn.q_proj", "attn.nope"]])
    with pytest.raises(ValueError, match="two or more"):
        stack_siblings_(fresh, groups=[["attn.q_proj"]])
    with pytest.raises(ValueError, match="expected nn.Linear"):
        stack_siblings_(block, groups=[["attn.v_proj", "attn.q_proj"]])  # v_proj is stacked already
    with pytest.raises(ValueError, match="one dtype"):
        fresh.attn.k_proj.half()
        stack_siblings_(fresh, groups=[["attn.q_proj", "attn.k_proj"]])
    with pytest.raises(ValueError, match="one group"):
        stack_siblings_(fresh, groups=[["attn.q_proj", "gate_proj"], ["up_proj", "gate_proj"]])
    assert type(fresh.attn.q_proj) is nn.Linear  # nothing stacked where a group is refused
    with pytest.raises(TypeError, match="nn.Module"):
        stack_siblings_("model")


def test_shared_layers_are_left_alone(rng):
    block = seeded(rng, Block)
    block.alias = block.attn.k_proj  # k held in two places: not stacked by name
    assert stack_siblings_(block) == [["gate_proj", "up_proj"]]


def test_sparsify_stacked_model_and_back(rng):
    """sparsify_(stack_siblings=True) plans the stacked layers (CPU: the reference executor), the
    outputs agree with the pruned dense model, and unsparsify_ then unstack_siblings_ give its
    weights back exactly."""
    model = seeded(rng, lambda: nn.Sequential(Block(d=64), Block(d=64)))
    magnitude_prune_(model, 0.7)
    dense = copy.deepcopy(model)
    with pytest.warns(cross.runtime.ReferencePathWarning):
        report = sparsify_(model, stack_siblings=True, progress=False, cost_model=WINNING)
    assert "0.attn.q_proj.stacked" in report.layers and report.layers["0.attn.q_proj.stacked"].shape == (80, 64)
    assert report.layers["0.gate_proj.stacked"].action == SPARSE and "0.attn.k_proj" not in report.layers
    assert isinstance(model[0].attn.q_proj.stacked, SparseLinear)
    assert model[0].attn.k_proj.weight.is_meta and model[0].attn.k_proj.weight.shape == (8, 64)
    x = torch.randn(2, 3, 64, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-4, atol=1e-4)
        assert unsparsify_(model) == 8 and unstack_siblings_(model) == 10
    got, want = model.state_dict(), dense.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)
    with pytest.raises(ValueError, match="tp_group"):
        sparsify_(seeded(rng, Block), stack_siblings=True, tp_group=object())


def test_unstack_sparse_stacked_layer_directly(rng):
    block = seeded(rng, lambda: Block(d=64))
    magnitude_prune_(block, 0.8)
    dense = copy.deepcopy(block)
    with pytest.warns(cross.runtime.ReferencePathWarning):
        sparsify_(block, stack_siblings=True, progress=False, cost_model=WINNING)
    assert unstack_siblings_(block) == 5  # SparseLinear stacked layers decoded on the way
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "gate_proj", "up_proj"):
        assert type(block.get_submodule(name)) is nn.Linear
        assert torch.equal(block.get_submodule(name).weight, dense.get_submodule(name).weight)


def test_hf_llama_stacked_sparse_save_load(rng, tmp_path):
    """A Hugging Face Llama: the siblings are found, the logits agree, and the saved stacked model
    loads into a fresh model stacked the same way."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=100)
    model = seeded(rng, lambda: transformers.LlamaForCausalLM(config)).eval()
    magnitude_prune_(model, 0.7)
    fresh = copy.deepcopy(model)
    dense = copy.deepcopy(model)
    inputs = {"input_ids": torch.randint(100, (2, 11), generator=rng)}
    with pytest.warns(cross.runtime.ReferencePathWarning):
        report = sparsify_(model, lambda m, fqn: fqn != "lm_head", stack_siblings=True, progress=False,
                           cost_model=WINNING)
    assert sorted(n for n in report.by_action(SPARSE) if n.startswith("model.layers.0.")) == [
        "model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj.stacked", "model.layers.0.self_attn.o_proj",
        "model.layers.0.self_attn.q_proj.stacked"]
    with torch.no_grad():
        want = dense(**inputs).logits
        got = model(**inputs).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        cross.save(model, tmp_path / "saved")
        other = seeded(rng, lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100))).eval()
        own = other.model.layers[0].mlp.up_proj
        with pytest.raises(ValueError, match="gate_proj.stacked"):
            cross.load(tmp_path / "saved", other)  # another MLP width: refused, and left as it was
        assert not any(isinstance(m, SiblingLinear) for m in other.modules())
        assert other.model.layers[0].mlp.up_proj is own and not other.model.layers[0].mlp._forward_hooks
        cross.load(tmp_path / "saved", fresh)  # stacked as the saved model was
        assert isinstance(fresh.model.layers[1].mlp.up_proj, SiblingLinear)
        assert torch.equal(fresh(**inputs).logits, got)


def test_compiled_stacked_model(rng):
    model = seeded(rng, Block)
    dense = copy.deepcopy(model)
    stack_siblings_(model)
    x = torch.randn(3, 24, generator=rng)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), dense(x), rtol=1e-5, atol=1e-5)
        y = torch.randn(5, 24, generator=rng)
        torch.testing.assert_close(compiled(y), dense(y), rtol=1e-5, atol=1e-5)
    assert model.attn.q_proj._cache is None and model.gate_proj._cache is None


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 3, 16, 40])
def test_gpu_stacked_sparse_siblings_in_cuda_graph(tokens, rng):
    """Stacked sparse q, k, v on the GPU's kernels, replayed in a CUDA graph with the outputs
    poisoned first, each sibling against the fp64 product of its own pruned weight."""
    attn = seeded(rng, lambda: Attention(d=512, kv=128)).cuda().to(torch.bfloat16)
    magnitude_prune_(attn, 0.8)
    weights = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    sparsify_(attn, stack_siblings=True, progress=False, keep_dense=False, measure=False)
    assert isinstance(attn.q_proj.stacked, SparseLinear)
    x = torch.randn(tokens, 512, generator=rng).cuda().to(torch.bfloat16)
    with torch.inference_mode():
        siblings = lambda: [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]  # noqa: E731
        siblings()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = siblings()
        for y in outs:
            y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
    assert outs[1].data_ptr() == outs[0].data_ptr() + 512 * outs[0].element_size()
    for (w, b), y in zip(weights, outs):
        check_product(x, w, b, y)


def test_hf_models_share_the_product(rng):
    """In Hugging Face's BERT and Llama (generate, with its cache) each group's stacked layer runs
    once per forward, with no SiblingInputWarning: the siblings are called with one input tensor."""
    transformers = pytest.importorskip("transformers")
    bert = seeded(rng, lambda: transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100))).eval()
    llama = seeded(rng, lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100))).eval()
    stack_siblings_(bert), stack_siblings_(llama)
    bert_calls = counting(bert.encoder.layer[1].attention.self.query.stacked)
    attn_calls = counting(llama.model.layers[1].self_attn.q_proj.stacked)
    mlp_calls = counting(llama.model.layers[1].mlp.gate_proj.stacked)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cross.nn.SiblingInputWarning)
        with torch.inference_mode():
            bert(input_ids=torch.randint(100, (2, 7), generator=rng))
            llama.generate(torch.randint(100, (1, 5), generator=rng), max_new_tokens=3, do_sample=False,
                           min_new_tokens=3)
    assert bert_calls[0] == 1 and attn_calls[0] == mlp_calls[0] == 3  # the prompt, then two new tokens


def test_hf_t5_and_distilbert_siblings(rng):
    """T5 (gated MLP): each block's self-attention q, k, v and wi_0, wi_1 are stacked, the decoder's
    cross-attention (EncDecAttention) is not; generate's tokens and the logits are the unstacked
    model's, and each stacked layer runs once per forward. DistilBERT: q_lin, k_lin, v_lin."""
    transformers = pytest.importorskip("transformers")
    t5 = seeded(rng, lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0))).eval()
    distil = seeded(rng, lambda: transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=100, dim=32, hidden_dim=64, n_layers=2, n_heads=4))).eval()
    plain_t5, plain_distil = copy.deepcopy(t5), copy.deepcopy(distil)
    groups = stack_siblings_(t5)
    assert ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.0.layer.0.SelfAttention.k",
            "encoder.block.0.layer.0.SelfAttention.v"] in groups
    assert ["decoder.block.1.layer.2.DenseReluDense.wi_0", "decoder.block.1.layer.2.DenseReluDense.wi_1"] in groups
    assert len(groups) == 8  # 2 encoder + 2 decoder blocks x (self-attention, MLP)
    assert type(t5.decoder.block[0].layer[1].EncDecAttention.k) is nn.Linear
    assert stack_siblings_(distil) == [[f"transformer.layer.{i}.attention.{n}" for n in ("q_lin", "k_lin", "v_lin")]
                                       for i in range(2)]
    encoder_calls = counting(t5.encoder.block[1].layer[0].SelfAttention.q.stacked)
    decoder_calls = counting(t5.decoder.block[1].layer[0].SelfAttention.q.stacked)
    mlp_calls = counting(t5.decoder.block[1].layer[2].DenseReluDense.wi_0.stacked)
    distil_calls = counting(distil.transformer.layer[1].attention.q_lin.stacked)
    ids = torch.randint(100, (2, 7), generator=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cross.nn.SiblingInputWarning)
        with torch.no_grad():
            got = t5.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            assert encoder_calls[0] == 1 and decoder_calls[0] == mlp_calls[0] == 4
            assert torch.equal(got, plain_t5.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False))
            labels = torch.randint(100, (2, 5), generator=rng)
            torch.testing.assert_close(t5(input_ids=ids, labels=labels).logits,
                                       plain_t5(input_ids=ids, labels=labels).logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(distil(input_ids=ids).last_hidden_state,
                                       plain_distil(input_ids=ids).last_hidden_state, rtol=1e-5, atol=1e-5)
            assert distil_calls[0] == 1


def test_siblings_take_their_rows_where_the_stacked_plan_falls_back(rng, monkeypatch):
    """Where the stacked SparseLinear's plan falls back to its dense copy above APART_ABOVE_TOKENS
    tokens (a prefill), each sibling runs its own rows of the copy (no stacked call, contiguous
    outputs, the layers apart's products); where the plan runs, or a fallback at fewer tokens, the
    product is shared as before."""
    from test_boundary import MIXED  # the plan wins up to 128 tokens only

    attn = seeded(rng, lambda: Attention(d=256, kv=64))
    magnitude_prune_(attn, 0.9)
    apart = copy.deepcopy([attn.q_proj, attn.k_proj, attn.v_proj])
    sparsify_(attn, stack_siblings=True, progress=False, cost_model=MIXED)
    stacked = attn.q_proj.stacked
    assert isinstance(stacked, SparseLinear) and stacked.runs_dense_copy(200) and not stacked.runs_dense_copy(3)
    calls = counting(stacked)
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    for tokens, products in ((200, 0), (3, 1)):
        calls[0] = 0
        x = torch.randn(tokens, 256, generator=rng)
        with torch.no_grad():
            outs = [m(x) for m in layers]
        assert calls[0] == products
        assert all(y.is_contiguous() for y in outs) == (tokens == 200)  # apart: each its own tensor
        for y, want in zip(outs, reference(apart, x)):
            torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(cross.nn.stack, "APART_ABOVE_TOKENS", 256)  # 200 tokens: one stacked cuBLAS call
    calls[0] = 0
    with torch.no_grad():
        outs = [m(torch.randn(200, 256, generator=rng)) for m in layers[:1]]
    assert calls[0] == 1 and not outs[0].is_contiguous()
    with pytest.raises(ValueError, match="a call that runs the dense copy"):
        stacked.forward_rows(torch.randn(3, 256), 0, 64)


def test_forward_rows_keeps_the_layers_checks(rng):
    """forward_rows refuses what forward refuses (an input of another dtype, one that needs grad)
    and gives forward's rows where the call runs the dense copy."""
    from test_boundary import MIXED

    linear = seeded(rng, lambda: nn.Linear(256, 96))
    magnitude_prune_(linear, 0.9)
    layer = SparseLinear.from_dense(linear, cost_model=MIXED)
    x = torch.randn(200, 256, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(layer.forward_rows(x, 32, 96), layer(x)[:, 32:96], rtol=1e-6, atol=1e-6)
        errors = []
        for call in (lambda: layer.forward_rows(x.double(), 0, 8), lambda: layer(x.double())):
            with pytest.raises(Exception) as error:
                call()
            errors.append((type(error.value), str(error.value)))
        assert errors[0] == errors[1] and "float64" in errors[0][1]
        with pytest.raises(ValueError, match="rows within 0..96"):
            layer.forward_rows(x, 90, 100)
    with pytest.raises(RuntimeError, match="inference-only"):
        layer.forward_rows(x.requires_grad_(), 0, 8)


def test_dense_siblings_apart_above_the_threshold(rng):
    """A stacked nn.Linear runs each sibling's rows alone above APART_ABOVE_TOKENS tokens (contiguous
    outputs, the stacked layer not called), and one stacked product at or below it."""
    from cross.nn.stack import APART_ABOVE_TOKENS

    attn = seeded(rng, Attention)
    apart = copy.deepcopy([attn.q_proj, attn.k_proj, attn.v_proj])
    stack_siblings_(attn)
    calls = counting(attn.q_proj.stacked)
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    for tokens, products in ((APART_ABOVE_TOKENS + 1, 0), (APART_ABOVE_TOKENS, 1)):
        calls[0] = 0
        x = torch.randn(tokens, 24, generator=rng)
        with torch.no_grad():
            outs = [m(x) for m in layers]
        assert calls[0] == products and all(y.is_contiguous() for y in outs) == (products == 0)
        for y, want in zip(outs, reference(apart, x)):
            torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
