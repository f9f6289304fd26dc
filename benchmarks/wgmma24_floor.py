"""What a warpgroup 2:4 launch at few tokens spends outside its mmas: the launch as the runtime makes it
(the slots layout by its clusters, or with --compressed the compressed layout by STREAM), timed in full
and in three ablation builds (kernels/wgmma24.cu's ABLATE bits, through CROSS_CUDA_DEFINES; their
results are wrong by design and not checked): "copies only" (-DABLATE=1: the weight's records and X
through the pipeline, the waits, barriers and the end's sums, no A registers, no mmas), "weight copies
only" (-DABLATE=65: as "copies only" without X's copies), "no copies"
(-DABLATE=3: the loop's barriers and the end alone), "launch only" (-DABLATE=4: every block returns
at its start), "no end" (-DABLATE=8: no partial sums across blocks, each block writes its own) and "no
copies, no end" (-DABLATE=11), each launched with the full build's grid; with --builds, other full
builds (CROSS_CUDA_DEFINES each, e.g. -DSUM_SLOTS=4), checked like the full one and launched with their
own grid; with --without-overflow, the same weight less each group's third and fourth nonzeros (2:4 in
every group of 4 columns, so no overflow operand: its loads and mmas gone, and in the slots layout its head
words), checked against its own product, to time what the overflow costs; with --lone (the compressed
layout), the same weight in its lone halves (a group's lone nonzero as its 16-bit value), checked like the
full build. Each is timed as the benchmarks
time everything (CUDA-graph replay, L2 flushed by a 256 MB read before each replay), cuBLAS in the same
run; the full build is checked against the fp32 product (output poisoned) before it is timed. The
differences split the launch's time: the launch alone, the loop's barriers and the end's sums, the
copies' streaming, and the mmas' chain.

    PYTHONPATH=src python benchmarks/wgmma24_floor.py --shapes llama-qkvo,llama-down --sparsities 0.7,0.9 --n 16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from cross.bench.report import start_csv  # noqa: E402
from cross.bench.timing import check, graph_us  # noqa: E402
from cross.bench.weights import ALL_SHAPES, make_weight  # noqa: E402
from cross.kernels import cuda_backend  # noqa: E402
from cross.kernels.launch import wgmma24_args, wgmma24_run, wgmma24_split  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight, token_tile  # noqa: E402

#: the builds timed after the full one: (name, CROSS_CUDA_DEFINES)
ABLATIONS = (("copies only", "-DABLATE=1"), ("weight copies only", "-DABLATE=65"), ("no copies", "-DABLATE=3"),
             ("launch only", "-DABLATE=4"), ("no end", "-DABLATE=8"), ("no copies, no end", "-DABLATE=11"))


BUILD = cuda_backend._wgmma24_kernel  # the launcher's builds: (function, shared memory, blocks per SM)


BASE = ""  # --base: the defines every build starts with


def without_overflow(w: torch.Tensor) -> torch.Tensor:
    """``w`` less each group's (4 columns, from column 0) nonzeros after its second: a weight 2:4 in every
    group, with no overflow operand. ``w``'s columns a multiple of 4."""
    groups = w.reshape(w.shape[0], -1, 4)
    kept = (groups != 0).cumsum(-1) <= 2
    return (groups * kept).reshape(w.shape)


def build_with(defines: str, per_sm: int | None = None) -> None:
    """Make the next wgmma24 launches use a build with ``defines`` (empty: the normal build), launched
    as if ``per_sm`` of its blocks fitted on an SM (None: as many as do). An ablation build needs fewer
    registers, so more of its blocks fit, and a STREAM launch sized by that would have more blocks than
    the full build's: pinned, the ablations run the full launch's grid."""
    os.environ[cuda_backend.DEFINES_ENV] = f"{BASE} {defines}".strip()
    cuda_backend._wgmma24_kernel = BUILD  # the cached builder back in place (a pinned lambda has no cache), then
    cuda_backend.wgmma24_defines_changed()  # its builds and the flags (XTMA: whether launches pass X's map) forgotten
    cuda_backend._wgmma24_kernel = BUILD if per_sm is None else (lambda *a: BUILD(*a)[:2] + (per_sm,))


