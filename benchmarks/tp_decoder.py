"""Tensor-parallel decode of a Llama-2-7B-shaped decoder pruned to 70%: cross against dense tensor
parallelism, and cost-balanced against equal-rows sharding.

    torchrun --nproc-per-node 4 benchmarks/tp_decoder.py --out benchmarks/results/h100x4
    python benchmarks/tp_decoder.py --nproc 4          # the same, spawning the processes itself
    python benchmarks/tp_decoder.py --device cpu --layers 1 --hidden 256 --iters 2   # smoke test (gloo)

Every rank builds the same decoder (random weights, seed --seed, no downloads) and prunes it with
random masks whose density falls linearly along each layer's split dimension (the output rows of
q/k/v/gate/up, the input columns of o/down) from (1 + skew) to (1 - skew) times the mean, so equal
rows are unequal work (--skew 0: uniform). For each tensor-parallel size in --tp the first ranks form
a group (the others wait) and shard copies of that decoder three ways:

    dense       nn.Linear shards, equal heads and channels (Megatron; the baseline)
    cross-rows  cross.sparsify_(tp_group=..., tp_split="rows"): SparseLinear shards, equal heads and tiles
    cross-cost  tp_split="cost": shards cut so every rank's predicted time is the same

Each copy's output is first checked against the unsharded decoder (cosine >= 0.999), then timed:
decode_ms is one decode step (batch sequences, one new token each, no KV cache: the linear layers do
the work of a cached decode step), CUDA-graph replays in lockstep on every rank, the slowest rank's
mean; rank_ms is each rank's own sharded linear layers alone (no communication; graph replay, L2
flushed), whose max/min is the spread that balancing is about; pred_ms is what the cost model
predicts for the same layers on each rank. NCCL_NVLS_ENABLE=0 is set before NCCL starts.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import os
import sys
import tempfile
import time

os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink SHARP multicast off (see the device notes): before NCCL starts

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import cross  # noqa: E402
from cross.costmodel import default_cost_model  # noqa: E402
from cross.nn import SparseLinear, ShardedLinear, tensor_parallel_  # noqa: E402

VARIANTS = ("dense", "cross-rows", "cross-cost")
FIELDS = ["tp", "variant", "batch", "decode_ms", "rank_ms", "rank_spread", "pred_ms", "pred_spread", "sparse_layers",
          "cosine_min"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", default="2,4", help="tensor-parallel sizes, each at most the number of processes")
    ap.add_argument("--nproc", type=int, default=None,
                    help="processes to spawn when not run by torchrun (default: max --tp)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda: NCCL, bf16; cpu: gloo, fp32")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=None, help="default: hidden * 11008 / 4096")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--skew", type=float, default=0.8, help="density ramp along the split dimension, in [0, 1)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--keep-dense", choices=("auto", "false"), default="auto",
                    help="false: every shard runs its plan, predicted win or not")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--eager", action="store_true", help="time eager forwards instead of CUDA-graph replays")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="directory for tp_decoder.csv")
    args = ap.parse_args(argv)
    args.tp = sorted({int(v) for v in args.tp.split(",")})
    args.batches = [int(v) for v in args.batches.split(",")]
    args.intermediate = args.intermediate or round(args.hidden * 11008 / 4096)
    args.kv_heads = args.kv_heads or args.heads
    if not 0 <= args.skew < 1 or not 0 <= args.sparsity < 1:
        ap.error(f"--skew and --sparsity: expected values in [0, 1), got {args.skew} and {args.sparsity}")
    if args.hidden % args.heads or args.heads % args.kv_heads or args.kv_heads < max(args.tp):
        ap.error(f"--hidden {args.hidden}, --heads {args.heads}, --kv-heads {args.kv_heads}: expected whole heads "
                 f"and at least {max(args.tp)} key/value heads")
    return args


# ------------------------------------------------------------------------------------- the model
def build_decoder(args, device: torch.device):
    """The same pruned decoder on every rank: seeded weights, masks ramping along each split dimension."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=32000,
                      max_position_embeddings=4096)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaModel(cfg).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    gen = torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if type(mod) is torch.nn.Linear:
                dim = 1 if name.endswith(("o_proj", "down_proj")) else 0
                n = mod.weight.shape[dim]
                ramp = torch.linspace(1 + args.skew, 1 - args.skew, n, device=device) * (1 - args.sparsity)
                ramp = ramp[:, None] if dim == 0 else ramp[None, :]
                mod.weight.mul_(torch.rand(mod.weight.shape, generator=gen, device=device) < ramp)
    return model


