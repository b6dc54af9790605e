/*
 * fwd_sm80.cu -- FlashAttention forward for Ampere and newer (sm_80, sm_86, sm_89; also runs
 * on sm_90): mma.sync m16n8k16 tensor cores, ldmatrix, a 2-stage cp.async K/V pipeline,
 * online softmax in base 2, 384 threads = 12 warps per CTA.
 *
 *   q, out (batch, seqlen_q, heads_q, head_dim), k, v (batch, seqlen_k, heads_kv, head_dim),
 *   any element strides with unit head_dim stride; fp16 or bf16 in, fp32 accumulation;
 *   optional lse (batch, heads_q, seqlen_q) fp32, natural log. Causal is bottom-right aligned.
 *   grid = (ceil(seqlen_q / BLOCK_M), heads_q, batch), block = 384, dynamic smem from
 *   sm80_tiles.h. Instantiated for head_dim_padded 64, 128, 256 x {fp16, bf16} x {causal, not};
 *   a head_dim below the padded size is zero-filled on load and only its columns are stored.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     -gencode arch=compute_80,code=compute_80 -I csrc csrc/kernels/fwd_sm80.cu -o fwd_sm80.o
 *
 * One CTA computes BLOCK_M query rows of one (batch, head). Each warp owns 16 rows (and, for
 * head_dim 256, one half of the head_dim columns; see sm80_tiles.h). Q goes to registers once
 * (A fragments); K/V blocks of BLOCK_N keys stream through 2 smem stages, one __syncthreads per
 * block; within a block, S = Q K^T, the online softmax and O += P V run per SUB_N keys, with P
 * staying in registers as the A operand. Key blocks are walked from the last visible one down
 * to block 0, so the blocks that need a mask (the causal diagonal and the ragged end of
 * seqlen_k) all come first and every later block runs unmasked.
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

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
constexpr int kRowsPerWarp = FA_SM80_ROWS_PER_WARP;
static_assert(kWarps * FA_WARP_SIZE == kThreads, "12 warps of 32 threads");
static_assert(kThreads == 384 && kWarps == 12, "the sm80 layout is written for 384 threads");

template <int HDP> struct TileOf;
template <> struct TileOf<64> {
    static constexpr int block_n = FA_SM80_HD64_BLOCK_N, sub_n = FA_SM80_HD64_SUB_N,
                         d_split = FA_SM80_HD64_D_SPLIT;
};
template <> struct TileOf<128> {
    static constexpr int block_n = FA_SM80_HD128_BLOCK_N, sub_n = FA_SM80_HD128_SUB_N,
                         d_split = FA_SM80_HD128_D_SPLIT;
};
template <> struct TileOf<256> {
    static constexpr int block_n = FA_SM80_HD256_BLOCK_N, sub_n = FA_SM80_HD256_SUB_N,
                         d_split = FA_SM80_HD256_D_SPLIT;
};

template <int HDP>
struct Config {
    static constexpr int kHeadDim = HDP;
    static constexpr int kBlockN = TileOf<HDP>::block_n;
    static constexpr int kSubN = TileOf<HDP>::sub_n;
    static constexpr int kSubs = kBlockN / kSubN;
    static constexpr int kDSplit = TileOf<HDP>::d_split;
    static constexpr int kBlockM = FA_SM80_BLOCK_M(kDSplit);
    static constexpr int kRowGroups = kWarps / kDSplit;
    /* head_dim columns a warp reduces over in Q K^T and owns in O */
    static constexpr int kWarpDim = HDP / kDSplit;
    static constexpr int kRowBytes = FA_SM80_ROW_BYTES(HDP);
    static constexpr int kKVBytes = FA_SM80_KV_BYTES(HDP, kBlockN);
    static constexpr int kStageBytes = FA_SM80_STAGE_BYTES(HDP, kBlockN);
    static constexpr int kQOffset = FA_SM80_Q_OFFSET(HDP, kBlockN);
    static constexpr int kXchgOffset = FA_SM80_XCHG_OFFSET(HDP, kBlockN);
    static constexpr int kSmemBytes = FA_SM80_SMEM_BYTES(HDP, kBlockN, kDSplit);
    /* 16-byte chunks per smem row; a pass of 384 threads covers kRowsPerPass whole rows */
    static constexpr int kChunksPerRow = HDP / 8;
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    static constexpr int kSTiles = kSubN / 8;     /* n8 tiles of S per warp and sub-block */
    static constexpr int kOTiles = kWarpDim / 8;  /* n8 tiles of O per warp */
    static constexpr int kQSteps = kWarpDim / 16; /* k16 steps of Q K^T */
    static constexpr int kPSteps = kSubN / 16;    /* k16 steps of P V per sub-block */

    static_assert(kRowGroups * kRowsPerWarp == kBlockM, "warps tile BLOCK_M exactly");
    static_assert(kRowGroups * kDSplit == kWarps, "every warp has a role");
    static_assert(kDSplit == 1 || kDSplit == 2, "pairs of warps share a row group at most");
    static_assert(kThreads % kChunksPerRow == 0, "a load pass covers whole rows");
    /* the swizzle permutes chunks within 128-byte groups; a warp's columns start on one */
    static_assert(kWarpDim % 64 == 0, "a warp's head_dim slice spans whole 128-byte groups");
    static_assert(kSubN % 16 == 0 && kBlockN % kSubN == 0, "sub-blocks are whole k16 steps");
    /* the exchange buffer holds one sub-block and is reused only after a __syncthreads */
    static_assert(kDSplit == 1 || kSubs == 1, "split head_dim runs one sub-block per block");
    static_assert(kSmemBytes <= FA_SM80_SMEM_LIMIT, "fits 99 KB of shared memory");
    static_assert(kQOffset + kBlockM * kRowBytes <= kSmemBytes, "Q fits its region");
};