def launched_per_sm(args, split: int, ntok: int) -> int:
    """Blocks per SM of the build the next launch of ``args`` (at ``ntok`` tokens a block, ``split``) takes, with
    the launch's own flags (cuda_backend.wgmma24_launch's: END_RED where STREAM reduces, PROPAGATE, sized records,
    lone halves), under the defines build_with set last."""
    reduce = cuda_backend.stream_reduces(split, ntok)
    return cuda_backend._wgmma24_kernel(torch.cuda.current_device(), True, args.wgs, args.mt, split, args.slots, ntok,
                                        args.compressed, args.over, args.sized, reduce, args.propagate, args.lone)[2]


def column(name: str) -> str:
    """The CSV column of a build's time: 'no copies, no end' -> no_copies_no_end_us, '-DSUM_SLOTS=4' ->
    SUM_SLOTS4_us."""
    return name.replace("-D", "").replace("=", "").replace(" ", "_").replace(",", "") + "_us"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-qkvo,llama-down", help=f"comma-separated, of {', '.join(ALL_SHAPES)}")
    ap.add_argument("--sparsities", default="0.7,0.9")
    ap.add_argument("--n", type=int, default=16, help="tokens")
    ap.add_argument("--compressed", action="store_true", help="the compressed layout (default: the slots layout)")
    ap.add_argument("--sized", action="store_true", help="sized records (each refill copies its record's own bytes)")
    ap.add_argument("--wgs", type=int, default=2, help="warpgroups per block (the weight's row blocks: 64 wgs mt rows)")
    ap.add_argument("--mt", type=int, default=2, help="m-tiles per warpgroup")
    ap.add_argument("--builds", default="", help="comma-separated CROSS_CUDA_DEFINES of other full builds to time")
    ap.add_argument("--split", type=int, default=None,
                    help="the launch's split (0: STREAM; 1..8: clusters; default: the launcher's)")
    ap.add_argument("--base", default="", help="CROSS_CUDA_DEFINES put before every build's own (e.g. -DXPRE=1)")
    ap.add_argument("--reduce-tokens", type=int, default=None,
                    help="STREAM launches of up to this many tokens take END_RED builds (cuda_backend."
                         "REDUCE_MAX_TOKENS, 64; 128 a tuning setting)")
    ap.add_argument("--no-ablations", action="store_true",
                    help="time the full builds alone (the default and --builds), no ablation builds, no split")
    ap.add_argument("--without-overflow", action="store_true",
                    help="also time the default build on the weight less its groups' third and fourth nonzeros")
    ap.add_argument("--lone", action="store_true",
                    help="also time the weight packed with lone halves (the compressed layout's lone=True; LONE=1)")
    ap.add_argument("--out", default="")
    opts = ap.parse_args(argv)
    if opts.lone and not opts.compressed:
        raise SystemExit("wgmma24_floor: --lone times the compressed layout's lone halves: pass --compressed too")
    if opts.reduce_tokens is not None:
        if opts.reduce_tokens not in (16, 32, 64, 128):
            raise SystemExit(f"wgmma24_floor: --reduce-tokens: expected 16, 32, 64 or 128, got {opts.reduce_tokens}")
        cuda_backend.REDUCE_MAX_TOKENS = opts.reduce_tokens  # before the reductions' area is allocated
    if cuda_backend.DEFINES_ENV in os.environ:
        raise SystemExit(f"wgmma24_floor: unset {cuda_backend.DEFINES_ENV}; the script sets it for each build")
    global BASE
    BASE = opts.base
    gen = torch.Generator().manual_seed(0)
    layout = ("compressed" if opts.compressed else "slots") + (", sized records," if opts.sized else "")
    print(f"# {torch.cuda.get_device_name()}, bf16, N={opts.n}, the {layout} layout at its default launch"
          f"{', every build with ' + opts.base if opts.base else ''}"
          f"{f', END_RED up to {opts.reduce_tokens} tokens' if opts.reduce_tokens else ''}; "
          f"CUDA-graph replay, L2 flushed; us")
    rows = []
    try:
        for shape in opts.shapes.split(","):
            m, k = ALL_SHAPES[shape]
            for sp in (float(v) for v in opts.sparsities.split(",")):
                w = make_weight(m, k, sp, "uniform", gen).cuda()
                sw = Wgmma24Weight.from_dense(w, wgs=opts.wgs, mt=opts.mt, compressed=opts.compressed, sized=opts.sized)
                build_with("")  # the base defines (an A_SMEM base: the records' order wgmma24_args gives)
                args = wgmma24_args(sw, opts.split)
                split = args.split if args.split >= 0 else wgmma24_split(args.row_blocks, args.chunks, args.sms,
                                                                        -(-opts.n // token_tile(opts.n)))
                x = torch.randn(opts.n, k, generator=gen).to(torch.bfloat16).cuda()
                y = torch.full((opts.n, m), float("nan"), dtype=torch.bfloat16, device="cuda")
                dense_us = graph_us(lambda: F.linear(x, w))
                build_with("")
                per_sm = launched_per_sm(args, split, token_tile(opts.n))

                def checked_us(run_args, weight, what):  # Y poisoned, the launch checked, then timed
                    y.fill_(float("nan"))
                    wgmma24_run(x, run_args, None, y)
                    bad = check(y, x.float() @ weight.float().T)
                    if bad:
                        raise SystemExit(f"{shape} {sp}: {what} is WRONG: {bad}")
                    return graph_us(lambda: wgmma24_run(x, run_args, None, y))

                times = {"full": checked_us(args, w, "the full build")}
                builds_per_sm = {}
                for defines in filter(None, opts.builds.split(",")):
                    build_with(defines)
                    times[defines] = checked_us(args, w, f"the build {defines}")
                    builds_per_sm[column(defines)[:-3] + "_per_sm"] = launched_per_sm(args, split, token_tile(opts.n))
                for name, defines in () if opts.no_ablations else ABLATIONS:
                    build_with(defines, per_sm)
                    times[name] = graph_us(lambda: wgmma24_run(x, args, None, y))
                build_with("")
                lean_mb = {}

                def other(name, weight, packed):  # the default build on another packing
                    times[name] = checked_us(wgmma24_args(packed, opts.split), weight, f"the build on the {name}")
                    lean_mb[column(name)[:-3] + "_mb"] = round(packed.bytes_read / 1e6, 2)

                if opts.lone:
                    other("lone halves", w, Wgmma24Weight.from_dense(w, wgs=opts.wgs, mt=opts.mt, compressed=True,
                                                                     sized=opts.sized, lone=True))
                if opts.without_overflow:
                    w2 = without_overflow(w)
                    other("without overflow", w2, Wgmma24Weight.from_dense(w2, wgs=opts.wgs, mt=opts.mt,
                                                                           compressed=opts.compressed,
                                                                           sized=opts.sized))
                parts = {}
                if not opts.no_ablations:
                    parts = {"launch only": times["launch only"],
                             "barriers and the end's sums": times["no copies"] - times["launch only"],
                             "the copies": times["copies only"] - times["no copies"],
                             "X's copies": times["copies only"] - times["weight copies only"],
                             "the mmas": times["full"] - times["copies only"],
                             "the end (full - no end)": times["full"] - times["no end"],
                             "the end (no copies)": times["no copies"] - times["no copies, no end"]}
                rec = dict(base=opts.base, shape=shape, M=m, K=k, N=opts.n, sparsity=sp, layout=layout, rows=64 * opts.wgs * opts.mt,
                           split=split if split else "STREAM", blocks_per_sm=per_sm, mb=round(sw.nbytes / 1e6, 2),
                           read_mb=round(sw.bytes_read / 1e6, 2),
                           dense_us=round(dense_us, 2),
                           **{column(name): round(us, 2) for name, us in times.items()}, **lean_mb, **builds_per_sm)
                rows.append(rec)
                print(f"{shape:>11} {sp:>4} {rec['mb']:>6.1f} MB, {rec['rows']}-row blocks, split {rec['split']} "
                      f"({per_sm} per SM): "
                      f"cuBLAS {dense_us:.2f}, "
                      + ", ".join(f"{name} {us:.2f}" + (f" ({builds_per_sm[column(name)[:-3] + '_per_sm']} per SM)"
                                                         if column(name)[:-3] + "_per_sm" in builds_per_sm else "")
                                  for name, us in times.items())
                      + ("\n" + " " * 12 + "parts: " + ", ".join(f"{name} {us:+.2f}" for name, us in parts.items())
                         if parts else ""),
                      flush=True)
    finally:
        build_with("")
        os.environ.pop(cuda_backend.DEFINES_ENV, None)
    if opts.out and rows:
        start_csv(Path(opts.out), list(rows[0]), rows)


if __name__ == "__main__":
    main()
