// The warpgroup 2:4 kernel: y[t, r] = sum over c of w[r, c] * x[t, c] (+ bias[r]) for up to NTOK (16,
// 32, 64 or 128) tokens per block, on Hopper's sparse warpgroup mma (wgmma.mma_async.sp m64n{NTOK}k32),
// over the format of pack/wgmma24.py. The weight is the mma's A operand, read from shared memory into
// registers as it is stored (no instruction per element on the sparsity); X^T is the B operand, in
// shared memory in the no-swizzle K-major layout (core matrices of 8 tokens x 8 columns, 128 bytes).
// A group's third and fourth nonzeros (the overflow) can only sit at its positions 2 and 3: they are a
// second sparse A operand with one metadata nibble for every group, whose registers each thread
// builds from its chunk's overflow words (part of the chunk's record) while the first mmas run, for
// a second sparse mma into the same accumulators (docs/perf-notes.md, "128 tokens: the weight as the
// sparse A operand of wgmma.sp", "The overflow as a second sparse mma").
//
// Per block: WGS warpgroups of MT m-tiles (64 rows) each, R = 64 MT WGS rows. The launch's work is its
// units: chunk c (64 columns) of row block rb and token tile tt (NTOK tokens) is unit (rb tiles + tt)
// chunks + c, so that a row block's token tiles are adjacent and the blocks that read the same weight
// bytes run together (all but the first read them from L2). A block walks a range of units: all
// threads copy, each unit (the weight's bytes of the row block's chunk and X's NTOK x 64 values) one
// cp.async group, STAGES - 1 units ahead; per unit a warpgroup runs 2 k-steps x MT sparse mmas (twice
// where there is overflow), waits for them, and the block moves on. Two ways to split the units:
// - STREAM=1: block j of P takes units [j U / P, (j + 1) U / P) of all U, whatever row blocks they
//   cross (every SM's share within one unit of the mean). A row block and token tile ("output") whose
//   units one block holds alone is written from the accumulators; one split across blocks j_first ..
//   j_last: each writes its fp32 partial sums to a workspace slot (ws: two per block, 0 for its first
//   output, 1 for its last) and arrives on the output's counter (counters[j_first]: an output split
//   across blocks is the only one to start in block j_first). Blocks j_first .. j_last - 1 end with
//   the output (block j_last holds its last units at its start, arrives and goes on): each waits for
//   all the arrivals, then sums its share of the output's values over every slot in block order
//   (deterministic: the order does not depend on who arrives when), adds the bias and writes Y; the
//   counter wraps back to zero at the output's last arrival (atom.inc), ready for the next launch. The
//   wait needs the blocks a waiting block waits on to be resident or to become so: blocks start in
//   index order and wait only on later blocks of their own output, so a launch progresses while the
//   GPU holds more resident blocks than one output spans (the launcher's grid is at most the blocks
//   resident at once).
// - SPLIT > 1 (clusters): a cluster of SPLIT blocks per output, block s taking its s-th part of K. The
//   end: each block stages its fp32 partial sums [token][row] in its shared memory, and block s sums
//   rows s R / SPLIT .. of all SPLIT blocks in rank order (deterministic), adds the bias and writes Y.
//
// Non-finite inputs: only the stored slots are multiplied (a kept zero beside a lone nonzero is one,
// and so are the overflow operand's zeros, which sit where the 2:4 part's nonzeros may be: 0 x Inf where
// the dense product has w x Inf), so where X holds Inf or NaN the mmas' sums are not the dense product's.
// PROPAGATE=1 makes them so: each thread folds its share of every unit's X in shared memory into the
// largest magnitudes it has seen (stage_max: one instruction a word, NaN kept); where a block's vote at the end of an output finds an Inf or NaN, every
// token with one in the block's chunks of the output gets, in place of its accumulators, the sum of that
// part's non-finite terms as the dense product has them (w x Inf an Inf of the product's sign, 0 x Inf and
// anything x NaN a NaN, Inf and NaN weights too), recomputed from the records and X's rows in global
// memory (propagate_inputs: rare, slow). The parts' sums then add up to the dense product's NaN or Inf.
//
// Compile-time parameters (NVRTC -D): IS_BF16, WGS (1 or 2), MT (1 or 2), STREAM (0 or 1), SPLIT (1..8;
// 1 with STREAM), NTOK (16, 32, 64 or 128: tokens per block and the mma's N), STAGES, SLOTS (the
// weight's overflow word slots per chunk; 0: no overflow, no head words, no second mma), COMPRESSED and
// OVER (the compressed layout; its weight has overflow), SIZED (1: sized records, of either layout:
// values starts with each record's size, uint16 in 16-byte units by row block and chunk, padded to 16
// bytes, and a refill copies only the record's own bytes, the words a thread reads through its masks
// being a prefix of the record; the prologue's copies take the fixed size),
// REFILL_LATE (1: a unit's refill issued after its mmas; 0: after the barrier), XPRE (1: x is X laid out
// as the stages hold it, pack/wgmma24.x_stages, copied by bulk copies), XTMA (1, the launcher's default: X
// copied from its rows by tensor copies through the last parameter, X's tensor map, into the
// 128-byte-swizzle layout the B descriptors then read, the launcher's shared memory 1024 bytes more; 0:
// every thread's 16-byte copies, 17-19 us slower at 128 tokens on the H100, docs/perf-notes.md), A_SMEM (1: the
// slots layout's A read by the mmas from shared memory, its records in pack/wgmma24.a_smem_order, the
// overflow operand staged per unit, a unit's mmas waited for after the next unit's are issued; a tuning
// build for clusters: in STREAM builds ptxas still waits at every unit), MMA_AHEAD (1, a tuning build: A from
// registers in two sets by the unit's parity, the 2:4 mmas and the overflow's in commit groups of their own, a
// unit's mmas waited for only as the next unit's overflow registers are built, the stages one unit less ahead; so
// the next unit's barrier and decode run under the mmas; STREAM's loop is left from the end of the block's last
// unit (which has waited), not at its latch, where ptxas would wait for every second unit's mmas. nvcc 13.0, 128
// tokens, compressed, STREAM, END_RED: 255 registers with 168 bytes spilled at 256-row blocks (328 with PROPAGATE),
// 172 with none at two warpgroups of one m-tile; ptxas serializes the mmas of cluster builds, C7513), ROTATE (1,
// clusters, a tuning build: the
// blocks of row block rb walk their chunks from their (rb mod chunks)-th, wrapping, so that at a time
// the row blocks read different parts of X), MIN_BLOCKS (blocks per SM the registers
// must allow; default 1). Requirements
// checked by the launcher: K % 8 == 0, x 16-byte aligned with a row stride a multiple of 8, dynamic
// shared memory wgmma24.smem_bytes; STREAM: at least one unit per block, ws of 2 R NTOK floats per
// block, counters of one int per block, zero before the first launch.

#ifndef WGS
#define WGS 2
#endif
#ifndef MT
#define MT 2
#endif
#ifndef SPLIT
#define SPLIT 1
#endif
#ifndef STREAM
#define STREAM 0
#endif
// Diagnostics (0 in normal builds; benchmarks/wgmma24_ablate.py, wgmma24_floor.py): ABLATE bit 1 skips the
// A registers' loads and the mmas (the copies, waits and barriers alone), bit 2 the copies and their
// waits, bit 4 everything (each block returns at its start: the launch alone), bit 8 the end's sums
// (STREAM: an output split across blocks is written by each from its own accumulators, as if it held
// the output alone; clusters: each block writes its own partial sums, no staging, no cluster barrier),
// STREAM's bit 16 the sums' loads of the slots (zeros summed and written), bit 32 their stores to Y, bit
// 64 X's copies (the weight's alone; the stages' X is whatever they held), bit 128 PROPAGATE's block vote
// (each warp's own: no barrier; X folded as before; the rare path never taken where X is finite, a hang where not);
// the result is wrong in every ABLATE build; BLOCK_TIMES=1 (STREAM) has
// thread 0 of block j write its start and end (%globaltimer, ns) and its SM at u64 [3 j ..] past the
// workspace's 2 P R NTOK floats; BLOCK_TIMES=2 also the time each of its first UNIT_TIMES units is seen
// in place (after its waits) at u64 [3 P + UNIT_TIMES j + i]; BLOCK_TIMES=3 also, where the block sums
// its last output (split across blocks), its end's steps at u64 [(3 + UNIT_TIMES) P + 4 j + s]: s = 0
// the last unit's mmas done, 1 the partial sums stored (after the block barrier), 2 the wait over
// (after the barrier after it), 3 the sums' loads and Y's stores issued; BLOCK_TIMES=4 the unit times and,
// in place of the end's steps, the prologue's: s = 0 the block's first unit and its X found (the index
// arithmetic done), 1 the mbarriers' set-up over (after its barrier, EARLY: before), 2 the AHEAD copies
// issued, 3 the block barrier after them (EARLY; else equal to 2)
#ifndef ABLATE
#define ABLATE 0
#endif
#if (ABLATE & 128) && !PROPAGATE
#error "ABLATE bit 128 (PROPAGATE's vote without its barrier) needs PROPAGATE=1"
#endif
#if (ABLATE & 2) && !(ABLATE & 1)
#error "ABLATE bit 2 (no copies) needs bit 1 (no mmas): the registers would be read from stages never written"
#endif
#ifndef BLOCK_TIMES
#define BLOCK_TIMES 0
#endif
#if BLOCK_TIMES == 3  // thread 0 stamps step s of a summing block's end (%globaltimer) past the unit times
#define END_CLOCK(t) asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t))
#define END_STAMP_AT(s, t)                                                                               \
    do {                                                                                                 \
        if (tid == 0)                                                                                    \
            reinterpret_cast<unsigned long long*>(ws + (size_t)2 * gridDim.x * R * NTOK)                 \
                [(3 + UNIT_TIMES) * gridDim.x + 4 * blockIdx.x + (s)] = (t);                             \
    } while (0)
#define END_STAMP(s)                                                                                     \
    do {                                                                                                 \
        unsigned long long t_step;                                                                       \
        END_CLOCK(t_step);                                                                               \
        END_STAMP_AT(s, t_step);                                                                         \
    } while (0)
#else
#define END_CLOCK(t) (void)(t)
#define END_STAMP_AT(s, t) do {} while (0)
#define END_STAMP(s) do {} while (0)
#endif
#if BLOCK_TIMES == 4  // step s of the prologue, after `dep` is computed (an input of the timer's read: not hoisted
                      // above it), where BLOCK_TIMES=3 has the end's steps
