/*
 * sm80_decode_kernel.cuh -- the split-KV decode kernel's device code (fwd_sm80_decode.cu has
 * the design, the shared-memory budget and the host side): argument block, geometry per
 * head_dim, the per-warp K/V ring, the per-chunk maths and the cross-warp merge.
 *
 * Fragment layouts are those of sm80_ptx.cuh (mma.m16n8k16, g = lane / 4, t = lane % 4). A
 * warp holds, for the CTA's 16 packed rows and its WARP_DIM head_dim columns:
 *   Q  A fragments  kQSteps x 4 (16-bit pairs)    loaded once
 *   O  C fragments  kOTiles x 4 (fp32)            unnormalised, rows g and g + 8
 *   m, l            2 + 2                         running max (units of t) and this lane's
 *                                                 share of the row sums
 * and per chunk of 16 keys S (2 x 4 fp32) and P (4 x 16-bit pairs).
 */
#ifndef FA_SM80_DECODE_KERNEL_CUH
#define FA_SM80_DECODE_KERNEL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_ptx.cuh"

namespace fa_decode {

using fa_sm80::bar_sync;
using fa_sm80::cp_async_16;
using fa_sm80::cp_async_commit_group;
using fa_sm80::cp_async_wait_group;
using fa_sm80::ldmatrix_x4;
using fa_sm80::ldmatrix_x4_trans;
using fa_sm80::smem_addr;
using fa_sm80::tanh_approx_f32;

constexpr int kThreads = FA_THREADS_PER_BLOCK;
constexpr int kWarps = FA_NUM_WARPS_PER_BLOCK;
constexpr int kRows = 16;     /* packed rows of a CTA (block_m): one m16 tile */
constexpr int kChunk = 16;    /* keys of a chunk (block_n): one k16 step of P V */
constexpr int kMaxStages = 4; /* per-warp ring depth: cp.async.wait_group takes an immediate */
static_assert(kThreads == kWarps * FA_WARP_SIZE, "12 warps of 32 threads");

/* What the kernel reads, built on the host from fa_params, the split workspace and the
   launch's tile (fwd_sm80_decode.cu: make_args). Kernel parameters live in the constant bank:
   a field read in the main loop costs no register. */
struct Args {
    const void *q, *k, *v;
    void *out;
    float *lse;          /* NULL: not written */
    const float *sinks;  /* NULL, or one logit per q head */
    float *o_partial;    /* num_splits > 1: (num_splits, batch, heads_q, seqlen_q, head_dim) */
    float *lse_partial;  /* num_splits > 1: (num_splits, batch, heads_q, seqlen_q) */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    fa_seq_layout seq;
    int batch, heads_q, head_dim;
    int group;      /* G = heads_q / heads_kv */
    int m_tiles;    /* ceil(seqlen_q * G / kRows) */
    int num_splits;
    int window_left, window_right, causal; /* raw: normalised per entry by fa_mask_make */
    fa_score score;
    int stages;     /* ring depth of each streaming warp, 1 .. kMaxStages */
    int warps;      /* streaming warps, a multiple of kDS, <= 12 */
};

/* Shape of one head_dim instance. A stream is the kDS warps that reduce the same chunks: one
   warp for head_dim <= 128, a pair splitting head_dim 256 into two halves of 128 columns. */
template <int HDP>
struct Geom {
    static constexpr int kHeadDim = HDP;
    static constexpr int kWarpDim = HDP < 128 ? HDP : 128; /* head_dim columns of a warp */
    static constexpr int kDS = HDP / kWarpDim;
    static constexpr int kRowBytes = kWarpDim * 2;         /* one K or V row of a slot */
    static constexpr int kTileBytes = kChunk * kRowBytes;  /* K (or V) of one chunk */
    static constexpr int kSlotBytes = 2 * kTileBytes;      /* K then V */
    static constexpr int kPieces = kWarpDim / 8;           /* 16-byte pieces of a slot row */
    static constexpr int kQSteps = kWarpDim / 16;
    static constexpr int kOTiles = kWarpDim / 8;
    static constexpr int kQPieces = HDP / 8;
    static constexpr int kQRowBytes = HDP * 2;
    static constexpr int kQBytes = kRows * kQRowBytes;
    /* S exchange of a pair: two buffers of 16 x 16 fp32 per warp */
    static constexpr int kXchgBytesPerWarp = kDS == 2 ? 2 * kRows * kChunk * 4 : 0;
    /* merge: every streaming warp's O (fp32) over the ring, the stream statistics over Q */
    static constexpr int kMergeBytesPerWarp = kRows * kWarpDim * 4;

