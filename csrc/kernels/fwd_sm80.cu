/*
 * fwd_sm80.cu -- FlashAttention forward for Ampere and newer (sm_80, sm_86, sm_89; also runs
 * on sm_90): mma.sync m16n8k16 tensor cores, ldmatrix, a cp.async K/V ring (mbarriers or
 * __syncthreads), online softmax in base 2, 384 threads = 12 warps per CTA.
 *
 *   q, out (batch, seqlen_q, heads_q, head_dim), k, v (batch, seqlen_k, heads_kv, head_dim),
 *   any element strides with unit head_dim stride; fp16 or bf16 in, fp32 accumulation;
 *   optional lse (batch, heads_q, seqlen_q) fp32, natural log; optional sinks (heads_q) fp32.
 *   Masks, score hook and row finalisation come from csrc/common/ (mask.h: a key is visible
 *   when lo <= key <= hi of its row's span, bottom-right aligned; block_range.h: the key
 *   blocks a tile visits and which of them need the mask; score.h: t = raw or
 *   tanh(raw * softcap_pre), softmax exp2(t * scale_log2 - m * scale_log2), and the sink in
 *   the denominator).
 *   grid = (ceil(seqlen_q / BLOCK_M), heads_q, batch), block = 384, dynamic smem from
 *   sm80_tiles.h. Instantiated for head_dim_padded 64, 128, 256 x {fp16, bf16} x mask kind
 *   {none, causal, local (window)} x {softcap, not}; sinks are a runtime pointer. A head_dim
 *   below the padded size is zero-filled on load and only its columns are stored.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     -gencode arch=compute_80,code=compute_80 -I csrc csrc/kernels/fwd_sm80.cu -o fwd_sm80.o
 *
 * One CTA computes BLOCK_M query rows of one (batch, head); the tile table (sm80_tiles.h)
 * gives each warp 16 rows (and, for head_dim 256, one half of the head_dim columns). Q goes to
 * registers once (A fragments); K/V blocks of BLOCK_N keys stream through a ring of smem
 * stages; within a block, S = Q K^T, the online softmax and O += P V run per SUB_N keys, with
 * P staying in registers as the A operand. Key blocks are walked from the last visible one
 * (n_max - 1) down to the first (n_min; above 0 with a left window), so the blocks that need a
 * mask sit at the two ends of the walk: the causal or right-window diagonal and the ragged end
 * of seqlen_k first, the left-window edge last; every block between runs unmasked. In masked
 * blocks a warp skips the sub-blocks none of its rows sees, and a warp whose rows all lie past
 * seqlen_q computes nothing. Blocks outside [n_min, n_max) are never loaded; a tile whose
 * rows see no key stores zeros and the empty-row LSE (-inf, or the sink) and leaves.
 *
 * K/V pipelines (chosen per head_dim in sm80_tiles.h):
 *   mbarrier ring (MBAR 1): block i (in visiting order) is copied by warpgroup i % 3 alone; a
 *     full mbarrier per stage completes when those copies land (cp.async.mbarrier.arrive), an
 *     empty one when all 384 threads have read the stage. There is no block-wide barrier in the
 *     main loop, so warps drift apart and one warp's softmax overlaps another's mmas.
 *   __syncthreads ring (MBAR 0): every thread copies, one barrier per block; the S exchange
 *     of head_dim 256 (D_SPLIT 2) relies on that barrier.
 * The template also covers 32 query rows per warp (ROW_TILES 2) and warps splitting each key
 * block with a merge in the epilogue (KEY_SPLIT > 1); the table does not use them: they
 * measured slower (sm80_tiles.h).
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_tiles.h"
#include "sm80_ptx.cuh"

#ifndef __CUDA_ARCH_LIST__
#error "fwd_sm80.cu needs nvcc >= 11.5 (__CUDA_ARCH_LIST__ names the compiled targets)"
#endif

namespace fa_sm80 {

constexpr int kThreads = FA_THREADS_PER_BLOCK;
constexpr int kWarps = FA_NUM_WARPS_PER_BLOCK;
static_assert(kWarps * FA_WARP_SIZE == kThreads, "12 warps of 32 threads");
static_assert(kThreads == 384 && kWarps == 12, "the sm80 layout is written for 384 threads");

template <int HDP> struct TileOf;
#define FA_SM80_TILE_OF(HD)                                                                    \
    template <> struct TileOf<HD> {                                                            \
        static constexpr int block_n = FA_SM80_HD##HD##_BLOCK_N, sub_n = FA_SM80_HD##HD##_SUB_N, \
                             sub_n_softcap = FA_SM80_HD##HD##_SUB_N_SOFTCAP,                   \
                             row_tiles = FA_SM80_HD##HD##_ROW_TILES,                           \
                             key_split = FA_SM80_HD##HD##_KEY_SPLIT,                           \
                             d_split = FA_SM80_HD##HD##_D_SPLIT,                               \
                             stages = FA_SM80_HD##HD##_STAGES,                                 \
                             qk_ahead = FA_SM80_HD##HD##_QK_AHEAD,                             \
                             mbar = FA_SM80_HD##HD##_MBAR;                                     \
    };
FA_SM80_TILE_OF(64)
FA_SM80_TILE_OF(128)
FA_SM80_TILE_OF(256)
#undef FA_SM80_TILE_OF

template <int HDP, bool SOFTCAP>
struct Config {
    using T = TileOf<HDP>;
    static constexpr int kHeadDim = HDP;
    static constexpr int kMT = T::row_tiles;       /* m16 tiles of query rows per warp */
    static constexpr int kKS = T::key_split;       /* warps splitting each key block */
    static constexpr int kDS = T::d_split;         /* warps splitting head_dim */
    static constexpr int kStages = T::stages;
    static constexpr int kBlockN = T::block_n;
    static constexpr int kSubN = SOFTCAP ? T::sub_n_softcap : T::sub_n;
    static constexpr int kPartN = kBlockN / kKS;   /* keys of a block one warp covers */
    static constexpr int kSubs = kPartN / kSubN;
    static constexpr int kWarpRows = 16 * kMT;
    static constexpr int kBlockM = FA_SM80_BLOCK_M(kMT, kKS, kDS);
    static constexpr int kRowGroups = kWarps / (kKS * kDS);
    /* head_dim columns a warp reduces over in Q K^T and owns in O */
    static constexpr int kWarpDim = HDP / kDS;
    static constexpr int kRowBytes = FA_SM80_ROW_BYTES(HDP);
    static constexpr int kKVBytes = FA_SM80_KV_BYTES(HDP, kBlockN);
    static constexpr int kStageBytes = FA_SM80_STAGE_BYTES(HDP, kBlockN);
    static constexpr int kQOffset = FA_SM80_Q_OFFSET(HDP, kBlockN, kStages);
    static constexpr int kXchgOffset = FA_SM80_XCHG_OFFSET(HDP, kBlockN, kStages);
    static constexpr int kMergeOOffset = FA_SM80_MERGE_O_OFFSET(HDP, kBlockM);
    static constexpr int kMergeMLOffset = FA_SM80_MERGE_ML_OFFSET(HDP, kBlockM, kKS);
    static constexpr int kSmemBytes = FA_SM80_SMEM_BYTES(HDP, kBlockN, kMT, kKS, kDS, kStages);
    /* 16-byte chunks per smem row; a pass of all 384 threads covers kRowsPerPass whole rows */
    static constexpr int kChunksPerRow = HDP / 8;
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    static constexpr int kSTiles = kSubN / 8;     /* n8 tiles of S per m16 tile and sub-block */
    static constexpr int kOTiles = kWarpDim / 8;  /* n8 tiles of O per m16 tile */
    static constexpr int kQSteps = kWarpDim / 16; /* k16 steps of Q K^T */
    static constexpr int kPSteps = kSubN / 16;    /* k16 steps of P V per sub-block */
    static constexpr bool kQKAhead = T::qk_ahead != 0 && kSubs > 1;
    /* K/V pipeline: false, every thread loads and one __syncthreads per block; true, the
       block at visiting index i is loaded by warpgroup i % 3 alone, full/empty mbarriers per
       stage replace the block-wide barrier */
    static constexpr bool kMbar = T::mbar != 0;
    static constexpr int kLoadThreads = kMbar ? kThreads / FA_NUM_WARPGROUPS : kThreads;

    static_assert(kRowGroups * kKS * kDS == kWarps, "every warp has a role");
    static_assert(kRowGroups * kWarpRows == kBlockM, "warps tile BLOCK_M exactly");
    static_assert(kMT == 1 || kMT == 2, "16 or 32 query rows per warp");
    static_assert(kDS == 1 || kDS == 2, "pairs of warps share head_dim at most");
    static_assert(kDS == 1 || (kKS == 1 && kMT == 1), "head_dim split runs alone");
    static_assert(kStages >= 2 && kStages <= 4, "cp.async ring of 2 to 4 stages");
    static_assert(kThreads % kChunksPerRow == 0, "a load pass covers whole rows");
    /* the swizzle permutes chunks within 128-byte groups; a warp's columns start on one */
    static_assert(kWarpDim % 64 == 0, "a warp's head_dim slice spans whole 128-byte groups");
    static_assert(kBlockN % kKS == 0 && kPartN % kSubN == 0, "parts are whole sub-blocks");
    static_assert(kSubN % 16 == 0, "sub-blocks are whole k16 steps");
    /* the exchange buffer holds one sub-block and is reused only after a __syncthreads */
    static_assert(kDS == 1 || kSubs == 1, "split head_dim runs one sub-block per block");
    static_assert(kDS == 1 || !kQKAhead, "the S exchange runs on the plain path only");
    /* the exchange buffer is rewritten only after a block-wide barrier */
    static_assert(kDS == 1 || !kMbar, "split head_dim needs the __syncthreads pipeline");
    static_assert(kSmemBytes <= FA_SM80_SMEM_LIMIT, "fits 99 KB of shared memory");
    static_assert(kQOffset + kBlockM * kRowBytes <= kSmemBytes, "Q fits its region");
};

