/*
 * sm80_bwd_math.cuh -- the maths of one query block against the CTA's keys, one warp's share
 * of each GEMM (warp layouts: sm80_bwd_config.cuh):
 *
 *   S  = Q K^T, dP = dO V^T                          (sdp_block, BM x BN, K = head_dim)
 *   t  = S, or tanh(S * softcap_pre)                 (score.h)
 *   P  = exp2(t * scale_log2 - lse * log2(e)),  0 where mask.h hides the key, and in rows
 *        past seqlen_q or with lse = -inf (their lse term is +inf instead: never -inf - -inf)
 *   dS = P * (dP - delta), times (1 - t^2) with softcap
 *   P and dS go to shared memory as 16-bit rows, then
 *   dV += P^T dO, dK += dS^T Q                       (kv_gemm, BN x head_dim, K = BM)
 *   dQ  = dS K                                       (dq_gemm, BM x head_dim, K = BN)
 *
 * warp_gemm runs one warp tile of any of them from ldmatrix operands (SmemOperand): k16 steps
 * outermost, so every accumulator of the tile is an independent chain between two steps.
 */
#ifndef FA_SM80_BWD_MATH_CUH
#define FA_SM80_BWD_MATH_CUH

#include "../common/mask.h"
#include "../common/score.h"
#include "sm80_bwd_config.cuh"

namespace fa_sm80 {

/* acc[MT][NT] += A B over KS k16 steps, MT m16 tiles by NT n8 tiles.
   A_KM false: A stored m x k, read plain (pattern X); at(16 mt, 2 ks).
   A_KM true:  A stored k x m, read .trans (pattern Y); at(16 ks, 2 mt).
   B_KN true:  B stored k x n, read .trans (pattern X), pairs of n8 tiles; at(16 ks, 2 j).
   B_KN false: B stored n x k, read plain: pairs of n8 tiles through b (pattern Y) at
               (16 j, 2 ks); an odd last tile through bz (pattern Z), two k16 steps per load. */
template <bool BF16, int MT, int NT, int KS, bool A_KM, bool B_KN, int STEPS = kGemmStepsInFlight,
          class AO, class BO, class BZ>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const AO &a, const BO &b,
                                          const BZ &bz)
{
    static_assert(!B_KN || NT % 2 == 0, ".trans B loads pairs of n8 tiles");
    static_assert(NT % 2 == 0 || KS % 2 == 0, "a lone n8 tile loads two k16 steps at once");
    uint32_t z[4];
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        if (ks > 0 && ks % STEPS == 0)
            __syncwarp();
        uint32_t af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if constexpr (A_KM)
                ldmatrix_x4_trans(af[mt], a.at(ks * 16, mt * 2));
            else
                ldmatrix_x4(af[mt], a.at(mt * 16, ks * 2));
        }
#pragma unroll
        for (int j = 0; j < NT / 2; ++j) {
            uint32_t bf[4];
            if constexpr (B_KN)
                ldmatrix_x4_trans(bf, b.at(ks * 16, j * 2));
            else
                ldmatrix_x4(bf, b.at(j * 16, ks * 2));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_m16n8k16<BF16>(acc[mt][2 * j], af[mt], bf[0], bf[1]);
                mma_m16n8k16<BF16>(acc[mt][2 * j + 1], af[mt], bf[2], bf[3]);
            }
        }
        if constexpr (NT % 2 == 1) {
            if (ks % 2 == 0)
                ldmatrix_x4(z, bz.at((NT - 1) * 8, ks * 2));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                mma_m16n8k16<BF16>(acc[mt][NT - 1], af[mt], z[(ks % 2) * 2], z[(ks % 2) * 2 + 1]);
        }
    }
}

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4])
{
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
}

/* acc = X Y^T for NT n8 tiles of the warp's S/dP tile from its tile nt0 on, all kSdpMT m16
   tiles: X (Q or dO) at x_off, Y (K or V) at y_off. */