#define PRO_STAMP(s, dep)                                                                                \
    do {                                                                                                 \
        unsigned long long t_pro;                                                                        \
        asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t_pro) : "r"((u32)(dep)) : "memory");        \
        if (tid == 0)                                                                                    \
            reinterpret_cast<unsigned long long*>(ws + (size_t)2 * gridDim.x * R * NTOK)                 \
                [(3 + UNIT_TIMES) * gridDim.x + 4 * blockIdx.x + (s)] = t_pro;                           \
    } while (0)
#else
#define PRO_STAMP(s, dep) do {} while (0)
#endif
#ifndef END_RED
#define END_RED 0  // STREAM's end by fp32 reductions at L2 and the output's last arrival (below; the runtime builds it for STREAM up to 64 tokens unless cuda_backend.stream_reduce() is off)
#endif
// the last arrival's read-back of the output in pieces of END_PIECE float4s a thread: the whole share
// up to 64 tokens; at 128 (a tuning build: the runtime's END_RED stops at 64) its 128 floats beside the
// loop's live registers would not fit
#define END_PIECE (NTOK > 64 ? 8 : MT * NACC / 4)
#ifndef END_FENCE
#define END_FENCE 0  // diagnostic: END_RED's thread 0 fences (acq_rel, GPU scope) before its arrival, and stamp 1 follows the fence
#endif
#if END_FENCE && !END_RED
#error "END_FENCE splits END_RED's arrival: it needs END_RED=1"
#endif
#ifndef END_TICKET
#define END_TICKET 0  // 1: END_RED's last arrival chosen by a ticket drawn as the block's last unit starts (below; a tuning build, nothing without END_RED)
#endif
#if END_TICKET && END_FENCE
#error "END_TICKET's arrivals have no fence to split: END_FENCE must be 0"
#endif
#define TICKET (END_TICKET && END_RED && STREAM)
#ifndef SUM_LOADS
#define SUM_LOADS 32  // STREAM's end: the partial sums' loads a thread keeps in flight together (a power of 2)
#endif
#define UNIT_TIMES 64
#ifndef REFILL_LATE
#define REFILL_LATE 1  // a unit's refill issued after its mmas, before their wait (0: right after the barrier)
#endif
#ifndef BULK
#define BULK 1  // a unit's weight record by one bulk copy on its stage's mbarrier (0: 16-byte cp.async by all threads)
#endif
#ifndef XPRE
#define XPRE 0  // 1: x is X laid out as the stages hold it (pack/wgmma24.x_stages), a unit's part by one bulk copy
#endif
#if XPRE && !BULK
#error "XPRE copies X on the weight's mbarrier: BULK must be 1"
#endif
#ifndef XTMA
#define XTMA 0  // 1 (the launcher's default): X by the tensor copy engine from its rows (a tensor map), a unit's part by one copy
#endif
#if XTMA && (XPRE || !BULK)
#error "XTMA copies X on the weight's mbarrier from X itself: BULK must be 1 and XPRE 0"
#endif
#ifndef EARLY
#define EARLY 0  // 1: thread 0 sets up the mbarriers and issues the prologue's copies before the block's first barrier (a tuning build)
#endif
#if EARLY && !BULK
#error "EARLY issues the prologue's copies by thread 0 before the block barrier: the weight by bulk copies (BULK=1)"
#endif
#ifndef PREFETCH_MAP
#define PREFETCH_MAP 0  // 1: thread 0 prefetches X's tensor map at the block's start (XTMA; a tuning build)
#endif
#if PREFETCH_MAP && !XTMA
#error "PREFETCH_MAP prefetches X's tensor map: XTMA=1"
#endif
#ifndef A_SMEM
#define A_SMEM 0  // 1: the mmas read A from shared memory (the slots layout's tiles in core-matrix order, below)
#endif
#if A_SMEM && COMPRESSED
#error "A_SMEM reads the slots layout's tiles: COMPRESSED must be 0"
#endif
#if A_SMEM && WGS > 2
#error "A_SMEM's warpgroup barriers are named 1 and 2: WGS must be 1 or 2"
#endif
#ifndef MMA_AHEAD
// 1 (a tuning build): A from registers, two sets by the unit's parity; a unit's mmas waited for after the next
// unit's are issued
#define MMA_AHEAD 0
#endif
#if MMA_AHEAD && A_SMEM
#error "MMA_AHEAD is A_SMEM's overlap for A in registers: one or the other"
#endif
// units in pairs, each unit's A (or metadata) registers its own, read by its mmas until the next unit's wait
#define PAIRS (A_SMEM || MMA_AHEAD)
#if STREAM && SPLIT != 1
#error "STREAM splits K by units, not clusters: SPLIT must be 1"
#endif
#ifndef ROTATE
#define ROTATE 0  // clusters, a tuning build: a block walks its chunks from the (row block mod its chunks)-th, wrapping
#endif
#if ROTATE && STREAM
#error "ROTATE turns a cluster block's chunks: STREAM must be 0"
#endif
#ifndef PROPAGATE
#define PROPAGATE 0  // 1: non-finite inputs give the dense product's NaN and Inf (nan_policy "propagate"), below
#endif
#if PROPAGATE && (XPRE || A_SMEM)
#error "PROPAGATE reads X's rows and the records as the launcher hands them: XPRE and A_SMEM must be 0"
#endif
#ifndef MASK_CHAIN
#define MASK_CHAIN 1  // the masked words loaded by a chain of predicated loads and address steps (masked_registers), the record's scan by predicated shuffles (Record); 0: by popcounts and selects (a tuning build)
#endif
#ifndef FOLD_EARLY
#define FOLD_EARLY 0  // 1: PROPAGATE's fold loads its X words before the unit's mmas, folds them after (a tuning build)
#endif
#ifndef STAGES
#define STAGES 6
#endif
#ifndef SLOTS
#define SLOTS 0
#endif
#ifndef COMPRESSED
#define COMPRESSED 0
#endif
#ifndef SIZED
#define SIZED 0
#endif
#ifndef LONE
#define LONE 0  // 1: lone halves (pack/wgmma24.py lone=True): a group's lone nonzero at positions 0-2 as its 16-bit value
#endif
#if LONE && !COMPRESSED
#error "LONE is a form of the compressed layout: COMPRESSED must be 1"
#endif
#if COMPRESSED
#ifndef OVER
#define OVER 1
#endif
#define OVERFLOW OVER  // the weight has overflow: the second mma runs
#else
#define OVERFLOW (SLOTS > 0)
#endif
#define THREADS (WGS * 128)
#define MTILES (WGS * MT)
#define R (64 * MTILES)
#ifndef NTOK
#define NTOK 128
#endif
#define NACC (NTOK / 2)  // accumulators per thread and m-tile
#define KC 64                                     // columns per chunk: two k-steps of 32
#define TILE_BYTES 4608                           // per m-tile and chunk: A words of 2 k-steps (2 x 2048), metadata (512)
#if COMPRESSED
// a row block's chunk: the metadata words, a head word per thread (masks: the 2:4 part's at bits 8 t +
// r, the overflow's at 16 + 8 t + r), a base word per warp (its first word of each part), the words
// LONE: after the head words a 16-bit mask per thread (its 2:4 registers held as lone halves; the head word's
// 2:4 mask then names its pairs' words only), after the base words a 16-bit base per warp (its first lone half,
// counted in halves from the first word; padded to 16 bytes, the record's size a multiple of 16 for its bulk
// copy), and the halves after every word, two to a word
#define LMASKS_OFFSET (MTILES * 512 + THREADS * 4)
#define BASES_OFFSET (LMASKS_OFFSET + (LONE ? THREADS * 2 : 0))
#define LBASES_OFFSET (BASES_OFFSET + THREADS / 32 * 4)
#define WORDS_OFFSET (LBASES_OFFSET + (LONE ? (THREADS / 32 * 2 + 15) / 16 * 16 : 0))
#define W_BYTES (WORDS_OFFSET + SLOTS * 4)
#if WORDS_OFFSET % 16
#error "a compressed record's header must keep its size a multiple of 16 bytes (a bulk copy's)"
#endif
#else
#define HEAD_BYTES (OVERFLOW ? THREADS * 4 : 0)   // per chunk: a head word per thread
#define W_BYTES (MTILES * TILE_BYTES + HEAD_BYTES + SLOTS * 4)  // a row block's chunk: tiles, heads, overflow
#endif
#define X_BYTES (NTOK * KC * 2)                   // X's NTOK tokens x 64 columns
// X's part of a stage: past the record, at a 1024-byte boundary in XTMA builds (the swizzle's atoms: 8
// tokens x 128 bytes; the block's shared memory is aligned to 1024 bytes at its start)
#define X_OFF (XTMA ? (W_BYTES + 1023) / 1024 * 1024 : W_BYTES)
#define STAGE_BYTES (X_OFF + X_BYTES)
#if PAIRS && STAGES < 3
#error "A_SMEM and MMA_AHEAD read a unit's stage until the next unit's mmas are issued: STAGES must be at least 3"
#endif
// units copied ahead of the one the mmas read (A_SMEM, MMA_AHEAD: the one before it still read too)
#define AHEAD (STAGES - 1 - PAIRS)
#define OVER_STAGE_BYTES (MTILES * 2 * 2048)  // A_SMEM: a unit's overflow operand, staged as the tiles are laid out
#define START_BITS 14  // a head word: first overflow word (bits 0-13), a mask per m-tile (8 bits): pack/wgmma24
#define START_MASK ((1u << START_BITS) - 1u)
#define OVERFLOW_META 0xEEEEEEEEu  // every nibble: positions 2 and 3
#define TS (R + 4)  // the staged partial sums' row stride (floats)
#if MT != 1 && MT != 2
#error "MT must be 1 or 2"
#endif
// SPS_*: the same mma with A from shared memory (a descriptor): d, a-desc, b-desc, e, sel, scale-d, 1, 1, trans-a 0, trans-b 0
#if NTOK == 128
#define SPS_OPERANDS ", %64, %65, %66, %67, p, 1, 1, 0, 0;\n"
#define SPS_SCALE "%68"
#elif NTOK == 64
#define SPS_OPERANDS ", %32, %33, %34, %35, p, 1, 1, 0, 0;\n"
#define SPS_SCALE "%36"
#elif NTOK == 32
#define SPS_OPERANDS ", %16, %17, %18, %19, p, 1, 1, 0, 0;\n"
#define SPS_SCALE "%20"
#else
#define SPS_OPERANDS ", %8, %9, %10, %11, p, 1, 1, 0, 0;\n"
#define SPS_SCALE "%12"
#endif
#if NTOK == 128
#define SP_SHAPE "m64n128k32"
#define SP_ACC_LIST ACC_LIST
#define SP_ACC_OUT(d) ACC_OUT(d)
#define SP_OPERANDS ", {%64, %65, %66, %67}, %68, %69, %70, p, 1, 1, 0;\n"
#define SP_SCALE "%71"
#elif NTOK == 64
#define SP_SHAPE "m64n64k32"
#define SP_ACC_LIST ACC_LIST32
#define SP_ACC_OUT(d) ACC_OUT32(d)
#define SP_OPERANDS ", {%32, %33, %34, %35}, %36, %37, %38, p, 1, 1, 0;\n"
#define SP_SCALE "%39"
#elif NTOK == 32
#define SP_SHAPE "m64n32k32"
#define SP_ACC_LIST ACC_LIST16
#define SP_ACC_OUT(d) ACC_OUT16(d)
#define SP_OPERANDS ", {%16, %17, %18, %19}, %20, %21, %22, p, 1, 1, 0;\n"
#define SP_SCALE "%23"
#elif NTOK == 16
#define SP_SHAPE "m64n16k32"
#define SP_ACC_LIST ACC_LIST8
#define SP_ACC_OUT(d) ACC_OUT8(d)
#define SP_OPERANDS ", {%8, %9, %10, %11}, %12, %13, %14, p, 1, 1, 0;\n"
#define SP_SCALE "%15"
#else
#error "NTOK must be 16, 32, 64 or 128"
#endif