/* The kernel's argument block, built on the host by make_args from the public fa_params
   (which may grow, and carries host-only fields): what the kernel reads, in the form it reads
   it. Kernel arguments live in the constant bank, so a field used in the main loop costs no
   register. */
struct Args {
    const void *q, *k, *v;
    void *out;
    float *lse;         /* NULL: not written */
    const float *sinks; /* NULL, or one logit per q head */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int seqlen_q, seqlen_k, heads_q, head_dim;
    int heads_per_kv; /* heads_q / heads_kv: consecutive q heads share one kv head */
    /* The window of the uniform batch, normalised by fa_mask_make on the host (make_args) */
    int window_left, window_right;
    fa_score score;
};

/* The mask of one batch entry (mask.h). Every entry of a uniform batch has the same lengths,
   so make_args ran fa_mask_make once on the host and the normalised window arrives in the
   constant bank: normalising it here held two more registers across the main loop and
   spilled (a variable-length batch will call fa_mask_make per entry here). The full and
   causal instances were picked for a window of (-1, -1) or (-1, 0) (fa_params_mask_kind):
   spelled as constants, every compare against them folds, and these instances run the code
   they ran before windows existed. */
template <fa_mask_kind MASK>
__device__ __forceinline__ fa_mask make_mask(const Args &a, int len_q, int len_k)
{
    fa_mask m;
    m.len_q = len_q;
    m.len_k = len_k;
    m.left = MASK == FA_MASK_LOCAL ? a.window_left : -1;
    m.right = MASK == FA_MASK_LOCAL ? a.window_right : MASK == FA_MASK_CAUSAL ? 0 : -1;
    return m;
}

/* Whether a key is visible in a row's span; the lower bound exists only with a left window. */
template <fa_mask_kind MASK>
__device__ __forceinline__ bool key_visible(const fa_key_span &span, int key)
{
    return key <= span.hi && (MASK != FA_MASK_LOCAL || key >= span.lo);
}

/* The (batch, kv_head) slice of k or v, rebuilt at each use from one packed register that
   the compiler cannot see through: otherwise both 64-bit pointers are hoisted and held in
   four registers across the main loop, where Q, O and S fragments take nearly all of 168. */