    static_assert(kDS == 1 || kDS == 2, "a stream is one warp or a pair");
    static_assert(kPieces % 8 == 0, "a copy pass covers 4 rows of 8 pieces");
    static_assert(kMergeBytesPerWarp <= kSlotBytes, "the merge fits a ring of one stage");
    static_assert(2 * kWarps * kRows * 4 <= kQBytes, "the stream statistics fit the Q region");
};

/* Byte offset of 16-byte piece `piece` inside smem row `row`: the XOR (within a 128-byte
   group) spreads the 8 rows of an ldmatrix phase, and the 8 pieces of a copy phase, over all
   32 banks. */
__device__ __forceinline__ uint32_t swizzle(int row, int piece)
{
    return static_cast<uint32_t>((piece ^ (row & 7)) << 4);
}

template <bool BF16>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi)
{
    uint32_t bits;
    if constexpr (BF16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        bits = *reinterpret_cast<const uint32_t *>(&v);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        bits = *reinterpret_cast<const uint32_t *>(&v);
    }
    return bits;
}

template <bool BF16>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    if constexpr (BF16)
        fa_sm80::mma_m16n8k16_bf16(d, a, b0, b1);
    else
        fa_sm80::mma_m16n8k16_f16(d, a, b0, b1);
}

/* cp.async.wait_group with a run-time depth, 0 .. kMaxStages. */
__device__ __forceinline__ void cp_async_wait_pending(int n)
{
    switch (n) {
    case 0: cp_async_wait_group<0>(); break;
    case 1: cp_async_wait_group<1>(); break;
    case 2: cp_async_wait_group<2>(); break;
    case 3: cp_async_wait_group<3>(); break;
    default: cp_async_wait_group<4>(); break;
    }
}

/* Everything a warp's copies need of the entry: the k/v base of its (kv head, columns) and the
   entry's key addressing (seqlen.h). */
struct KVSource {
    const uint16_t *k, *v; /* element (kv head, first column of the warp) of row offset 0 */
    fa_seqlen e;
    int b;
};

__device__ __forceinline__ KVSource kv_source(const Args &a, const fa_seqlen &e, int b, int hk, int col0)
{
    KVSource src;
    src.k = static_cast<const uint16_t *>(a.k) + hk * a.k_head_stride + col0;
    src.v = static_cast<const uint16_t *>(a.v) + hk * a.v_head_stride + col0;
    src.e = e;
    src.b = b;
    return src;
}

/* K and V rows key0 .. key0 + 15 into `slot`, by one warp. Lane = 8 * row_sub + piece_sub:
   an instruction copies 4 rows x 8 pieces (4 x 128 contiguous bytes of global memory); the
   lane's rows are row_sub + 4 k (k < 4). Dense caches, and pages of a multiple of 16 keys,
   hold the chunk (key0 is a multiple of 16) in one run of rows: the warp looks key0 up once
   (one block-table load, the same address in every lane) and steps row_stride from it.
   Other page sizes look each of the lane's four rows up. Keys at or past len_k and columns
   past head_dim are zero-filled (src-size 0, nothing read): P is 0 there, and 0 * garbage
   could be NaN. The offsets of K and V are computed before the first copy so that the
   compiler shares the block-table load and division between them (a cp.async is a memory
   clobber). */