#include "dtype.cuh"
#include "async.cuh"
#include "wgmma.cuh"

// 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros (no read)
__device__ __forceinline__ void cp16(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// the B descriptor of a k-step: no swizzle, core matrices 128 bytes apart along K (leading byte
// offset), 8-token groups 512 bytes apart (stride byte offset)
#ifndef B_LBO
#define B_LBO 128
#endif
#ifndef B_SBO
#define B_SBO 512
#endif
// a no-swizzle shared memory descriptor: start address, leading and stride byte offsets (16-byte units)
#define SMEM_DESC(addr, lbo, sbo) ((u64)(((addr) >> 4) & 0x3FFF) | (u64)((lbo) >> 4) << 16 | (u64)((sbo) >> 4) << 32)
#if XTMA
// XTMA: X's part as the tensor copy writes it, [token][64 columns] 128-byte rows swizzled by 16-byte
// pieces (piece j of token t at j ^ (t % 8)): the 128-byte-swizzle K-major layout, 8-token groups 1024
// bytes apart; the second k-step starts 64 bytes into the rows
__device__ __forceinline__ u64 b_desc(u32 addr) { return SMEM_DESC(addr, 16, 1024) | 1ull << 62; }
#define B_KSTEP 64
#else
__device__ __forceinline__ u64 b_desc(u32 addr) { return SMEM_DESC(addr, B_LBO, B_SBO); }
#define B_KSTEP (NTOK * 32 * 2)  // the second k-step's core matrices
#endif

// XTMA: the tensor map of X (cuTensorMapEncodeTiled: bf16/fp16 [n_tok][k], boxes of NTOK tokens x 64
// columns, 128-byte swizzle, zeros past the tensor), a kernel parameter
struct __align__(64) XMap {
    unsigned long long opaque[16];
};

// d = A (64 x 32, 2:4: the thread's four words and its metadata word e) x B (32 x NTOK, descriptor)
// + d where acc_in, else without d (the first mma of an output: the accumulators are never written but
// by the mmas, so that no instruction between a unit's mmas and the next's waits for them); SEL picks
// the lanes whose metadata the k-step reads (0: 4g, 4g + 1; 1: 4g + 2, 4g + 3)
template <int SEL>
__device__ __forceinline__ void wgmma_sp(float (&d)[NACC], const uint4& a, u64 db, u32 e, u32 acc_in = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SP_SCALE ", 0;\n"
                 "wgmma.mma_async.sp.sync.aligned." SP_SHAPE ".f32." SP_TYPES " " SP_ACC_LIST SP_OPERANDS "}\n"
                 : SP_ACC_OUT(d) : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(db), "r"(e), "n"(SEL), "r"(acc_in));
}

#if A_SMEM
// A_SMEM: a k-step's A tile (64 rows x 16 stored values, 2048 bytes) in the no-swizzle K-major layout:
// core matrix (8 rows x 8 values, 128 bytes) of row group r / 8 and value group j / 8 at 256 (r / 8) +
// 128 (j / 8): the thread of register i's word at 512 w + 4 lane + 256 (i & 1) + 128 (i >> 1)
// (pack/wgmma24.a_smem_order)
#ifndef A_LBO
#define A_LBO 128
#endif
#ifndef A_SBO
#define A_SBO 256
#endif
__device__ __forceinline__ u64 a_desc(u32 addr) { return SMEM_DESC(addr, A_LBO, A_SBO); }

// wgmma_sp with A from shared memory (descriptor da)
template <int SEL>
__device__ __forceinline__ void wgmma_sps(float (&d)[NACC], u64 da, u64 db, u32 e, u32 acc_in = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SPS_SCALE ", 0;\n"
                 "wgmma.mma_async.sp.sync.aligned." SP_SHAPE ".f32." SP_TYPES " " SP_ACC_LIST SPS_OPERANDS "}\n"
                 : SP_ACC_OUT(d) : "l"(da), "l"(db), "r"(e), "n"(SEL), "r"(acc_in));
}
#endif

// keeps the compiler from moving accesses of the accumulators across the asynchronous mma's fences
__device__ __forceinline__ void fence_acc(float (&d)[NACC]) {
#pragma unroll
    for (int i = 0; i < NACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// MMA_AHEAD: a unit's 2:4 registers, read by its mmas as they run, kept live until the wait for those mmas (so
// that the compiler does not build the next unit's in them before)
__device__ __forceinline__ void keep_registers(const uint4 (&a)[2][MT], const u32 (&e)[MT]) {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        asm volatile("" ::"r"(e[t]));
#pragma unroll
        for (int ks = 0; ks < 2; ++ks)
            asm volatile("" ::"r"(a[ks][t].x), "r"(a[ks][t].y), "r"(a[ks][t].z), "r"(a[ks][t].w));
    }
}

__device__ __forceinline__ void cluster_sync() {
#if SPLIT > 1
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
    __syncthreads();
#endif
}

// the copies of chunk c (of a row block and token tile) into a stage: the weight's wbytes of the chunk
// (BULK: one bulk copy by thread 0, counted on the stage's mbarrier bar), and X's NTOK x 64 values in
// the k-steps' core-matrix layout (zeros past n_tok tokens and past K; cp.async, this thread's group;
// XPRE: x holds them laid out so already, one bulk copy on the same mbarrier; XTMA: one tensor copy of
// tokens t0 .. through xmap on the same mbarrier, in its swizzled layout)
__device__ __forceinline__ void load_chunk(unsigned char* stage, u32 bar, const unsigned char* wsrc, u32 wbytes,
                                           const u16* x, int c, int n_tok, int k, int ldx, int tid,
                                           const XMap* xmap = nullptr, int t0 = 0) {
#if ABLATE & 2
    return;  // no copies (nor their waits)
#endif
    const u32 sw = smem_u32(stage);
#if XTMA  // xmap: X; chunk c's columns of tokens t0 .. t0 + NTOK - 1 (zeros past the tensor)
    if (tid == 0) {
        mbar_arrive_expect(bar, wbytes + (ABLATE & 64 ? 0u : X_BYTES));
        bulk_copy(sw, wsrc, wbytes, bar);
        if (!(ABLATE & 64))
            asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                         " [%0], [%1, {%2, %3}], [%4];\n"
                         ::"r"(sw + X_OFF), "l"(reinterpret_cast<unsigned long long>(xmap)), "r"(c * KC), "r"(t0),
                         "r"(bar) : "memory");
    }
#elif XPRE  // x: the token tile's stages; chunk c's part as the stage holds it
    if (tid == 0) {
        mbar_arrive_expect(bar, wbytes + (ABLATE & 64 ? 0u : X_BYTES));
        bulk_copy(sw, wsrc, wbytes, bar);
        if (!(ABLATE & 64)) bulk_copy(sw + X_OFF, x + (size_t)c * (NTOK * KC), X_BYTES, bar);
    }
#else
#if BULK
    if (tid == 0) {
        mbar_arrive_expect(bar, wbytes);
        bulk_copy(sw, wsrc, wbytes, bar);
    }
#else
    for (int i = tid; i < (int)(wbytes / 16); i += THREADS) cp16(sw + 16 * i, wsrc + 16 * i, 16);
#endif
    const u32 sx = sw + X_OFF;
#pragma unroll
    // a trip count the compiler knows (none: ABLATE bit 64)
    for (int j = 0; !(ABLATE & 64) && j < (NTOK * KC / 8 + THREADS - 1) / THREADS; ++j) {
        const int p = tid + j * THREADS;
        if (NTOK * KC / 8 % THREADS && p >= NTOK * KC / 8) break;
        const int t = p >> 3, g8 = p & 7;  // token, 8-column group of the chunk
        const int col = c * KC + 8 * g8;
        const bool in = t < n_tok && col < k;
        const u16* src = in ? x + (size_t)t * ldx + col : x;
        const u32 dst = sx + (g8 >> 2) * (NTOK * 32 * 2) + (t >> 3) * 512 + (g8 & 3) * 128 + (t & 7) * 16;
        cp16(dst, src, in ? 16u : 0u);
    }
#endif
}

// a thread's registers of an operand stored as only its nonzero words (the slots layout's overflow, both
// of the compressed layout's parts): register r (= 4 ks + i) of m-tile t is the word after the thread's
// `words` counted by the bits of `masks` (m-tile t's 8 at 8 t) below 8 t + r, zero where its bit is
// clear. No loop, no divergence. MASK_CHAIN=1 (the default): each register's load and the
// address's step of 4 bytes both predicated on its bit (ptxas sets seven bits' predicates by one R2P), ~2.1
// instructions a register in place of four (the prefix's mask, its popcount, the address, the load); the
// loads then wait on a chain of adds, not on their popcounts (-0.1 to -0.85 us at 90% and 16 tokens on the
// H100, within noise at 50-80%: docs/perf-notes.md); MASK_CHAIN=0: loads at the prefixes' popcounts
__device__ __forceinline__ void masked_registers(const u32* words, u32 masks, uint4 (&o)[2][MT]) {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const u32 mask = (masks >> (8 * t)) & 0xFFu;
        u32 r[8];
        if (MASK_CHAIN) {
            const u32* w = words;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                r[i] = 0u;
                if ((mask >> i) & 1u) {  // a branch, which ptxas predicates (a select of w's step would not be)
                    r[i] = *w;
                    ++w;
                }
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) r[i] = (mask >> i) & 1u ? words[__popc(mask & ((1u << i) - 1u))] : 0u;
        }
        o[0][t] = make_uint4(r[0], r[1], r[2], r[3]);
        o[1][t] = make_uint4(r[4], r[5], r[6], r[7]);
        words += __popc(mask);
    }
}