__device__ __forceinline__ const uint16_t *kv_slice(const void *base, int64_t batch_stride,
                                                   int64_t head_stride, uint32_t batch_kv_head)
{
    asm volatile("" : "+r"(batch_kv_head));
    return static_cast<const uint16_t *>(base) +
           static_cast<int64_t>(batch_kv_head >> 16) * batch_stride +
           static_cast<int64_t>(batch_kv_head & 0xffffu) * head_stride;
}

/* threadIdx.x, read afresh: values derived from it after the main loop are then recomputed
   there instead of being held (or spilled) across the loop. */
__device__ __forceinline__ int reread_thread_index()
{
    int tid;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
    return tid;
}

/* blockIdx.x, read afresh (as reread_thread_index). */
__device__ __forceinline__ int reread_block_index_x()
{
    int bx;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(bx));
    return bx;
}

/* Byte offset, inside smem row `row`, of the row's logical 16-byte chunk `chunk`. The XOR
   spreads the 8 rows an ldmatrix phase reads (and the 8 chunks a cp.async phase writes) over
   all 32 banks. */
__device__ __forceinline__ uint32_t swizzle(int row, int chunk)
{
    return static_cast<uint32_t>((chunk ^ (row & 7)) << 4);
}

template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    uint32_t bits;
    if constexpr (BF16) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        bits = *reinterpret_cast<uint32_t *>(&v);
    } else {
        __half2 v = __floats2half2_rn(lo, hi);
        bits = *reinterpret_cast<uint32_t *>(&v);
    }
    return bits;
}

template <bool BF16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1)
{
    if constexpr (BF16)
        mma_m16n8k16_bf16(d, a, b0, b1);
    else
        mma_m16n8k16_f16(d, a, b0, b1);
}

/* Thread t's share (of THREADS copying threads) of copying rows [first_row, first_row + ROWS)
   of a (rows x head_dim) tensor slice at `base` into swizzled smem at `dst`: 16-byte chunk
   t % kChunksPerRow of tile rows t / kChunksPerRow + i * (THREADS / kChunksPerRow). Rows at or
   past row_end and chunks past head_dim (col_ok false) are zero-filled (src-size 0); their
   source address is clamped into row 0 of the slice, which exists whenever a tile is loaded,
   and is not read. */
template <class C, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const uint16_t *base,
                                                int64_t row_stride, int first_row, int row_end,
                                                bool col_ok, int t)
{
    constexpr int kRowsPerPass = THREADS / C::kChunksPerRow;
    constexpr int kPasses = (ROWS + kRowsPerPass - 1) / kRowsPerPass;
    static_assert(THREADS % C::kChunksPerRow == 0, "a load pass covers whole rows");
    const int chunk = t % C::kChunksPerRow;
    const int r_first = t / C::kChunksPerRow;
    const int col = col_ok ? chunk * 8 : 0;
    /* Passes step the source pointer. Where a pass spans a multiple of 8 rows (every K/V
       load) the loop is unrolled 4 times, not fully: a loader warpgroup's 128 threads issue up
       to 24 copies per block, and with all their addresses computed up front ptxas spills at
       head_dim 128. Not unrolled at all measured slower. */
    const uint16_t *src = base + static_cast<int64_t>(first_row + r_first) * row_stride + col;
    const int64_t pass_stride = static_cast<int64_t>(kRowsPerPass) * row_stride;
#pragma unroll(kRowsPerPass % 8 == 0 ? 4 : kPasses)
    for (int i = 0; i < kPasses; ++i) {
        const int r = r_first + i * kRowsPerPass;
        if (ROWS % kRowsPerPass == 0 || r < ROWS) {
            const bool ok = col_ok && first_row + r < row_end;
            cp_async_16(dst + r * C::kRowBytes + swizzle(r, chunk), ok ? src : base + col,
                        ok ? 16u : 0u);
        }
        src += pass_stride;
    }
}

/* K and V rows [key0, key0 + BLOCK_N) of this (batch, kv_head) into the stage at `dst`, by
   the kLoadThreads threads of the block's loaders (t = thread index among them). */
template <class C>
__device__ __forceinline__ void load_kv_block(uint32_t dst, const Args &p,
                                              uint32_t batch_kv_head, int key0, int seqlen_k,
                                              bool col_ok, int t)
{
    load_tile_async<C, C::kBlockN, C::kLoadThreads>(
        dst, kv_slice(p.k, p.k_batch_stride, p.k_head_stride, batch_kv_head), p.k_row_stride,
        key0, seqlen_k, col_ok, t);
    load_tile_async<C, C::kBlockN, C::kLoadThreads>(
        dst + C::kKVBytes, kv_slice(p.v, p.v_batch_stride, p.v_head_stride, batch_kv_head),
        p.v_row_stride, key0, seqlen_k, col_ok, t);
}

/* Query tiles in reverse launch order when masked: with a causal or right-bounded window the
   last rows see the most keys, and the longest tiles then start first. */
template <fa_mask_kind MASK>
__device__ __forceinline__ int m_block_of(int block_x, int grid_x)
{
    return MASK != FA_MASK_NONE ? grid_x - 1 - block_x : block_x;
}

/* A tile whose rows see no key (block_range.h's empty range): out = 0 and the LSE of an empty
   row, -inf or the sink (score.h). Rows [row0, row_end). */
template <class C>
__device__ __forceinline__ void store_empty_tile(const Args &p, int batch, int head, int row0,
                                                 int row_end, int seqlen_q)
{
    const int tid = reread_thread_index(); /* shares nothing with the main path's indices */
    float inv, lse;
    fa_row_finalize(-INFINITY, 0.f, fa_sink_log2(p.sinks, head), &inv, &lse);
    if (p.lse != nullptr && tid < C::kBlockM && row0 + tid < row_end)
        p.lse[(static_cast<int64_t>(batch) * p.heads_q + head) * seqlen_q + row0 + tid] = lse;
    const int chunk = tid % C::kChunksPerRow;
    if (chunk * 8 >= p.head_dim)
        return;
    uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                      static_cast<int64_t>(batch) * p.o_batch_stride +
                      static_cast<int64_t>(head) * p.o_head_stride + chunk * 8;
    for (int r = row0 + tid / C::kChunksPerRow; r < row_end; r += C::kRowsPerPass)
        *reinterpret_cast<uint4 *>(o_ptr + static_cast<int64_t>(r) * p.o_row_stride) =
            make_uint4(0u, 0u, 0u, 0u);
}