template <class G>
__device__ __forceinline__ void issue_chunk(const Args &a, const KVSource &src, uint32_t slot,
                                            int key0, int col0, int lane)
{
    const int row_sub = lane >> 3, piece_sub = lane & 7;
    const int len_k = src.e.len_k;
    const bool one_run = fa_key_runs_share_page(&a.seq, kChunk);
    int64_t k_run = 0, v_run = 0;
    if (one_run && key0 < len_k) {
        k_run = fa_k_row_offset(&a.seq, &src.e, src.b, key0, a.k_batch_stride, a.k_row_stride);
        v_run = fa_k_row_offset(&a.seq, &src.e, src.b, key0, a.v_batch_stride, a.v_row_stride);
    }
    int64_t koff[4], voff[4];
    bool row_ok[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int r = row_sub + 4 * k, j = key0 + r;
        row_ok[k] = j < len_k;
        koff[k] = 0;
        voff[k] = 0;
        if (row_ok[k] && one_run) {
            koff[k] = k_run + r * a.k_row_stride;
            voff[k] = v_run + r * a.v_row_stride;
        } else if (row_ok[k]) {
            koff[k] = fa_k_row_offset(&a.seq, &src.e, src.b, j, a.k_batch_stride, a.k_row_stride);
            voff[k] = fa_k_row_offset(&a.seq, &src.e, src.b, j, a.v_batch_stride, a.v_row_stride);
        }
    }
#pragma unroll
    for (int p = 0; p < G::kPieces / 8; ++p) {
        const int piece = piece_sub + 8 * p;
        const bool col_ok = col0 + piece * 8 < a.head_dim;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int row = row_sub + 4 * k;
            const uint32_t dst = slot + row * G::kRowBytes + swizzle(row, piece);
            const bool ok = row_ok[k] && col_ok;
            cp_async_16(dst, ok ? src.k + koff[k] + piece * 8 : src.k, ok ? 16u : 0u);
            cp_async_16(dst + G::kTileBytes, ok ? src.v + voff[k] + piece * 8 : src.v,
                        ok ? 16u : 0u);
        }
    }
}

/* A warp's running state over its chunks. */
template <class G>
struct State {
    float o[G::kOTiles][4];
    float m[2], l[2];
    /* no key seen: O = 0, m = -inf, l = 0 */
    __device__ __forceinline__ void init()
    {
#pragma unroll
        for (int t = 0; t < G::kOTiles; ++t)
            o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
        m[0] = m[1] = -INFINITY;
        l[0] = l[1] = 0.f;
    }
};

/* The mask of this lane's two rows, kept for the chunks that need it (block_range.h). */
struct LaneMask {
    fa_key_span lo, hi; /* rows g and g + 8 */
    int n_full_min, n_full_max;
};

/* S = Q K^T of one chunk (16 rows x 16 keys) over this warp's head_dim columns, from the K
   tile of `slot`: two accumulator sets (even and odd k16 steps) halve the dependent mma chain. */
template <class G, bool BF16>
__device__ __forceinline__ void chunk_scores(float (&s)[2][4], const uint32_t (&q)[G::kQSteps][4], uint32_t slot,
                                             uint32_t k_lane)
{
    float s2[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            s[n][e] = s2[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < G::kQSteps; ++ks) {
        uint32_t b[4];
        ldmatrix_x4(b, slot + (k_lane ^ ((ks & 3) << 5)) + (ks >> 2) * 128);
        if (ks & 1) {
            mma<BF16>(s2[0], q[ks], b[0], b[1]);
            mma<BF16>(s2[1], q[ks], b[2], b[3]);
        } else {
            mma<BF16>(s[0], q[ks], b[0], b[1]);
            mma<BF16>(s[1], q[ks], b[2], b[3]);
        }
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            s[n][e] += s2[n][e];
}

/* Pairs (head_dim 256): the partner warp's half of S added to this warp's. Both warps of the
   pair add the same two halves (a + b == b + a in fp32): they hold the same S and make the
   same softmax decisions. */
__device__ __forceinline__ void add_partner_scores(float (&s)[2][4], float4 *xchg_mine, const float4 *xchg_theirs,
                                                   int pair, int lane)
{
    xchg_mine[lane] = make_float4(s[0][0], s[0][1], s[0][2], s[0][3]);
    xchg_mine[32 + lane] = make_float4(s[1][0], s[1][1], s[1][2], s[1][3]);
    bar_sync(1 + pair, 2 * FA_WARP_SIZE);
    const float4 t0 = xchg_theirs[lane], t1 = xchg_theirs[32 + lane];
    s[0][0] += t0.x;
    s[0][1] += t0.y;
    s[0][2] += t0.z;
    s[0][3] += t0.w;
    s[1][0] += t1.x;
    s[1][1] += t1.y;
    s[1][2] += t1.z;
    s[1][3] += t1.w;
}

/* The score hook (tanh(S * softcap_pre) when softcap_pre != 0), then -inf where mask.h hides
   the key (masked chunks only). s[n][0..1]: keys 8n + 2t, + 1 of row g; s[n][2..3]: the same
   keys of row g + 8. */
__device__ __forceinline__ void hook_and_mask(float (&s)[2][4], float softcap_pre, bool masked, const LaneMask &lm,
                                              int key0, int lane)
{
    if (softcap_pre != 0.f) {
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[n][e] = tanh_approx_f32(s[n][e] * softcap_pre);
    }
    if (masked) {
        const int key_t = key0 + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key_t + 8 * n + (e & 1);
                const fa_key_span &sp = e < 2 ? lm.lo : lm.hi;
                if (key < sp.lo || key > sp.hi)
                    s[n][e] = -INFINITY;
            }
    }
}

/* The online softmax over one chunk: m' = max(m, rowmax s); O, l *= exp2((m - m') scale_log2);
   s = P = exp2(s scale_log2 - m' scale_log2); l += rowsum P (this lane's share). A row that has
   seen no key keeps m = -inf and subtracts 0 (never -inf - -inf). */
template <class G>
__device__ __forceinline__ void online_softmax_chunk(State<G> &st, float (&s)[2][4], float scale_log2)
{
    float mx[2], base[2];
    bool moved = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(st.m[h], fmaxf(fmaxf(s[0][2 * h], s[0][2 * h + 1]),
                                     fmaxf(s[1][2 * h], s[1][2 * h + 1])));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        base[h] = mx[h] == -INFINITY ? 0.f : mx[h] * scale_log2;
        moved |= mx[h] != st.m[h];
    }
    /* Once the maxima settle most chunks move no row: the rescale by exactly 1 is skipped,
       warp-uniformly. */
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float corr = exp2f(st.m[h] * scale_log2 - base[h]);
            st.l[h] *= corr;
#pragma unroll
            for (int t = 0; t < G::kOTiles; ++t) {
                st.o[t][2 * h] *= corr;
                st.o[t][2 * h + 1] *= corr;
            }
        }
    }
    st.m[0] = mx[0];
    st.m[1] = mx[1];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[n][e] = exp2f(fmaf(s[n][e], scale_log2, -base[e >> 1]));
            st.l[e >> 1] += s[n][e];
        }
}

