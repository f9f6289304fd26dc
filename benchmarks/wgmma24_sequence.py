"""The 2:4 kernel's launches as a decoder step runs them, block by block: the four linear layers of
--layers stacked Llama-2-7B decoder layers (q, k, v 12288x4096; o 4096x4096; gate, up 22016x4096;
down 4096x11008; each layer its own weights, so that nothing stays in L2) launched back to back in one
CUDA graph, a small elementwise kernel before each (where inductor's norms and activation sit in the
step), the kernel built with -DBLOCK_TIMES=1 (each block's start and end by %globaltimer, and its SM).
The same sequence with the dense weights through cuBLAS is timed beside it (CUDA-graph replay, L2
flushed before each replay), and every launch's output is checked against the fp32 product.

Per weight shape, medians over the layers, us: the gap from the last block end of the launch before
(the elementwise kernel between, the launch's start) to this launch's first block start, the blocks'
starts' spread, the first, median and last block end from the first start, and the format's bytes over
the span. In the compiled decoder the kernel costs ~4.8 us a launch beyond streaming its bytes, cuBLAS
~0.5 (docs/perf-notes.md, "The decoder's kernels inside the compiled step"); this splits that time into
the launch's start, the blocks' ramp, their uneven ends and the end's sums, in ~1 min of device time.

With --units (-DBLOCK_TIMES=2) each block also stamps when each of its units is in place: printed per
shape for the second layer's launch (wgmma24_ablate.unit_landings, and STREAM's end: how long the
summing blocks wait for their output's last arrival and end after it, ``end_split``; --end-steps,
-DBLOCK_TIMES=3, splits that end into its steps; under --defines -DEND_RED=1 the steps of each split
output's last arrival, ``reduce_end_split`` (with -DEND_TICKET=1 too, the last ticket's block's: its ticket read,
its wait for the others' reductions, its read-back), and with -DEND_FENCE=1 too its reductions' step ends after
thread 0's fence, its arrival step being the counter's round trip alone), and with --out every launch's block
and unit times saved (wgmma24_sequence_blocks.pt) for reading offline.

    PYTHONPATH=src python benchmarks/wgmma24_sequence.py --sparsity 0.7 --layers 4 [--units] [--out DIR]
"""

import argparse
import csv
import functools
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from cross.bench.timing import check, graph_us  # noqa: E402
from cross.bench.weights import make_weight  # noqa: E402
from cross.costmodel.profile import FLUSH_BYTES, replay_time_us  # noqa: E402
from cross.kernels import cuda_backend  # noqa: E402
from cross.kernels.launch import wgmma24_args, wgmma24_run  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight, token_tile  # noqa: E402

#: a stacked Llama-2-7B decoder layer's linear layers in the step's order: (name, out features, in features)
LAYER = (("qkv", 12288, 4096), ("o", 4096, 4096), ("gate_up", 22016, 4096), ("down", 4096, 11008))
FIELDS = ("shape", "launches", "gap_us", "starts_us", "first_end_us", "median_end_us", "span_us", "mb", "tb_s")


#: rows per block -> (warpgroups, m-tiles of 64 rows per warpgroup) of the format (128 rows: one
#: warpgroup of two m-tiles, whose head words carry both m-tiles' masks: as few bytes per row as 256)
ROWS = {64: (1, 1), 128: (1, 2), 256: (2, 2)}


def by_name(text: str, flag: str) -> dict[str, int]:
    """'qkv=5,gate_up=3' -> {'qkv': 5, 'gate_up': 3}: a per-shape option (``flag``, for the message),
    its names LAYER's."""
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in {n for n, _, _ in LAYER} or not value.isdigit():
            sys.exit(f"wgmma24_sequence: --{flag.replace('_', '-')} takes name=count with names "
                     f"{[n for n, _, _ in LAYER]}, got {item!r}")
        out[name] = int(value)
    return out


