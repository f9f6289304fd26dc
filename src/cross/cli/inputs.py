"""What the commands read: tile shapes from the command line, and the 2-D weights of safetensors
files, listed from the headers and loaded one at a time without building a model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import check_plan_tile_shape, check_tile_shape
from ..partition.planner import WGMMA_LAYOUT_DEFAULT, WGMMA_LAYOUTS

#: safetensors dtypes the pipeline takes as they are; F64 is read as float32, other dtypes
#: (integer buffers such as BERT's position_ids, fp8) are not weights of an nn.Linear.
FLOAT_DTYPES = ("F32", "F16", "BF16")
#: Floating dtypes the commands read as float32 (exactly, but for float64's extra precision): the
#: zeros, which are what the profile and the plan look at, stay zeros
CAST_DTYPES = {"F64": torch.float32, "F8_E4M3": torch.float32, "F8_E5M2": torch.float32}


class InputError(Exception):
    """Bad input on the command line: reported as one line with exit code 2, no traceback."""


def add_swap_options(p) -> None:
    """--force-plan, --no-measure, --decode-fallback, --slice-kernel, --wgmma-kernel, --wgmma-layout, --nan-policy
    and --stack-siblings: how sparsify_ decides and
    what a swapped layer keeps (shared by run, compile and bench model; read back with swap_kwargs)."""
    p.add_argument("--force-plan", action="store_true",
                   help="sparsify every layer even where its plan is predicted to lose (keep_dense=False)")
    p.add_argument("--no-measure", action="store_true",
                   help="on a GPU, trust the cost model alone: do not time each predicted win against cuBLAS "
                        "before swapping the layer (measure=False)")
    p.add_argument("--decode-fallback", action="store_true",
                   help="keep no dense copy of swapped layers: token counts that fall back to the dense product "
                        "decode the packed weight first, on each call (keep_dense='decode': less memory than "
                        "dense, slower fallback buckets)")
    p.add_argument("--slice-kernel", action="store_true",
                   help="offer token counts up to 16 that the row kernel does not take to the slice kernel "
                        "(experimental, sm_90+): a layer runs it where the GPU times it faster than cuBLAS "
                        "(make_plan(slice_kernel=True))")
    p.add_argument("--wgmma-kernel", action="store_true",
                   help="offer the token counts that the row kernel does not take to the warpgroup 2:4 kernel even "
                        "where the measured check does not time it, planned with nan_policy='ignore' unless "
                        "--nan-policy says otherwise (make_plan(wgmma_kernel=True)). Default: offered, under the "
                        "default nan_policy, where the measured check runs on a compute capability 9.0 GPU (the "
                        "kernel's; measured on an H100: benchmarks/results/h100/wgmma24_propagate/), a layer "
                        "running it where the GPU times it faster than cuBLAS (sparsify_(wgmma_kernel='auto'))")
    p.add_argument("--no-wgmma-kernel", action="store_true",
                   help="never offer the warpgroup 2:4 kernel (sparsify_(wgmma_kernel=False))")
    p.add_argument("--nan-policy", choices=("propagate", "ignore"), default=None,
                   help="propagate: Inf and NaN inputs reach the outputs as in the dense product; ignore: empty "
                        "tiles are skipped, and the warpgroup 2:4 kernel multiplies only its stored slots "
                        "(make_plan(nan_policy=...); default: ignore with --wgmma-kernel, else propagate; "
                        "--slice-kernel needs propagate)")
    p.add_argument("--wgmma-layout", choices=WGMMA_LAYOUTS, default=None,
                   help="where the warpgroup 2:4 kernel is offered, its format's layout: slots (two per group and "
                        "the overflow's words), compressed (only the nonzero words, found by each thread's masks: "
                        "fewer bytes), lone (the compressed layout with a group's lone nonzero as a 16-bit value: "
                        "fewer bytes again) or auto (where the two layouts' bytes are close, up to ~60%% uniform "
                        "sparsity, both timed by the measured check and the faster kept per layer, slots where the "
                        "check does not run; elsewhere compressed) "
                        f"(make_plan(wgmma_layout=...); default {WGMMA_LAYOUT_DEFAULT})")
    p.add_argument("--stack-siblings", action="store_true",
                   help="stack the layers that read the same input (q, k, v; gate, up) into one layer before "
                        "planning: one launch instead of three or two (sparsify_(stack_siblings=True))")


def swap_kwargs(args) -> dict:
    """sparsify_'s keep_dense, measure, slice_kernel, wgmma_kernel, wgmma_layout, nan_policy and stack_siblings from
    add_swap_options' flags."""
    if args.force_plan and args.decode_fallback:
        raise InputError("--force-plan and --decode-fallback: expected one of them (a forced plan never falls back)")
    if args.slice_kernel and args.wgmma_kernel:
        raise InputError("--slice-kernel and --wgmma-kernel: expected one of them (both take the token counts the "
                         "row kernel does not)")
    if args.wgmma_kernel and args.no_wgmma_kernel:
        raise InputError("--wgmma-kernel and --no-wgmma-kernel: expected one of them")
    policy = getattr(args, "nan_policy", None) or ("ignore" if args.wgmma_kernel else "propagate")
    if args.slice_kernel and policy != "propagate":
        raise InputError("--slice-kernel and --nan-policy ignore: expected --nan-policy propagate (the slice "
                         "kernel's plans take it)")
    if args.wgmma_layout is not None and (args.no_wgmma_kernel or args.slice_kernel):
        raise InputError(f"--wgmma-layout {args.wgmma_layout}: expected the warpgroup 2:4 kernel offered (the layout "
                         f"is its format's), not {'--no-wgmma-kernel' if args.no_wgmma_kernel else '--slice-kernel'}")
    keep = False if args.force_plan else "decode" if args.decode_fallback else "auto"
    return {"keep_dense": keep, "measure": False if args.no_measure else "auto",
            "slice_kernel": bool(args.slice_kernel),
            "wgmma_kernel": True if args.wgmma_kernel else False if args.no_wgmma_kernel else "auto",
            "wgmma_layout": args.wgmma_layout or WGMMA_LAYOUT_DEFAULT,
            "nan_policy": policy, "stack_siblings": bool(args.stack_siblings)}