/* Sequence lengths of one batch entry; the only place that will change for varlen batches. */
__device__ __forceinline__ int batch_seqlen_q(const fa_params &p, int batch)
{
    (void)batch;
    return p.seqlen_q;
}
__device__ __forceinline__ int batch_seqlen_k(const fa_params &p, int batch)
{
    (void)batch;
    return p.seqlen_k;
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

/* This thread's share of copying rows [first_row, first_row + ROWS) of a (rows x head_dim)
   tensor slice at `base` into swizzled smem at `dst`: 16-byte chunk tid % kChunksPerRow of
   tile rows tid / kChunksPerRow + i * kRowsPerPass. Rows at or past row_end and chunks past
   head_dim (col_ok false) are zero-filled (src-size 0); their source address is clamped into
   row 0 of the slice, which exists whenever a tile is loaded, and is not read. */
template <class C, int ROWS>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const uint16_t *base,
                                                int64_t row_stride, int first_row, int row_end,
                                                bool col_ok, int tid)
{
    const int chunk = tid % C::kChunksPerRow;
    const int r_first = tid / C::kChunksPerRow;
    const int col = col_ok ? chunk * 8 : 0;
#pragma unroll
    for (int i = 0; i < (ROWS + C::kRowsPerPass - 1) / C::kRowsPerPass; ++i) {
        const int r = r_first + i * C::kRowsPerPass;
        if (ROWS % C::kRowsPerPass == 0 || r < ROWS) {
            const int row = first_row + r;
            const bool ok = col_ok && row < row_end;
            const uint16_t *src = base + static_cast<int64_t>(ok ? row : 0) * row_stride + col;
            cp_async_16(dst + r * C::kRowBytes + swizzle(r, chunk), src, ok ? 16u : 0u);
        }
    }
}

