"""Saved compiled models (cross.save / cross.load): a model built again from scratch gets bit-identical
outputs, and every damaged, missing, newer-format or mismatching input fails with a ValueError that
names the file, before the model is touched. Plans loaded onto another GPU are kept, with a warning."""

import json
import struct
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cross
import cross.nn.serialize as serialize
from cross import SparseLinear
from cross.costmodel import CostModel, GPUSpec
from cross.nn import PlanDeviceWarning

WINNING = CostModel(spec=GPUSpec(name="plan always wins", dense_launch_us=1000.0))
A100, H100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"


class Toy(nn.Module):
    """Two sparse layers (130 rows: partial tiles; one without bias), one shared under a second
    name, a head kept dense with its weight tied to the embedding, a norm and a buffer."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(10, 48)
        self.up = nn.Linear(48, 130)
        self.down = nn.Linear(130, 48, bias=False)
        self.again = self.up
        self.norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 10)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 48))
        self.to(dtype)

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h))) * self.scale
        h = h + self.down(torch.relu(self.again(h)))
        return self.head(self.norm(h))


def not_head(module, fqn):
    return fqn != "head"


def compiled_toy(rng, dtype=torch.float32, keep_dense=False) -> Toy:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=rng)))
        model = Toy(dtype)
    with torch.no_grad():
        for layer in (model.up, model.down):
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=rng) < 0.3)
        model.down.weight[:, 64:128] = 0  # empty tiles
    cross.sparsify_(model, not_head, cost_model=WINNING, keep_dense=keep_dense, progress=False)
    return model


def fresh_toy(dtype=torch.float32) -> Toy:
    """The same architecture with other random weights (as if built from a config)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        return Toy(dtype)


IDS = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 0]])


def outputs(model):
    with torch.no_grad():
        return model(IDS)


def resign(path, edit):
    """Apply edit(manifest) and sign the manifest again (what a deliberate edit must do)."""
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    manifest["manifest_sha256"] = serialize.manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    assert type(model.up) is nn.Linear and type(model.down) is nn.Linear and model.again is model.up
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture
def saved(tmp_path, rng):
    model = compiled_toy(rng)
    cross.save(model, tmp_path / "saved")
    return model, tmp_path / "saved"