template <int HDP, bool BF16, fa_mask_kind MASK, bool SOFTCAP>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) fwd_sm80_kernel(const Args p)
{
    using C = Config<HDP, SOFTCAP>;
    constexpr int MT = C::kMT;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    /* warp = (part * kRowGroups + row_group) * kDS + d_half: with a key split the parts are
       whole warpgroups (part = tid / 128 for 3 parts), cheap to recompute */
    const int d_half = warp % C::kDS;
    const int row_group = (warp / C::kDS) % C::kRowGroups;
    const int part = warp / (C::kDS * C::kRowGroups); /* this warp's share of each key block */
    const int d_first = d_half * C::kWarpDim;      /* first head_dim column of this warp */

    const int m_block = m_block_of<MASK>(blockIdx.x, gridDim.x);
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int kv_head = head / p.heads_per_kv;
    /* grid.y and grid.z are at most 65535 (launch.c checks), so each fits 16 bits */
    const uint32_t batch_kv_head = (static_cast<uint32_t>(batch) << 16) | kv_head;
    /* Uniform batches: no cu_seqlens yet (launch.c refuses them), and a constant NULL keeps
       the lengths in the constant bank rather than in two registers across the main loop. */
    const fa_seqlen len = fa_seqlen_of(batch, p.seqlen_q, p.seqlen_k, nullptr, nullptr);
    const int seqlen_q = len.len_q;
    const int seqlen_k = len.len_k;
    const int head_dim = p.head_dim;
    const int row0 = m_block * C::kBlockM;
    const int row_end = min(row0 + C::kBlockM, seqlen_q);
    if (row_end <= row0)
        return;

    const uint16_t *q_ptr = static_cast<const uint16_t *>(p.q) +
                            static_cast<int64_t>(batch) * p.q_batch_stride +
                            static_cast<int64_t>(head) * p.q_head_stride;
    /* Key blocks n_min <= n < n_max hold every key a row of this tile sees (block_range.h);
       they are visited from n_max - 1 down, n_vis of them. The blocks that need the element
       mask sit at both ends: the causal / right-window edge and the ragged end of seqlen_k
       come first, the left-window edge last; every block in between runs unmasked. */
    const fa_mask mask = make_mask<MASK>(p, seqlen_q, seqlen_k);
    /* Empty tiles leave here rather than run a zero-trip main loop, and seqlen_k == 0 is
       tested before the range: the range function's own empty tests are then dominated by
       these, its results carry no "or empty" alternative, and without a window the compiler
       recomputes them from the constant bank in the main loop instead of holding registers
       (ptxas spilled at head_dim 128 otherwise). */
    if (seqlen_k <= 0) {
        store_empty_tile<C>(p, batch, head, row0, row_end, seqlen_q);
        return;
    }
    const fa_block_range range = fa_block_range_rows(&mask, row0, row_end, C::kBlockN);
    if (range.n_max <= range.n_min) {
        store_empty_tile<C>(p, batch, head, row0, row_end, seqlen_q);
        return;
    }
    const int n_max = range.n_max;
    const int n_vis = range.n_max - range.n_min;
    /* Without a left window fa_block_needs_mask(&range, kb) is "the first n_top visited
       blocks": a count the compiler can derive from the constant bank in the main loop. */
    const int n_top = range.n_max - range.n_full_max;

    /* Softmax in base 2 on the hooked score t (score.h): exp(logit - max) =
       exp2(t * scale_log2 - m * scale_log2); scale_log2 is never 0, so masked -inf scores
       stay -inf, never NaN. */
    const float scale_log2 = p.score.scale_log2;

    /* a thread whose 16-byte chunk lies past head_dim copies zeros (see load_tile_async) */
    const bool copy_col_ok = (tid % C::kChunksPerRow) * 8 < head_dim;

    /* mbarriers of the kMbar pipeline: full[s] completes when the loaders' copies into stage
       s have landed, empty[s] when all 384 threads are done reading it */
    __shared__ __align__(8) uint64_t stage_bars[2 * C::kStages];
    const uint32_t full_bar = smem_addr(stage_bars);
    const uint32_t empty_bar = full_bar + C::kStages * 8;
    const int warpgroup = warp / FA_WARPS_PER_WARPGROUP;
    const int wg_tid = tid % C::kLoadThreads;

    /* ---- prologue: Q and key blocks 0 .. STAGES-2 ---- */
    if constexpr (C::kMbar) {
        /* One thread, constant offsets: ptxas then counts every barrier object
           (EIATTR_NUM_MBARRIERS), which compute-sanitizer sizes its barrier tracking by; with
           offsets from tid it counted 2 of the 4 and racecheck/synccheck lost track of them. */
        if (tid == 0) {
#pragma unroll
            for (int s = 0; s < C::kStages; ++s) {
                mbar_init(full_bar + s * 8, C::kLoadThreads);
                mbar_init(empty_bar + s * 8, kThreads);
            }
        }
        __syncthreads(); /* the barriers are initialized before anyone arrives */
    }
    load_tile_async<C, C::kBlockM, kThreads>(smem_base + C::kQOffset, q_ptr, p.q_row_stride,
                                             row0, seqlen_q, copy_col_ok, tid);
    cp_async_commit_group();
#pragma unroll
    for (int s = 0; s < C::kStages - 1; ++s) {
        const uint32_t dst = smem_base + s * C::kStageBytes;
        const int key0 = (n_max - 1 - s) * C::kBlockN;
        if constexpr (C::kMbar) {
            if (s < n_vis && warpgroup == s % FA_NUM_WARPGROUPS) {
                load_kv_block<C>(dst, p, batch_kv_head, key0, seqlen_k, copy_col_ok, wg_tid);
                cp_async_mbar_arrive(full_bar + s * 8);
            }
        } else {
            /* groups: Q with block 0, then one per block */
            if (s < n_vis)
                load_kv_block<C>(dst, p, batch_kv_head, key0, seqlen_k, copy_col_ok, tid);
            cp_async_commit_group();
        }
    }
    if constexpr (C::kMbar)
        cp_async_wait_group<0>(); /* the Q group; K/V copies are tracked by the mbarriers */
    else
        cp_async_wait_group<C::kStages - 2>();
    __syncthreads();

    uint32_t q_frag[MT][C::kQSteps][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        /* ldmatrix x4 matrices: rows 0-7 / 8-15 of the m16 tile at columns +0, then +8 */
        const int r = row_group * C::kWarpRows + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const uint32_t row_addr = smem_base + C::kQOffset + r * C::kRowBytes;
#pragma unroll
        for (int ks = 0; ks < C::kQSteps; ++ks) {
            const int chunk = d_first / 8 + 2 * ks + (lane >> 4);
            ldmatrix_x4(q_frag[mt][ks], row_addr + swizzle(r, chunk));
        }
    }

    if constexpr (C::kMbar)
        __syncthreads(); /* Q is in registers: its region (the last stage) may be refilled */

    /* Per-lane ldmatrix offsets inside a stage (rows are keys). Lanes 8i..8i+7 give the row
       addresses of matrix i; each x4 load fills four consecutive registers, and an mma takes
       its two B registers consecutive, so the matrix order differs:
       K (plain), k_lane_off: i = 0..3 at (rows 0-7, +0), (rows 0-7, +8), (rows 8-15, +0),
         (rows 8-15, +8) columns: r0, r1 = b0, b1 of key tile 2n; r2, r3 of key tile 2n+1.
       V (.trans), v_lane_off: i = 0..3 at (rows 0-7, +0), (rows 8-15, +0), (rows 0-7, +8),
         (rows 8-15, +8): r0, r1 = b0, b1 of head_dim tile 2n; r2, r3 of tile 2n+1.
       Chunk 8*h + c lands at 8*h + (c ^ (lane & 7)), and for the two chunks 2j, 2j+1 of k16
       step j within a 128-byte group that is (2j ^ c0) with c0 = col_bit ^ (lane & 7): the
       offset of step j is lane_off ^ (j << 5), one register for all steps; the group and tile
       offsets are compile-time constants. */
    uint32_t k_lane_off, v_lane_off;
    {
        const int part_row = part * C::kPartN + (lane & 7);
        const int k_bit = (lane >> 3) & 1, v_bit = lane >> 4;
        k_lane_off = (part_row + (lane >> 4) * 8) * C::kRowBytes + d_first * 2 +
                     ((k_bit ^ (lane & 7)) << 4);
        v_lane_off = (part_row + k_bit * 8) * C::kRowBytes + d_first * 2 +
                     ((v_bit ^ (lane & 7)) << 4);
    }

    float o_acc[MT][C::kOTiles][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int t = 0; t < C::kOTiles; ++t)
            o_acc[mt][t][0] = o_acc[mt][t][1] = o_acc[mt][t][2] = o_acc[mt][t][3] = 0.f;
    /* per m16 tile: running max (raw score units) and this lane's partial row sums, for rows
       g ([0]) and g+8 ([1]) */
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m_run[mt][0] = m_run[mt][1] = -INFINITY;
        l_run[mt][0] = l_run[mt][1] = 0.f;
    }