template <class C, bool BF16, int NT>
__device__ __forceinline__ void sdp_gemm(float (&acc)[C::kSdpMT][NT][4], uint32_t smem_base,
                                         uint32_t x_off, int y_off, int nt0)
{
    constexpr int RB = C::kRowBytes;
    const int tid = reread_thread_index();
    const int lane = tid & 31, wm = (tid >> 5) / C::kSdpWN, wn = (tid >> 5) % C::kSdpWN;
    const int key = wn * C::kSdpN + nt0 * 8;
    const auto x = make_operand<true, RB>(smem_base + x_off, wm * C::kSdpM, 0, lane_row_x(lane),
                                          lane_chunk_x(lane));
    const auto y =
        make_operand<true, RB>(smem_base + y_off, key, 0, lane_row_y(lane), lane_chunk_y(lane));
    const auto yz =
        make_operand<true, RB>(smem_base + y_off, key, 0, lane_row_z(lane), lane_chunk_z(lane));
    zero_acc(acc);
    warp_gemm<BF16, C::kSdpMT, NT, C::kSdpKS, false, false, C::kSdpSteps>(acc, x, y, yz);
}

/* Both keys of a fragment pair against one row's span (mask.h). */
__device__ __forceinline__ bool key_in_span(const fa_key_span &s, int key)
{
    return key >= s.lo && key <= s.hi;
}

/* P of one n8 tile of S (in place: s becomes what dS multiplies, P or P (1 - t^2) with
   softcap), stored to the P rows at p_lo (row g) and p_lo + 8 rows. */
template <class C, bool BF16, bool SOFTCAP>
__device__ __forceinline__ void p_tile(float (&s)[4], unsigned char *p_lo, const float (&lse2)[2],
                                       bool masked, const fa_key_span (&span)[2], int key,
                                       const fa_score &score)
{
    float pv[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        float x = s[e];
        if constexpr (SOFTCAP)
            x = tanh_approx_f32(x * score.softcap_pre);
        float pe = exp2f(fmaf(x, score.scale_log2, -lse2[e >> 1]));
        if (masked && !key_in_span(span[e >> 1], key + (e & 1)))
            pe = 0.f;
        pv[e] = pe;
        s[e] = SOFTCAP ? pe * (1.f - x * x) : pe;
    }
    *reinterpret_cast<uint32_t *>(p_lo) = pack2<BF16>(pv[0], pv[1]);
    *reinterpret_cast<uint32_t *>(p_lo + 8 * C::kPSRowBytes) = pack2<BF16>(pv[2], pv[3]);
}

/* dS = s (dP - delta) of one n8 tile, stored like P. */
template <class C, bool BF16>
__device__ __forceinline__ void ds_tile(const float (&s)[4], const float (&dp)[4],
                                        unsigned char *ds_lo, float d_lo, float d_hi)
{
    *reinterpret_cast<uint32_t *>(ds_lo) = pack2<BF16>(s[0] * (dp[0] - d_lo), s[1] * (dp[1] - d_lo));
    *reinterpret_cast<uint32_t *>(ds_lo + 8 * C::kPSRowBytes) =
        pack2<BF16>(s[2] * (dp[2] - d_hi), s[3] * (dp[3] - d_hi));
}

/* S, P, dP and dS of the warp's tile of one query block; P and dS are stored to shared memory.
   stage: the Q, dO, lse and delta buffers of the block; row0: the block's first query row, key0: the CTA's first key (absolute); masked: the block
   needs the element mask (block_range.h). S is held whole while dP runs in passes of
   kSdpDpTiles n8 tiles (of every m16 tile), each giving its dS: a whole dP beside S did not
   fit next to dK and dV at head_dim 64. (dP first, then S in passes, with the wait for Q
   between them, so that Q's copy could overlap the dP GEMM, measured 5% slower at head_dim 128
   and spilled.) */