#if LONE
// the 2:4 registers of a thread whose words are pairs (`masks`, from `words`) or lone halves (`lones`, from
// `halves`: a 16-bit load zero-extends, the value in the low half, the slot its metadata names first): the chain
// of masked_registers twice, each register's loads and steps predicated on its bit of either mask
__device__ __forceinline__ void lone_registers(const u32* words, const u16* halves, u32 masks, u32 lones,
                                               uint4 (&o)[2][MT]) {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const u32 mask = (masks >> (8 * t)) & 0xFFu, lone = (lones >> (8 * t)) & 0xFFu;
        const u32* w = words;
        const u16* h = halves;
        u32 r[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            r[i] = 0u;
            if ((mask >> i) & 1u) {
                r[i] = *w;
                ++w;
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {  // after the pairs: each mask's bits set seven predicates by one R2P
            if ((lone >> i) & 1u) {
                r[i] = *h;
                ++h;
            }
        }
        o[0][t] = make_uint4(r[0], r[1], r[2], r[3]);
        o[1][t] = make_uint4(r[4], r[5], r[6], r[7]);
        words += __popc(mask);
        halves += __popc(lone);
    }
}
#endif

#if !COMPRESSED
// the slots layout's overflow registers of thread tid from its head word in a stage
__device__ __forceinline__ void overflow_registers(const unsigned char* stage, int tid, uint4 (&o)[2][MT]) {
    const u32 hw = reinterpret_cast<const u32*>(stage + MTILES * TILE_BYTES)[tid];
    masked_registers(reinterpret_cast<const u32*>(stage + MTILES * TILE_BYTES + HEAD_BYTES) + (hw & START_MASK),
                     hw >> START_BITS, o);
}
#endif

// the slots layout's 2:4 registers a[k-step][m-tile] and metadata e[m-tile] of thread tw of warpgroup wg in a
// record at `rec` (a macro: the same loads through an inlined function compile to other addressing)
#define SLOT_REGISTERS(rec, wg, tw, a, e)                                                    \
    _Pragma("unroll") for (int t_ = 0; t_ < MT; ++t_) {                                      \
        const unsigned char* tile_ = (rec) + ((wg) * MT + t_) * TILE_BYTES;                  \
        a[0][t_] = *reinterpret_cast<const uint4*>(tile_ + 16 * (tw));                       \
        a[1][t_] = *reinterpret_cast<const uint4*>(tile_ + 2048 + 16 * (tw));                \
        e[t_] = *reinterpret_cast<const u32*>(tile_ + 4096 + 4 * (tw));                      \
    }

// a unit's record as thread tid reads it (in a stage, or the weight's in global memory: PROPAGATE's inputs):
// its registers of the 2:4 part with their metadata, and of the overflow operand
struct Record {
    const unsigned char* p;
#if COMPRESSED
    u32 hw, starts;  // the thread's head word; its first word of each part (16 bits each)
#if LONE
    u32 lm, lstart;  // its lone halves' mask; its first lone half
#endif
#endif
    __device__ __forceinline__ Record(const unsigned char* rec, int tid) : p(rec) {
#if COMPRESSED
        // the thread's first word of each part: its warp's base and the words of the lanes before it (an
        // inclusive scan of both counts at once, 16 bits each: a chunk holds under 2^16 words). MASK_CHAIN=1 (default):
        // each step's add predicated on its shuffle's own flag (a lane d below exists), two instructions a
        // step in place of four (the shuffle, the lane's compare, a select, the add)
        hw = reinterpret_cast<const u32*>(rec + MTILES * 512)[tid];
#if LONE  // three counts, 10 bits each (a warp holds at most 512 of each)
        lm = reinterpret_cast<const u16*>(rec + LMASKS_OFFSET)[tid];
        const u32 cnt = __popc(hw & 0xFFFFu) | __popc(hw >> 16) << 10 | __popc(lm) << 20;
#else
        const u32 cnt = __popc(hw & 0xFFFFu) | __popc(hw >> 16) << 16;
#endif
        u32 scan = cnt;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            if (MASK_CHAIN) {
                asm volatile("{\n\t.reg .pred p;\n\t.reg .b32 v;\n\tshfl.sync.up.b32 v|p, %0, %1, 0, -1;\n\t"
                    "@p add.u32 %0, %0, v;\n\t}\n" : "+r"(scan) : "r"(d));
            } else {
                const u32 v = __shfl_up_sync(0xffffffffu, scan, d);
                if ((tid & 31) >= d) scan += v;
            }
        }
#if LONE
        const u32 before = scan - cnt;
        starts = reinterpret_cast<const u32*>(rec + BASES_OFFSET)[tid >> 5] + (before & 0x3FFu) +
                 ((before >> 10 & 0x3FFu) << 16);
        lstart = reinterpret_cast<const u16*>(rec + LBASES_OFFSET)[tid >> 5] + (before >> 20);
#else
        starts = reinterpret_cast<const u32*>(rec + BASES_OFFSET)[tid >> 5] + scan - cnt;
#endif
#endif
    }
    // the 2:4 part: A registers a[k-step][m-tile] and the metadata e[m-tile] of thread tw of warpgroup wg
    __device__ __forceinline__ void sparse(int wg, int tw, uint4 (&a)[2][MT], u32 (&e)[MT]) const {
#if COMPRESSED
#if LONE
        lone_registers(reinterpret_cast<const u32*>(p + WORDS_OFFSET) + (starts & 0xFFFFu),
                       reinterpret_cast<const u16*>(p + WORDS_OFFSET) + lstart, hw & 0xFFFFu, lm, a);
#else
        masked_registers(reinterpret_cast<const u32*>(p + WORDS_OFFSET) + (starts & 0xFFFFu), hw & 0xFFFFu, a);
#endif
#pragma unroll
        for (int t = 0; t < MT; ++t) e[t] = reinterpret_cast<const u32*>(p)[(wg * MT + t) * 128 + tw];
#else
        SLOT_REGISTERS(p, wg, tw, a, e);
#endif
    }
    // the overflow operand (a group's third and fourth nonzeros at its positions 2 and 3): the thread's
    // registers (zero where its groups have none) are the words its mask of m-tile t names, in register
    // order 4 ks + i, after its earlier m-tiles' words
    __device__ __forceinline__ void overflow(int tid, uint4 (&o)[2][MT]) const {
#if COMPRESSED
        masked_registers(reinterpret_cast<const u32*>(p + WORDS_OFFSET) + (starts >> 16), hw >> 16, o);
#else
        overflow_registers(p, tid, o);
#endif
    }
};

#if PROPAGATE
// nonzero where one of a word's two 16-bit values is an Inf or a NaN (every exponent bit set: bit 15 or 31;
// a borrow sets bit 31 only where the low half is one already)
__device__ __forceinline__ u32 nonfinite_bits(u32 w) {
    constexpr u32 E = IS_BF16 ? 0x7F807F80u : 0x7C007C00u;
    const u32 u = (w & E) ^ E;  // a half zero where its value is an Inf or a NaN
    return (u - 0x00010001u) & ~u & 0x80008000u;
}

// the largest magnitudes of acc's and w's 16-bit values, half by half, NaN where either is one (one
// instruction, max.NaN.xorsign.abs: the signs are not kept meaningfully, the exponents are)
__device__ __forceinline__ u32 max_magnitude(u32 acc, u32 w) {
#if IS_BF16
    asm("max.NaN.xorsign.abs.bf16x2 %0, %0, %1;\n" : "+r"(acc) : "r"(w));
#else
    asm("max.NaN.xorsign.abs.f16x2 %0, %0, %1;\n" : "+r"(acc) : "r"(w));
#endif
    return acc;
}

// bytes a thread folds a round in stage_max: 16, or 8 where X's part is smaller than 16 bytes a thread (16
// tokens over 256 threads: every thread takes a share, with no predicate, rather than half of them twice as
// much: each instruction there is issued by every warp, predicated off or not)
#define X_FOLD (X_BYTES / 16 >= THREADS ? 16 : 8)
// FOLD_EARLY where a unit's fold is one 8-byte word a thread (16 tokens over two warpgroups); stage_max elsewhere
#define FOLD_ONE (PROPAGATE && FOLD_EARLY && X_BYTES / 8 == THREADS)

// `seen` with this thread's share of a stage's X part (X_FOLD bytes a round) folded in by max_magnitude: an
// Inf or a NaN there leaves every exponent bit of a half set (nonfinite_bits)
__device__ __forceinline__ u32 stage_max(const unsigned char* xs, int tid, u32 seen) {
#pragma unroll
    for (int j = 0; j < (X_BYTES / X_FOLD + THREADS - 1) / THREADS; ++j) {
        const int p = tid + j * THREADS;
        if (X_BYTES / X_FOLD % THREADS && p >= X_BYTES / X_FOLD) break;
#if X_FOLD == 16
        const uint4 v = reinterpret_cast<const uint4*>(xs)[p];
        seen = max_magnitude(max_magnitude(max_magnitude(max_magnitude(seen, v.x), v.y), v.z), v.w);
#else
        const uint2 v = reinterpret_cast<const uint2*>(xs)[p];
        seen = max_magnitude(max_magnitude(seen, v.x), v.y);
#endif
    }
    return seen;
}

// the non-finite part of the term w x x of two 16-bit values: bit 0 a NaN (either a NaN, or 0 x Inf), bit 1 +Inf,
// bit 2 -Inf; 0 where the term is finite
__device__ __forceinline__ u32 term_kind(u32 w, u32 x) {
    constexpr u32 EXP = IS_BF16 ? 0x7F80u : 0x7C00u;
    const u32 wm = w & 0x7FFFu, xm = x & 0x7FFFu;
    if (wm > EXP || xm > EXP) return 1u;
    if (wm != EXP && xm != EXP) return 0u;
    if (wm == 0u || xm == 0u) return 1u;
    return (w ^ x) & 0x8000u ? 4u : 2u;
}