#pragma unroll 1
    for (int it = 0; it < n_vis; ++it) {
        const int kb = n_max - 1 - it;
        if constexpr (C::kMbar) {
            /* The loaders of block it + STAGES - 1 refill the stage read in iteration it - 1
               once every warp has released it; then block it is waited for. */
            const int load_it = it + C::kStages - 1;
            const int load_tid = reread_thread_index();
            if (load_it < n_vis && load_tid / C::kLoadThreads == load_it % FA_NUM_WARPGROUPS) {
                const int ls = load_it % C::kStages;
                if (it >= 1)
                    mbar_wait(empty_bar + ls * 8, ((it - 1) / C::kStages) & 1);
                const int t = load_tid % C::kLoadThreads;
                load_kv_block<C>(smem_base + ls * C::kStageBytes, p, batch_kv_head,
                                 (kb - (C::kStages - 1)) * C::kBlockN, seqlen_k,
                                 (t % C::kChunksPerRow) * 8 < head_dim, t);
                cp_async_mbar_arrive(full_bar + ls * 8);
            }
            mbar_wait(full_bar + (it % C::kStages) * 8, (it / C::kStages) & 1);
        } else {
            /* Block kb has landed for this thread; the barrier makes it visible to all and
               proves every warp is done with the stage refilled next (read in iteration
               it - 1, or Q when it == 0). */
            cp_async_wait_group<C::kStages - 2>();
            __syncthreads();
            if (it + C::kStages - 1 < n_vis)
                load_kv_block<C>(smem_base + ((it + C::kStages - 1) % C::kStages) *
                                                 C::kStageBytes,
                                 p, batch_kv_head, (kb - (C::kStages - 1)) * C::kBlockN,
                                 seqlen_k, copy_col_ok, tid);
            cp_async_commit_group();
        }
        const uint32_t stage = smem_base + (it % C::kStages) * C::kStageBytes;
        const bool masked = MASK == FA_MASK_LOCAL ? fa_block_needs_mask(&range, kb) : it < n_top;
        /* a warp whose rows all lie past seqlen_q (the last tile) has nothing to compute */
        const bool warp_active = row0 + row_group * C::kWarpRows < seqlen_q;

        /* The four steps of a sub-block, in the order the two loops below run them. */
        auto qk = [&](float (&s)[MT][C::kSTiles][4], int sub) {
            const uint32_t k_rows = stage + sub * C::kSubN * C::kRowBytes;
            /* S = Q K^T over this warp's head_dim columns, kSubN keys */
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t)
                    s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.f;
            /* k16 steps outermost: every S tile is an independent accumulator chain, so
               kSTiles * MT mmas are in flight between dependent ones */
#pragma unroll
            for (int ks = 0; ks < C::kQSteps; ++ks) {
#pragma unroll
                for (int n = 0; n < C::kSTiles / 2; ++n) {
                    uint32_t b[4];
                    ldmatrix_x4(b, k_rows + (k_lane_off ^ ((ks & 3) << 5)) + (ks >> 2) * 128 +
                                       n * 16 * C::kRowBytes);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_m16n8k16<BF16>(s[mt][2 * n], q_frag[mt][ks], b[0], b[1]);
                        mma_m16n8k16<BF16>(s[mt][2 * n + 1], q_frag[mt][ks], b[2], b[3]);
                    }
                }
            }
        };
        /* A pair with nothing to compute in a sub-block still meets at its exchange barrier,
           so every warp passes the same barriers in the same order. Skipping it is harmless on
           the hardware (the pair skips together), but racecheck then pairs accesses across a
           later __syncthreads (it reported the epilogue's O staging racing with its read). */
        auto skip_exchange = [&]() {
            if constexpr (C::kDS == 2)
                bar_sync(1 + row_group, 2 * FA_WARP_SIZE);
        };
        auto exchange = [&](float (&s)[MT][C::kSTiles][4]) {
            if constexpr (C::kDS == 2) {
                /* Each warp of the pair holds S over half of head_dim, in the same fragment
                   layout; swap halves through smem. a + b == b + a exactly, so both warps get
                   the same S and make identical softmax decisions. The next write to this
                   buffer follows the next __syncthreads, by when the partner has read it. */
                float4 *xchg = reinterpret_cast<float4 *>(smem + C::kXchgOffset);
                float4 *mine = xchg + warp * (C::kSTiles * 32);
                const float4 *theirs = xchg + (warp ^ 1) * (C::kSTiles * 32);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t)
                    mine[t * 32 + lane] =
                        make_float4(s[0][t][0], s[0][t][1], s[0][t][2], s[0][t][3]);
                bar_sync(1 + row_group, 2 * FA_WARP_SIZE);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    const float4 other = theirs[t * 32 + lane];
                    s[0][t][0] += other.x;
                    s[0][t][1] += other.y;
                    s[0][t][2] += other.z;
                    s[0][t][3] += other.w;
                }
            }
        };
        /* The score hook (score.h), before the mask: t = tanh(s * softcap_pre) with a
           softcap, t = s without. */
        auto score_hook = [&](float (&s)[MT][C::kSTiles][4]) {
            if constexpr (SOFTCAP) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int t = 0; t < C::kSTiles; ++t)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            s[mt][t][e] = tanh_approx_f32(s[mt][t][e] * p.score.softcap_pre);
            }
        };
        auto apply_mask = [&](float (&s)[MT][C::kSTiles][4], int key_first) {
            /* c0, c1 are keys 2t, 2t+1 of row g; c2, c3 the same keys of row g+8 (mask.h's
               rule; rows past seqlen_q get some span and are never stored). Spans are
               computed here rather than kept across the loop: registers are the scarce
               resource. */
            const int key_base = key_first + 2 * (lane & 3);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int row_lo =
                    row0 + row_group * C::kWarpRows + mt * 16 + (lane >> 2);
                const fa_key_span span_lo = fa_mask_row(&mask, row_lo);
                const fa_key_span span_hi = fa_mask_row(&mask, row_lo + 8);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    const int key = key_base + t * 8;
                    if (!key_visible<MASK>(span_lo, key)) s[mt][t][0] = -INFINITY;
                    if (!key_visible<MASK>(span_lo, key + 1)) s[mt][t][1] = -INFINITY;
                    if (!key_visible<MASK>(span_hi, key)) s[mt][t][2] = -INFINITY;
                    if (!key_visible<MASK>(span_hi, key + 1)) s[mt][t][3] = -INFINITY;
                }
            }
        };
        auto softmax_pv = [&](float (&s)[MT][C::kSTiles][4], int sub) {
            const uint32_t v_rows = stage + C::kKVBytes + sub * C::kSubN * C::kRowBytes;
            /* Online softmax: new row max over the quad of lanes sharing a row */
            float mx[MT][2], base[MT][2];
            bool moved = false;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mx[mt][0] = m_run[mt][0];
                mx[mt][1] = m_run[mt][1];
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    mx[mt][0] = fmaxf(mx[mt][0], fmaxf(s[mt][t][0], s[mt][t][1]));
                    mx[mt][1] = fmaxf(mx[mt][1], fmaxf(s[mt][t][2], s[mt][t][3]));
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    mx[mt][h] = fmaxf(mx[mt][h], __shfl_xor_sync(0xffffffffu, mx[mt][h], 1));
                    mx[mt][h] = fmaxf(mx[mt][h], __shfl_xor_sync(0xffffffffu, mx[mt][h], 2));
                    /* A row with no visible key so far keeps max -inf: subtract 0 instead, so
                       -inf - -inf never happens; its p and correction both come out 0. */
                    base[mt][h] = (mx[mt][h] == -INFINITY) ? 0.f : mx[mt][h] * scale_log2;
                    moved |= mx[mt][h] != m_run[mt][h];
                }
            }
            /* Once the maxima settle most sub-blocks move none of the warp's rows; the
               rescale (a multiply by exactly 1 then) is skipped warp-uniformly. */
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const float corr_lo = exp2f(m_run[mt][0] * scale_log2 - base[mt][0]);
                    const float corr_hi = exp2f(m_run[mt][1] * scale_log2 - base[mt][1]);
                    l_run[mt][0] *= corr_lo;
                    l_run[mt][1] *= corr_hi;