/* O += P V over one chunk, P (the chunk's probabilities, C layout) packed to 16 bits as the A
   operand: key tiles 0 and 1 of the C layout are the two k halves of A. */
template <class G, bool BF16>
__device__ __forceinline__ void accumulate_pv(State<G> &st, const float (&s)[2][4], uint32_t slot, uint32_t v_lane)
{
    uint32_t p[4];
    p[0] = pack_pair<BF16>(s[0][0], s[0][1]);
    p[1] = pack_pair<BF16>(s[0][2], s[0][3]);
    p[2] = pack_pair<BF16>(s[1][0], s[1][1]);
    p[3] = pack_pair<BF16>(s[1][2], s[1][3]);
#pragma unroll
    for (int n = 0; n < G::kOTiles / 2; ++n) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, slot + G::kTileBytes + (v_lane ^ ((n & 3) << 5)) + (n >> 2) * 128);
        mma<BF16>(st.o[2 * n], p, b[0], b[1]);
        mma<BF16>(st.o[2 * n + 1], p, b[2], b[3]);
    }
}

/* One chunk of 16 keys (keys key0 ..) from `slot`:
     S = Q K^T  (pairs: half of head_dim each, then the partner's half added through xchg)
     t = S, or tanh(S * softcap_pre); -inf where mask.h hides the key (masked chunks only)
     m' = max(m, rowmax t); O, l *= exp2((m - m') scale_log2); P = exp2(t scale_log2 - m' scale_log2)
     l += rowsum P (this lane's share); O += P V
   A row that has seen no key keeps m = -inf and subtracts 0 (never -inf - -inf). */
template <class G, bool BF16>
__device__ __forceinline__ void attend_chunk(const Args &a, State<G> &st,
                                             const uint32_t (&q)[G::kQSteps][4], uint32_t slot,
                                             uint32_t k_lane, uint32_t v_lane, int key0,
                                             bool masked, const LaneMask &lm, float4 *xchg_mine,
                                             const float4 *xchg_theirs, int pair, int lane)
{
    float s[2][4];
    chunk_scores<G, BF16>(s, q, slot, k_lane);
    if constexpr (G::kDS == 2)
        add_partner_scores(s, xchg_mine, xchg_theirs, pair, lane);
    hook_and_mask(s, a.score.softcap_pre, masked, lm, key0, lane);
    online_softmax_chunk<G>(st, s, a.score.scale_log2);
    accumulate_pv<G, BF16>(st, s, slot, v_lane);
}