// the sum of terms whose kinds (term_kind) are ORed in kind, as IEEE arithmetic has it: NaN where one is or
// Infs of both signs meet, else an Inf of their sign, 0 where none is non-finite
__device__ __forceinline__ float kind_sum(u32 kind) {
    return (kind & 1u) || (kind & 6u) == 6u ? __uint_as_float(0x7FC00000u)
                                            : kind & 2u ? __uint_as_float(0x7F800000u)
                                                        : kind & 4u ? __uint_as_float(0xFF800000u) : 0.f;
}
#endif

#if PROPAGATE
// PROPAGATE, once a block's vote found an Inf or a NaN in X's part of its units of one output (chunks c0 .. c1 - 1
// of the row block whose records start at `recs`, the token tile from tok0): which of the thread's tokens 8 j +
// 2 q + b (bit 2 j + b) have one in those chunks, and for those, sums[t NACC + f] for its accumulator f of m-tile
// t (d[4 j + 2 h + b]: token 8 j + 2 q + b, row g + 8 h): the sum of the part's non-finite terms, chunk by chunk,
// from the records' registers and X's rows read again from global memory. A row's 64 columns of a chunk are
// its quad's: lane q holds groups q and q + 4 of each k-step (its A registers, the metadata from the lanes
// that hold it), so every lane takes each token in turn and the quad ORs its terms' kinds. Called by every
// thread of the block (the warps' votes and shuffles); rare and slow. Not inlined: inlined, its registers
// pushed the loop's unit indices out of the uniform registers (+5 instructions a unit at 16 tokens)
__device__ __noinline__ u32 nonfinite_sums(float* sums, const unsigned char* recs, const u16* x, int c0, int c1,
                                           int tok0, int n_tok, int k, int ldx, int tid) {
    const int lane = tid & 31, wg = tid >> 7, tw = tid & 127, q = lane & 3;
    u32 tokens[(NTOK + 31) / 32];  // bit tt % 32 of word tt / 32: token tok0 + tt has an Inf or a NaN there
    u32 hit = 0;
    for (int tt = 0; tt < NTOK; ++tt) {
        bool bad = false;
        if (tok0 + tt < n_tok) {
            const u16* xr = x + (size_t)(tok0 + tt) * ldx;
            for (int col = c0 * KC + 8 * lane; col < min(c1 * KC, k); col += 256) {
                const uint4 v = *reinterpret_cast<const uint4*>(xr + col);
                bad |= (nonfinite_bits(v.x) | nonfinite_bits(v.y) | nonfinite_bits(v.z) | nonfinite_bits(v.w)) != 0u;
            }
        }
        const bool any = __any_sync(0xffffffffu, bad);
        if (tt % 32 == 0) tokens[tt / 32] = 0u;
        tokens[tt / 32] |= (u32)any << (tt % 32);
        if (any && ((tt & 7) >> 1) == q) hit |= 1u << (2 * (tt >> 3) + (tt & 1));
    }
    for (int f = 0; f < MT * NACC; ++f) sums[f] = 0.f;
    for (int c = c0; c < c1; ++c) {
        const Record rec(recs + (size_t)c * W_BYTES, tid);
        uint4 a[2][MT], o[2][MT];
        u32 e[MT];
        rec.sparse(wg, tw, a, e);
#if OVERFLOW
        rec.overflow(tid, o);
#else
#pragma unroll
        for (int t = 0; t < MT; ++t) o[0][t] = o[1][t] = make_uint4(0u, 0u, 0u, 0u);
#endif
        // group q + 4 hq of k-step ks: its nibbles (row g at bits 4 q, g + 8 at 16 + 4 q) are lane 4 g + 2 ks + hq's
        u32 meta[MT][2][2];
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int ks = 0; ks < 2; ++ks)
#pragma unroll
                for (int hq = 0; hq < 2; ++hq) meta[t][ks][hq] = __shfl_sync(0xffffffffu, e[t], (lane & ~3) | (2 * ks + hq));
        for (int tt = 0; tt < NTOK; ++tt) {
            if (!(tokens[tt / 32] >> (tt % 32) & 1u)) continue;  // the same for the whole warp
            // X's values of the lane's groups: column 32 ks + 4 (q + 4 hq) + position (a group of 4 is in or out of K)
            u32 xv[2][2][2];
            const u16* xr = x + (size_t)(tok0 + tt) * ldx + c * KC;
#pragma unroll
            for (int ks = 0; ks < 2; ++ks)
#pragma unroll
                for (int hq = 0; hq < 2; ++hq) {
                    const int col = 32 * ks + 4 * (q + 4 * hq);
                    const uint2 v = c * KC + col < k ? *reinterpret_cast<const uint2*>(xr + col) : make_uint2(0u, 0u);
                    xv[ks][hq][0] = v.x;
                    xv[ks][hq][1] = v.y;
                }
#pragma unroll
            for (int t = 0; t < MT; ++t)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    u32 kind = 0;
#pragma unroll
                    for (int ks = 0; ks < 2; ++ks) {
                        const u32 av[4] = {a[ks][t].x, a[ks][t].y, a[ks][t].z, a[ks][t].w};
                        const u32 ov[4] = {o[ks][t].x, o[ks][t].y, o[ks][t].z, o[ks][t].w};
#pragma unroll
                        for (int hq = 0; hq < 2; ++hq) {
                            const int i = 2 * hq + h;  // register i: row g + 8 (i & 1), group q + 4 (i >> 1)
                            const u32 nib = meta[t][ks][hq] >> (4 * q + 16 * h) & 0xFu;
#pragma unroll
                            for (int pos = 0; pos < 4; ++pos) {
                                // the 2:4 part's slots (the low half at position nib & 3, the high at nib >> 2), else
                                // the overflow's (positions 2 and 3): a nonzero is in one of them
                                u32 w = (nib & 3u) == (u32)pos ? av[i] & 0xFFFFu : (nib >> 2) == (u32)pos ? av[i] >> 16 : 0u;
                                if (pos >= 2 && !(w & 0x7FFFu)) w = pos == 2 ? ov[i] & 0xFFFFu : ov[i] >> 16;
                                kind |= term_kind(w, xv[ks][hq][pos >> 1] >> (16 * (pos & 1)) & 0xFFFFu);
                            }
                        }
                    }
                    kind |= __shfl_xor_sync(0xffffffffu, kind, 1);
                    kind |= __shfl_xor_sync(0xffffffffu, kind, 2);
                    if (((tt & 7) >> 1) == q) sums[t * NACC + 4 * (tt >> 3) + 2 * h + (tt & 1)] += kind_sum(kind);
                }
        }
    }
    return hit;
}

// PROPAGATE: the accumulators of the thread's tokens with an Inf or a NaN in the block's chunks c0 .. c1 - 1 of
// the output replaced by the dense product's sums of those chunks' non-finite terms (nonfinite_sums)
__device__ __forceinline__ void propagate_inputs(float (&acc)[MT][NACC], const unsigned char* recs, const u16* x,
                                                 int c0, int c1, int tok0, int n_tok, int k, int ldx, int tid) {
    float sums[MT * NACC];
    const u32 hit = nonfinite_sums(sums, recs, x, c0, c1, tok0, n_tok, k, ldx, tid);
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int f = 0; f < NACC; ++f)
            if (hit >> (2 * (f >> 2) + (f & 1)) & 1u) acc[t][f] = sums[t * NACC + f];
}
#endif

// the launch's units (unit (rb tiles + tt) chunks + c: chunk c of output o = rb tiles + tt, row block rb
// and token tile tt) walked in order, with the current unit's output's weight bytes, X rows and tokens
struct Walk {
    const unsigned char* values;
    const u16* x;
    int chunks, tiles, ldx, n_tok;
    int c, o;                   // the unit: chunk c of output o
    const unsigned char* w;     // output o's row block: its chunks' records
    const u16* xt;              // output o's token tile: its first row of X (XPRE: its first stage's X)
    int ntok;                   // and its tokens
#if XTMA
    int t0;                     // and its first token
#endif
#if SIZED
    const u16* sizes;           // each record's size (16-byte units) by row block and chunk
    int rbc;                    // output o's row block's first record
    u32 wbytes;                 // the unit's record's bytes (loaded a unit before its copy is issued)
#endif
    __device__ __forceinline__ void seek(u32 u) {
        o = (int)(u / chunks);
        c = (int)(u - o * chunks);
        output();
        size();
    }
#if ROTATE
    int c_lo, c_hi;             // the block's chunks (one output): after c_hi - 1 comes c_lo
    __device__ __forceinline__ void next() {
        if (++c == c_hi) c = c_lo;
        size();
    }
#else
    __device__ __forceinline__ void next() {
        if (++c == chunks) c = 0, ++o, output();
        size();
    }
#endif
    __device__ __forceinline__ void output() {
        const int tt = o % tiles;
        w = values + (size_t)(o / tiles) * chunks * W_BYTES;
        xt = x + (size_t)tt * (XPRE ? (size_t)chunks * NTOK * KC : (size_t)NTOK * ldx);
        ntok = min(NTOK, n_tok - tt * NTOK);
#if XTMA
        t0 = tt * NTOK;
#endif
#if SIZED
        rbc = (o / tiles) * chunks;
#endif
    }
    __device__ __forceinline__ void size() {
#if SIZED
        wbytes = 16u * sizes[rbc + c];
#endif
    }
    // the unit's bytes to copy: its record's own (sized records), else the fixed record's
    __device__ __forceinline__ u32 bytes() const {
#if SIZED
        return wbytes;
#else
        return W_BYTES;
#endif
    }
};

// Y[tok0 + token][row0 + row] = v (+ the bias) for the thread's accumulator f (of MT x NACC: m-tile f /
// NACC, d[4 j + 2 h + b] with f % NACC = 4 j + 2 h + b: row 16 warp + g + 8 h of the m-tile, token 8 j +
// 2 q + b), where row and token are inside Y
__device__ __forceinline__ void store_one(u16* y, const u16* bias, int row0, int tok0, int m, int n_tok, int ldy,
                                          int wg, int warp, int lane, int f, float v) {
    const int i = f % NACC;
    const int row = row0 + (wg * MT + f / NACC) * 64 + 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
    const int tok = tok0 + 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
    if (row < m && tok < n_tok) y[(size_t)tok * ldy + row] = from_float(v + (bias ? to_float(bias[row]) : 0.f));
}

