"""The analytic cost of one tile: bytes over bandwidth, tensor-core and CUDA-core work over their rates.

Costs are *amortised*: the microseconds one tile adds when the whole GPU works on many tiles at
once. A plan's time is then the critical path over compute units (see ``partition``), not a sum.
Rates are whole-GPU figures; the H100 defaults come from measurements on an H100 80GB HBM3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..tiling import TileKind

#: Token tiles (the kernels' BLOCK_N) by token count: tensor-core tiles need >= 16.
MIN_BLOCK_N = 16
MAX_BLOCK_N = 64


def block_n_for(n_tokens: int) -> int:
    """The kernels' token tile for ``n_tokens`` tokens: the next power of two in [16, 64]."""
    return int(min(MAX_BLOCK_N, max(MIN_BLOCK_N, 1 << max(0, math.ceil(math.log2(max(1, n_tokens)))))))


#: shared-memory pipeline depth of the CUDA plan kernel (plan_kernel_stages may choose fewer)
PLAN_KERNEL_STAGES = 4
#: the fewest pipeline stages the kernel is built with
PLAN_KERNEL_MIN_STAGES = 2
#: the largest token tile whose CUDA build is bounded to 6 blocks per SM in registers (MIN_BLOCKS)
REGISTER_BOUND_BLOCK_N = 16
#: shared memory a block of the CUDA plan kernel takes besides its dynamic buffers: its static
#: variables and the 1 KB the runtime reserves per block
PLAN_KERNEL_SMEM_EXTRA = 1024 + 128