#pragma unroll
                    for (int t = 0; t < C::kOTiles; ++t) {
                        o_acc[mt][t][0] *= corr_lo;
                        o_acc[mt][t][1] *= corr_lo;
                        o_acc[mt][t][2] *= corr_hi;
                        o_acc[mt][t][3] *= corr_hi;
                    }
                }
            }

            /* p = exp2(s * scale_log2 - base) as A fragments: key tiles 2k, 2k+1 of the C
               layout are the k16 A layout. The cross-lane row sum waits for the epilogue:
               rescaling is linear. */
            uint32_t p_frag[MT][C::kPSteps][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                m_run[mt][0] = mx[mt][0];
                m_run[mt][1] = mx[mt][1];
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    s[mt][t][0] = exp2f(fmaf(s[mt][t][0], scale_log2, -base[mt][0]));
                    s[mt][t][1] = exp2f(fmaf(s[mt][t][1], scale_log2, -base[mt][0]));
                    s[mt][t][2] = exp2f(fmaf(s[mt][t][2], scale_log2, -base[mt][1]));
                    s[mt][t][3] = exp2f(fmaf(s[mt][t][3], scale_log2, -base[mt][1]));
                    l_run[mt][0] += s[mt][t][0] + s[mt][t][1];
                    l_run[mt][1] += s[mt][t][2] + s[mt][t][3];
                }
