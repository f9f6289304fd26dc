"""benchmarks/minilm_carry.py: the demo's MiniLM in bf16, under the device's 64 MiB carry limit, loads
as the model benchmark loads it and embeds as the fp32 model does."""

import torch

from scripts import load_benchmark


def test_the_bf16_copy_fits_the_carry_and_embeds_as_the_original(tmp_path):
    from cross.bench import models
    from cross.cli.demo import default_model_dir

    assert load_benchmark("minilm_carry").main([str(tmp_path / "minilm")]) == 0
    size = sum(p.stat().st_size for p in (tmp_path / "minilm").rglob("*") if p.is_file())
    assert size < 64 * 2**20
    copy = models.minilm(0.0, tmp_path / "minilm", device="cpu")
    original = models.minilm(0.0, default_model_dir(), device="cpu")
    x = copy.inputs(*copy.phases[0][1:])
    assert torch.equal(x["input_ids"], original.inputs(*original.phases[0][1:])["input_ids"])  # same tokenizer
    with torch.no_grad():
        a, b = copy.outputs(copy.model, x), original.outputs(original.model, x)
    assert torch.nn.functional.cosine_similarity(a.float(), b.float()).min() > 0.999