def parse_tile(text: str, plan: bool = False) -> tuple[int, int]:
    """'64x64' -> (64, 64); both sides powers of two >= 16 (the kernels' tile sizes), with ``plan``
    at least 32 columns (a BITMAP tile's rows are 32-bit words)."""
    parts = text.lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        return (check_plan_tile_shape if plan else check_tile_shape)((int(parts[0]), int(parts[1])))
    except (TypeError, ValueError):
        cols = ", at least 32 columns" if plan else ""
        raise ValueError(f"expected ROWSxCOLS with powers of two >= 16{cols} (e.g. 64x64), got {text!r}") from None


@dataclass(frozen=True)
class WeightRef:
    """One 2-D tensor of a safetensors file, known from the header only."""

    name: str  # the layer's name: the tensor key without its trailing '.weight'
    file: Path
    key: str
    shape: tuple[int, int]
    dtype: str  # safetensors dtype code, e.g. 'BF16'

    def load(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            tensor = f.get_tensor(self.key)
        return tensor.to(CAST_DTYPES[self.dtype]) if self.dtype in CAST_DTYPES else tensor


def safetensors_files(path: str | Path) -> list[Path]:
    """The file itself, or every *.safetensors directly inside a model directory (shards too); where
    the directory has a model.safetensors.index.json, the shards it names (a directory may also hold
    the same weights consolidated in one more file)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(f"{index}: expected a safetensors index with a weight_map, got an unreadable one") from None
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise InputError(f"{index}: expected the shards it names, found no {missing[0]}")
            return [path / n for n in names]
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise InputError(f"{path}: expected a model directory with *.safetensors files, found none")
        return files
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: expected a .safetensors file or a model directory, got a {path.suffix or 'suffix-less'} file")
    return [path]


#: Keys of the common embedding tables, by their exact module names (BERT's word/position/token-type
#: embeddings, Llama's embed_tokens, GPT-2's wte/wpe, T5's and BART's shared, GPT-NeoX's embed_in,
#: T5's relative_attention_bias): 2-D, but a lookup, never the weight of a matrix product. By exact
#: name, as some models call nn.Linear layers "...embedding" (Siglip2's patch_embedding)
EMBEDDING_KEY = re.compile(r"(^|\.)(word_embeddings|position_embeddings|token_type_embeddings|embed_tokens|"
                           r"embed_positions|wte|wpe|shared|embed_in|relative_attention_bias)\.weight$")


def list_weights(path: str | Path, name_filter: str | None = None,
                 embeddings: bool = True) -> tuple[list[WeightRef], list[str]]:
    """The 2-D floating-point tensors of ``path`` whose name contains ``name_filter``, in file order,
    and the keys of the 2-D tensors passed over (integer or boolean dtypes, no elements; embedding
    tables too, with ``embeddings=False``). float64 and fp8 tensors are read as float32.
    1-D tensors (biases, norms) and tensors of more dimensions are not weights of an nn.Linear."""
    from safetensors import safe_open

    refs: list[WeightRef] = []
    passed_over: list[str] = []
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                headers = [(key, f.get_slice(key)) for key in f.keys()]
                entries = [(key, tuple(s.get_shape()), s.get_dtype()) for key, s in headers]
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise InputError(f"{file}: expected a safetensors file, got an unreadable one ({e})") from None
        for key, shape, dtype in entries:
            if len(shape) != 2 or (name_filter and name_filter not in key):
                continue
            if ((dtype not in FLOAT_DTYPES and dtype not in CAST_DTYPES) or 0 in shape
                    or (not embeddings and EMBEDDING_KEY.search(key))):
                passed_over.append(key)
                continue
            name = key.removesuffix(".weight") or key
            refs.append(WeightRef(name, file, key, (int(shape[0]), int(shape[1])), dtype))
    # safetensors lists keys alphabetically; numbers in names sort by value (layer 2 before layer 10)
    refs.sort(key=lambda r: (str(r.file), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", r.key)]))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):  # the same key in two shards: keep them apart by file
        refs = [WeightRef(f"{r.file.stem}/{r.name}", r.file, r.key, r.shape, r.dtype) for r in refs]
    if not refs:
        what = f" whose name contains {name_filter!r}" if name_filter else ""
        other = f" ({len(passed_over)} 2-D tensors of other dtypes, or empty)" if passed_over else ""
        raise InputError(f"{path}: expected 2-D floating-point tensors (weights){what}, found none{other}")
    return refs, passed_over
