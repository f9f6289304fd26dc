"""Where the warpgroup 2:4 kernel's STREAM launch spends its time: the full build against one whose
blocks only copy (CROSS_CUDA_DEFINES=-DABLATE=1: the weight's records and X through the pipeline, the
waits and barriers, no A registers, no mmas; its result is wrong and not checked) and those that do not
copy either (-DABLATE=3; -DABLATE=11 without the end's sums too: the launch's fixed part), each timed
(CUDA-graph replay, L2 flushed by a 256 MB read, cuBLAS in the same run) and then launched once more
after a flush with -DBLOCK_TIMES=1: every block's start and end (%globaltimer) and SM, so that the
spread of the blocks' ends (the SMs idle while the last ones finish) is seen, not inferred; with
--repeats, whether the same SMs are fast from launch to launch; with --units (-DBLOCK_TIMES=2), when
each block's units land: whether the blocks that end last got their first copies late or their refills.

    PYTHONPATH=src python benchmarks/wgmma24_ablate.py --shape 11008x4096 --sparsity 0.7 --n 16
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from cross.bench.timing import graph_us  # noqa: E402
from cross.bench.weights import make_weight  # noqa: E402
from cross.costmodel.profile import FLUSH_BYTES  # noqa: E402
from cross.kernels import cuda_backend  # noqa: E402
from cross.kernels.launch import wgmma24_args  # noqa: E402
from cross.pack.wgmma24 import Wgmma24Weight, stages, token_tile  # noqa: E402

VARIANTS = (("full", ""), ("copies only", "-DABLATE=1"), ("no copies", "-DABLATE=3"),
            ("no copies or end", "-DABLATE=11"))
UNIT_TIMES = 64  # wgmma24.cu's units timed per block with -DBLOCK_TIMES=2


def launcher(args, x, y, ntok: int, defines: str, waves: int = 1, units_timed: bool = False,
             end_steps: bool = False, per_sm: int | None = None, prologue: bool = False):
    """A STREAM launch of a build with ``defines`` (and BLOCK_TIMES) over ``waves`` times the SMs' resident
    blocks (more than one: the hardware's block scheduler hands the later ranges to whichever SM frees
    first), its workspace with room for the blocks' times, and the times' view (u64 [blocks, 3]: start,
    end, SM; with ``units_timed``, BLOCK_TIMES=2, also ``run.units`` [blocks, UNIT_TIMES]: when each unit
    was in place; with ``end_steps``, BLOCK_TIMES=3, also ``run.steps`` [blocks, 4]: a summing block's
    end, step by step, wgmma24.cu's END_STAMP; zero in blocks that do not sum; with ``prologue``,
    BLOCK_TIMES=4, the unit times and ``run.steps`` the prologue's steps, PRO_STAMP). ``per_sm``: at most that
    many blocks per SM (default: as many as fit, as the runtime launches). Cooperative where the runtime's
    STREAM launches are (``cuda_backend.stream_cooperative``) and there is one wave; the end the runtime's
    (fp32 reductions up to REDUCE_MAX_TOKENS tokens where ``stream_reduce``: the zeroed workspace is their
    area, which each launch leaves zero); X by its tensor map where the build copies it so (XTMA)."""
    stamps = 4 if prologue else 3 if end_steps else 2 if units_timed else 1
    os.environ[cuda_backend.DEFINES_ENV] = f"{defines} -DBLOCK_TIMES={stamps}"
    cuda_backend.wgmma24_defines_changed()
    reduce = cuda_backend.stream_reduces(0, ntok)
    func, smem, fit = cuda_backend._wgmma24_kernel(torch.cuda.current_device(), True, args.wgs, args.mt, 0,
                                                   args.slots, ntok, args.compressed, args.over, args.sized, reduce)
    per_sm = fit if per_sm is None else min(per_sm, fit)
    outputs = args.row_blocks * -(-x.shape[0] // ntok)
    units = outputs * args.chunks
    grid = min(waves * cuda_backend.wgmma24_stream_blocks(units, args.sms, per_sm), units)
    slots = 2 * grid * 64 * args.wgs * args.mt * ntok
    ws = torch.zeros(slots + 6 * grid + 2 * UNIT_TIMES * grid + 8 * grid, dtype=torch.float32, device="cuda")
    counters = torch.zeros(grid, dtype=torch.int32, device="cuda")  # one per block (the args' are per resident block)
    ptrs = cuda_backend.Pointers.of(x.data_ptr(), y.data_ptr(), 0, args.values.data_ptr(), ws.data_ptr(),
                                    counters.data_ptr(), is_bf16=True)
    ints = (args.out_features, args.in_features, x.shape[0], x.stride(0), y.stride(0), args.chunks)

    cooperative = waves == 1 and cuda_backend.stream_cooperative()  # (more waves cannot all be resident)

    xmap = (cuda_backend.x_tensor_map(x.data_ptr(), True, x.shape[0], args.in_features, x.stride(0), ntok),) \
        if cuda_backend.wgmma24_xtma() else ()

    def run():
        cuda_backend._launch(func, grid, args.wgs * 128, smem, ptrs, ints, cooperative=cooperative, objects=xmap)

    run.keep = counters
    words = ws[slots:].view(torch.int64)
    run.units = words[3 * grid:(3 + UNIT_TIMES) * grid].view(grid, UNIT_TIMES)
    run.steps = words[(3 + UNIT_TIMES) * grid:].view(grid, 4)
    return run, words[:3 * grid].view(grid, 3), grid, per_sm


def unit_landings(times: torch.Tensor, units: torch.Tensor, total: int, ahead: int) -> list[str]:
    """When each block's units were in place (u64 [blocks, UNIT_TIMES], ns; ``times``: [blocks, 3] start,
    end, SM), from the first block's start, for a STREAM launch of ``total`` units whose pipeline copies
    ``ahead`` units before its first wait: over the blocks (min/median/max), unit 0, the prologue's last
    (ahead - 1), the first refilled (ahead) and each block's last timed unit; then the medians of the
    same for the tenth of the blocks that ended first and the tenth that ended last."""
    grid = times.shape[0]
    t0 = times[:, 0].min()
    counts = [min((j + 1) * total // grid - j * total // grid, units.shape[1]) for j in range(grid)]
    rel = (units - t0).double() / 1e3
    end = (times[:, 1] - t0).double() / 1e3
    picks = {"unit 0": [0] * grid, f"unit {ahead - 1} (the prologue's last)": [min(ahead - 1, c - 1) for c in counts],
             f"unit {ahead} (the first refill)": [min(ahead, c - 1) for c in counts],
             "the last unit": [c - 1 for c in counts]}
    cols = {name: torch.stack([rel[j, i] for j, i in enumerate(idx)]) for name, idx in picks.items()}
    cols["the end"] = end
    q = lambda v: "/".join(f"{float(x):.1f}" for x in torch.quantile(v, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)))  # noqa: E731
    lines = ["units in place, us from the first start (min/median/max over blocks): "
             + "; ".join(f"{name} {q(v)}" for name, v in cols.items())]
    order = torch.argsort(end)
    tenth = max(1, grid // 10)
    for label, sel in (("the tenth ending first", order[:tenth]), ("the tenth ending last", order[-tenth:])):
        lines.append(f"{label}: " + "; ".join(f"{name} {float(v[sel].median()):.1f}" for name, v in cols.items()))
    return lines


PROLOGUE_STEPS = ("first unit found", "mbarriers set up", "copies issued", "barrier after them")


def prologue_steps(times: torch.Tensor, steps: torch.Tensor, units: torch.Tensor) -> str:
    """The prologue's steps of every block (u64 [blocks, 4], ns: wgmma24.cu's PRO_STAMP), then unit 0 in
    place (``units``: u64 [blocks, UNIT_TIMES]), each from the block's own start (``times``: [blocks, 3]
    start, end, SM), us min/median/max over the blocks."""
    start = times[:, 0:1]
    cols = torch.cat([steps, units[:, :1]], 1) - start
    names = PROLOGUE_STEPS + ("unit 0 in place",)
    q = torch.quantile(cols.double() / 1e3, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), dim=0)
    return ("prologue, us from the block's start (min/median/max): "
            + "; ".join(f"{name} {q[0, i]:.2f}/{q[1, i]:.2f}/{q[2, i]:.2f}" for i, name in enumerate(names)))


def sm_repeatability(per_launch: list[torch.Tensor], sms: int) -> str:
    """Each SM's mean block time per launch (u64 [blocks, 3] times: start, end, SM), the correlation over
    the SMs between consecutive launches (mean of the pairs'), and the 5 SMs fastest and slowest on
    average over the launches."""
    per_sm = []
    for t in per_launch:
        dur = (t[:, 1] - t[:, 0]).double()
        sm = t[:, 2].long()
        total = torch.zeros(sms, dtype=torch.float64).index_add_(0, sm, dur)
        count = torch.zeros(sms, dtype=torch.float64).index_add_(0, sm, torch.ones_like(dur))
        per_sm.append(total / count.clamp(min=1))
    r = [float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(per_sm, per_sm[1:])]
    mean = torch.stack(per_sm).mean(0)
    order = torch.argsort(mean).tolist()
    return (f"SMs' block times, launch to launch: correlation {sum(r) / len(r):.2f} (over {len(per_sm)} launches); "
            f"fastest SMs {order[:5]}, slowest {order[-5:]}")


def again(run, times: torch.Tensor, us: float, flush: torch.Tensor) -> str:
    """A second launch right behind the first (its code, constants and tables just used; the weight's bytes
    flushed before the first only): what it adds to a graph of the two, and its blocks' times from its own
    stamps (``times``: u64 [blocks, 3], overwritten by each launch)."""
    twice = graph_us(lambda: (run(), run()))
    flush.sum()
    run()
    run()
    torch.cuda.synchronize()
    t = times.cpu()
    start, end = t[:, 0] - t[:, 0].min(), t[:, 1] - t[:, 0].min()
    q = torch.quantile((end - start).double(), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)) / 1e3
    return (f"again: the second of two launches adds {twice - us:.2f} us ({twice:.2f} for both); its blocks end "
            f"{end.min() / 1e3:.2f}-{end.max() / 1e3:.2f} us, a block's time min/median/max "
            f"{q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} us")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="11008x4096")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--stages", type=int, default=None, help="-DSTAGES for both builds (default: the format's)")
    ap.add_argument("--waves", default="1", help="comma-separated multiples of the resident blocks to launch (default 1)")
    ap.add_argument("--variants", default="full,copies only",
                    help="comma-separated, of: full, copies only, no copies (nor mmas: the loop's waits and "
                         "barriers, the end), no copies or end (each block writes its own sums)")
    ap.add_argument("--compressed", action="store_true", help="the compressed layout (default: the slots layout)")
    ap.add_argument("--units", action="store_true",
                    help="also time when each block's first units land (-DBLOCK_TIMES=2; the launch timed "
                         "for its speed is the plain BLOCK_TIMES=1 build)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="launches with block times (each after a flush); from 2: how well each SM's block time "
                         "in one launch predicts it in the next (the correlation over the SMs), and the SMs "
                         "fastest and slowest on average")
    ap.add_argument("--prologue", action="store_true",
                    help="also time each block's prologue step by step (-DBLOCK_TIMES=4): its index arithmetic, "
                         "the mbarriers' set-up, the first copies' issue, unit 0 in place")
    ap.add_argument("--defines", default="",
                    help="more defines for every variant's build (a tuning build: e.g. -DEARLY=1)")
    ap.add_argument("--again", action="store_true",
                    help="also a second launch right behind the first: what it adds, and its blocks' times "
                         "(whether a block's first microsecond is the launch's cold start)")
    opts = ap.parse_args(argv)
    m, k = (int(v) for v in opts.shape.split("x"))
    w = make_weight(m, k, opts.sparsity, "uniform", torch.Generator().manual_seed(0)).cuda()
    sw = Wgmma24Weight.from_dense(w, compressed=opts.compressed)
    args = wgmma24_args(sw, 0)  # STREAM: its counters
    x = torch.randn(opts.n, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).cuda()
    y = torch.empty(opts.n, m, dtype=torch.bfloat16, device="cuda")
    dense_us = graph_us(lambda: F.linear(x, w))
    layout = "compressed" if opts.compressed else "slots"
    print(f"# {torch.cuda.get_device_name()}, {opts.shape} {opts.sparsity} N={opts.n}, {layout}: {sw.nbytes / 1e6:.1f} MB, "
          f"cuBLAS {dense_us:.2f} us")
    flush = torch.zeros(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    wanted = opts.variants.split(",")
    # every variant at the full build's blocks per SM (an ablation build's fewer registers would fit more, and
    # its STREAM grid would then differ from the launch it is taken from)
    common = (f" -DSTAGES={opts.stages}" if opts.stages else "") + (f" {opts.defines}" if opts.defines else "")
    full_per_sm = launcher(args, x, y, token_tile(opts.n), common)[3]
    for (name, defines), waves in [(v, w) for v in VARIANTS if v[0] in wanted for w in map(int, opts.waves.split(","))]:
        defines += common
        run, times, grid, per_sm = launcher(args, x, y, token_tile(opts.n), defines, waves, per_sm=full_per_sm)
        us = graph_us(run)
        per_launch = []
        for _ in range(max(opts.repeats, 1)):
            flush.sum()
            run()
            torch.cuda.synchronize()
            per_launch.append(times.cpu().clone())
        t = per_launch[0]
        start, end = t[:, 0] - t[:, 0].min(), t[:, 1] - t[:, 0].min()
        dur = (end - start).double()
        q = torch.quantile(dur, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)) / 1e3
        busy = float(dur.sum()) / (min(grid, args.sms * per_sm) * float(end.max()))  # of the resident slots
        if waves > 1:
            name = f"{name} x{waves}"
        print(f"{name:>12}: {us:7.2f} us ({dense_us / us:.2f}x, {sw.nbytes / us / 1e6:.2f} TB/s), {grid} blocks "
              f"({per_sm} per SM); block starts within {start.max() / 1e3:.2f} us, ends {end.min() / 1e3:.2f}"
              f"-{end.max() / 1e3:.2f} us; a block's time min/median/max {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} us; "
              f"block slots busy {busy * 100:.0f}%", flush=True)
        order = torch.argsort(end)
        print(f"{'':>12}  first ends: {', '.join(f'{float(end[i]) / 1e3:.1f} (SM {int(t[i, 2])})' for i in order[:5])}; "
              f"last: {', '.join(f'{float(end[i]) / 1e3:.1f} (SM {int(t[i, 2])})' for i in order[-5:])}")
        if len(per_launch) > 1:
            print(f"{'':>12}  {sm_repeatability(per_launch, args.sms)}")
        if opts.again:
            print(f"{'':>12}  {again(run, times, us, flush)}")
        if opts.units:
            urun, utimes, ugrid, _ = launcher(args, x, y, token_tile(opts.n), defines, waves, units_timed=True,
                                              per_sm=full_per_sm)
            flush.sum()
            urun()
            torch.cuda.synchronize()
            ahead = (opts.stages or stages(args.wgs, args.mt, args.slots, token_tile(opts.n), args.compressed)) - 1
            total = args.row_blocks * -(-opts.n // token_tile(opts.n)) * args.chunks
            for line in unit_landings(utimes.cpu(), urun.units.cpu(), total, ahead):
                print(f"{'':>12}  {line}")
        if opts.prologue:
            prun, ptimes, _, _ = launcher(args, x, y, token_tile(opts.n), defines, waves, per_sm=full_per_sm,
                                          prologue=True)
            flush.sum()
            prun()
            torch.cuda.synchronize()
            print(f"{'':>12}  {prologue_steps(ptimes.cpu(), prun.steps.cpu(), prun.units.cpu())}")
    os.environ.pop(cuda_backend.DEFINES_ENV, None)
    cuda_backend.wgmma24_defines_changed()


if __name__ == "__main__":
    main()