// the block (of `blocks`, STREAM) whose units [j units / blocks, (j + 1) units / blocks) hold unit u; 32-bit
// (a 64-bit division is a call, whose saved registers spill at 128 tokens): the launcher keeps
// (units + 1) blocks under 2^32
__device__ __forceinline__ u32 block_of(u32 u, u32 units, u32 blocks) { return ((u + 1) * blocks - 1) / units; }

#if STREAM
// STREAM's end, one summing block's share [lo, hi) of output uo's R NTOK values (thread-major, as the
// slots hold them): each value summed over the slots of blocks jf .. jl in block order (the same bits
// whichever block sums it) and written to Y. S slots' loads of E = SUM_LOADS / S values each are in
// flight together, only those of the output's slots (a load past jl would be bytes read for nothing
// while every summing block of the launch reads at once)
template <int S>
__device__ __forceinline__ void sum_share(const float* ws, u16* y, const u16* bias, u32 jf, u32 jl, u32 first,
                                          u32 units, int lo, int hi, u32 uo, u32 tiles, int m, int n_tok, int ldy,
                                          int tid) {
    constexpr int E = SUM_LOADS / S > 0 ? SUM_LOADS / S : 1;
    for (int e0 = lo + tid; e0 < hi; e0 += E * THREADS) {
        float sum[E];
#pragma unroll
        for (int k = 0; k < E; ++k) sum[k] = 0.f;
        for (u32 b0 = jf; b0 <= jl; b0 += S) {
            float v[S][E];
#pragma unroll
            for (int q = 0; q < S; ++q) {
                const u32 b = b0 + q;
                const bool first_of_b = b * units / gridDim.x >= first;
                const float* slot = ws + ((size_t)b * 2 + (first_of_b ? 0 : 1)) * (R * NTOK);
#pragma unroll
                for (int k = 0; k < E; ++k) {
                    const int e = e0 + k * THREADS;
                    v[q][k] = !(ABLATE & 16) && b <= jl && e < hi ? __ldcg(slot + e) : 0.f;
                }
            }
#pragma unroll
            for (int q = 0; q < S; ++q)
                if (b0 + q <= jl)
#pragma unroll
                    for (int k = 0; k < E; ++k) sum[k] += v[q][k];
        }
#pragma unroll
        for (int k = 0; k < E; ++k) {
            const int e = e0 + k * THREADS, te = e % THREADS;  // accumulator e / THREADS of thread te
            if (e < hi && (!(ABLATE & 32) || sum[k] == 1e30f))  // (bit 32: the loads kept, almost no store)
                store_one(y, bias, (uo / tiles) * R, (uo % tiles) * NTOK, m, n_tok, ldy, te >> 7, (te & 127) >> 5,
                          te & 31, e / THREADS, sum[k]);
        }
    }
}

// END_RED: the thread's accumulators added into an output's slot (R NTOK floats), four at a time, in its own
// positions (accumulator f at ((f / 4) THREADS + tid) 4 + f % 4), by fp32 reductions at L2 (no reply)
__device__ __forceinline__ void reduce_into(float* area, const float (&acc)[MT][NACC], int tid) {
#pragma unroll
    for (int f = 0; f < MT * NACC; f += 4)
        asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(
                         area + ((size_t)(f / 4) * THREADS + tid) * 4),
                     "f"(acc[f / NACC][f % NACC]), "f"(acc[f / NACC][f % NACC + 1]),
                     "f"(acc[f / NACC][f % NACC + 2]), "f"(acc[f / NACC][f % NACC + 3])
                     : "memory");
}

// END_RED's last arrival: the thread's positions of output uo's slot read back (OWN: plus its own
// accumulators, which it did not add), written to Y and zeroed for the next launch, END_PIECE float4s at a time
template <bool OWN>
__device__ __forceinline__ void read_back(float* area, const float (&acc)[MT][NACC], u16* y, const u16* bias, int uo,
                                          int tiles, int m, int n_tok, int ldy, int tid, int wg, int warp, int lane) {
#pragma unroll
    for (int q0 = 0; q0 < MT * NACC / 4; q0 += END_PIECE) {
        float4 v[END_PIECE];
#pragma unroll
        for (int q = 0; q < END_PIECE; ++q)
            v[q] = __ldcg(reinterpret_cast<const float4*>(area) + (size_t)(q0 + q) * THREADS + tid);
#pragma unroll
        for (int q = 0; q < END_PIECE; ++q)
            __stcg(reinterpret_cast<float4*>(area) + (size_t)(q0 + q) * THREADS + tid, make_float4(0.f, 0.f, 0.f, 0.f));
#pragma unroll
        for (int g = 0; g < 4 * END_PIECE; ++g) {
            const int f = 4 * q0 + g;
            const float sum = g % 4 == 0 ? v[g / 4].x : g % 4 == 1 ? v[g / 4].y : g % 4 == 2 ? v[g / 4].z : v[g / 4].w;
            store_one(y, bias, (uo / tiles) * R, (uo % tiles) * NTOK, m, n_tok, ldy, wg, warp, lane, f,
                      OWN ? acc[f / NACC][f % NACC] + sum : sum);
        }
    }
}
#endif

#ifndef MIN_BLOCKS
// blocks per SM the registers must allow (__launch_bounds__): PROPAGATE's builds would take ~200 otherwise (202
// at 16 tokens, compressed, STREAM), and up to 32 tokens the loop's registers allow two blocks (at most 128 each;
// the builds without PROPAGATE take 76-96 there, up to 181 at 64 tokens)
#define MIN_BLOCKS (PROPAGATE && NTOK <= 32 ? 2 : 1)
#endif
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
#if SPLIT > 1
    __cluster_dims__(SPLIT, 1, 1)
#endif
    wgmma24(const u16* __restrict__ x, u16* __restrict__ y, const u16* __restrict__ bias,
            const unsigned char* __restrict__ values, float* __restrict__ ws, int* __restrict__ counters, int m,
            int k, int n_tok, int ldx, int ldy, int chunks
#if XTMA
            , const __grid_constant__ XMap xmap
#endif
    ) {
#if ABLATE & 4
    return;  // the launch alone
#endif
#if XTMA  // the launcher's shared memory holds 1024 bytes more: the stages from a 1024-byte boundary
    extern __shared__ __align__(128) unsigned char smem_raw[];
    unsigned char* const smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
#define XMAP_ARGS , &xmap, ld.t0
#else
    extern __shared__ __align__(128) unsigned char smem[];
#define XMAP_ARGS
#endif
    const int tid = threadIdx.x, wg = tid >> 7, tw = tid & 127, lane = tid & 31, warp = tw >> 5;
#if BLOCK_TIMES
    unsigned long long t_start;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t_start));
#endif
#if PREFETCH_MAP  // the tensor map into the copy engine's cache while the block works out its units
    if (tid == 0) asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&xmap)) : "memory");
#endif
    const int tiles = (n_tok + NTOK - 1) / NTOK;
#if STREAM
    const u32 units = (u32)((m + R - 1) / R) * tiles * chunks;
    const u32 u0 = blockIdx.x * units / gridDim.x, u1 = (blockIdx.x + 1) * units / gridDim.x;
#else
    const int cluster = blockIdx.x / SPLIT, part = blockIdx.x % SPLIT;  // the cluster's output, this block's part of K
    const u32 u0 = cluster * chunks + part * chunks / SPLIT, u1 = cluster * chunks + (part + 1) * chunks / SPLIT;
#endif
    const int nun = (int)(u1 - u0);
#if SIZED  // values: the sizes (a uint16 a record, padded to 16 bytes), then the records
    const unsigned char* const recs = values + (size_t)(((m + R - 1) / R * chunks + 7) / 8) * 16;
    Walk ld{recs, x, chunks, tiles, ldx, n_tok};  // the next unit to copy
    ld.sizes = reinterpret_cast<const u16*>(values);
#else
    const unsigned char* const recs = values;
    Walk ld{recs, x, chunks, tiles, ldx, n_tok};  // the next unit to copy
#endif
    (void)recs;
#if ROTATE  // row block rb's blocks start at their (rb mod nun)-th chunk: the row blocks read different chunks of X
    ld.c_lo = part * chunks / SPLIT;
    ld.c_hi = (part + 1) * chunks / SPLIT;
    ld.seek(u0 + (nun > 0 ? (u32)((cluster / tiles) % nun) : 0u));
#else
    ld.seek(u0);
#endif
#if STREAM
    int uc = ld.c, uo = ld.o;  // the unit the mmas are on: chunk uc of output uo
#endif
    PRO_STAMP(0, (size_t)ld.xt + (size_t)ld.w + ld.c);

    float acc[MT][NACC];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[t][i] = 0.f;

    __shared__ __align__(8) unsigned long long full[STAGES];  // BULK: a stage's weight record landed
    const u32 bars = smem_u32(full);
#if EARLY  // thread 0 sets up every stage's mbarrier and issues the prologue's copies on them; the block's
           // barrier after those copies shows the set-up to the threads that wait on the mbarriers
    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) mbar_init(bars + 8 * s);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    PRO_STAMP(1, bars);
#elif BULK
    if (tid < STAGES) mbar_init(bars + 8 * tid);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncthreads();
    PRO_STAMP(1, bars);
#endif
#pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        if (s < nun) {
            // the record's fixed size: its own size would wait for the sizes' load at the launch's start
            load_chunk(smem + s * STAGE_BYTES, bars + 8 * s, ld.w + (size_t)ld.c * W_BYTES, W_BYTES, ld.xt, ld.c,
                       ld.ntok, k, ldx, tid XMAP_ARGS);
            ld.next();
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    PRO_STAMP(2, ld.c);
#if EARLY
    __syncthreads();
#endif
    PRO_STAMP(3, ld.c);
#if PROPAGATE
    u32 seen = 0;  // the largest magnitudes of this thread's share of X in the current output's units (stage_max)
#endif
    // A_SMEM: units in pairs, h = 0, 1 of a pair unrolled, so that each unit's metadata has its own
    // registers (meta[h]), read by its mmas until they are waited for in the next unit; MMA_AHEAD the same
    // with each unit's 2:4 registers (a_regs[h], e_regs[h]; the overflow's one set: its mmas are a commit group
    // of their own, waited for before the next unit's overflow registers are built)
    u32 meta[1 + A_SMEM][MT];
    (void)meta;
#if MMA_AHEAD
    uint4 a_regs[2][2][MT] = {};  // (zero: the first unit's wait keeps the other set live)
    u32 e_regs[2][MT] = {};
    (void)a_regs, (void)e_regs;