/* Rows [r0, r_end) of the packed tile: packed row r is query row r / G of q head hk * G + r % G. */
struct RowOf {
    int i, h;
};
__device__ __forceinline__ RowOf row_of(int r, int group, int hk)
{
    RowOf x;
    x.i = r / group;
    x.h = hk * group + (r - x.i * group);
    return x;
}

/* The tile's packed rows of Q into shared memory, one commit group: columns past head_dim and
   rows past the entry read as zeros. */
template <class G>
__device__ __forceinline__ void load_q_tile(const Args &a, const fa_seqlen &e, int b, int hk, int r0,
                                            int r_end, uint32_t q_smem, int tid)
{
    for (int it = tid; it < kRows * G::kQPieces; it += kThreads) {
        const int rr = it / G::kQPieces, pc = it % G::kQPieces;
        const int r = r0 + rr;
        const bool ok = r < r_end && pc * 8 < a.head_dim;
        const uint16_t *src = static_cast<const uint16_t *>(a.q);
        if (ok) {
            const RowOf x = row_of(r, a.group, hk);
            src += fa_q_row_offset(&e, b, x.i, a.q_batch_stride, a.q_row_stride) +
                   static_cast<int64_t>(x.h) * a.q_head_stride + pc * 8;
        }
        cp_async_16(q_smem + rr * G::kQRowBytes + swizzle(rr, pc), src, ok ? 16u : 0u);
    }
    cp_async_commit_group();
}

/* The warp's Q fragments (head_dim columns from col0) from the Q tile: x4 matrices, rows 0-7 /
   8-15 at columns +0, then rows 0-7 / 8-15 at +8. */
template <class G>
__device__ __forceinline__ void load_q_frags(uint32_t (&q)[G::kQSteps][4], uint32_t q_smem, int col0, int lane)
{
    const int r = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int ks = 0; ks < G::kQSteps; ++ks)
        ldmatrix_x4(q[ks], q_smem + r * G::kQRowBytes + swizzle(r, col0 / 8 + 2 * ks + (lane >> 4)));
}

/* A streaming warp's state into the merge area: m and l per row (one lane of a quad, d_half
   0) into stat_m, stat_l at its stream; its O into its own kRows x kWarpDim block of area. */
template <class G>
__device__ __forceinline__ void stash_state(const State<G> &st, float *area, float *stat_m, float *stat_l,
                                            int stream, int d_half, int warp, int lane)
{
    const int g = lane >> 2;
    if (d_half == 0 && (lane & 3) == 0) {
        stat_m[stream * kRows + g] = st.m[0];
        stat_m[stream * kRows + g + 8] = st.m[1];
        stat_l[stream * kRows + g] = st.l[0];
        stat_l[stream * kRows + g + 8] = st.l[1];
    }
    /* rows g and g + 8 share a swizzle; 8-float group t sits at t ^ (row & 7) */
    float *mine = area + warp * (kRows * G::kWarpDim) + 2 * (lane & 3);
#pragma unroll
    for (int t = 0; t < G::kOTiles; ++t) {
        const int off = ((t ^ (g & 7)) << 3);
        *reinterpret_cast<float2 *>(mine + g * G::kWarpDim + off) = make_float2(st.o[t][0], st.o[t][1]);
        *reinterpret_cast<float2 *>(mine + (g + 8) * G::kWarpDim + off) = make_float2(st.o[t][2], st.o[t][3]);
    }
}

/* The spans of this lane's two packed rows (r0 + lane / 4 and 8 rows on) and the tile's
   unmasked chunks. */
__device__ __forceinline__ LaneMask lane_mask(const fa_mask &mask, const fa_block_range &range, int r0, int group,
                                              int hk, int lane)
{
    LaneMask lm;
    const RowOf lo = row_of(r0 + (lane >> 2), group, hk);
    const RowOf hi = row_of(r0 + (lane >> 2) + 8, group, hk);
    lm.lo = fa_mask_row(&mask, lo.i);
    lm.hi = fa_mask_row(&mask, hi.i);
    lm.n_full_min = range.n_full_min;
    lm.n_full_max = range.n_full_max;
    return lm;
}