def plan_kernel_vals_bytes(tile_shape, has_dense: bool, max_sparse_nnz: int, block_n: int = MIN_BLOCK_N) -> int:
    """Room for one tile's values in a pipeline stage of the CUDA plan kernel: the whole tile if the
    plan has DENSE tiles, else its largest BITMAP tile's values padded to 16-byte chunks, rounded up
    (one compiled variant per size): to a multiple of 1 KB for token tiles up to
    REGISTER_BOUND_BLOCK_N (a power of two would give a 50% weight's ~4.3 KB tiles 8 KB and cost
    resident blocks), to a power of two for larger token tiles (measured on H100: the 1 KB rounding
    fits them more blocks, their plans get more units and split items, and the forced kernel at 128
    and 2048 tokens ran up to 3x slower; docs/perf-notes.md, "What the bulk copies and the resident
    blocks gave")."""
    full = tile_shape[0] * tile_shape[1] * 2
    if has_dense:
        return full
    need = max(1024, -(-max_sparse_nnz // 8) * 16)
    if block_n > REGISTER_BOUND_BLOCK_N:
        return min(full, 1 << (need - 1).bit_length())
    return min(full, -(-need // 1024) * 1024)


def plan_kernel_stages(tile_shape, block_n: int, vals_bytes: int, blocks: int | None = None,
                       smem_per_unit: int | None = None) -> int:
    """Pipeline stages of a build of the CUDA plan kernel: PLAN_KERNEL_STAGES, or the most stages
    with which `blocks` blocks fit in one multiprocessor's shared memory where PLAN_KERNEL_STAGES
    do not fit them (and fewer stages do). Measured on H100, 11008x4096 at 50% (5 KB of values per
    stage): 4 stages fit 5 blocks, 34.8 us; 3 stages fit 6, 33.8 us; 2 to 4 stages run the same
    time where blocks fit either way (docs/perf-notes.md, "Bulk copies and resident blocks").
    Only builds bounded to 6 blocks in registers (token tiles up to REGISTER_BOUND_BLOCK_N) take
    fewer stages: the larger token tiles' builds use up to 127 registers (4 blocks), so fewer
    stages there would buy blocks the registers do not hold (a profile with 2 stages at 64 tokens
    measured the kernel's fixed cost at 64-2048 tokens 45-87% higher). `blocks` and
    `smem_per_unit` default to the H100 spec's (the kernel is built for them)."""
    blocks = H100.programs_per_unit if blocks is None else blocks
    smem_per_unit = H100.smem_per_unit if smem_per_unit is None else smem_per_unit
    if block_n > REGISTER_BOUND_BLOCK_N:
        return PLAN_KERNEL_STAGES
    for stages in range(PLAN_KERNEL_STAGES, PLAN_KERNEL_MIN_STAGES - 1, -1):
        if blocks * (plan_kernel_smem(tile_shape, block_n, vals_bytes, stages) + PLAN_KERNEL_SMEM_EXTRA) <= smem_per_unit:
            return stages
    return PLAN_KERNEL_STAGES


def plan_kernel_smem(tile_shape, block_n: int, vals_bytes: int, stages: int | None = None) -> int:
    """Dynamic shared memory of one block of the CUDA plan kernel: the decoded A tile and `stages`
    pipeline stages (plan_kernel_stages by default) of packed values, bitmap words with prefixes,
    and the X tile."""
    if stages is None:
        stages = plan_kernel_stages(tile_shape, block_n, vals_bytes)
    tm, tk = tile_shape
    meta = -(-(tm * tk // 32 * 6) // 128) * 128
    return tm * tk * 2 + stages * (vals_bytes + meta + block_n * tk * 2)


@dataclass(frozen=True)
class GPUSpec:
    """Throughputs of one GPU (whole device) and the per-element costs of the kernels' decoders."""

    name: str = "H100-SXM (defaults)"
    n_units: int = 132  # streaming multiprocessors
    programs_per_unit: int = 6  # persistent programs per multiprocessor, where their shared memory fits
    smem_per_unit: int = 232448  # shared memory the blocks resident on one multiprocessor can take (227 KB)
    bandwidth: float = 3.0e12  # B/s, device-to-device copy counting read + write
    stream_efficiency: float = 0.80  # fraction of `bandwidth` a decoding kernel streams at
    tensor_flops: float = 700e12  # bf16 dense tensor-core FLOP/s reached by a good GEMM
    tensor_efficiency: float = 0.6  # fraction reached by the plan kernel's small tiles
    lane_ops: float = 33e12  # lane instructions per second, all SMs together
    l2_bandwidth: float = 8.0e12  # B/s, re-reads of activations
    launch_us: float = 13.0  # the plan kernel's fixed cost: launch, pipeline fill, tail (13.3 us measured on H100)
    # latency of one work item on its program, per token tile: the pipeline's first exposed loads
    # and the split-row epilogue (partial store, fence, arrival counter); the planner charges it as
    # item_us x token tiles / resident programs per item (partition.planner.item_cost)
    item_us: float = 3.9  # (3.9 us measured on H100 at N <= 16)
    # BITMAP / INDEX tiles cost this much more in a plan that also has DENSE tiles: the kernel then
    # stages whole tiles (plan_kernel_vals_bytes), and fewer programs fit per unit
    mixed_sparse_scale: float = 1.0
    bitmap_ops_per_element: float = 10.0  # lane instructions to decode one bitmap element
    index_ops_per_nonzero: float = 12.0  # lane instructions per nonzero of an INDEX tile (plus 2 per token)
    dense_bandwidth_efficiency: float = 0.65  # cuBLAS at small N reaches ~65% of the copy bandwidth
    dense_tensor_efficiency: float = 1.0  # cuBLAS at large N reaches `tensor_flops`
    dense_launch_us: float = 9.0  # (9.0 us measured for cuBLAS on H100)
    # cuBLAS's extra time per column of a row past DENSE_REF_COLS (the width it is calibrated at): at
    # 1-16 tokens it ran 4096x11008 ~10% slower than 11008x4096, the same bytes (H200)
    dense_col_us: float = 0.0
    # the row kernel's cost per token beyond the second of each pass (X's staging per column, the
    # work per entry) and per pass beyond the first (a launch of its own: its fixed part), fitted on
    # H200 to 1-16 tokens, units by column class, the 4- and 8-token builds one block of 1024 threads
    # per SM (benchmarks/results/h200/ablation_rows_classes.csv and kernels_tokens.csv, 126 times:
    # within -14% / +16% at 2-16 tokens; one token over-predicted by up to 31%)
    row_token_col_ns: float = 0.05
    row_token_entry_ps: float = 0.09
    row_pass_us: float = 5.0
    # the row kernel's fixed part (launch, first loads, tail); None: the dense product's launch term.
    # `cross profile` fits it and the two per-token terms to the row kernel's times on the GPU, and
    # benchmarks/fit_row_costs.py to a GPU's kernel-benchmark times (both by costmodel.rowfit)
    row_launch_us: float | None = None

    @property
    def n_programs(self) -> int:
        return self.n_units * self.programs_per_unit

    def resident_programs(self, tile_shape, block_n: int, vals_bytes: int) -> int:
        """Programs of the CUDA plan kernel that run at once on the whole GPU: programs_per_unit per
        unit, or fewer where a block's shared memory does not fit that many (a plan with more units
        than this runs them in waves)."""
        per_block = plan_kernel_smem(tile_shape, block_n, vals_bytes) + PLAN_KERNEL_SMEM_EXTRA
        return self.n_units * max(1, min(self.programs_per_unit, self.smem_per_unit // per_block))

    def to_dict(self) -> dict:
        return asdict(self)


H100 = GPUSpec()


def tile_cost_us(spec: GPUSpec, kind: int, tile_shape, density, n_tokens: int) -> np.ndarray:
    """Amortised microseconds of one tile of ``kind`` at ``density`` for ``n_tokens`` tokens."""
    tm, tk = tile_shape
    elems = tm * tk
    density = np.asarray(density, dtype=np.float64)
    nnz = density * elems
    bn = block_n_for(n_tokens)
    token_tiles = math.ceil(max(1, n_tokens) / bn)
    x_bytes = tk * bn * 2 * token_tiles  # activation tile re-read from L2 per tile
    hbm_rate = spec.bandwidth * spec.stream_efficiency
    mma = 2.0 * elems * bn * token_tiles / (spec.tensor_flops * spec.tensor_efficiency)
    l2 = x_bytes / spec.l2_bandwidth
    kind = TileKind(int(kind))
    if kind == TileKind.EMPTY:
        t = np.full_like(density, l2)
    elif kind == TileKind.DENSE:
        t = np.full_like(density, max(2.0 * elems / hbm_rate, mma + l2))
    elif kind == TileKind.BITMAP:
        hbm = (elems / 8 + 2.0 * np.ceil(nnz / 8) * 8) / hbm_rate
        decode = elems * spec.bitmap_ops_per_element * token_tiles / spec.lane_ops
        t = np.maximum(hbm, decode + mma + l2)
    elif kind == TileKind.INDEX:
        hbm = 4.0 * np.ceil(nnz / 8) * 8 / hbm_rate
        alu = nnz * (spec.index_ops_per_nonzero + 2.0 * n_tokens) / spec.lane_ops
        t = np.maximum(hbm, alu + l2)
    else:  # pragma: no cover - TileKind is closed
        raise ValueError(f"kind: expected a TileKind, got {kind}")
    return t * 1e6


#: the row width cuBLAS's fit is calibrated at (costmodel.profile.COLS); wider rows pay dense_col_us per column
DENSE_REF_COLS = 4096


def dense_matmul_us(spec: GPUSpec, rows: int, cols: int, n_tokens: int, element_size: int = 2) -> float:
    """Predicted time of the dense product (cuBLAS) of an rows x cols weight with n_tokens tokens."""
    memory = rows * cols * element_size / (spec.bandwidth * spec.dense_bandwidth_efficiency)
    compute = 2.0 * rows * cols * max(1, n_tokens) / (spec.tensor_flops * spec.dense_tensor_efficiency)
    return max(memory, compute) * 1e6 + spec.dense_launch_us + spec.dense_col_us * max(0, cols - DENSE_REF_COLS)


#: The row kernel (kernels/row_gemv.cu) keeps X in shared memory: K at most this and a multiple of
#: 8 (16-byte loads of X). It runs 1, 2, 4 or 8 tokens per pass (ROW_PASS_TOKENS), each pass
#: reading the whole row format.
ROW_MAX_K = 16384
ROW_PASS_TOKENS = (1, 2, 4, 8)
#: Token counts the planner gives the row kernel (buckets up to this many tokens)
ROW_MAX_TOKENS = 16
#: The row kernel's launch per build (tokens per pass): (threads per block, blocks per SM). The 4-
#: and 8-token builds run one block of 1024 threads per SM: X staged once per SM, and up to ~14 K
#: columns in one pass of 8 tokens (two blocks of 512 took two passes of 4 at 11008 columns);
#: measured on H200: 4-12% faster at 4 tokens, 8-35% at 8; at 1-2 tokens within a few percent
#: either way (docs/perf-notes.md)
ROW_LAUNCH = {1: (512, 2), 2: (512, 2), 4: (1024, 1), 8: (1024, 1)}
SM_SHARED_BYTES = 228 * 1024


def row_smem(k: int, nt: int) -> int:
    """Dynamic shared memory of a row-kernel block: X as fp32 [K] at one token, as the 16-bit
    inputs [K][nt] above (rounded up to 16 bytes)."""
    return (k * (4 if nt == 1 else 2 * nt) + 15) // 16 * 16


def row_fits(k: int, nt: int, launch: dict = ROW_LAUNCH) -> bool:
    """The nt-token build's blocks of X fit an SM's shared memory (1 KB per block reserved by the
    driver). One token always runs (fewer blocks per SM where they do not all fit: the launcher)."""
    return nt == 1 or launch[nt][1] * (row_smem(k, nt) + 1024) <= SM_SHARED_BYTES


def row_max_pass_tokens(k: int, launch: dict = ROW_LAUNCH) -> int:
    """The most tokens one pass of the row kernel takes at K = k."""
    return max(nt for nt in ROW_PASS_TOKENS if row_fits(k, nt, launch))


def row_passes(n_tokens: int, k: int, launch: dict = ROW_LAUNCH) -> list[tuple[int, int, int]]:
    """(first token, tokens, build's tokens per pass) of each pass over n_tokens: as many passes of
    the widest build as needed, the last in the narrowest build that holds what is left."""
    widest = row_max_pass_tokens(k, launch)
    out = []
    for start in range(0, n_tokens, widest):
        count = min(widest, n_tokens - start)
        out.append((start, count, min(nt for nt in ROW_PASS_TOKENS if nt >= count and row_fits(k, nt, launch))))
    return out


def row_kernel_fits(rows: int, cols: int, dtype: str) -> bool:
    """The row kernel can run an rows x cols weight of this dtype (name) on a GPU."""
    return dtype in ("bfloat16", "float16") and cols % 8 == 0 and cols <= ROW_MAX_K and rows >= 1


def row_entries(nnz: np.ndarray, size: np.ndarray, rows: int) -> int:
    """Expected entries of the row format (pack/rows.py) from nonzero counts ``nnz`` over regions of
    ``size`` elements (tiles): the nonzeros; the bridges, as if each region's nonzeros were uniform
    (a nonzero follows a step longer than 63 columns with probability q = (1 - density)^63, and then
    needs one more entry per 63 columns: q / (1 - q) on average); and on average 3.5 padding entries
    per row (runs padded to multiples of 8)."""
    nnz = np.asarray(nnz, dtype=np.float64)
    density = np.divide(nnz, np.asarray(size, dtype=np.float64), out=np.zeros_like(nnz), where=nnz > 0)
    q = (1.0 - np.minimum(density, 1.0)) ** 63
    bridges = np.divide(nnz * q, 1.0 - q, out=np.zeros_like(nnz), where=q < 1.0)
    return int(nnz.sum() + bridges.sum() + 3.5 * rows)


def row_format_bytes(rows: int, entries: int) -> int:
    """Bytes the row kernel streams per pass: 3-byte entries and a 4-byte offset per row."""
    return 3 * entries + 4 * (rows + 1)


def row_matmul_parts(spec: GPUSpec, rows: int, cols: int, entries: int, n_tokens: int) -> tuple[float, int]:
    """The row kernel's prediction less its fitted terms: (the streaming of its passes and the launch of
    each pass beyond the first, in us; the tokens beyond the second of a pass, summed over the passes).
    row_matmul_us adds the fixed part and the per-token cost; costmodel.rowfit fits them."""
    stream = row_format_bytes(rows, entries) / (spec.bandwidth * spec.dense_bandwidth_efficiency)
    passes = row_passes(max(1, n_tokens), cols)
    extra = sum(max(0, count - 2) for _, count, _ in passes)
    return len(passes) * stream * 1e6 + (len(passes) - 1) * spec.row_pass_us, extra


def row_matmul_us(spec: GPUSpec, rows: int, cols: int, entries: int, n_tokens: int) -> float:
    """Predicted time of the row kernel: its 3-byte entries and row offsets streamed once per pass
    (row_passes) at the rate the dense product streams its weight, plus its fixed part
    (spec.row_launch_us, else the dense product's launch term), plus each token beyond the second of
    a pass (spec.row_token_col_ns, row_token_entry_ps: two tokens cost about what one does, their
    inputs one 32-bit shared-memory word per column), plus each pass beyond the first
    (spec.row_pass_us: one launch per pass)."""
    base, extra = row_matmul_parts(spec, rows, cols, entries, n_tokens)
    per_token = cols * spec.row_token_col_ns * 1e-3 + entries * spec.row_token_entry_ps * 1e-6
    launch = spec.dense_launch_us if spec.row_launch_us is None else spec.row_launch_us
    return base + launch + extra * per_token


#: Token counts the planner offers the slice kernel (kernels/slice_mma.cu: up to 16 tokens per pass)
SLICE_MAX_TOKENS = 16


def slice_kernel_fits(rows: int, cols: int, dtype: str) -> bool:
    """The slice kernel can run an rows x cols weight of this dtype (name) on a GPU (sm_90+)."""
    return dtype in ("bfloat16", "float16") and cols % 8 == 0 and rows >= 1


def slice_format_bytes(nnz: np.ndarray, size: np.ndarray, rows: int, cols: int, element_size: int = 2) -> int:
    """Expected bytes of the slice format (pack/slices.py) from nonzero counts ``nnz`` over regions
    of ``size`` elements (tiles): a pair of adjacent elements is stored whole when either is nonzero,
    as if each region's nonzeros were uniform (probability 1 - (1 - density)^2), plus the heads (8
    bytes per 8 x 16 elements and half, 1/16 of the dense bytes)."""
    nnz = np.asarray(nnz, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    density = np.divide(nnz, size, out=np.zeros_like(nnz), where=size > 0)
    pairs = (size / 2 * (1.0 - (1.0 - np.minimum(density, 1.0)) ** 2)).sum()
    return int(2 * element_size * pairs + rows * cols * element_size / 16)


#: Token counts the planner offers the warpgroup 2:4 kernel (kernels/wgmma24.cu, sm_90a: blocks of 16,
#: 32, 64 or 128 tokens): buckets of at most WGMMA_MAX_TOKENS tokens. Past 16 it lost wherever it was
#: timed: in five runs of the Llama-2-7B-shaped decoder on the H100 (70 and 90%, both layouts) the
#: measured check found it at 0.57-0.94x of cuBLAS at 17-64 tokens and 0.33-0.61x beyond
#: (benchmarks/results/h100/model_wgmma24*.txt), and the kernel grid kept cuBLAS at 128 and 2048.
#: Offering it there only cost the check's time (every bucket of every layer timed, twice with the
#: layouts' contest). The blocks of 32-128 tokens stay for a forced run (`cross-wgmma24`).
WGMMA_MAX_TOKENS = 16


def wgmma24_kernel_fits(rows: int, cols: int, dtype: str) -> bool:
    """The warpgroup 2:4 kernel can run an rows x cols weight of this dtype (name) on an sm_90 GPU."""
    return dtype in ("bfloat16", "float16") and cols % 8 == 0 and rows >= 1


#: The warpgroup 2:4 format's default block (pack/wgmma24.py): rows per row block, columns per chunk,
#: bytes of a chunk's record without overflow and its head words
WGMMA_BLOCK_ROWS, WGMMA_CHUNK, WGMMA_TILES_BYTES, WGMMA_HEAD_BYTES = 256, 64, 4 * 4608, 1024
#: The compressed layout's metadata words per row block and chunk, and its warps' base words (its head
#: words: the slots layout's)
WGMMA_META_BYTES, WGMMA_BASES_BYTES = 4 * 512, 8 * 4


def wgmma24_slots(most: int) -> int:
    """Overflow word slots per chunk of the warpgroup 2:4 format for a weight whose fullest chunk
    holds ``most`` groups with overflow: 0 without any, else a power of two from 16 up to 256, then a
    multiple of 256 (a kernel build per value: few of them, and at most 256 slots unused)."""
    if most <= 0:
        return 0
    return max(16, 1 << (most - 1).bit_length()) if most <= 256 else -(-most // 256) * 256


def _fullest_chunk(counted, nnz, size, blocks: int, unit: int, chance) -> int:
    """The most items any of ``blocks`` chunks holds: the largest of ``counted`` (per chunk) where given,
    else from nonzero counts ``nnz`` over regions of ``size`` elements as if each region were uniform:
    ``chance(density)`` items per ``unit`` elements (a probability; above 1: that many on average, the
    whole part always there and the fraction by chance); the mean and 4 standard deviations of the
    count (binomial in the fraction; 0 where the mean is under half an item in all)."""
    if counted is not None:
        return int(np.max(counted)) if np.size(counted) else 0
    nnz = np.asarray(nnz, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    f = chance(np.minimum(np.divide(nnz, size, out=np.zeros_like(nnz), where=size > 0), 1.0))
    frac = f - np.floor(f)
    mean, var = (float((size / unit * v).sum()) / blocks for v in (f, frac * (1 - frac)))
    return math.ceil(mean + 4 * math.sqrt(var)) if mean >= 0.5 / blocks else 0


def wgmma24_format_bytes(nnz: np.ndarray, size: np.ndarray, rows: int, cols: int,
                         chunk_groups: np.ndarray | None = None) -> int:
    """Bytes of the warpgroup 2:4 format (pack/wgmma24.py, bf16/fp16, the default block of two
    warpgroups of two m-tiles): per row block and chunk, the 2:4 part (half the elements and a
    nibble per group of 4: 0.5625 of their dense bytes) and, where a group holds more than two
    nonzeros, the head words (1/32 of dense) and the overflow word slots (4 bytes each, one per group
    with overflow: ``wgmma24_slots`` of the fullest chunk's). With ``chunk_groups`` (the groups with
    overflow of each row block and chunk, counted on the weight) exact; without, expected from
    nonzero counts ``nnz`` over regions of ``size`` elements (tiles) as if each region's nonzeros
    were uniform: a group of density p has overflow with probability P = 4 p^3 (1 - p) + p^4, the
    fullest chunk the mean and 4 standard deviations (of a binomial count of groups of probability P)."""
    blocks = -(-rows // WGMMA_BLOCK_ROWS) * -(-cols // WGMMA_CHUNK)
    most = _fullest_chunk(chunk_groups, nnz, size, blocks, 4, lambda p: 4 * p**3 * (1 - p) + p**4)
    slots = wgmma24_slots(most)
    return blocks * (WGMMA_TILES_BYTES + (WGMMA_HEAD_BYTES + 4 * slots if slots else 0))


def wgmma24_compressed_bytes(nnz: np.ndarray, size: np.ndarray, rows: int, cols: int,
                             chunk_words: np.ndarray | None = None) -> int:
    """Bytes of the warpgroup 2:4 format's compressed layout (pack/wgmma24._compressed, bf16/fp16, the
    default block): per row block and chunk, the metadata words (1/16 of dense), a head word per
    thread (1/32), a base word per warp, and a word per group with a nonzero and one more per group
    with overflow, in word slots (``wgmma24_slots`` of the fullest chunk's, at least one), and the
    records' size table (2 bytes a record, padded to 16: the runtime packs the records sized). With
    ``chunk_words`` (per row block and chunk, counted on the weight) exact; without, from nonzero
    counts ``nnz`` over regions of ``size`` elements as if each region were uniform: a group of
    density p has a nonzero with probability 1 - (1 - p)^4 and overflow with 4 p^3 (1 - p) + p^4:
    their sum words per group on average, the fullest chunk the mean and 4 standard deviations."""
    blocks = -(-rows // WGMMA_BLOCK_ROWS) * -(-cols // WGMMA_CHUNK)
    most = _fullest_chunk(chunk_words, nnz, size, blocks, 4,
                          lambda p: np.minimum(1 - (1 - p)**4 + 4 * p**3 * (1 - p) + p**4, 2.0))
    records = blocks * (WGMMA_META_BYTES + WGMMA_HEAD_BYTES + WGMMA_BASES_BYTES + 4 * wgmma24_slots(max(most, 1)))
    return records + 16 * -(-blocks // 8)


#: The slice kernel's consumer instructions per position (8 steps of an 8-row n-tile: 8 x 16 x 8 weight
#: elements) by format (nvcc, sm_90a, kernels/slice_mma.cu; docs/perf-notes.md, "An element format for
#: the slice kernel")
SLICE_POSITION_INSTRUCTIONS = {"pairs": 128, "elements": 188}
#: Weight bytes streamed per instruction the slice kernel's consumers issue, if they issue 0.5 per
#: scheduler and cycle (H200: ~3.25 TB/s against 528 schedulers x 0.5 x 1.98 GHz): the exchange rate
#: between a slice format's two floors. An estimate, not yet measured (the kernel has not run at its
#: floors).
SLICE_BYTES_PER_INSTRUCTION = 6.2


def slice_format(nnz: np.ndarray, size: np.ndarray, rows: int, cols: int,
                 element_size: int = 2) -> tuple[str, int]:
    """The slice format (pack/slices.py) whose larger floor is the smaller, and that floor in bytes:
    per format, the larger of its expected bytes (pairs: ``slice_format_bytes``; elements: 2 bytes per
    nonzero and heads of 1/8 of dense) and its consumers' instructions (SLICE_POSITION_INSTRUCTIONS)
    in bytes at SLICE_BYTES_PER_INSTRUCTION. Ties go to pairs."""
    positions = -(-rows // 8) * -(-cols // 128)
    stored = {"pairs": slice_format_bytes(nnz, size, rows, cols, element_size),
              "elements": int(element_size * float(np.asarray(nnz, dtype=np.float64).sum())
                              + rows * cols * element_size / 8)}
    floors = {name: max(b, int(positions * SLICE_POSITION_INSTRUCTIONS[name] * SLICE_BYTES_PER_INSTRUCTION))
              for name, b in stored.items()}
    best = min(floors, key=floors.get)
    return best, floors[best]