#endif
#if MMA_AHEAD && STREAM
    // left from the end of the block's last unit, which ends an output and has waited for its mmas: a loop that
    // also left at its latch would have ptxas wait there for every second unit's mmas
    for (int i2 = 0;; i2 += 2) {
#else
    for (int i2 = 0; i2 < nun; i2 += 1 + PAIRS) {
#endif
#pragma unroll
        for (int h = 0; h <= PAIRS; ++h) {
            const int i = i2 + h;
            if (PAIRS && !(MMA_AHEAD && STREAM) && i >= nun) break;
            asm volatile("cp.async.wait_group %0;\n" ::"n"(AHEAD - 1) : "memory");
#if BULK && !(ABLATE & 2)
            mbar_wait(bars + 8 * (i % STAGES), (u32)(i / STAGES) & 1u);  // unit i's weight record in place
#endif
#if BLOCK_TIMES >= 2 && STREAM
            if (tid == 0 && i < UNIT_TIMES) {
                unsigned long long t_unit;
                asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t_unit));
                reinterpret_cast<unsigned long long*>(ws + (size_t)2 * gridDim.x * R * NTOK)[3 * gridDim.x + UNIT_TIMES * blockIdx.x + i] = t_unit;
            }
#endif
            // the copies, seen by the mma's reads; this thread's reads of the stage refilled next, done
            // before the refill's bulk copy
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            // unit i in place; every warpgroup done with unit i - 1's stage (A_SMEM, MMA_AHEAD: i - 2's), refilled next
            __syncthreads();
#if TICKET && !(ABLATE & 8)
            // the block's last unit: thread 0 draws a ticket on its output's counter (the low 16 bits) if
            // the output is split, its round trip under the unit's mmas (the count read at the end). An
            // increment bounded at 0xfffffffe (an add of 1 at any count the counter holds), not an add:
            // ptxas turns a single thread's atomic add into a warp-aggregated one whose shuffle of the reply
            // waits for it at once, before the warp's mmas (+0.4-0.9 us, measured on an H200); the
            // increment it leaves alone
            u32 ticket = 0;
            if (i == nun - 1 && tid == 0) {
                const u32 jf = block_of((u32)uo * chunks, units, gridDim.x);
                if (jf != block_of((u32)uo * chunks + chunks - 1, units, gridDim.x))
                    asm volatile("atom.relaxed.gpu.global.inc.u32 %0, [%1], -2;\n" : "=r"(ticket) : "l"(counters + jf) : "memory");
            }
#endif
            // the refill of that stage with unit i + AHEAD (one cp.async group per unit, empty past the
            // block's units)
            auto refill = [&]() {
                if (i + AHEAD < nun) {
                    load_chunk(smem + ((i + AHEAD) % STAGES) * STAGE_BYTES, bars + 8 * ((i + AHEAD) % STAGES),
                               ld.w + (size_t)ld.c * W_BYTES, ld.bytes(), ld.xt, ld.c, ld.ntok, k, ldx, tid XMAP_ARGS);
                    ld.next();
                }
                asm volatile("cp.async.commit_group;\n" ::: "memory");
            };
#if !REFILL_LATE || (ABLATE & 1)
            refill();
#endif
#if STREAM
            const u32 acc_in = i != 0 && uc != 0;  // not the first unit of an output or of the block's units
#else
            const u32 acc_in = i != 0;
#endif
            (void)acc_in;
#if !(ABLATE & 1) && A_SMEM
            {
                // A by descriptors over the stage's tiles; the overflow operand's registers stored to this
                // warpgroup's buffer of unit i's parity (its last reader, unit i - 2, waited for in unit i - 1)
                // in the tiles' layout; unit i's mmas waited for only after unit i + 1's are issued. No
                // instruction but the mmas touches the accumulators between units (ptxas would wait there)
                const unsigned char* stage = smem + (i % STAGES) * STAGE_BYTES;
                const u32 sa = smem_u32(stage + wg * MT * TILE_BYTES), sx = smem_u32(stage + X_OFF);
                u32(&e)[MT] = meta[h];  // the registers of unit i - 2's metadata, whose mmas are done
#pragma unroll
                for (int t = 0; t < MT; ++t) e[t] = *reinterpret_cast<const u32*>(stage + (wg * MT + t) * TILE_BYTES + 4096 + 4 * tw);
#if OVERFLOW
                const u32 so = smem_u32(smem + STAGES * STAGE_BYTES + (i & 1) * OVER_STAGE_BYTES + wg * MT * 4096);
                {
                    uint4 o[2][MT];
                    overflow_registers(stage, tid, o);
                    const u32 base = so + 512 * warp + 4 * lane;
#pragma unroll
                    for (int t = 0; t < MT; ++t)
#pragma unroll
                        for (int ks = 0; ks < 2; ++ks)
                            asm volatile("st.shared.u32 [%0], %1;\nst.shared.u32 [%0+256], %2;\n"
                                         "st.shared.u32 [%0+128], %3;\nst.shared.u32 [%0+384], %4;\n"
                                         ::"r"(base + (2 * t + ks) * 2048), "r"(o[ks][t].x), "r"(o[ks][t].y),
                                         "r"(o[ks][t].z), "r"(o[ks][t].w) : "memory");
                }
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the stores, seen by the mmas' reads
                if (wg == 0)  // the warpgroup's stores all done (named barriers by immediates: ptxas reserves all 16 for a register)
                    asm volatile("bar.sync 1, 128;\n" ::: "memory");
                else
                    asm volatile("bar.sync 2, 128;\n" ::: "memory");
#endif
                asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    wgmma_sps<0>(acc[t], a_desc(sa + t * TILE_BYTES), b_desc(sx), e[t], acc_in);
                    wgmma_sps<1>(acc[t], a_desc(sa + t * TILE_BYTES + 2048), b_desc(sx + B_KSTEP), e[t]);
                }
#if OVERFLOW
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    wgmma_sps<0>(acc[t], a_desc(so + t * 4096), b_desc(sx), OVERFLOW_META);
                    wgmma_sps<1>(acc[t], a_desc(so + t * 4096 + 2048), b_desc(sx + B_KSTEP), OVERFLOW_META);
                }
#endif
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#if REFILL_LATE
                refill();
#endif
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // unit i - 1's mmas done
                // unit i - 1's metadata read until here (the mma reads its registers as it runs): their
                // registers are not reused before
#pragma unroll
                for (int t = 0; t < MT; ++t) asm volatile("" ::"r"(meta[h ^ 1][t]));
            }
#elif !(ABLATE & 1)
            unsigned char* stage = smem + (i % STAGES) * STAGE_BYTES;
#if FOLD_ONE
            const uint2 xw = reinterpret_cast<const uint2*>(stage + X_OFF)[tid];
#endif
#if MMA_AHEAD
            uint4(&a)[2][MT] = a_regs[h];
            u32(&e)[MT] = e_regs[h];
#else
            uint4 a[2][MT];
            u32 e[MT];
#endif
            const Record rec(stage, tid);
#if COMPRESSED
            rec.sparse(wg, tw, a, e);
#else
            SLOT_REGISTERS(stage, wg, tw, a, e);
#endif
            const u32 sx = smem_u32(stage + X_OFF);
#if !MMA_AHEAD  // (MMA_AHEAD: no instruction but the mmas touches the accumulators between units; ptxas would wait)
#pragma unroll
            for (int t = 0; t < MT; ++t) fence_acc(acc[t]);
#endif
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int t = 0; t < MT; ++t) {
                wgmma_sp<0>(acc[t], a[0][t], b_desc(sx), e[t], acc_in);
                wgmma_sp<1>(acc[t], a[1][t], b_desc(sx + B_KSTEP), e[t]);
            }
#if OVERFLOW
            // the chunk's overflow, while those mmas run: a group's third and fourth nonzeros sit at its
            // positions 2 and 3, a second 2:4 operand with the metadata nibble 2 | 3 << 2 everywhere
            {
#if MMA_AHEAD
                // the 2:4 mmas a group of their own; unit i - 1's groups (its overflow's the one before) done:
                // the overflow's registers free to be built again, the 2:4 mmas queued behind them
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
                keep_registers(a_regs[h ^ 1], e_regs[h ^ 1]);
#endif
                uint4 o[2][MT];
                rec.overflow(tid, o);
                asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");  // the registers just written
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    wgmma_sp<0>(acc[t], o[0][t], b_desc(sx), OVERFLOW_META);
                    wgmma_sp<1>(acc[t], o[1][t], b_desc(sx + B_KSTEP), OVERFLOW_META);
                }
            }
#endif
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#if REFILL_LATE
            refill();  // while the mmas run: off the chain from the barrier to the mmas
#endif
#if FOLD_ONE
            seen = max_magnitude(max_magnitude(seen, xw.x), xw.y);
#elif PROPAGATE
            seen = stage_max(stage + X_OFF, tid, seen);
#endif
#if MMA_AHEAD && !OVERFLOW
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // unit i - 1's mmas done
            keep_registers(a_regs[h ^ 1], e_regs[h ^ 1]);
#elif !MMA_AHEAD
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
            for (int t = 0; t < MT; ++t) fence_acc(acc[t]);
#endif
#endif  // !(ABLATE & 1)
#if STREAM
            if (uc == chunks - 1 || i == nun - 1) {  // this block's last unit of output uo
#if PAIRS && !(ABLATE & 1)
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
                for (int t = 0; t < MT; ++t) fence_acc(acc[t]);
#endif
#if MMA_AHEAD && !(ABLATE & 1)
                // the unit's mmas done: its registers need not live through the end (the next unit keeps zeros)
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    e_regs[h][t] = 0u;
                    a_regs[h][0][t] = a_regs[h][1][t] = make_uint4(0u, 0u, 0u, 0u);
                }
#endif
                const u32 first = uo * chunks;
#if PROPAGATE
                // the block's vote, made warp-uniform for ptxas by __any_sync (the same value: without it the
                // loop's addresses leave the uniform registers, +28 instructions a unit at 16 tokens); the rare
                // path over the block's units of uo: its first (or uo's) to uc
#if ABLATE & 128
                if (__any_sync(0xffffffffu, nonfinite_bits(seen) != 0))
#else
                if (__any_sync(0xffffffffu, __syncthreads_or(nonfinite_bits(seen) != 0)))
#endif
                    propagate_inputs(acc, recs + (size_t)(uo / tiles) * chunks * W_BYTES, x, (int)(max(u0, first) - first),
                                     uc + 1, (int)(uo % tiles) * NTOK, n_tok, k, ldx, tid);
                seen = 0;