/* The ring's first stages slots: this warp's chunks 0 .. stages - 1 (chunk k is c_first +
   k * streams), one commit group each, empty past its my_n chunks. */
template <class G>
__device__ __forceinline__ void fill_ring(const Args &a, const KVSource &src, uint32_t ring, int stages, int my_n,
                                          int c_first, int streams, int col0, int lane)
{
    for (int k = 0; k < stages; ++k) {
        if (k < my_n)
            issue_chunk<G>(a, src, ring + k * G::kSlotBytes, (c_first + k * streams) * kChunk, col0, lane);
        cp_async_commit_group();
    }
}

/* One warp's walk over its chunks: the ring, its depth, its chunk count my_n (chunk k is
   c_first + k * streams) and the iterations it runs (n_iter >= my_n). */
struct WarpWalk {
    uint32_t ring;
    int stages, my_n, n_iter, c_first, streams, col0;
};

/* The main loop of one warp: no CTA barrier; each warp waits on its own copies only.
   Chunk k sits in slot k % stages. Before chunk k is read, stages + k chunk groups were
   committed (the prologue's, then one per earlier iteration), so waiting until at most
   stages - 1 are pending waits for chunk k and leaves chunks k + 1 .. in flight. The slot
   is refilled with chunk k + stages as soon as every lane has read it.
   Pairs (head_dim 256) all run n_iter iterations, one exchange barrier each, also those
   past their last chunk and the pairs that do not stream: on the hardware a pair could
   leave early (the barrier ids are its own), but racecheck then pairs accesses across the
   merge's __syncthreads (as the forward's exchange_skip notes). */
template <class G, bool BF16>
__device__ __forceinline__ void stream_chunks(const Args &a, const KVSource &src, const WarpWalk &w, State<G> &st,
                                              const uint32_t (&q)[G::kQSteps][4], const LaneMask &lm,
                                              float4 *xchg, uint32_t k_lane, uint32_t v_lane, int warp, int pair,
                                              int lane)
{
    int slot = 0;
#pragma unroll 1
    for (int k = 0; k < w.n_iter; ++k) {
        if (k >= w.my_n) {
            if constexpr (G::kDS == 2)
                bar_sync(1 + pair, 2 * FA_WARP_SIZE);
            continue;
        }
        cp_async_wait_pending(w.stages - 1);
        __syncwarp(); /* the other lanes' copies of chunk k are visible */
        const uint32_t slot_addr = w.ring + slot * G::kSlotBytes;
        const int c = w.c_first + k * w.streams;
        const bool masked = c >= lm.n_full_max || c < lm.n_full_min;
        float4 *mine = xchg + (warp * 2 + (k & 1)) * 64;
        const float4 *theirs = xchg + ((warp ^ 1) * 2 + (k & 1)) * 64;
        attend_chunk<G, BF16>(a, st, q, slot_addr, k_lane, v_lane, c * kChunk, masked, lm, mine,
                              theirs, pair, lane);
        __syncwarp(); /* every lane is done reading the slot */
        if (k + w.stages < w.my_n)
            issue_chunk<G>(a, src, slot_addr, (c + w.stages * w.streams) * kChunk, w.col0, lane);
        cp_async_commit_group();
        slot = slot + 1 == w.stages ? 0 : slot + 1;
    }
}

/* The chunks of one split. Query rows [i_first, i_end) hold the tile's packed rows [r0, r_end);
   their visible chunks [n_min, n_max) (block_range.h) are cut into num_splits runs as even as
   integers allow. A split, or a stream, with no chunk still merges and writes: m = -inf,
   l = 0 make the empty row's out 0 and lse -inf (or the sink) through the same path. */
struct SplitChunks {
    fa_block_range range;
    int c_begin, c_end;
};
__device__ __forceinline__ SplitChunks split_chunks(const Args &a, const fa_mask &mask, int r0, int r_end, int split)
{
    SplitChunks sc;
    const int i_first = r0 / a.group, i_end = (r_end - 1) / a.group + 1;
    sc.range = fa_block_range_rows(&mask, i_first, i_end, kChunk);
    const int n_vis = sc.range.n_max - sc.range.n_min;
    sc.c_begin = sc.range.n_min + static_cast<int>(static_cast<int64_t>(split) * n_vis / a.num_splits);
    sc.c_end = sc.range.n_min + static_cast<int>(static_cast<int64_t>(split + 1) * n_vis / a.num_splits);
    return sc;
}