template <int HDP, bool BF16, bool CAUSAL>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) fwd_sm80_kernel(const fa_params p)
{
    using C = Config<HDP>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int row_group = warp / C::kDSplit;
    const int d_half = warp % C::kDSplit;
    const int d_first = d_half * C::kWarpDim; /* first head_dim column of this warp */

    const int m_block = CAUSAL ? static_cast<int>(gridDim.x - 1 - blockIdx.x)
                               : static_cast<int>(blockIdx.x);
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int kv_head = head / (p.heads_q / p.heads_kv);
    /* grid.y and grid.z are at most 65535 (launch.c checks), so each fits 16 bits */
    const uint32_t batch_kv_head = (static_cast<uint32_t>(batch) << 16) | kv_head;
    const int seqlen_q = batch_seqlen_q(p, batch);
    const int seqlen_k = batch_seqlen_k(p, batch);
    const int head_dim = p.head_dim;
    const int row0 = m_block * C::kBlockM;
    if (row0 >= seqlen_q)
        return;

    const uint16_t *q_ptr = static_cast<const uint16_t *>(p.q) +
                            static_cast<int64_t>(batch) * p.q_batch_stride +
                            static_cast<int64_t>(head) * p.q_head_stride;
    /* Key blocks [0, n_end) are visited in reverse; the first n_masked visited need a mask. */
    const int n_blocks_k = (seqlen_k + C::kBlockN - 1) / C::kBlockN;
    int n_end = n_blocks_k;
    int first_masked = (seqlen_k % C::kBlockN != 0) ? n_blocks_k - 1 : n_blocks_k;
    if (CAUSAL) {
        const int diag = seqlen_k - seqlen_q;
        const int last_row = min(row0 + C::kBlockM, seqlen_q) - 1;
        const int last_key = last_row + diag; /* the last key any row of this tile sees */
        n_end = last_key < 0 ? 0 : min(n_blocks_k, last_key / C::kBlockN + 1);
        /* keys past row0 + diag are hidden from row0: their blocks need the mask */
        const int first_hidden = row0 + diag + 1;
        first_masked = min(first_masked, first_hidden <= 0 ? 0 : first_hidden / C::kBlockN);
    }
    const int n_masked = max(0, n_end - first_masked);

    /* Softmax in base 2: exp(scale * (s - m)) = exp2(s * scale_log2 - m * scale_log2). A zero
       scale is raised to FLT_MIN so that masked -inf scores still give -inf, not NaN. */
    const float scale_log2 = fmaxf(p.softmax_scale * 1.4426950408889634f, FLT_MIN);

    /* a thread whose 16-byte chunk lies past head_dim copies zeros (see load_tile_async) */
    const bool copy_col_ok = (tid % C::kChunksPerRow) * 8 < head_dim;

    /* ---- prologue: Q and the first K/V block, then Q into A fragments ---- */
    load_tile_async<C, C::kBlockM>(smem_base + C::kQOffset, q_ptr, p.q_row_stride, row0, seqlen_q,
                                   copy_col_ok, tid);
    if (n_end > 0) {
        const int key0 = (n_end - 1) * C::kBlockN;
        load_tile_async<C, C::kBlockN>(
            smem_base, kv_slice(p.k, p.k_batch_stride, p.k_head_stride, batch_kv_head),
            p.k_row_stride, key0, seqlen_k, copy_col_ok, tid);
        load_tile_async<C, C::kBlockN>(
            smem_base + C::kKVBytes,
            kv_slice(p.v, p.v_batch_stride, p.v_head_stride, batch_kv_head), p.v_row_stride, key0,
            seqlen_k, copy_col_ok, tid);
    }
    cp_async_commit_group();
    cp_async_wait_group<0>();
    __syncthreads();

    uint32_t q_frag[C::kQSteps][4];
    {
        /* ldmatrix x4 matrices: rows 0-7 / 8-15 of the m16 tile at columns +0, then +8 */
        const int r = row_group * kRowsPerWarp + (lane & 7) + ((lane >> 3) & 1) * 8;
        const uint32_t row_addr = smem_base + C::kQOffset + r * C::kRowBytes;
#pragma unroll
        for (int ks = 0; ks < C::kQSteps; ++ks) {
            const int chunk = d_first / 8 + 2 * ks + (lane >> 4);
            ldmatrix_x4(q_frag[ks], row_addr + swizzle(r, chunk));
        }
    }

    /* Per-lane ldmatrix offsets inside a stage, shared by K and V. Lanes 8i..8i+7 address
       matrix i = (rows 0-7 | 8-15) x (columns +0 | +8) as: i=0 rows 0-7 @ +0, i=1 rows 0-7 @ +8,
       i=2 rows 8-15 @ +0, i=3 rows 8-15 @ +8 (rows are keys).
       K (plain): r0, r1 = b0, b1 of key tile 2n; r2, r3 = b0, b1 of key tile 2n+1.
       V (.trans): r0, r2 = b0, b1 of head_dim tile 2n; r1, r3 = b0, b1 of head_dim tile 2n+1.
       The XOR only touches the low 3 chunk bits, so chunk 8*h + c maps to 8*h + (c ^ (lane & 7)):
       four offsets cover every k16 step (two chunks) of a 128-byte group, and the group and
       tile offsets are compile-time constants. */
    uint32_t lane_off[4];
    {
        const int row = (lane & 7) + (lane >> 4) * 8;
        const int col_bit = (lane >> 3) & 1;
#pragma unroll
        for (int j = 0; j < 4; ++j)
            lane_off[j] =
                row * C::kRowBytes + d_first * 2 + (((2 * j + col_bit) ^ (lane & 7)) << 4);
    }

    float o_acc[C::kOTiles][4];
#pragma unroll
    for (int t = 0; t < C::kOTiles; ++t)
        o_acc[t][0] = o_acc[t][1] = o_acc[t][2] = o_acc[t][3] = 0.f;
    /* running max (raw score units) and this lane's partial row sums, rows g and g+8 */
    float m_lo = -INFINITY, m_hi = -INFINITY;
    float l_lo = 0.f, l_hi = 0.f;

#pragma unroll 1
    for (int it = 0; it < n_end; ++it) {
        const int kb = n_end - 1 - it;
        /* Block kb has landed for this thread; the barrier makes it visible to all and
           proves every warp is done with the other stage (block kb+1, or Q when it == 0). */
        cp_async_wait_group<0>();
        __syncthreads();
        if (it + 1 < n_end) {
            const uint32_t next = smem_base + ((it + 1) & 1) * C::kStageBytes;
            const int key0 = (kb - 1) * C::kBlockN;
            load_tile_async<C, C::kBlockN>(
                next, kv_slice(p.k, p.k_batch_stride, p.k_head_stride, batch_kv_head),
                p.k_row_stride, key0, seqlen_k, copy_col_ok, tid);
            load_tile_async<C, C::kBlockN>(
                next + C::kKVBytes, kv_slice(p.v, p.v_batch_stride, p.v_head_stride, batch_kv_head),
                p.v_row_stride, key0, seqlen_k, copy_col_ok, tid);
        }
        cp_async_commit_group();
        const uint32_t stage = smem_base + (it & 1) * C::kStageBytes;

#pragma unroll
        for (int sub = 0; sub < C::kSubs; ++sub) {
            const uint32_t k_rows = stage + sub * C::kSubN * C::kRowBytes;
            const uint32_t v_rows = stage + C::kKVBytes + sub * C::kSubN * C::kRowBytes;

            /* S = Q K^T over this warp's head_dim columns, kSubN keys */
            float s[C::kSTiles][4];
#pragma unroll
            for (int t = 0; t < C::kSTiles; ++t)
                s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
            for (int n = 0; n < C::kSTiles / 2; ++n) {
#pragma unroll
                for (int ks = 0; ks < C::kQSteps; ++ks) {
                    uint32_t b[4];
                    ldmatrix_x4(b, k_rows + lane_off[ks & 3] + (ks >> 2) * 128 +
                                       n * 16 * C::kRowBytes);
                    mma_m16n8k16<BF16>(s[2 * n], q_frag[ks], b[0], b[1]);
                    mma_m16n8k16<BF16>(s[2 * n + 1], q_frag[ks], b[2], b[3]);
                }
            }

            if constexpr (C::kDSplit == 2) {
                /* Each warp of the pair holds S over half of head_dim, in the same fragment
                   layout; swap halves through smem. a + b == b + a exactly, so both warps get
                   the same S and make identical softmax decisions. The next write to this
                   buffer follows the next __syncthreads, by when the partner has read it. */
                float4 *xchg = reinterpret_cast<float4 *>(smem + C::kXchgOffset);
                float4 *mine = xchg + warp * (C::kSTiles * 32);
                const float4 *theirs = xchg + (warp ^ 1) * (C::kSTiles * 32);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t)
                    mine[t * 32 + lane] = make_float4(s[t][0], s[t][1], s[t][2], s[t][3]);
                bar_sync(1 + row_group, 2 * FA_WARP_SIZE);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    const float4 other = theirs[t * 32 + lane];
                    s[t][0] += other.x;
                    s[t][1] += other.y;
                    s[t][2] += other.z;
                    s[t][3] += other.w;
                }
            }

            if (it < n_masked) {
                /* Rows g and g+8 of the warp's m16 tile see keys below their limits. Computed
                   here rather than kept across the loop: registers are the scarce resource. */
                const int row_lo = row0 + row_group * kRowsPerWarp + (lane >> 2);
                int limit_lo = seqlen_k, limit_hi = seqlen_k;
                if (CAUSAL) {
                    limit_lo = min(seqlen_k, row_lo + seqlen_k - seqlen_q + 1);
                    limit_hi = min(seqlen_k, row_lo + 8 + seqlen_k - seqlen_q + 1);
                }
                /* c0, c1 are keys 2t, 2t+1 of row g; c2, c3 the same keys of row g+8 */
                const int key_base = kb * C::kBlockN + sub * C::kSubN + 2 * (lane & 3);
#pragma unroll
                for (int t = 0; t < C::kSTiles; ++t) {
                    const int key = key_base + t * 8;
                    if (key >= limit_lo) s[t][0] = -INFINITY;
                    if (key + 1 >= limit_lo) s[t][1] = -INFINITY;
                    if (key >= limit_hi) s[t][2] = -INFINITY;
                    if (key + 1 >= limit_hi) s[t][3] = -INFINITY;
                }
            }

            /* Online softmax: new row max over the quad of lanes sharing a row */
            float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
            for (int t = 0; t < C::kSTiles; ++t) {
                mx_lo = fmaxf(mx_lo, fmaxf(s[t][0], s[t][1]));
                mx_hi = fmaxf(mx_hi, fmaxf(s[t][2], s[t][3]));
            }
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
            /* A row with no visible key so far keeps max -inf: subtract 0 instead, so that
               -inf - -inf never happens; its p and correction both come out exp2(-inf) = 0. */
            const float base_lo = (mx_lo == -INFINITY) ? 0.f : mx_lo * scale_log2;
            const float base_hi = (mx_hi == -INFINITY) ? 0.f : mx_hi * scale_log2;
            /* Once the maxima settle most sub-blocks move none of the warp's 32 rows; the
               rescale (a multiply by exactly 1 then) is skipped warp-uniformly. */
            if (__any_sync(0xffffffffu, mx_lo != m_lo || mx_hi != m_hi)) {
                const float corr_lo = exp2f(m_lo * scale_log2 - base_lo);
                const float corr_hi = exp2f(m_hi * scale_log2 - base_hi);
                l_lo *= corr_lo;
                l_hi *= corr_hi;
#pragma unroll
                for (int t = 0; t < C::kOTiles; ++t) {
                    o_acc[t][0] *= corr_lo;
                    o_acc[t][1] *= corr_lo;
                    o_acc[t][2] *= corr_hi;
                    o_acc[t][3] *= corr_hi;
                }
            }
            m_lo = mx_lo;
            m_hi = mx_hi;

            /* the cross-lane row sum waits for the epilogue: rescaling is linear */
#pragma unroll
            for (int t = 0; t < C::kSTiles; ++t) {
                s[t][0] = exp2f(fmaf(s[t][0], scale_log2, -base_lo));
                s[t][1] = exp2f(fmaf(s[t][1], scale_log2, -base_lo));
                s[t][2] = exp2f(fmaf(s[t][2], scale_log2, -base_hi));
                s[t][3] = exp2f(fmaf(s[t][3], scale_log2, -base_hi));
                l_lo += s[t][0] + s[t][1];
                l_hi += s[t][2] + s[t][3];
            }

            /* P as A fragments: key tiles 2k, 2k+1 of the C layout are the k16 A layout */
            uint32_t p_frag[C::kPSteps][4];
#pragma unroll
            for (int k = 0; k < C::kPSteps; ++k) {
                p_frag[k][0] = pack2<BF16>(s[2 * k][0], s[2 * k][1]);
                p_frag[k][1] = pack2<BF16>(s[2 * k][2], s[2 * k][3]);
                p_frag[k][2] = pack2<BF16>(s[2 * k + 1][0], s[2 * k + 1][1]);
                p_frag[k][3] = pack2<BF16>(s[2 * k + 1][2], s[2 * k + 1][3]);
            }

            /* O += P V over this warp's head_dim columns */
#pragma unroll
            for (int k = 0; k < C::kPSteps; ++k) {
#pragma unroll
                for (int n = 0; n < C::kOTiles / 2; ++n) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, v_rows + lane_off[n & 3] + (n >> 2) * 128 +
                                             k * 16 * C::kRowBytes);
                    mma_m16n8k16<BF16>(o_acc[2 * n], p_frag[k], b[0], b[2]);
                    mma_m16n8k16<BF16>(o_acc[2 * n + 1], p_frag[k], b[1], b[3]);
                }
            }
        }
    }

    /* ---- epilogue: normalize, LSE, stage O through smem, 16-byte stores ---- */
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    const float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;

    const int row_lo = row0 + row_group * kRowsPerWarp + (lane >> 2);
    const int row_hi = row_lo + 8;
    if (p.lse != nullptr && d_half == 0 && (lane & 3) == 0) {
        float *lse_row = p.lse + (static_cast<int64_t>(batch) * p.heads_q + head) * seqlen_q;
        if (row_lo < seqlen_q)
            lse_row[row_lo] = l_lo > 0.f ? m_lo * p.softmax_scale + __logf(l_lo) : -INFINITY;
        if (row_hi < seqlen_q)
            lse_row[row_hi] = l_hi > 0.f ? m_hi * p.softmax_scale + __logf(l_hi) : -INFINITY;
    }

    __syncthreads(); /* every warp is done reading the K/V stages that O now overwrites */
    {
        const int r = row_group * kRowsPerWarp + (lane >> 2); /* r and r + 8 share a swizzle */
        unsigned char *row_lo_ptr = smem + r * C::kRowBytes + (lane & 3) * 4;
        unsigned char *row_hi_ptr = row_lo_ptr + 8 * C::kRowBytes;
#pragma unroll
        for (int t = 0; t < C::kOTiles; ++t) {
            const uint32_t off = swizzle(r, d_first / 8 + t);
            *reinterpret_cast<uint32_t *>(row_lo_ptr + off) =
                pack2<BF16>(o_acc[t][0] * inv_lo, o_acc[t][1] * inv_lo);
            *reinterpret_cast<uint32_t *>(row_hi_ptr + off) =
                pack2<BF16>(o_acc[t][2] * inv_hi, o_acc[t][3] * inv_hi);
        }
    }
    __syncthreads();
    {
        uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                          static_cast<int64_t>(batch) * p.o_batch_stride +
                          static_cast<int64_t>(head) * p.o_head_stride;
        const int rows_valid = min(C::kBlockM, seqlen_q - row0);
        const int store_tid = reread_thread_index();
        const int chunk = store_tid % C::kChunksPerRow;
        const int r_first = store_tid / C::kChunksPerRow;
        if (chunk * 8 < head_dim) {
#pragma unroll
            for (int i = 0; i < C::kBlockM / C::kRowsPerPass; ++i) {
                const int r = r_first + i * C::kRowsPerPass;
                if (r < rows_valid) {
                    const uint4 val = *reinterpret_cast<const uint4 *>(
                        smem + r * C::kRowBytes + swizzle(r, chunk));
                    uint16_t *dst =
                        o_ptr + static_cast<int64_t>(row0 + r) * p.o_row_stride + chunk * 8;
                    *reinterpret_cast<uint4 *>(dst) = val;
                }
            }
        }
        static_assert(C::kBlockM % C::kRowsPerPass == 0, "the store passes cover BLOCK_M");
    }
}