#endif
                const u32 jf = block_of(first, units, gridDim.x), jl = block_of(first + chunks - 1, units, gridDim.x);
#if TICKET
                if (jf != jl && !(ABLATE & 8)) {
                    // END_TICKET=1: the output's blocks that end with it (all but block jl where its range goes
                    // on past the output) drew tickets as their last unit started; the last ticket's block
                    // adds no reductions: it waits until every other block of the output has added its own
                    // and counted itself (the counter's high 16 bits, a release after the block's barrier),
                    // then reads the slot back, adds its accumulators, writes Y, zeroes the slot and the
                    // counter for the next launch. Its ticket's round trip ran under its last unit's mmas,
                    // and no block waits for a reply before it goes on or exits
                    // (BLOCK_TIMES=3: the last ticket's block stamps its end's start, the ticket read, the
                    // wait over and the read-back issued, END_RED's four steps with no reductions)
                    float* area = ws + (size_t)jl * (R * NTOK);
                    const u32 ending = jl - jf + ((jl + 1) * units / gridDim.x == first + chunks ? 1u : 0u);
                    unsigned long long t0;
                    END_CLOCK(t0);
                    __shared__ u32 last;
                    if (tid == 0) last = i == nun - 1 && (ticket & 0xffffu) == ending - 1;
                    __syncthreads();
                    if (!last) {
                        reduce_into(area, acc, tid);
                        __syncthreads();
                        if (tid == 0)
                            asm volatile("red.release.gpu.global.add.u32 [%0], %1;\n" ::"l"(counters + jf), "r"(1u << 16)
                                         : "memory");
                    } else {
                        END_STAMP_AT(0, t0);
                        END_STAMP(1);
                        if (tid == 0) {
                            for (;;) {
                                u32 v;
                                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(counters + jf) : "memory");
                                if (v >> 16 == jl - jf) break;
                                __nanosleep(32);
                            }
                            counters[jf] = 0;
                        }
                        __syncthreads();
                        END_STAMP(2);
                        read_back<true>(area, acc, y, bias, uo, tiles, m, n_tok, ldy, tid, wg, warp, lane);
                        END_STAMP(3);
                    }
                } else
#elif END_RED
                if (jf != jl && !(ABLATE & 8)) {
                    // END_RED=1 (not deterministic: the sums' order is the arrivals'): every block of uo
                    // adds its accumulators into block jl's slot of R NTOK floats by fp32 reductions at L2
                    // (uo is block jl's first output, so the slot is uo's alone), four at a time, in the
                    // thread's own positions; the output's last arrival (the counter's acq_rel increment,
                    // wrapping to zero) reads them back, writes Y and zeroes the slot for the next launch (ws
                    // is zero before the first: cuda_backend.reduce_area, or the benchmarks' launcher). No
                    // block waits
                    float* area = ws + (size_t)jl * (R * NTOK);
                    unsigned long long t0, t1;
                    END_CLOCK(t0);
                    reduce_into(area, acc, tid);
                    __syncthreads();
#if END_FENCE  // the release's wait for the block's reductions alone, before the counter's round trip
                    if (tid == 0) asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
#endif
                    END_CLOCK(t1);
                    __shared__ u32 last;
                    if (tid == 0) last = arrive_inc_acq_rel_gpu(counters + jf, jl - jf) == jl - jf;
                    __syncthreads();
                    if (last) {
                        END_STAMP_AT(0, t0);
                        END_STAMP_AT(1, t1);
                        END_STAMP(2);
                        read_back<false>(area, acc, y, bias, uo, tiles, m, n_tok, ldy, tid, wg, warp, lane);
                        END_STAMP(3);
                    }
                } else
#endif
                if (jf != jl && !(ABLATE & 8)) {  // uo's units are split across blocks
                    // the partial sums to slot 0 (uo is the block's first output) or 1 (its last), thread-major;
                    // the block's stores happen before thread 0's release (bar.sync, then a release at GPU
                    // scope, cumulative), the waiting blocks' acquire makes every block's stores visible
                    float* part = ws + ((size_t)blockIdx.x * 2 + (u0 >= first ? 0 : 1)) * (R * NTOK);
                    // blocks jf .. jl - 1 end with uo (block jl holds its last units at its start and only
                    // arrives): each waits for all jl - jf + 1 arrivals, then sums its share of uo's
                    // R NTOK values over every slot in block order (deterministic) and writes it to Y. The
                    // counter wraps to zero at the last arrival: zero again for the next launch, no reset
                    const bool sums = blockIdx.x != jl;
                    if (sums) END_STAMP(0);
#pragma unroll
                    for (int t = 0; t < MT; ++t)
#pragma unroll
                        for (int j = 0; j < NACC; ++j) part[(t * NACC + j) * THREADS + tid] = acc[t][j];
                    __syncthreads();
                    if (sums) END_STAMP(1);
                    if (tid == 0) {
                        if (!sums)
                            arrive_inc_release_gpu(counters + jf, jl - jf);
                        else if (arrive_inc_acq_rel_gpu(counters + jf, jl - jf) != jl - jf)
                            wait_zero_gpu(counters + jf);
                    }
                    __syncthreads();
                    if (sums) {
                        END_STAMP(2);
                        const int parts = (int)(jl - jf), p = (int)(blockIdx.x - jf);
                        const int lo = p * (R * NTOK) / parts, hi = (p + 1) * (R * NTOK) / parts;
                        // as many slots' loads in flight as the output has slots (up to SUM_LOADS), times the
                        // values of the share a thread then needs: at 256 rows and 16 tokens one round of loads
                        const u32 slots = jl - jf + 1;
                        if (slots <= 2)
                            sum_share<2>(ws, y, bias, jf, jl, first, units, lo, hi, uo, tiles, m, n_tok, ldy, tid);
                        else if (slots <= 4)
                            sum_share<4>(ws, y, bias, jf, jl, first, units, lo, hi, uo, tiles, m, n_tok, ldy, tid);
                        else if (slots <= 8)
                            sum_share<8>(ws, y, bias, jf, jl, first, units, lo, hi, uo, tiles, m, n_tok, ldy, tid);
                        else if (slots <= 16)
                            sum_share<16>(ws, y, bias, jf, jl, first, units, lo, hi, uo, tiles, m, n_tok, ldy, tid);
                        else
                            sum_share<32>(ws, y, bias, jf, jl, first, units, lo, hi, uo, tiles, m, n_tok, ldy, tid);
                        END_STAMP(3);
                    }
                } else {
#pragma unroll
                    for (int f = 0; f < MT * NACC; ++f)
                        store_one(y, bias, (uo / tiles) * R, (uo % tiles) * NTOK, m, n_tok, ldy, wg, warp, lane, f,
                                  acc[f / NACC][f % NACC]);
                }
#if MMA_AHEAD
                if (i == nun - 1) goto units_done;
#endif
            }
            if (++uc == chunks) uc = 0, ++uo;
#endif
        }
    }
#if STREAM
#if MMA_AHEAD
units_done:;
#endif
#if BLOCK_TIMES
    if (tid == 0) {
        unsigned long long t_end;
        u32 sm;
        asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t_end));
        asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
        unsigned long long* out = reinterpret_cast<unsigned long long*>(ws + (size_t)2 * gridDim.x * R * NTOK) + 3 * blockIdx.x;
        out[0] = t_start, out[1] = t_end, out[2] = sm;
    }
#endif
}
#else
#if PAIRS && !(ABLATE & 1)
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int t = 0; t < MT; ++t) fence_acc(acc[t]);
#endif
#if ABLATE & 8
#pragma unroll
    for (int f = 0; f < MT * NACC; ++f)
        store_one(y, bias, (cluster / tiles) * R, (cluster % tiles) * NTOK, m, n_tok, ldy, wg, warp, lane, f,
                  acc[f / NACC][f % NACC]);
    return;
#endif
#if PROPAGATE
    if (__any_sync(0xffffffffu, __syncthreads_or(nonfinite_bits(seen) != 0)))  // (warp-uniform for ptxas, as in STREAM's)
        propagate_inputs(acc, recs + (size_t)(cluster / tiles) * chunks * W_BYTES, x, part * chunks / SPLIT,
                         (part + 1) * chunks / SPLIT, (cluster % tiles) * NTOK, n_tok, k, ldx, tid);
#endif
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();  // every warpgroup done with the stages: they hold the partial sums now

    // partial sums [token][row] (row stride TS floats): thread's d[4 j + 2 h + b] is row 16 warp + g + 8 h
    // of its m-tile, token 8 j + 2 q + b
    const int rb = cluster / tiles, tok0 = (cluster % tiles) * NTOK, ntok = min(NTOK, n_tok - tok0);
    float* ts = reinterpret_cast<float*>(smem);
    {
        const int g = lane >> 2, q = lane & 3;
#pragma unroll
        for (int t = 0; t < MT; ++t) {
            const int r0 = (wg * MT + t) * 64 + 16 * warp + g;
#pragma unroll
            for (int i = 0; i < NACC; ++i) {
                const int row = r0 + 8 * ((i >> 1) & 1), tok = 8 * (i >> 2) + 2 * q + (i & 1);
                ts[tok * TS + row] = acc[t][i];
            }
        }
    }
    cluster_sync();
    // this block's share of the row block's rows, summed over the cluster's blocks in rank order
    constexpr int PER = ((R / 4 + SPLIT - 1) / SPLIT) * 4;
    const int rlo = part * PER, rhi = min(R, rlo + PER);
    const int row0 = rb * R;
    const u32 tsa = smem_u32(ts);
    for (int p = tid; p < ntok * (PER / 4); p += THREADS) {
        const int tok = p / (PER / 4), r4 = rlo + 4 * (p % (PER / 4));
        if (r4 >= rhi) continue;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int src = 0; src < SPLIT; ++src) {
            float4 v;
#if SPLIT > 1
            const u32 local = tsa + 4u * (u32)(tok * TS + r4);
            u32 remote;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(src));
            asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(remote));
#else
            v = *reinterpret_cast<const float4*>(ts + tok * TS + r4);
#endif
            s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
        }
        const float sv[4] = {s.x, s.y, s.z, s.w};
        u16* yr = y + (size_t)(tok0 + tok) * ldy + row0 + r4;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int row = row0 + r4 + u;
            if (row < m) yr[u] = from_float(sv[u] + (bias ? to_float(bias[row]) : 0.f));
        }
    }
    cluster_sync();  // no block leaves while another reads its partial sums
}
#endif