def launch_phases(times: list[torch.Tensor]) -> list[dict]:
    """Per launch of ``times`` (u64 [blocks, 3]: start, end, SM, ns, one tensor per launch in launch
    order; None for a launch without block times, whose phases are None), us: 'gap' from the launch
    before's last block end to this one's first block start (None for the first and after a launch
    without times), 'starts' (last start - first start) and 'first_end', 'median_end', 'span' (the last
    end), each from the launch's first start."""
    out, before = [], None
    for t in times:
        if t is None:  # a launch without block times (clusters): no phases, and no gap for the next
            out.append(None)
            before = None
            continue
        t0 = int(t[:, 0].min())
        ends = sorted(int(e) - t0 for e in t[:, 1])
        out.append(dict(gap=None if before is None else (t0 - before) / 1e3, starts=(int(t[:, 0].max()) - t0) / 1e3,
                        first_end=ends[0] / 1e3, median_end=statistics.median(ends) / 1e3, span=ends[-1] / 1e3))
        before = t0 + ends[-1]
    return out


def stream_parts(total: int, grid: int):
    """STREAM's equal parts of ``total`` units over ``grid`` blocks (wgmma24.cu): (block j's first unit,
    the block that holds unit u), as functions."""
    return (lambda j: j * total // grid), (lambda u: ((u + 1) * grid - 1) // total)


#: a summing block's end, step by step (wgmma24.cu's END_STAMP 0-3, then the block's end): the names of
#: the four intervals between them
END_STEPS = ("step_stores", "step_wait", "step_sums", "step_exit")


def end_split(times: torch.Tensor, units: torch.Tensor, total: int, chunks: int,
              steps: torch.Tensor | None = None) -> dict | None:
    """STREAM's end in one launch (``times``: u64 [blocks, 3] start, end, SM; ``units``: [blocks, UNIT_TIMES],
    when each of a block's units was in place, ns; ``total`` units of ``chunks`` per output): for each block
    that sums its last output (split across blocks j_first .. j_last, the block not j_last), its arrival
    read as its last unit's landing, the output's last arrival (j_last's is the landing of the output's
    last unit, at its start), us: 'wait', the last arrival after the block's own (median); 'end' from the
    last arrival to the block's end (median, min, max); with ``steps`` (u64 [blocks, 4], BLOCK_TIMES=3:
    the last unit's mmas done, the partial sums stored, the wait over, the sums issued), also the medians
    of END_STEPS: from the mmas to the stores' barrier, the wait (barrier to barrier), the sums, from the
    sums to the block's end, and 'step_mmas', from the block's last unit landing to its mmas done; and the
    sums step split by the block's SM (``times``' third column): 'sums_shared' where another block of the
    launch on that SM was still running when the wait ended (its copies share the SM's port), 'sums_alone'
    where none was (None where no block was so), with their counts 'n_shared' and 'n_alone'. None where no
    block sums or a stamp is missing."""
    grid = times.shape[0]
    start, block_of = stream_parts(total, grid)
    t0 = int(times[:, 0].min())
    landed = lambda j, i: (int(units[j, i]) - t0) / 1e3 if i < units.shape[1] else None  # noqa: E731
    waits, ends, parts = [], [], {name: [] for name in ("step_mmas",) + END_STEPS}
    sums_shared, sums_alone = [], []
    for j in range(grid):
        first = (start(j + 1) - 1) // chunks * chunks  # the block's last output's first unit
        jf, jl = block_of(first), block_of(first + chunks - 1)
        if jf == jl or j == jl:
            continue
        arrivals = [landed(b, start(b + 1) - 1 - start(b)) for b in range(jf, jl)]
        arrivals.append(landed(jl, first + chunks - 1 - start(jl)))
        if None in arrivals:
            return None
        last = max(arrivals)
        waits.append(last - arrivals[j - jf])
        ends.append((int(times[j, 1]) - t0) / 1e3 - last)
        if steps is not None:
            marks = [int(v) for v in steps[j]] + [int(times[j, 1])]
            if 0 in marks:
                return None
            parts["step_mmas"].append((marks[0] - t0) / 1e3 - arrivals[j - jf])
            for name, a, b in zip(END_STEPS, marks, marks[1:]):
                parts[name].append((b - a) / 1e3)
            shared = any(int(times[o, 2]) == int(times[j, 2]) and int(times[o, 1]) > marks[2]
                         for o in range(grid) if o != j)
            (sums_shared if shared else sums_alone).append((marks[3] - marks[2]) / 1e3)
    if not ends:
        return None
    out = dict(wait=statistics.median(waits), end=statistics.median(ends), end_min=min(ends), end_max=max(ends))
    if steps is not None:
        out.update({name: statistics.median(v) for name, v in parts.items()})
        out.update(n_shared=len(sums_shared), n_alone=len(sums_alone),
                   **{k: statistics.median(v) if v else None for k, v in (("sums_shared", sums_shared),
                                                                          ("sums_alone", sums_alone))})
    return out


#: END_RED's end in the output's last arrival, step by step (END_STAMP 0-3 there, then the block's end)
REDUCE_STEPS = ("step_reductions", "step_arrive", "step_readback", "step_exit")


def reduce_end_split(times: torch.Tensor, units: torch.Tensor, total: int, chunks: int,
                     steps: torch.Tensor) -> dict | None:
    """END_RED's end in one launch (``times``, ``units`` as ``end_split``'s; ``steps``: u64 [blocks, 4], where
    a block was its output's last arrival: its reductions issued, their barrier passed, its arrival's barrier
    passed, its read-back, zeroing and Y stores issued; zero elsewhere): over the blocks whose stamps are
    their last output's (a split output; the stamps of a block that arrived last for both of its outputs
    are the later's), us, the medians of REDUCE_STEPS (the reductions to their barrier, the arrival's round
    trip, the read-back, the rest to the block's end), 'step_mmas' from the block's last unit landing to its
    reductions, and 'n' such blocks. None where no block's stamps are its last output's."""
    grid = times.shape[0]
    start, block_of = stream_parts(total, grid)
    parts = {name: [] for name in ("step_mmas",) + REDUCE_STEPS}
    for j in range(grid):
        marks = [int(v) for v in steps[j]] + [int(times[j, 1])]
        first = (start(j + 1) - 1) // chunks * chunks  # the block's last output's first unit
        if 0 in marks or block_of(first) == block_of(first + chunks - 1):
            continue
        mine = start(j + 1) - 1 - start(j)  # the block's last unit
        if mine >= units.shape[1] or marks[0] < int(units[j, mine]):
            continue  # its stamps are its first output's (it arrived last there, and not in its last)
        parts["step_mmas"].append((marks[0] - int(units[j, mine])) / 1e3)
        for name, a, b in zip(REDUCE_STEPS, marks, marks[1:]):
            parts[name].append((b - a) / 1e3)
    if not parts["step_mmas"]:
        return None
    return dict(n=len(parts["step_mmas"]), **{name: statistics.median(v) for name, v in parts.items()})


def shared_split(end: dict) -> str:
    """``end_split``'s sums step by whether the summing block shared its SM with a running block."""
    say = lambda k, n: "-" if end[k] is None else f"{end[k]:.2f} us ({end[n]} blocks)"  # noqa: E731
    return (f"the sums with another block of the launch running on the SM {say('sums_shared', 'n_shared')}, "
            f"alone on it {say('sums_alone', 'n_alone')}")


def by_shape(phases: list[dict], names: list[str], nbytes: dict) -> list[dict]:
    """``launch_phases``' launches grouped by their shape's name (``names``, one per launch), medians over
    each shape's launches (the gap over those that have one; shapes without block times left out), with
    the MB a launch reads (``nbytes``: per name) and TB/s over the median span; in the order the names first
    come."""
    rows = []
    for name in dict.fromkeys(names):
        mine = [p for p, n in zip(phases, names) if n == name and p is not None]
        if not mine:
            continue
        med = {k: statistics.median(p[k] for p in mine if p[k] is not None) if any(p[k] is not None for p in mine)
               else None for k in ("gap", "starts", "first_end", "median_end", "span")}
        rows.append(dict(shape=name, launches=len(mine), gap_us=med["gap"], starts_us=med["starts"],
                         first_end_us=med["first_end"], median_end_us=med["median_end"], span_us=med["span"],
                         mb=nbytes[name] / 1e6, tb_s=nbytes[name] / med["span"] / 1e6))
    return rows


def main(argv=None):
    from wgmma24_ablate import launcher, unit_landings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--n", type=int, default=16, help="tokens (default 16)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers in the sequence (default 4)")
    ap.add_argument("--slots", action="store_true", help="the slots layout (default: the compressed one)")
    ap.add_argument("--fixed-records", action="store_true",
                    help="the compressed layout's records at their fixed size (default: sized records, each "
                         "refill copying its record's own bytes, as the runtime packs them)")
    ap.add_argument("--defines", default="", help="the 2:4 kernel's build defines (e.g. '-DSTAGES=4')")
    ap.add_argument("--splits", default="",
                    help="shapes launched by clusters instead of STREAM, e.g. 'qkv=5,gate_up=3' (no block times)")
    ap.add_argument("--rows", default="",
                    help="rows per block by shape, e.g. 'qkv=64,gate_up=128' (64: one warpgroup of one m-tile; "
                         "128: one of two; default 256: two of two)")
    ap.add_argument("--per-sm", default="",
                    help="STREAM blocks per SM at most, by shape, e.g. 'qkv=1' (default: as many as fit)")
    ap.add_argument("--unchecked", action="store_true",
                    help="outputs not checked (an ABLATE build, whose results are wrong by design)")
    ap.add_argument("--units", action="store_true", help="also stamp each unit's landing (-DBLOCK_TIMES=2)")
    ap.add_argument("--end-steps", action="store_true",
                    help="--units, and each summing block's end step by step (-DBLOCK_TIMES=3)")
    ap.add_argument("--out", type=Path, default=None, help="folder for wgmma24_sequence.csv")
    opts = ap.parse_args(argv)
    opts.units = opts.units or opts.end_steps
    reduce = "-DEND_RED=1" in opts.defines.split()  # the end's stamps sit in each output's last arrival
    ticket = reduce and "-DEND_TICKET=1" in opts.defines.split()  # or in its last ticket's block
    sized = not (opts.slots or opts.fixed_records)
    if not torch.cuda.is_available():
        sys.exit("wgmma24_sequence: needs a CUDA GPU")
    splits, rows, per_sm = (by_name(getattr(opts, flag), flag) for flag in ("splits", "rows", "per_sm"))
    if bad := {r for r in rows.values() if r not in ROWS}:
        sys.exit(f"wgmma24_sequence: --rows takes {sorted(ROWS)}, got {sorted(bad)}")
    gen = torch.Generator().manual_seed(0)
    flush = torch.zeros(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    between = torch.zeros(opts.n, 4096, dtype=torch.bfloat16, device="cuda")  # the elementwise kernel's tensor
    launches, dense, names, nbytes = [], [], [], {}
    for _ in range(opts.layers):
        for name, m, k in LAYER:
            w = make_weight(m, k, opts.sparsity, "uniform", gen).cuda()
            wgs, mt = ROWS[rows.get(name, 256)]
            sw = Wgmma24Weight.from_dense(w, wgs=wgs, mt=mt, compressed=not opts.slots, sized=sized)
            args = wgmma24_args(sw, splits.get(name, 0))
            x = torch.randn(opts.n, k, generator=gen).to(torch.bfloat16).cuda()
            y = torch.empty(opts.n, m, dtype=torch.bfloat16, device="cuda")
            if name in splits:  # clusters: the runtime's launch, no block times
                run, times = functools.partial(wgmma24_run, x, args, out=y), None
            else:
                run, times, _, _ = launcher(args, x, y, token_tile(opts.n), opts.defines, units_timed=opts.units,
                                            end_steps=opts.end_steps, per_sm=per_sm.get(name))
            run.total = args.row_blocks * -(-opts.n // token_tile(opts.n)) * args.chunks
            run.chunks = args.chunks
            run.ahead = cuda_backend.defined_stages(  # the build's stages, a -DSTAGES in --defines winning
                cuda_backend.wgmma24_defines(True, args.wgs, args.mt, 0, args.slots, token_tile(opts.n),
                                             args.compressed, args.over, args.sized) + tuple(opts.defines.split())) - 1
            launches.append((run, times, x, y, w))
            dense.append((x, w))
            names.append(name)
            nbytes[name] = sw.bytes_read
    os.environ.pop(cuda_backend.DEFINES_ENV, None)
    cuda_backend._wgmma24_kernel.cache_clear()

    def sparse_step():
        for run, *_ in launches:
            between.add_(1)
            run()

    def dense_step():
        for x, w in dense:
            between.add_(1)
            F.linear(x, w)

    sparse_step()  # each build's first launch outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_step()
    graph.replay()
    for run, t, _, y, _ in launches:
        y.fill_(float("nan"))  # poisoned again: the replay read below writes every output
        if t is not None and opts.end_steps:
            run.steps.zero_()  # only the blocks that sum (END_RED: each output's last arrival) stamp: none left from before
    flush.sum()
    graph.replay()  # the block times read and the outputs checked: this replay's, after a flush
    torch.cuda.synchronize()
    times = [None if t is None else t.cpu().clone() for _, t, *_ in launches]
    units = [None if t is None else run.units.cpu().clone() for run, t, *_ in launches] if opts.units else None
    steps = [None if t is None else run.steps.cpu().clone() for run, t, *_ in launches] if opts.end_steps else None

    def checked(when: str):
        for (_, _, x, y, w), name in zip(launches, names):
            if not opts.unchecked and (why := check(y, x.float() @ w.float().t())) is not None:
                sys.exit(f"wgmma24_sequence: {name}, {when}: {why}")

    checked("the read replay")
    sparse_us, dense_us = replay_time_us(graph.replay, 25, 100), graph_us(dense_step)
    for _, _, x, y, _ in launches:  # fresh inputs after the timed replays: whatever a launch leaves, the next is right
        x.copy_(torch.randn(x.shape, generator=gen).to(x.dtype))
        y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    checked("fresh inputs after the timed replays")
    print(f"# {torch.cuda.get_device_name()}, bf16, {opts.sparsity:g} sparse, {opts.n} tokens, "
          f"{'slots' if opts.slots else 'compressed'} layout{', sized records' if sized else ''}"
          f"{' ' + opts.defines if opts.defines else ''}"
          f"{', cooperative launches' if cuda_backend.stream_cooperative() else ''}, "
          f"{opts.layers} decoder layers: the sequence "
          f"{dense_us:.1f} us dense (cuBLAS), {sparse_us:.1f} us sparse ({dense_us / sparse_us:.2f}x; block times "
          f"from one replay after a flush{'; outputs NOT checked' if opts.unchecked else ''})")
    rows = by_shape(launch_phases(times), names, nbytes)
    for r in rows:
        gap = "-" if r["gap_us"] is None else f"{r['gap_us']:.2f}"
        print(f"{r['shape']:>8}: gap {gap} us, starts within {r['starts_us']:.2f}, ends {r['first_end_us']:.2f} / "
              f"{r['median_end_us']:.2f} / {r['span_us']:.2f} us (first / median / last), {r['mb']:.1f} MB, "
              f"{r['tb_s']:.2f} TB/s over the span")
    if units:
        first = len(LAYER) if opts.layers > 1 else 0  # the second layer's launches (the first's if it is alone)
        for i in range(first, first + len(LAYER)):
            run = launches[i][0]
            if times[i] is None:
                continue
            print(f"{names[i]} ({run.total} units, {run.ahead} ahead): " + " | ".join(
                unit_landings(times[i], units[i], run.total, run.ahead)))
            if reduce and steps is not None:
                if (end := reduce_end_split(times[i], units[i], run.total, run.chunks, steps[i])) is not None:
                    # END_TICKET: the stamps are the last ticket's block's (no reductions: its ticket read,
                    # then its wait for the other blocks' reductions and counts)
                    labels = ("mmas", "ticket", "wait", "readback", "exit") if ticket else (
                        tuple(k[5:] for k in ("step_mmas",) + REDUCE_STEPS))
                    print(f"{names[i]}: {'END_TICKET' if ticket else 'END_RED'}'s end in the last "
                          f"{'tickets' if ticket else 'arrivals'} ({end['n']} blocks), step by step (medians, us): "
                          + ", ".join(f"{label} {end[k]:.2f}" for label, k in zip(labels, ("step_mmas",) + REDUCE_STEPS)))
            elif (end := end_split(times[i], units[i], run.total, run.chunks,
                                   None if steps is None else steps[i])) is not None:
                print(f"{names[i]}: the summing blocks' end: the output's last arrival {end['wait']:.2f} us after "
                      f"their own (median), their end {end['end']:.2f} us after it (median; {end['end_min']:.2f}"
                      f"-{end['end_max']:.2f})" + ("" if steps is None else "; step by step (medians, us): "
                      + ", ".join(f"{k[5:]} {end[k]:.2f}" for k in ("step_mmas",) + END_STEPS)
                      + "; " + shared_split(end)))
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        if units:
            torch.save(dict(names=names, times=times, units=units, steps=steps, totals=[r.total for r, *_ in launches]),
                       opts.out / "wgmma24_sequence_blocks.pt")
        with open(opts.out / "wgmma24_sequence.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else round(v, 3) if isinstance(v, float) else v)
                              for k, v in r.items()} for r in rows)
        print(f"wrote {opts.out / 'wgmma24_sequence.csv'}")


if __name__ == "__main__":
    main()