template <class C, bool BF16, bool SOFTCAP>
__device__ __forceinline__ void sdp_block(uint32_t smem_base, unsigned char *smem, int stage, int row0,
                                          int key0, int len_q, bool masked, const fa_mask &mask,
                                          const fa_score &score)
{
    constexpr int MT = C::kSdpMT;
    constexpr int NT = C::kSdpNT;
    constexpr int DT = C::kSdpDpTiles;
    const int tid = reread_thread_index();
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / C::kSdpWN, wn = warp % C::kSdpWN;
    const int g = lane >> 2, t4 = lane & 3;
    const int r_lo = wm * C::kSdpM + g; /* block rows r_lo + 16 mt and r_lo + 16 mt + 8 */
    const int col0 = wn * C::kSdpN + 2 * t4;
    unsigned char *p_lo = smem + C::kPOffset + r_lo * C::kPSRowBytes + col0 * 2;
    unsigned char *ds_lo = smem + C::kDSOffset + r_lo * C::kPSRowBytes + col0 * 2;
    constexpr int kMtBytes = 16 * C::kPSRowBytes; /* from one m16 tile's rows to the next's */

    float s[MT][NT][4];
    sdp_gemm<C, BF16, NT>(s, smem_base, C::q_at(stage), C::kKOffset, 0);

    /* what the elementwise pass needs of the rows: lse (base 2, +inf where P must be 0),
       delta, and the spans in masked blocks */
    const float *lse_s = reinterpret_cast<const float *>(smem + C::lse_at(stage));
    const float *delta_s = reinterpret_cast<const float *>(smem + C::delta_at(stage));
    float lse2[MT][2], d[MT][2];
    fa_key_span span[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r_lo + 16 * mt + 8 * h;
            const float l = lse_s[r];
            lse2[mt][h] = (row0 + r < len_q && l != -INFINITY) ? l * FA_LOG2E : INFINITY;
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        d[mt][0] = delta_s[r_lo + 16 * mt];
        d[mt][1] = delta_s[r_lo + 16 * mt + 8];
    }
    if (masked) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            span[mt][0] = fa_mask_row(&mask, row0 + r_lo + 16 * mt);
            span[mt][1] = fa_mask_row(&mask, row0 + r_lo + 16 * mt + 8);
        }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            p_tile<C, BF16, SOFTCAP>(s[mt][nt], p_lo + mt * kMtBytes + nt * 16, lse2[mt], masked,
                                     span[mt], key0 + col0 + nt * 8, score);
    /* keeps dP's fragment loads from being hoisted into the exp2/tanh pass above, where they
       spilled on sm_90 */
    __syncwarp();
#pragma unroll
    for (int c0 = 0; c0 < NT; c0 += DT) {
        float dp[MT][DT][4];
        sdp_gemm<C, BF16, DT>(dp, smem_base, C::do_at(stage), C::kVOffset, c0);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < DT; ++j)
                ds_tile<C, BF16>(s[mt][c0 + j], dp[mt][j], ds_lo + mt * kMtBytes + (c0 + j) * 16,
                                 d[mt][0], d[mt][1]);
    }
}

/* acc += A^T B for the warp's dK/dV tile: A (P or dS, BM x BN) at a_off, B (dO or Q) at b_off. */
template <class C, bool BF16>
__device__ __forceinline__ void kv_gemm(float (&acc)[C::kKvMT][C::kKvNT][4], uint32_t smem_base,
                                        int a_off, uint32_t b_off)
{
    const int tid = reread_thread_index();
    const int lane = tid & 31, warp = tid >> 5;
    const int wn = warp / C::kKvWD, wd = warp % C::kKvWD;
    const auto a = make_operand<false, C::kPSRowBytes>(smem_base + a_off, 0, wn * C::kKvM / 8,
                                                       lane_row_y(lane), lane_chunk_y(lane));
    const auto b = make_operand<true, C::kRowBytes>(smem_base + b_off, 0, wd * C::kKvD / 8,
                                                    lane_row_x(lane), lane_chunk_x(lane));
    warp_gemm<BF16, C::kKvMT, C::kKvNT, C::kKvKS, true, true>(acc, a, b, b);
}

/* dQ = dS K for the warp's dQ tile in pass PASS (warp < kDqWarps). */
template <class C, bool BF16, int PASS>
__device__ __forceinline__ void dq_gemm(float (&acc)[C::kDqMT][C::kDqNT][4], uint32_t smem_base)
{
    const int tid = reread_thread_index();
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / C::kDqWD, wd = warp % C::kDqWD;
    const auto a = make_operand<false, C::kPSRowBytes>(smem_base + C::kDSOffset, wm * C::kDqM, 0,
                                                       lane_row_x(lane), lane_chunk_x(lane));
    const auto b = make_operand<true, C::kRowBytes>(smem_base + C::kKOffset, 0,
                                                    (PASS * C::kDqPassCols + wd * C::kDqD) / 8,
                                                    lane_row_x(lane), lane_chunk_x(lane));
    zero_acc(acc);
    warp_gemm<BF16, C::kDqMT, C::kDqNT, C::kDqKS, false, true>(acc, a, b, b);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_BWD_MATH_CUH */
