"""Benchmark weights: real layer shapes, synthetic sparsity, 2:4 pruning and the DLMC masks.

Every weight is made on the CPU from a generator seeded by what the weight is (seed, shape,
distribution, sparsity), so one row of a benchmark run alone draws the same weight and input as
it did inside the whole grid.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import torch

#: nn.Linear weights (out_features x in_features) of BERT-base and Llama-2-7B
SHAPES = {"llama-qkvo": (4096, 4096), "llama-up": (11008, 4096), "llama-down": (4096, 11008),
          "bert-qkvo": (768, 768), "bert-up": (3072, 768), "bert-down": (768, 3072)}
#: Llama-2-7B's projections that read the same input, stacked: q, k and v; gate and up. What one
#: launch over the siblings would run, against the separate launches of SHAPES (docs/perf-notes.md,
#: "One launch for the projections that share an input"); not in the default grid.
STACKED_SHAPES = {"llama-qkv": (3 * 4096, 4096), "llama-gateup": (2 * 11008, 4096)}
ALL_SHAPES = {**SHAPES, **STACKED_SHAPES}
SYNTHETIC = ("uniform", "nonuniform")
DISTRIBUTIONS = (*SYNTHETIC, "dlmc")
#: DLMC layers benchmarked (encoder layer 0 of the WMT Transformer-base): attention, FFN up, FFN down
DLMC_LAYERS = {"dlmc-attn-q": "body_encoder_layer_0_self_attention_multihead_attention_q_fully_connected",
               "dlmc-ffn-up": "body_encoder_layer_0_ffn_conv1_fully_connected",
               "dlmc-ffn-down": "body_encoder_layer_0_ffn_conv2_fully_connected"}
DLMC_FILE = re.compile(r"transformer__magnitude_pruning__([0-9.]+)\.npz")


def seeded(*parts) -> torch.Generator:
    """A generator seeded by the parts' text (crc32: stable across processes, unlike hash())."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, parts)).encode()))


def make_weight(m, k, sparsity, distribution, gen):
    if distribution == "uniform":
        keep = torch.rand(m, k, generator=gen) >= sparsity
    elif distribution == "nonuniform":
        # region sparsity spread like the seed's Figure 2: 30%..99% around the mean, in 256x256 regions
        rm, rk = -(-m // 256), -(-k // 256)
        region = (sparsity + torch.empty(rm, rk).uniform_(-1, 1, generator=gen) * min(sparsity - 0.3, 0.99 - sparsity))
        region = region.clamp(0.3, 0.99).repeat_interleave(256, 0).repeat_interleave(256, 1)[:m, :k]
        keep = torch.rand(m, k, generator=gen) >= region
    else:
        raise ValueError(f"distribution: expected uniform or nonuniform, got {distribution!r}")
    return (torch.randn(m, k, generator=gen) * keep).to(torch.bfloat16)


def prune_2to4(w: torch.Tensor) -> torch.Tensor:
    """Keep the two largest |w| of every four consecutive weights along K (the 2:4 pattern that
    sparse tensor cores run); K must be a multiple of 4."""
    m, k = w.shape
    if k % 4:
        raise ValueError(f"w: expected a multiple of 4 columns for 2:4 pruning, got {k}")
    groups = w.reshape(m, k // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().float().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(m, k)


def zero_fraction(w: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(w)) / w.numel()


def dlmc_files(folder: str | Path) -> dict[float, Path]:
    """The DLMC archives of ``folder`` by the sparsity in their name, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: expected the DLMC folder (transformer__magnitude_pruning__<s>.npz), "
                                f"got {'a file' if folder.exists() else 'no such directory'}")
    found = {float(m.group(1)): p for p in folder.iterdir() if (m := DLMC_FILE.fullmatch(p.name))}
    if not found:
        raise FileNotFoundError(f"{folder}: expected transformer__magnitude_pruning__<sparsity>.npz files, found none")
    return dict(sorted(found.items()))


def nearest_dlmc(files: dict[float, Path], sparsities) -> dict[float, Path]:
    """For each requested sparsity the archive whose own sparsity is nearest; requests that meet at
    one archive give it once. Keys are the archives' sparsities."""
    picked = {}
    for s in sparsities:
        nominal = min(files, key=lambda f: (abs(f - s), f))
        picked[nominal] = files[nominal]
    return dict(sorted(picked.items()))


def dlmc_shape(path: Path, layer: str) -> tuple[int, int]:
    with np.load(path) as d:
        rows, cols = (int(v) for v in d[f"{DLMC_LAYERS.get(layer, layer)}__shape"])
    return rows, cols


def dlmc_mask(path: Path, layer: str) -> torch.Tensor:
    """One layer's nonzero pattern (bool, out_features x in_features) from a DLMC archive;
    ``layer`` is a DLMC_LAYERS name or the archive's own key."""
    key = DLMC_LAYERS.get(layer, layer)
    with np.load(path) as d:
        if f"{key}__bits" not in d.files:
            raise KeyError(f"{path}: expected a matrix {key!r}, found none")
        rows, cols = (int(v) for v in d[f"{key}__shape"])
        bits = np.unpackbits(d[f"{key}__bits"])[: rows * cols]
    return torch.from_numpy(bits.reshape(rows, cols).astype(bool))


def dlmc_weight(path: Path, layer: str, gen: torch.Generator) -> torch.Tensor:
    """The real pruned pattern filled with random normal values (DLMC published no values), bf16."""
    mask = dlmc_mask(path, layer)
    return (torch.randn(mask.shape, generator=gen) * mask).to(torch.bfloat16)