#pragma unroll
                for (int k = 0; k < C::kPSteps; ++k) {
                    p_frag[mt][k][0] = pack2<BF16>(s[mt][2 * k][0], s[mt][2 * k][1]);
                    p_frag[mt][k][1] = pack2<BF16>(s[mt][2 * k][2], s[mt][2 * k][3]);
                    p_frag[mt][k][2] = pack2<BF16>(s[mt][2 * k + 1][0], s[mt][2 * k + 1][1]);
                    p_frag[mt][k][3] = pack2<BF16>(s[mt][2 * k + 1][2], s[mt][2 * k + 1][3]);
                }
            }

            /* O += P V over this warp's head_dim columns. With two m16 tiles, head_dim tiles
               outermost: every P fragment is then needed from the first mma on, which keeps
               the compiler from overlapping the exp2 of later keys with the mmas, an overlap
               that costs more registers than 32 rows per warp leave. */
#pragma unroll
            for (int i = 0; i < C::kPSteps * (C::kOTiles / 2); ++i) {
                const int k = MT == 1 ? i / (C::kOTiles / 2) : i % C::kPSteps;
                const int n = MT == 1 ? i % (C::kOTiles / 2) : i / C::kPSteps;
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_rows + (v_lane_off ^ ((n & 3) << 5)) + (n >> 2) * 128 +
                                         k * 16 * C::kRowBytes);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_m16n8k16<BF16>(o_acc[mt][2 * n], p_frag[mt][k], b[0], b[1]);
                    mma_m16n8k16<BF16>(o_acc[mt][2 * n + 1], p_frag[mt][k], b[2], b[3]);
                }
            }
        };

        if (warp_active) {
            if (!C::kQKAhead || masked) {
#pragma unroll
                for (int sub = 0; sub < C::kSubs; ++sub) {
                    const int key_first = kb * C::kBlockN + part * C::kPartN + sub * C::kSubN;
                    if (masked) {
                        /* skip a sub-block no row of this warp sees (warp-uniform): the rows'
                           spans slide right with the row, so their union runs from the first
                           row's lo to the last row's hi */
                        const int w_first = row0 + row_group * C::kWarpRows;
                        const int w_last = min(w_first + C::kWarpRows, seqlen_q) - 1;
                        const fa_key_span first = fa_mask_row(&mask, w_first);
                        const fa_key_span last = fa_mask_row(&mask, w_last);
                        if (key_first > last.hi ||
                            (MASK == FA_MASK_LOCAL && key_first + C::kSubN <= first.lo)) {
                            skip_exchange();
                            continue;
                        }
                    }
                    float s[MT][C::kSTiles][4];
                    qk(s, sub);
                    exchange(s);
                    score_hook(s);
                    if (masked)
                        apply_mask(s, key_first);
                    softmax_pv(s, sub);
                }
            } else {
                /* Unmasked blocks: S of the next sub-block is computed before the softmax of this
                   one, so its mmas run on the tensor cores while this warp works through the
                   exp2s and shuffles. */
                float s_next[MT][C::kSTiles][4];
                qk(s_next, 0);
#pragma unroll
                for (int sub = 0; sub < C::kSubs; ++sub) {
                    float s[MT][C::kSTiles][4];
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int t = 0; t < C::kSTiles; ++t)
#pragma unroll
                            for (int e = 0; e < 4; ++e)
                                s[mt][t][e] = s_next[mt][t][e];
                    if (sub + 1 < C::kSubs)
                        qk(s_next, sub + 1);
                    score_hook(s);
                    softmax_pv(s, sub);
                }
            }
        } else {
#pragma unroll
            for (int sub = 0; sub < C::kSubs; ++sub)
                skip_exchange();
        }
        if constexpr (C::kMbar)
            /* Every thread releases its own reads of the stage (a single lane after __syncwarp
               would order them too, but per-thread arrivals are what racecheck can follow). */
            mbar_arrive(empty_bar + (it % C::kStages) * 8);
    }

    /* ---- epilogue: finalize the rows (sinks), LSE, stage O, 16-byte stores ---- */
    /* Indices re-read rather than held across the main loop (see reread_thread_index). */
    const int e_tid = reread_thread_index();
    const int e_lane = e_tid & 31;
    const int e_d_half = (e_tid >> 5) % C::kDS;
    const int e_row_group = ((e_tid >> 5) / C::kDS) % C::kRowGroups;
    const int e_part = (e_tid >> 5) / (C::kDS * C::kRowGroups);
    const int e_d_first = e_d_half * C::kWarpDim;
    const int e_row0 =
        m_block_of<MASK>(reread_block_index_x(), static_cast<int>(gridDim.x)) * C::kBlockM;
    const int e_head = blockIdx.y;
    const int e_batch = blockIdx.z;
    static_assert(C::kKS == 1, "no key split: one part holds each row's whole O");
    /* scale[mt][h]: what this warp's O rows are multiplied by; lse[mt][h] the natural-log LSE;
       both from score.h's finalisation, with the sink when one is given */
    const float sink_log2 = fa_sink_log2(p.sinks, e_head);
    float scale[MT][2], lse[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            l_run[mt][h] += __shfl_xor_sync(0xffffffffu, l_run[mt][h], 1);
            l_run[mt][h] += __shfl_xor_sync(0xffffffffu, l_run[mt][h], 2);
            fa_row_finalize(m_run[mt][h] * scale_log2, l_run[mt][h], sink_log2, &scale[mt][h],
                            &lse[mt][h]);
        }

    __syncthreads(); /* every warp is done reading the K/V stages that the epilogue reuses */
    if (e_part == 0) {
        const int r_lo = e_row_group * C::kWarpRows + (e_lane >> 2);
        if (p.lse != nullptr && e_d_half == 0 && (e_lane & 3) == 0) {
            float *lse_row =
                p.lse + (static_cast<int64_t>(e_batch) * p.heads_q + e_head) * seqlen_q + e_row0;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = r_lo + mt * 16 + h * 8;
                    if (e_row0 + r < seqlen_q)
                        lse_row[r] = lse[mt][h];
                }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int r = r_lo + mt * 16; /* r and r + 8 share a swizzle */
            unsigned char *row_lo_ptr = smem + r * C::kRowBytes + (e_lane & 3) * 4;
            unsigned char *row_hi_ptr = row_lo_ptr + 8 * C::kRowBytes;
#pragma unroll
            for (int t = 0; t < C::kOTiles; ++t) {
                const uint32_t off = swizzle(r, e_d_first / 8 + t);
                *reinterpret_cast<uint32_t *>(row_lo_ptr + off) = pack2<BF16>(
                    o_acc[mt][t][0] * scale[mt][0], o_acc[mt][t][1] * scale[mt][0]);
                *reinterpret_cast<uint32_t *>(row_hi_ptr + off) = pack2<BF16>(
                    o_acc[mt][t][2] * scale[mt][1], o_acc[mt][t][3] * scale[mt][1]);
            }
        }
    }
    __syncthreads();
    {
        uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                          static_cast<int64_t>(e_batch) * p.o_batch_stride +
                          static_cast<int64_t>(e_head) * p.o_head_stride;
        const int rows_valid = min(C::kBlockM, seqlen_q - e_row0);
        const int store_tid = reread_thread_index();
        const int chunk = store_tid % C::kChunksPerRow;
        const int r_first = store_tid / C::kChunksPerRow;
        if (chunk * 8 < head_dim) {
#pragma unroll
            for (int i = 0; i < (C::kBlockM + C::kRowsPerPass - 1) / C::kRowsPerPass; ++i) {
                const int r = r_first + i * C::kRowsPerPass;
                if (r < rows_valid) {
                    const uint4 val = *reinterpret_cast<const uint4 *>(
                        smem + r * C::kRowBytes + swizzle(r, chunk));
                    uint16_t *dst =
                        o_ptr + static_cast<int64_t>(e_row0 + r) * p.o_row_stride + chunk * 8;
                    *reinterpret_cast<uint4 *>(dst) = val;
                }
            }
        }
    }
}