# ---------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("keep_dense", [False, True], ids=["plan only", "dense copy kept"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_round_trip(dtype, keep_dense, tmp_path, rng):
    model = compiled_toy(rng, dtype, keep_dense)
    manifest = json.loads(cross.save(model, tmp_path).read_text())
    assert manifest["format"] == "cross.model" and manifest["format_version"] == serialize.FORMAT_VERSION == 7 and manifest["device"] == "cpu"
    assert [e["fqn"] for e in manifest["layers"]] == ["up", "down"]
    assert manifest["state"]["aliases"] == {"head.weight": "embed.weight"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", *manifest["files"]])

    target = fresh_toy(dtype)
    layers = cross.load(tmp_path, target)
    assert set(layers) == {"up", "down"} and target.up is layers["up"] and target.again is target.up
    assert type(target.head) is nn.Linear and target.head.weight is target.embed.weight
    assert torch.equal(outputs(target), outputs(model))
    for name in ("up", "down"):
        old, new = getattr(model, name), getattr(target, name)
        assert new.summary() == old.summary() and new.dense_kept == keep_dense
        assert np.array_equal(new.plan.kinds, old.plan.kinds) and new.plan.provenance == old.plan.provenance


def test_load_without_a_model(saved):
    model, path = saved
    layers = cross.load(path)
    assert set(layers) == {"up", "down"}
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        assert torch.equal(layers["up"](x), model.up(x))
        assert layers["down"].device == torch.device("cpu") and layers["down"].bias is None


def test_load_into_a_loaded_model_and_save_again(saved, tmp_path):
    model, path = saved
    target = fresh_toy()
    cross.load(path, target)
    cross.load(path, target)  # SparseLinear targets are replaced too
    cross.save(target, path)  # over the saved model
    again = fresh_toy()
    cross.load(path, again)
    assert torch.equal(outputs(again), outputs(model))


def test_save_refuses(tmp_path, saved):
    model, _ = saved
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty directory"):
        cross.save(model, tmp_path / "other")
    with pytest.raises(ValueError, match="got a file"):
        cross.save(model, tmp_path / "other" / "notes.txt")
    with pytest.raises(ValueError, match="got a SparseLinear itself"):
        cross.save(model.up, tmp_path / "layer")


# ---------------------------------------------------------------------------------------- damaged files
def _flip_positions(data: bytes, name: str) -> list[int]:
    """Bytes to flip: the start and end, and for safetensors files the header length, the JSON
    header and the tensor data."""
    spots = {0, len(data) // 2, len(data) - 1}
    if name.endswith(".safetensors"):
        n = int.from_bytes(data[:8], "little")
        spots |= {7, 8, 8 + n // 3, 8 + n - 1, 8 + n, (8 + n + len(data)) // 2}
    return sorted(p for p in spots if 0 <= p < len(data))


def _all_files(path):
    return ["manifest.json", *json.loads((path / "manifest.json").read_text())["files"]]


def test_flipped_byte_anywhere(saved):
    _, path = saved
    target, checked = fresh_toy(), 0
    before = state(target)
    for name in _all_files(path):
        original = (path / name).read_bytes()
        for pos in _flip_positions(original, name):
            damaged = bytearray(original)
            damaged[pos] ^= 0xFF
            (path / name).write_bytes(bytes(damaged))
            with pytest.raises(ValueError, match=name):
                cross.load(path, target)
            checked += 1
        (path / name).write_bytes(original)
    assert checked >= 30
    assert_unchanged(target, before)
    cross.load(path, target)  # the restored files load


@pytest.mark.parametrize("keep", [0, 0.5, -1], ids=["empty", "half", "last byte cut"])
def test_truncated_file(keep, saved):
    _, path = saved
    target = fresh_toy()
    before = state(target)
    for name in _all_files(path):
        original = (path / name).read_bytes()
        body = original.rstrip(b"\n") if name == "manifest.json" else original  # a newline less is the same JSON
        (path / name).write_bytes(body[: int(len(body) * keep) if keep >= 0 else len(body) - 1])
        with pytest.raises(ValueError, match=name) as e:
            cross.load(path, target)
        assert ("truncated" in str(e.value)) if name != "manifest.json" else ("JSON" in str(e.value))
        (path / name).write_bytes(original)
    assert_unchanged(target, before)


def test_missing_file(saved):
    _, path = saved
    for name in _all_files(path):
        original = (path / name).read_bytes()
        (path / name).unlink()
        with pytest.raises(ValueError, match=name):
            cross.load(path)
        (path / name).write_bytes(original)
    with pytest.raises(ValueError, match="manifest.json"):
        cross.load(path / "nowhere")


def test_corrupted_inside_with_checksums_re_signed(saved):
    """The manifest's checksums updated after damage: the packed file's own tensor checksums still
    catch it; a plan swapped in from another layer disagrees with the packed tiles."""
    _, path = saved
    name = "up.packed.safetensors"
    data = bytearray((path / name).read_bytes())
    data[-3] ^= 0xFF
    (path / name).write_bytes(bytes(data))
    resign(path, lambda m: m["files"][name].update(sha256=serialize._file_digest(path / name)))
    with pytest.raises(ValueError, match=f"{name}: checksum mismatch in"):
        cross.load(path)


def test_plan_of_another_layer_is_refused(tmp_path, rng):
    model = nn.ModuleDict({"a": nn.Linear(64, 96), "b": nn.Linear(64, 96)})
    with torch.no_grad():
        model["a"].weight.mul_(torch.rand(96, 64, generator=rng) < 0.5)
        model["b"].weight.mul_(torch.rand(96, 64, generator=rng) < 0.5)
        model["b"].weight[:64] = 0  # an empty tile-row: other tile kinds than a's
    cross.sparsify_(model, cost_model=WINNING, progress=False)
    cross.save(model, tmp_path)
    resign(tmp_path, lambda m: m["layers"][0].update(plan="b.plan.safetensors"))
    with pytest.raises(ValueError, match="a.packed.safetensors: expected the tiled weight of its plan"):
        cross.load(tmp_path)


# ---------------------------------------------------------------------------------------- format
def test_format_version_from_the_future(saved):
    _, path = saved
    resign(path, lambda m: m.update(format_version=serialize.FORMAT_VERSION + 1, cross_version="9.0"))
    with pytest.raises(ValueError, match=rf"manifest.json: format_version {serialize.FORMAT_VERSION + 1} is newer .* upgrade cross .* cross 9.0"):
        cross.load(path)
    manifest = json.loads((path / "manifest.json").read_text())  # version checked before the checksum
    manifest["format_version"] = serialize.FORMAT_VERSION + 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"format_version {serialize.FORMAT_VERSION + 2} is newer"):
        cross.load(path)


def test_format_version_1_still_loads(saved):
    """Directories saved before plans carried measured times (version 1: plans cross.plan/1, without
    them) load and compute what they did."""
    from safetensors.numpy import load, save_file

    from cross.partition.plan import _header_digest

    model, path = saved
    for plan_file in path.glob("*.plan.safetensors"):
        raw = plan_file.read_bytes()
        header = json.loads(json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]["cross.plan"])
        header["format"] = "cross.plan/1"
        for b in header["buckets"]:
            del b["measured_us"], b["measured_dense_us"]
        header["header_sha256"] = _header_digest(header)
        save_file(load(raw), str(plan_file), metadata={"cross.plan": json.dumps(header)})

    def as_version_1(m):
        m["format_version"] = 1
        for name, entry in m["files"].items():
            entry.update(bytes=(path / name).stat().st_size, sha256=serialize._file_digest(path / name))

    resign(path, as_version_1)
    fresh = fresh_toy()
    layers = cross.load(path, fresh)
    assert sorted(layers) == ["down", "up"]
    assert torch.equal(outputs(fresh), outputs(model))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="something.else"), "expected format 'cross.model'"),
    (lambda m: m.update(format_version="1"), "expected an integer format_version"),
    (lambda m: m.update(format_version=0), "expected an integer format_version"),
    (lambda m: m["layers"][0].pop("shape"), "expected layer fields"),
    (lambda m: m["files"].pop("down.plan.safetensors"), "expected a size and checksum for down.plan.safetensors"),
    (lambda m: m["layers"].__setitem__(1, {**m["layers"][0], "fqn": "again"}), "are one module in the model"),
], ids=["format", "version as a string", "version 0", "field missing", "file not listed", "one module twice"])
def test_malformed_manifest(edit, message, saved):
    _, path = saved
    resign(path, edit)
    with pytest.raises(ValueError, match=message):
        cross.load(path, fresh_toy())