def shard(model, variant: str, group, keep_dense: str):
    """Shard a copy of ``model`` over ``group`` as ``variant``; returns it and its sparse layer count."""
    model = copy.deepcopy(model)
    if variant == "dense":
        tensor_parallel_(model, group, policy="rows")
        return model, "0"
    report = cross.sparsify_(model, tp_group=group, tp_split=variant.removeprefix("cross-"), progress=False,
                             keep_dense="auto" if keep_dense == "auto" else False)
    return model, f"{report.n_swapped}/{len(report.layers)}"


# ------------------------------------------------------------------------------------- timing
def lockstep_ms(fn, args, group, device) -> float:
    """Mean milliseconds of fn over args.iters runs started together on every rank of ``group``
    (CUDA-graph replays on a GPU unless --eager); the slowest rank's."""
    step = fn
    if device.type == "cuda" and not args.eager:
        fn()  # first run outside the capture: lazy allocations (cuBLAS workspaces, NCCL communicators)
        sync(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        step = graph.replay
    for _ in range(args.warmup):
        step()
    sync(device)
    dist.barrier(group=group)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(device)
    ms = torch.tensor([(time.perf_counter() - t0) * 1e3 / args.iters], device=comm_device(device))
    dist.all_reduce(ms, op=dist.ReduceOp.MAX, group=group)
    return float(ms)


def local_ms(fn, args, device) -> float:
    """Milliseconds of fn on this rank alone (no collectives inside)."""
    if device.type == "cuda":
        from cross.costmodel.profile import graph_time_us

        return graph_time_us(fn, warmup_ms=10, rep_ms=50) / 1e3
    fn()
    times = []
    for _ in range(max(1, args.iters)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def predicted_ms(parts, batch: int, cost_model) -> float:
    """Predicted milliseconds of this rank's parts: each SparseLinear's plan (or its dense product,
    where the bucket falls back and the dense copy is kept), each nn.Linear's dense product."""
    us = 0.0
    for part in parts:
        if isinstance(part, SparseLinear):
            b = part.plan.bucket_for(batch)
            us += b.dense_us if b.fallback and part.dense_kept else b.predicted_us
        else:
            us += cost_model.dense_us(part.out_features, part.in_features, batch, part.weight.element_size())
    return us / 1e3


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def comm_device(device):
    return device if device.type == "cuda" else torch.device("cpu")


def cosine_min(a, b) -> float:
    """Smallest cosine similarity between matching vectors (last dim) of a and b."""
    cos = torch.nn.functional.cosine_similarity(a.double().flatten(0, -2), b.double().flatten(0, -2), dim=-1)
    return float(cos.min())


# ------------------------------------------------------------------------------------- one rank
def run_rank(args, rank: int, world: int, device: torch.device) -> list[dict]:
    source = build_decoder(args, device)
    cost_model = default_cost_model()
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"# {world} x {name}, {next(source.parameters()).dtype}, {args.layers} layers, hidden {args.hidden}, "
              f"intermediate {args.intermediate}, {args.heads}/{args.kv_heads} heads, sparsity {args.sparsity}, "
              f"skew {args.skew}, cost model: {cost_model.source}", flush=True)
        print(f"{'tp':>3} {'variant':>10} {'batch':>5} {'decode_ms':>9} {'rank_ms':>27} {'spread':>6} "
              f"{'pred_ms':>27} {'spread':>6} {'sparse':>7} {'cos_min':>8}", flush=True)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = {b: torch.randint(0, 32000, (b, 1), generator=gen).to(device) for b in args.batches}
    check_ids = torch.randint(0, 32000, (2, 7), generator=gen).to(device)
    with torch.inference_mode():
        want = source(input_ids=check_ids, use_cache=False).last_hidden_state
    rows = []
    for tp in args.tp:
        group = dist.new_group(list(range(tp)))  # collective over every rank, members or not
        if rank < tp:
            rows += run_group(args, source, group, tp, rank, ids, check_ids, want, cost_model, device)
        dist.barrier()
    return rows


def run_group(args, source, group, tp, rank, ids, check_ids, want, cost_model, device) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        model, sparse_layers = shard(source, variant, group, args.keep_dense)
        parts = [m.local for m in model.modules() if isinstance(m, ShardedLinear)]
        with torch.inference_mode():
            got = model(input_ids=check_ids, use_cache=False).last_hidden_state
            cos = min(v for v in gather(cosine_min(got, want), group))
            if cos < 0.999:
                raise RuntimeError(f"tp {tp} {variant}: sharded output differs from the unsharded model "
                                   f"(min cosine {cos:.6f})")
            for batch, x in ids.items():
                decode = lockstep_ms(lambda: model(input_ids=x, use_cache=False), args, group, device)
                inputs = [torch.randn(batch, p.in_features, device=device, dtype=want.dtype) for p in parts]
                mine = local_ms(lambda: [p(xi) for p, xi in zip(parts, inputs)], args, device)
                rank_ms = gather(mine, group)
                pred_ms = gather(predicted_ms(parts, batch, cost_model), group)
                rows.append(dict(tp=tp, variant=variant, batch=batch, decode_ms=round(decode, 4),
                                 rank_ms="/".join(f"{v:.3f}" for v in rank_ms),
                                 rank_spread=round(max(rank_ms) / min(rank_ms), 3),
                                 pred_ms="/".join(f"{v:.3f}" for v in pred_ms),
                                 pred_spread=round(max(pred_ms) / min(pred_ms), 3), sparse_layers=sparse_layers,
                                 cosine_min=round(cos, 6)))
                if rank == 0:
                    r = rows[-1]
                    print(f"{tp:>3} {variant:>10} {batch:>5} {r['decode_ms']:9.3f} {r['rank_ms']:>27} "
                          f"{r['rank_spread']:6.3f} {r['pred_ms']:>27} {r['pred_spread']:6.3f} {sparse_layers:>7} "
                          f"{cos:8.6f}", flush=True)
        del model, parts
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def gather(value: float, group) -> list[float]:
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, value, group=group)
    return out


def main_rank(rank: int, world: int, args, init_method: str) -> None:
    device = torch.device("cpu")
    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the processes share the cores
    else:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=init_method, rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=30))
    try:
        rows = run_rank(args, rank, world, device)
        if rank == 0 and args.out:
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, "tp_decoder.csv")
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(rows)
            print(f"wrote {path}", flush=True)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ:  # torchrun
        world = int(os.environ["WORLD_SIZE"])
        if max(args.tp) > world:
            raise SystemExit(f"--tp {max(args.tp)}: expected at most the {world} processes torchrun started")
        main_rank(int(os.environ["RANK"]), world, args, "env://")
        return
    world = args.nproc or max(args.tp)
    if max(args.tp) > world:
        raise SystemExit(f"--tp {max(args.tp)}: expected at most --nproc {world} processes")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(main_rank, args=(world, args, f"file://{os.path.join(tmp, 'store')}"), nprocs=world, join=True)


if __name__ == "__main__":
    main()