typedef void (*fwd_kernel_t)(const fa_params);

template <int HDP>
fwd_kernel_t pick_kernel(bool bf16, bool causal)
{
    if (bf16)
        return causal ? fwd_sm80_kernel<HDP, true, true> : fwd_sm80_kernel<HDP, true, false>;
    return causal ? fwd_sm80_kernel<HDP, false, true> : fwd_sm80_kernel<HDP, false, false>;
}

fwd_kernel_t select_kernel(int head_dim_padded, fa_dtype dtype, int causal)
{
    if (dtype != FA_FLOAT16 && dtype != FA_BFLOAT16)
        return nullptr;
    const bool bf16 = dtype == FA_BFLOAT16;
    switch (head_dim_padded) {
    case 64: return pick_kernel<64>(bf16, causal != 0);
    case 128: return pick_kernel<128>(bf16, causal != 0);
    case 256: return pick_kernel<256>(bf16, causal != 0);
    default: return nullptr;
    }
}

} /* namespace fa_sm80 */

extern "C" {

const void *fa_sm80_kernel_fn(const fa_params *p, const fa_tile *t)
{
    if (p == NULL || t == NULL)
        return NULL;
    return reinterpret_cast<const void *>(
        fa_sm80::select_kernel(t->head_dim_padded, p->dtype, p->causal));
}

cudaError_t fa_sm80_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream)
{
    const fa_sm80::fwd_kernel_t kernel =
        fa_sm80::select_kernel(cfg->head_dim_padded, p->dtype, p->causal);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(*p);
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
