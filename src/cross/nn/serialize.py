"""Saved compiled models: ``save(model, path)`` writes every SparseLinear's plan and packed tensors,
and the rest of the model's state, to a directory; ``load(path, model)`` swaps them back in with
no planning and no packing from a dense weight.

A saved model directory:
    manifest.json             what was saved and how to check it (below)
    <fqn>.plan.safetensors    each SparseLinear's Plan (Plan.save)
    <fqn>.packed.safetensors  its TiledWeight tensors, the kernel tables, the bias and the dense copy
                              (where kept); a sha256 per tensor and one over the header
    state.safetensors         every other parameter and persistent buffer of the model (the layers
                              kept dense included), so a model built from its config is complete

manifest.json holds the format name "cross.model" and format_version, the cross and torch versions,
the device the plans were made on ("cpu" or the GPU's name: where the SparseLinear layers were when
saved, which is where sparsify_ planned them unless they were moved), one entry per SparseLinear (fqn,
shape, dtype, bias, its two files; ``tied_to``: the first layer made from the same weight Parameter,
so that unsparsify_ after load ties them again), the size and sha256 of every file, and manifest_sha256 over all
of that (canonical JSON). ``load`` checks every one of them before it changes the model and fails
with a ValueError naming the file: a truncated, corrupted, edited or missing file never loads.

Plans from another GPU: a Plan is device-independent data (tile kinds and work lists); it computes
the same product on any device, only its speed depends on the cost model it was made with. Loading
onto a GPU whose name differs from the manifest's keeps the saved plans and warns with a
PlanDeviceWarning (a UserWarning) naming both devices; re-plan on that GPU (``cross compile`` there)
for plans tuned to it, or silence the warning with
``warnings.filterwarnings("ignore", category=cross.nn.PlanDeviceWarning)``. Loading onto the CPU
never warns: the reference executor has no cost model. The device name is covered by
manifest_sha256 like every other field, so a hand-edited manifest must be re-signed
(``manifest["manifest_sha256"] = manifest_digest(manifest)``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .._checks import dtype_name
from ..pack import TiledWeight, pack_tiled
from ..partition import Plan
from ..tiling import TileGrid
from .linear import SparseLinear, packed_state
from .sparsify import WeightSource, _occurrences, fused_paths_off
from .stack import SiblingLinear, _restore, _stack, sibling_groups

FORMAT = "cross.model"
FORMAT_VERSION = 7  # 7: the manifest may name stacked siblings (stack_siblings_); 6: plans may carry alternatives the measured check times (cross.plan/6); 5: plans may choose the warpgroup 2:4 kernel (cross.plan/5); 4: the slice kernel (cross.plan/4); 3: the row kernel (cross.plan/3); 2: measured times (cross.plan/2); older directories still load
MANIFEST = "manifest.json"
STATE = "state.safetensors"
PACKED_FORMAT = "cross.packed/1"
_TILED = ("kinds", "nnz", "value_offset", "meta_offset", "values", "meta")
_BUCKET = ("items", "row_parts", "unit_ptr", "unit_order")
_ENTRY = ("fqn", "shape", "dtype", "bias", "plan", "packed")


class PlanDeviceWarning(UserWarning):
    """A saved model is loaded onto a GPU other than the one its plans were made on."""


def device_name(device) -> str:
    """'cpu', or the GPU's name as torch reports it (what the manifest records)."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _digest(d: dict, own: str) -> str:
    """sha256 of a dict's canonical JSON, its own digest field left out."""
    rest = {k: v for k, v in d.items() if k != own}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def manifest_digest(manifest: dict) -> str:
    return _digest(manifest, "manifest_sha256")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