def test_edited_manifest_without_re_signing(saved):
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["layers"][0]["fqn"], manifest["layers"][1]["fqn"] = "down", "up"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json: checksum mismatch"):
        cross.load(path)


# ---------------------------------------------------------------------------------------- target model
class Wider(Toy):
    def __init__(self):
        super().__init__()
        self.up = self.again = nn.Linear(48, 131)


class Renamed(Toy):
    def __init__(self):
        super().__init__()
        self.proj = self.up
        del self.up


class NoBias(Toy):
    def __init__(self):
        super().__init__()
        self.up = self.again = nn.Linear(48, 130, bias=False)


class Conv(Toy):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv1d(130, 48, 1, bias=False)


class Extra(Toy):
    def __init__(self):
        super().__init__()
        self.extra = nn.LayerNorm(48)


@pytest.mark.parametrize("make, message", [
    (Wider, "up.packed.safetensors: expected the model's 'up' to be 130x48 .* got 131x48"),
    (Renamed, "layer 'up' .* expected the model to have it"),
    (NoBias, "expected the model's 'up' with a bias"),
    (Conv, "expected an nn.Linear at 'down' to replace, got Conv1d"),
    (lambda: Toy(torch.bfloat16), "expected the model's 'up' in float32, got bfloat16 .cast the model"),
    (Extra, "state.safetensors: expected the model's other parameters and buffers, got 2 missing"),
], ids=["shape", "missing layer", "bias", "type", "dtype", "other state"])
def test_model_that_does_not_match(make, message, saved):
    _, path = saved
    target = make()
    before = state(target)
    with pytest.raises(ValueError, match=message):
        cross.load(path, target)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
    assert not any(isinstance(m, SparseLinear) for m in target.modules())


# ---------------------------------------------------------------------------------------- devices
def test_plans_from_another_gpu_are_kept_with_a_warning(saved, monkeypatch):
    model, path = saved
    resign(path, lambda m: m.update(device=A100))
    with warnings.catch_warnings():  # loading onto the CPU: no cost model, no warning
        warnings.simplefilter("error")
        cross.load(path)

    monkeypatch.setattr(serialize, "device_name", lambda device: H100)  # as if the CPU were an H100
    target = fresh_toy()
    with pytest.warns(PlanDeviceWarning, match=f"made on {A100} .* loaded on {H100}") as record:
        cross.load(path, target)
    assert len(record) == 1 and issubclass(record[0].category, UserWarning)
    assert record[0].filename == __file__  # points at the caller
    assert torch.equal(outputs(target), outputs(model))
    assert np.array_equal(target.up.plan.kinds, model.up.plan.kinds)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=PlanDeviceWarning)
        cross.load(path)
    resign(path, lambda m: m.update(device=H100))  # the same GPU: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cross.load(path)


@pytest.mark.gpu
def test_load_onto_a_gpu(saved):
    """Saved on the CPU, loaded into a model on a GPU: the layers follow the model there, and the
    plans (made with no measured cost model for this GPU) are kept, with the warning."""
    model, path = saved
    target = fresh_toy().cuda()
    with pytest.warns(PlanDeviceWarning, match=f"made on cpu .* loaded on {torch.cuda.get_device_name()}"):
        cross.load(path, target)
    assert target.up.device.type == "cuda" and target.again is target.up
    with torch.no_grad():
        torch.testing.assert_close(target(IDS.cuda()).cpu(), outputs(model), rtol=1e-5, atol=1e-5)