template <int HDP, bool BF16>
__global__ void __launch_bounds__(kThreads, 1) decode_kernel(const Args a)
{
    using G = Geom<HDP>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    /* The combine (sm_90) may be scheduled now, onto SMs this grid leaves free: it waits for
       this grid's memory itself. */
    fa_sm80::griddepcontrol_launch_dependents();
    const int m_tile = blockIdx.x % a.m_tiles, split = blockIdx.x / a.m_tiles;
    const int hk = blockIdx.y, b = blockIdx.z;
    const fa_seqlen e = fa_seqlen_at(&a.seq, b);
    const int rows = e.len_q * a.group; /* packed rows of the entry */
    const int r0 = m_tile * kRows;
    if (r0 >= rows || split >= a.num_splits)
        return; /* block-uniform: a shorter entry of a packed batch */
    const int r_end = min(r0 + kRows, rows);

    const fa_mask mask = fa_mask_make(e.len_q, e.len_k, a.window_left, a.window_right, a.causal);
    const SplitChunks sc = split_chunks(a, mask, r0, r_end, split);

    const int streams = a.warps / G::kDS;
    const int stream = warp / G::kDS, d_half = warp % G::kDS;
    const int col0 = d_half * G::kWarpDim; /* first head_dim column of this warp */
    const bool streaming = warp < a.warps;
    const int n_split = sc.c_end - sc.c_begin;
    const int my_n = streaming && n_split > stream ? (n_split - stream + streams - 1) / streams : 0;

    const int stages = a.stages;
    const uint32_t ring = smem_base + warp * stages * G::kSlotBytes;
    const uint32_t q_smem = smem_base + a.warps * stages * G::kSlotBytes;
    const uint32_t xchg_off = a.warps * stages * G::kSlotBytes + G::kQBytes;

    load_q_tile<G>(a, e, b, hk, r0, r_end, q_smem, tid);

    /* ---- ring prologue: this warp's chunks 0 .. stages - 1, one commit group each ---- */
    const KVSource src = kv_source(a, e, b, hk, col0);
    const int c_first = sc.c_begin + stream; /* this warp's chunk k is c_first + k * streams */
    fill_ring<G>(a, src, ring, stages, my_n, c_first, streams, col0, lane);
    cp_async_wait_pending(stages); /* the Q group; the prologue's may still fly */
    __syncthreads();

    uint32_t q[G::kQSteps][4];
    load_q_frags<G>(q, q_smem, col0, lane);

    /* Per-lane ldmatrix offsets inside a slot (rows are keys; see sm80_ptx.cuh):
       K (B of Q K^T, plain): matrices (keys 0-7, +0), (keys 0-7, +8), (keys 8-15, +0),
         (keys 8-15, +8) columns: b0, b1 of key tile 0, then of key tile 1.
       V (B of P V, .trans): (keys 0-7, +0), (keys 8-15, +0), (keys 0-7, +8), (keys 8-15, +8):
         b0, b1 of column tile 2n, then of 2n + 1.
       With the swizzle, piece 2j + c of a 128-byte group sits at (2j + c) ^ (row & 7) =
       (c ^ (row & 7)) ^ 2j: step j XORs (j & 3) << 5 into one lane offset. */
    const uint32_t k_lane = ((lane & 7) + (lane >> 4) * 8) * G::kRowBytes +
                            ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
    const uint32_t v_lane = ((lane & 7) + ((lane >> 3) & 1) * 8) * G::kRowBytes +
                            (((lane >> 4) ^ (lane & 7)) << 4);

    const LaneMask lm = lane_mask(mask, sc.range, r0, a.group, hk, lane);

    State<G> st;
    st.init();

    float4 *xchg = reinterpret_cast<float4 *>(smem + xchg_off);
    const int pair = warp >> 1;

    /* ---- main loop: no CTA barrier; each warp waits on its own copies only ---- */
    /* pairs (head_dim 256) all run as many iterations as the busiest stream (stream_chunks) */
    const int n_iter = G::kDS == 2 ? (n_split + streams - 1) / streams : my_n;
    const WarpWalk ww{ring, stages, my_n, n_iter, c_first, streams, col0};
    stream_chunks<G, BF16>(a, src, ww, st, q, lm, xchg, k_lane, v_lane, warp, pair, lane);
    cp_async_wait_group<0>(); /* only empty groups can remain; the ring is reused below */

    /* ---- merge the streams ---- */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
    }
    __syncthreads(); /* every warp is done with its ring and with Q */
    float *area = reinterpret_cast<float *>(smem);
    float *stat_m = reinterpret_cast<float *>(smem + (q_smem - smem_base));
    float *stat_l = stat_m + kWarps * kRows;
    if (streaming)
        stash_state<G>(st, area, stat_m, stat_l, stream, d_half, warp, lane);
    __syncthreads();

    /* Item = (row, 8 columns): out = sum_s f_s O_s / L with f_s = exp2((m_s - M) scale_log2),
       L = sum_s f_s l_s, M = max_s m_s; then score.h's finalisation (sink when unsplit). */
    const float scale_log2 = a.score.scale_log2;
    for (int it = tid; it < kRows * G::kQPieces; it += kThreads) {
        const int rr = it / G::kQPieces, pc = it % G::kQPieces;
        if (r0 + rr >= r_end || pc * 8 >= a.head_dim)
            continue;
        const int dh = pc / G::kPieces, pl = pc % G::kPieces;
        float mx = -INFINITY;
        for (int s = 0; s < streams; ++s)
            mx = fmaxf(mx, stat_m[s * kRows + rr]);
        const float base = mx == -INFINITY ? 0.f : mx * scale_log2;
        float sum = 0.f;
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            acc[j] = 0.f;
        for (int s = 0; s < streams; ++s) {
            const float f = exp2f(stat_m[s * kRows + rr] * scale_log2 - base);
            sum += f * stat_l[s * kRows + rr];
            const float4 *o = reinterpret_cast<const float4 *>(
                area + (s * G::kDS + dh) * (kRows * G::kWarpDim) + rr * G::kWarpDim +
                ((pl ^ (rr & 7)) << 3));
            const float4 lo = o[0], hi = o[1];
            acc[0] = fmaf(f, lo.x, acc[0]);
            acc[1] = fmaf(f, lo.y, acc[1]);
            acc[2] = fmaf(f, lo.z, acc[2]);
            acc[3] = fmaf(f, lo.w, acc[3]);
            acc[4] = fmaf(f, hi.x, acc[4]);
            acc[5] = fmaf(f, hi.y, acc[5]);
            acc[6] = fmaf(f, hi.z, acc[6]);
            acc[7] = fmaf(f, hi.w, acc[7]);
        }
        const RowOf x = row_of(r0 + rr, a.group, hk);
        const bool unsplit = a.num_splits == 1;
        float inv, lse;
        fa_row_finalize(fa_row_max_logit(mx, &a.score), sum,
                        unsplit ? fa_sink(a.sinks, x.h) : -INFINITY, &inv, &lse);
        if (unsplit) {
            uint4 v;
            v.x = pack_pair<BF16>(acc[0] * inv, acc[1] * inv);
            v.y = pack_pair<BF16>(acc[2] * inv, acc[3] * inv);
            v.z = pack_pair<BF16>(acc[4] * inv, acc[5] * inv);
            v.w = pack_pair<BF16>(acc[6] * inv, acc[7] * inv);
            uint16_t *dst = static_cast<uint16_t *>(a.out) +
                            fa_q_row_offset(&e, b, x.i, a.o_batch_stride, a.o_row_stride) +
                            static_cast<int64_t>(x.h) * a.o_head_stride + pc * 8;
            *reinterpret_cast<uint4 *>(dst) = v;
            if (a.lse != nullptr && pc == 0)
                a.lse[fa_lse_index(&a.seq, &e, b, a.heads_q, x.h, x.i)] = lse;
        } else {
            const int64_t row =
                ((static_cast<int64_t>(split) * a.batch + b) * a.heads_q + x.h) * a.seq.seqlen_q + x.i;
            float4 *dst = reinterpret_cast<float4 *>(a.o_partial + row * a.head_dim + pc * 8);
            dst[0] = make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
            dst[1] = make_float4(acc[4] * inv, acc[5] * inv, acc[6] * inv, acc[7] * inv);
            if (pc == 0)
                a.lse_partial[row] = lse;
        }
    }
}

} /* namespace fa_decode */

#endif /* FA_SM80_DECODE_KERNEL_CUH */