# ---------------------------------------------------------------------- save
def check_save_dir(path) -> Path:
    """Where ``save`` may write: a new or empty directory, or one holding a saved model (replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: expected a directory to save the model in, got a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ValueError(f"{path}: expected an empty directory or a saved cross model, got a non-empty directory "
                         f"without {MANIFEST} (nothing is overwritten there)")
    return path


def _file_stem(fqn: str, used: set[str]) -> str:
    """The fqn as a file-name stem (path separators and spaces as '_'), unique within the save."""
    stem = "".join("_" if c in '/\\: *?"<>|' else c for c in fqn)
    base, i = stem, 1
    while stem.lower() in used:  # case-insensitive file systems
        stem, i = f"{base}_{i}", i + 1
    used.add(stem.lower())
    return stem


def _save_packed(layer: SparseLinear, path: Path) -> None:
    from safetensors.torch import save_file

    pw = layer.packed
    tiled = pw.tiled_weight()  # rebuilt from the row format where the layer dropped it
    tensors = {name: getattr(tiled, name) for name in _TILED}
    tensors.update(tiles=pw.tiles, row_sections=pw.row_sections)
    for i, b in enumerate(pw.buckets):
        tensors.update({f"bucket{i}.{name}": getattr(b, name) for name in _BUCKET})
    if layer.bias is not None:
        tensors["bias"] = layer.bias
    if layer.dense_weight is not None:
        tensors["dense_weight"] = layer.dense_weight
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": PACKED_FORMAT, "shape": list(pw.shape), "tile_shape": list(pw.plan.tile_shape),
              "dtype": dtype_name(pw.dtype), "n_slots": [b.n_slots for b in pw.buckets],
              "max_sparse_nnz": pw.max_sparse_nnz, "weight_requires_grad": bool(layer._weight_requires_grad),
              "bias_requires_grad": bool(layer._bias_requires_grad),
              "decode_fallback": bool(layer.decode_fallback),
              "sha256": {k: _tensor_digest(v) for k, v in tensors.items()}}
    header["header_sha256"] = _digest(header, "header_sha256")
    save_file(tensors, str(path), metadata={"cross.packed": json.dumps(header)})


def _sparse_fqns(model: nn.Module, modules) -> set[str]:
    """Every path (shared modules have several) of the given modules."""
    ids = {id(m) for m in modules}
    return {fqn for fqn, m in model.named_modules(remove_duplicate=False) if id(m) in ids}


def _rest_state(model: nn.Module, sparse: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict without the SparseLinear entries: (tensors, aliases). A tensor held under
    several names (tied weights) is stored once and its other names become aliases."""
    tensors, aliases, first, storages = {}, {}, {}, set()
    with packed_state():
        state = model.state_dict()
    for key, value in state.items():
        if key.rpartition(".")[0] in sparse:
            continue
        storage = value.untyped_storage().data_ptr() if value.numel() else None
        same = (storage, value.storage_offset(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if storage is not None and same in first:
            aliases[key] = first[same]
            continue
        first[same] = key
        value = value.detach().cpu().contiguous()
        if storage in storages:  # a different view of a stored tensor's memory: safetensors wants its own copy
            value = value.clone()
        storages.add(storage)
        tensors[key] = value
    return tensors, aliases


def _remove_saved(path: Path) -> None:
    """Remove a saved model's manifest and the files it lists (nothing else) before saving over it."""
    try:
        listed = list(json.loads((path / MANIFEST).read_text()).get("files", {}))
    except (OSError, ValueError, AttributeError):  # no manifest, or a damaged one: its files stay
        listed = []
    (path / MANIFEST).unlink(missing_ok=True)
    for name in listed:
        if isinstance(name, str) and Path(name).name == name:
            (path / name).unlink(missing_ok=True)


@torch.no_grad()
def save(model: nn.Module, path) -> Path:
    """Write ``model``'s SparseLinear layers (plans and packed tensors) and the rest of its state to
    the directory ``path`` (created; a previously saved model there is replaced). Returns the path
    of manifest.json, written last: a save that fails half-way leaves no loadable model."""
    from safetensors.torch import save_file

    from .. import __version__

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, SparseLinear):
        raise ValueError("model: expected a module containing SparseLinear layers, got a SparseLinear itself: "
                         "wrap it (e.g. nn.Sequential(layer)) to save it")
    path = check_save_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    _remove_saved(path)

    found = _occurrences(model, lambda m: isinstance(m, SparseLinear))
    layers, used, sources = [], set(), {}
    for fqn, layer, _places in found.values():
        stem = _file_stem(fqn, used)
        entry = {"fqn": fqn, "shape": list(layer.packed.shape), "dtype": dtype_name(layer.dtype),
                 "bias": layer.bias is not None, "dense_kept": layer.dense_kept,
                 "plan": f"{stem}.plan.safetensors", "packed": f"{stem}.packed.safetensors"}
        source = getattr(layer, "_weight_source", None)
        if source is not None:  # made from one weight Parameter with an earlier layer: unsparsify_ ties them
            entry["tied_to"] = sources.setdefault(id(source), fqn)
        layer.plan.save(path / entry["plan"])
        _save_packed(layer, path / entry["packed"])
        layers.append(entry)
    tensors, aliases = _rest_state(model, _sparse_fqns(model, (m for _, m, _ in found.values())))
    save_file(tensors, str(path / STATE))

    devices = [m.device for _, m, _ in found.values()] or [p.device for p in model.parameters()] or ["cpu"]
    names = [STATE] + [e[k] for e in layers for k in ("plan", "packed")]
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cross_version": __version__,
        "torch_version": torch.__version__, "device": device_name(devices[0]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "layers": layers, "state": {"file": STATE, "aliases": aliases},
        # the layers stacked by stack_siblings_ (load stacks its model the same way)
        **({"siblings": groups} if (groups := sibling_groups(model)) else {}),
        "files": {n: {"bytes": (path / n).stat().st_size, "sha256": _file_digest(path / n)} for n in names},
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return path / MANIFEST


# ---------------------------------------------------------------------- load
def read_manifest(path) -> dict:
    """The checked manifest of a saved model directory: format, version and checksum."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        what = "a directory" if path.is_dir() else "no such directory"
        raise ValueError(f"{file}: expected the manifest of a model saved by cross.save, found none ({path} is {what})")
    try:
        manifest = json.loads(file.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: expected JSON, got a parse error ({e}): the file is truncated or corrupted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{file}: expected format {FORMAT!r}, got {got!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{file}: expected an integer format_version >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        from .. import __version__

        raise ValueError(f"{file}: format_version {version} is newer than this cross ({__version__}) reads "
                         f"(up to {FORMAT_VERSION}): upgrade cross (the model was saved by cross "
                         f"{manifest.get('cross_version', '?')})")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ValueError(f"{file}: checksum mismatch: the manifest is corrupted or was edited")
    try:
        listed = [manifest["state"]["file"]] + [e[k] for e in manifest["layers"] for k in ("plan", "packed")]
        missing = [k for e in manifest["layers"] for k in _ENTRY if k not in e]
        files = manifest["files"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{file}: expected the fields of format_version {version}, got one missing ({e})") from None
    if missing:
        raise ValueError(f"{file}: expected layer fields {_ENTRY}, got some without {sorted(set(missing))}")
    for name in listed:
        if name not in files:
            raise ValueError(f"{file}: expected a size and checksum for {name}, got none")
    return manifest


def _check_files(path: Path, manifest: dict) -> None:
    for name, info in manifest["files"].items():
        file = path / name
        if Path(name).name != name:
            raise ValueError(f"{path / MANIFEST}: expected plain file names, got {name!r}")
        if not file.is_file():
            raise ValueError(f"{file}: expected this file (listed in {MANIFEST}), found none")
        size = file.stat().st_size
        if size != info["bytes"]:
            what = "truncated" if size < info["bytes"] else "longer than saved"
            raise ValueError(f"{file}: expected {info['bytes']} bytes, got {size}: the file is {what}")
        if _file_digest(file) != info["sha256"]:
            raise ValueError(f"{file}: checksum mismatch: the file is corrupted or was changed after saving")


def _read_packed(file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(meta["cross.packed"])
    except Exception as e:  # safetensors raises several types for damaged files
        raise ValueError(f"{file}: expected a packed weight saved by cross.save, got an unreadable one ({e})") from None
    if not isinstance(header, dict) or header.get("format") != PACKED_FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{file}: expected format {PACKED_FORMAT!r}, got {got!r}")
    if header.get("header_sha256") != _digest(header, "header_sha256"):
        raise ValueError(f"{file}: checksum mismatch in the header: the file is corrupted")
    digests = header.get("sha256")
    if not isinstance(digests, dict) or set(digests) != set(tensors):
        raise ValueError(f"{file}: expected a checksum for each of its tensors {sorted(tensors)}, got {digests!r}")
    for k, digest in digests.items():
        if _tensor_digest(tensors[k]) != digest:
            raise ValueError(f"{file}: checksum mismatch in {k!r}: the file is corrupted")
    return header, tensors


def _load_layer(path: Path, entry: dict, device: torch.device) -> SparseLinear:
    """One SparseLinear from its plan and packed files (already checked against the manifest)."""
    plan = Plan.load(path / entry["plan"])
    file = path / entry["packed"]
    if list(plan.shape) != list(entry["shape"]) or plan.dtype != entry["dtype"]:
        raise ValueError(f"{path / entry['plan']}: expected a plan for {entry['dtype']} {tuple(entry['shape'])}, "
                         f"got one for {plan.dtype} {plan.shape}")
    header, t = _read_packed(file)
    if header["shape"] != list(plan.shape) or header["tile_shape"] != list(plan.tile_shape) or header["dtype"] != plan.dtype:
        raise ValueError(f"{file}: expected a packed {plan.dtype} {plan.shape} weight in {plan.tile_shape} tiles, got "
                         f"{header['dtype']} {tuple(header['shape'])} in {tuple(header['tile_shape'])} tiles")
    if ("bias" in t) != entry["bias"]:
        raise ValueError(f"{file}: expected {'a' if entry['bias'] else 'no'} bias, as {MANIFEST} says, got the opposite")
    try:
        # built where it will run: the row format's build is torch ops (seconds per Llama layer on a CPU)
        tiled = TiledWeight(TileGrid(*plan.shape, *plan.tile_shape), *(t[name].to(device) for name in _TILED))
        # a dense copy (or the decode) runs the fallback buckets: no row format for a near win not taken
        packed = pack_tiled(tiled, plan, falls_back="dense_weight" in t or bool(header.get("decode_fallback", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{file}: expected the tiled weight of its plan, got one that fails to load ({e})") from None
    # the saved tables were built from the same plan: any difference means the files disagree
    rebuilt = {"tiles": packed.tiles, "row_sections": packed.row_sections}
    for i, b in enumerate(packed.buckets):
        rebuilt.update({f"bucket{i}.{name}": getattr(b, name) for name in _BUCKET})
    for k, v in rebuilt.items():
        if k not in t or not torch.equal(t[k], v.cpu()):
            raise ValueError(f"{file}: expected kernel table {k!r} to agree with the plan, got a different one")
    if header["n_slots"] != [b.n_slots for b in packed.buckets] or header["max_sparse_nnz"] != packed.max_sparse_nnz:
        raise ValueError(f"{file}: expected the kernel facts of its plan, got different ones")
    move = lambda name: t[name].to(device) if name in t else None  # noqa: E731
    try:
        return SparseLinear(packed, move("bias"), move("dense_weight"),
                            weight_requires_grad=bool(header["weight_requires_grad"]),
                            decode_fallback=bool(header.get("decode_fallback", False)),
                            bias_requires_grad=header.get("bias_requires_grad"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None


def _targets(model: nn.Module, manifest: dict) -> dict[str, nn.Module]:
    """The module each saved layer replaces, checked: an nn.Linear (or SparseLinear) of its shape,
    dtype and bias."""
    out, seen = {}, {}
    for e in manifest["layers"]:
        fqn, (m, k) = e["fqn"], e["shape"]
        try:
            target = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"{MANIFEST}: layer {fqn!r} ({e['plan']}): expected the model to have it, "
                             f"found no such module") from None
        if type(target) is not nn.Linear and not isinstance(target, SparseLinear):
            raise ValueError(f"{e['packed']}: expected an nn.Linear at {fqn!r} to replace, got {type(target).__name__}")
        if (target.out_features, target.in_features) != (m, k):
            raise ValueError(f"{e['packed']}: expected the model's {fqn!r} to be {m}x{k} (out x in features), "
                             f"got {target.out_features}x{target.in_features}")
        dtype = target.weight.dtype if type(target) is nn.Linear else target.dtype
        if dtype_name(dtype) != e["dtype"]:
            raise ValueError(f"{e['packed']}: expected the model's {fqn!r} in {e['dtype']}, got {dtype_name(dtype)} "
                             f"(cast the model to {e['dtype']} before loading)")
        if (target.bias is not None) != e["bias"]:
            raise ValueError(f"{e['packed']}: expected the model's {fqn!r} {'with' if e['bias'] else 'without'} a bias, "
                             f"got one {'without' if e['bias'] else 'with'}")
        if id(target) in seen:
            raise ValueError(f"{MANIFEST}: layers {seen[id(target)]!r} and {fqn!r} are one module in the model, "
                             f"expected two")
        seen[id(target)] = fqn
        out[fqn] = target
    return out


def _stack_like_saved(model: nn.Module | None, manifest: dict) -> list:
    """Stack the siblings of ``model`` as the saved model's were (its manifest's 'siblings'), where
    the model has no stacked layers of its own; what changed (``stack._restore`` undoes it)."""
    groups = manifest.get("siblings") or []
    if model is None or not groups or any(isinstance(m, SiblingLinear) for m in model.modules()):
        return []
    try:
        return _stack(model, [list(g) for g in groups])
    except ValueError as e:
        raise ValueError(f"{MANIFEST}: the saved model's stacked siblings: {e}") from None


def _module_device(module: nn.Module) -> torch.device:
    return module.device if isinstance(module, SparseLinear) else module.weight.device


def _warn_other_gpu(manifest: dict, layers: dict[str, SparseLinear]) -> None:
    """The rule of the module docstring, on device names: warn for each loading device that is not
    the CPU and not the device the plans were made on."""
    saved = manifest["device"]
    for here in sorted({device_name(layer.device) for layer in layers.values()} - {"cpu", saved}):
        source = next(iter(layers.values())).plan.provenance.get("cost_model", "?")
        warnings.warn(f"cross.load: the plans were made on {saved} (cost model: {source}) and are loaded on "
                      f"{here}: they are kept and compute the same result, but their tile kinds and balance "
                      f"were chosen for {saved}; run `cross compile` on {here} for plans tuned to it",
                      PlanDeviceWarning, stacklevel=3)


def _read_state(path: Path, manifest: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = path / manifest["state"]["file"]
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises several types for damaged files
        raise ValueError(f"{file}: expected a safetensors file, got an unreadable one ({e})") from None
    for alias, key in manifest["state"]["aliases"].items():
        if key not in state:
            raise ValueError(f"{file}: expected {key!r} (which {alias!r} shares), found none")
        state[alias] = state[key]
    return state


def _check_state(file: Path, model: nn.Module, targets: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    sparse = _sparse_fqns(model, targets.values())
    with packed_state():
        own = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in sparse}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{file}: expected the model's other parameters and buffers, got {len(missing)} missing "
                         f"{missing[:5]} and {len(unexpected)} unexpected {unexpected[:5]}: is it the same architecture?")
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise ValueError(f"{file}: expected {k!r} of shape {tuple(v.shape)} (the model's), got {tuple(state[k].shape)}")


def load(path, model: nn.Module | None = None, *, device="cpu") -> dict[str, SparseLinear]:
    """Rebuild the SparseLinear layers saved by ``save(model, path)`` from their plans and packed
    tensors: nothing is planned, and nothing is packed from a dense weight (the kernel tables are
    rebuilt from the saved plan, ``pack_tiled``, and must equal the saved ones).

    model: a model of the same architecture (e.g. built from its config), with nn.Linear (or
        SparseLinear) modules at the saved layers' names; where the saved model's siblings were
        stacked (``stack_siblings_``) and this model has no stacked layers, they are stacked the same
        way first. Each layer is rebuilt on the device of the
        module it replaces and swapped in (at every place that module is held); the model's other
        parameters and buffers are loaded from state.safetensors. Everything is checked first: on
        any error the model is left unchanged.
    device: where the layers go when no model is given (default the CPU).
    Returns {fqn: SparseLinear}. Raises ValueError naming the file for a missing, truncated,
    corrupted or newer-format file and for a model that does not match; warns with
    PlanDeviceWarning when loading onto a GPU other than the one the plans were made on.
    """
    if isinstance(path, nn.Module):
        raise TypeError(f"path: expected the directory of a saved model, got a {type(path).__name__} (the "
                        "arguments are load(path, model), save's in the other order)")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module or None, got {type(model).__name__}")
    path = Path(path)
    manifest = read_manifest(path)
    _check_files(path, manifest)
    if model is not None:
        meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if meta:
            raise ValueError(f"model: expected a model with its tensors in memory, got {meta[0]!r} (and "
                             f"{len(meta) - 1} more) on the meta device: build it on the CPU, or give it "
                             "memory first (model.to_empty(device='cpu'))")
    stacked = _stack_like_saved(model, manifest)
    try:
        targets = {} if model is None else _targets(model, manifest)
        layers = {e["fqn"]: _load_layer(path, e, _module_device(targets[e["fqn"]]) if targets else torch.device(device))
                  for e in manifest["layers"]}
        if model is not None:
            state = _read_state(path, manifest)
            _check_state(path / manifest["state"]["file"], model, targets, state)
        _warn_other_gpu(manifest, layers)
    except BaseException:
        _restore(model, stacked)  # the model is left as it was given: its own layers back in place
        raise
    ties: dict[str, WeightSource] = {}
    for e in manifest["layers"]:  # layers made from one Parameter share a WeightSource again
        if e.get("tied_to") in layers:
            layers[e["fqn"]]._weight_source = ties.setdefault(e["tied_to"], WeightSource(None))
    if model is None:
        return layers
    ids = {id(t) for t in targets.values()}
    places = _occurrences(model, lambda m: id(m) in ids)
    model.load_state_dict(state, strict=False)
    for fqn, target in targets.items():
        for parent, name in places[id(target)][2]:
            setattr(parent, name, layers[fqn])
    fused_paths_off(model)
    return layers