typedef void (*fwd_kernel_t)(const Args);

/* The instance table: head_dim_padded x dtype x mask kind x softcap. Sinks are a runtime
   pointer, read only by the epilogue. */
template <int HDP, bool BF16, fa_mask_kind MASK>
fwd_kernel_t pick_softcap(bool softcap)
{
    return softcap ? fwd_sm80_kernel<HDP, BF16, MASK, true> : fwd_sm80_kernel<HDP, BF16, MASK, false>;
}

template <int HDP, bool BF16>
fwd_kernel_t pick_mask(fa_mask_kind mask, bool softcap)
{
    switch (mask) {
    case FA_MASK_NONE: return pick_softcap<HDP, BF16, FA_MASK_NONE>(softcap);
    case FA_MASK_CAUSAL: return pick_softcap<HDP, BF16, FA_MASK_CAUSAL>(softcap);
    case FA_MASK_LOCAL: return pick_softcap<HDP, BF16, FA_MASK_LOCAL>(softcap);
    }
    return nullptr;
}

template <int HDP>
fwd_kernel_t pick_dtype(fa_dtype dtype, fa_mask_kind mask, bool softcap)
{
    switch (dtype) {
    case FA_FLOAT16: return pick_mask<HDP, false>(mask, softcap);
    case FA_BFLOAT16: return pick_mask<HDP, true>(mask, softcap);
    default: return nullptr;
    }
}

fwd_kernel_t select_kernel(const fa_params *p, int head_dim_padded)
{
    const fa_mask_kind mask = fa_params_mask_kind(p);
    const bool softcap = p->softcap > 0.0f;
    switch (head_dim_padded) {
    case 64: return pick_dtype<64>(p->dtype, mask, softcap);
    case 128: return pick_dtype<128>(p->dtype, mask, softcap);
    case 256: return pick_dtype<256>(p->dtype, mask, softcap);
    default: return nullptr;
    }
}

/* The kernel's arguments from the (resolved) public params. */
Args make_args(const fa_params *p)
{
    Args a;
    a.q = p->q;
    a.k = p->k;
    a.v = p->v;
    a.out = p->out;
    a.lse = p->lse;
    a.sinks = p->sinks;
    a.q_batch_stride = p->q_batch_stride;
    a.q_row_stride = p->q_row_stride;
    a.q_head_stride = p->q_head_stride;
    a.k_batch_stride = p->k_batch_stride;
    a.k_row_stride = p->k_row_stride;
    a.k_head_stride = p->k_head_stride;
    a.v_batch_stride = p->v_batch_stride;
    a.v_row_stride = p->v_row_stride;
    a.v_head_stride = p->v_head_stride;
    a.o_batch_stride = p->o_batch_stride;
    a.o_row_stride = p->o_row_stride;
    a.o_head_stride = p->o_head_stride;
    a.seqlen_q = p->seqlen_q;
    a.seqlen_k = p->seqlen_k;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.heads_per_kv = p->heads_kv > 0 ? p->heads_q / p->heads_kv : 1;
    const fa_mask mask =
        fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    a.window_left = mask.left;
    a.window_right = mask.right;
    a.score = fa_score_make(p->softmax_scale, p->softcap);
    return a;
}

} /* namespace fa_sm80 */

extern "C" {

const void *fa_sm80_kernel_fn(const fa_params *p, const fa_tile *t)
{
    if (p == NULL || t == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_sm80::select_kernel(p, t->head_dim_padded));
}

cudaError_t fa_sm80_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream)
{
    const fa_sm80::fwd_kernel_t kernel = fa_sm80::select_kernel(p, cfg->head_dim_padded);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(fa_sm80::make_args(p));
    return cudaGetLastError();
}

int fa_sm80_archs(int *archs, int max)
{
    static const int compiled[] = {__CUDA_ARCH_LIST__};
    int n = 0;
    for (unsigned i = 0; i < sizeof(compiled) / sizeof(compiled[0]); ++i) {
        const int cc = compiled[i] / 10;
        int seen = 0;
        for (int j = 0; j < n; ++j)
            seen |= archs[j] == cc;
        if (!seen && n < max && archs != NULL)
            archs[n++] = cc;
    }
    return n;
}

} /* extern "C" */
