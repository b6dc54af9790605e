/*
 * sm90_softmax.cuh -- online softmax on a warpgroup's score fragment (64 rows x BN keys).
 *
 * Each thread holds two rows (see sm90_mask.cuh for the fragment layout); the four threads of
 * a quad (lanes 4g..4g+3) share a row, so a row max takes two xor-shuffles. Base 2 with the
 * scale folded in: P = exp2(s * scale_log2 - m * scale_log2), one FFMA + one exponential each,
 * with m the running row max of the raw scores. The row sum stays per thread until
 * finalize. A row with no visible key keeps m = -inf and l = 0: its P are exactly 0 (the max
 * is replaced by 0 before the subtraction, so -inf - -inf never happens), and finalize gives
 * out = 0, lse = -inf. scale_log2 is in [FLT_MIN, 2^64] (common/score.h), so -inf *
 * scale_log2 stays -inf and no scaled score overflows.
 *
 * Two forms, chosen per head dim in fwd_sm90.cu. Eager (online_softmax): m follows every
 * block, so O is rescaled every block. Lazy (online_softmax_lazy): m is a reference that moves
 * only when a block's max exceeds it by more than 2^8, so most blocks skip the O rescale (64
 * to 128 FMULs per thread at head_dim 128-256).
 *
 * Exponentials run on MUFU.EX2 (16 lanes per clock per SM): by those rates the exponentials of
 * a head_dim 64 tile take about as long as its two GEMMs. A share of them computed on the FMA
 * pipe by a degree-3 polynomial (exp2_fma) measured slower at 1/8, 2/8 and 3/8 on an H200 with
 * two consumer warpgroups, as did 2 and 4 independent chains of the row max (benches/NOTES.md,
 * sm90 v5 and v6), and three consumer warpgroups with it (issue 17). With softcap, where MUFU
 * computes tanh as well, it gained nothing worth a second kind of instance (H100: 1/8-3/8 at
 * head_dim 128 causal 0.97-1.00x, 2/8-3/8 at head_dim 64 0.99-1.02x, 4/8 0.92-0.96x;
 * dev/fwd_sm90_consumers.cu --bench-softcap). The library's instances take none (kFmaEighths = 0).
 *
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_SOFTMAX_CUH
#define FA_SM90_SOFTMAX_CUH

#include <stdint.h>

#include "../common/score.h"
#include "sm90_ptx.cuh"

namespace fa_sm90 {

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    return x;
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// Scores -> unnormalised probabilities in place. corr[r] = exp2((m_old - m_new) * scale_log2)
// rescales what was accumulated under the old max (0 when the old max was -inf).
template <int kNs>
__device__ __forceinline__ void online_softmax(float (&s)[kNs], float (&m)[2], float (&l)[2], float scale_log2,
                                               float (&corr)[2]) {
    constexpr int kGroups = kNs / 4;  // 8-column groups per row
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float row_max = m[r];
#pragma unroll
        for (int i = 0; i < kGroups; ++i) row_max = fmaxf(row_max, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
        row_max = quad_max(row_max);
        const float m_scaled = row_max == -INFINITY ? 0.f : row_max * scale_log2;
        corr[r] = exp2f(m[r] * scale_log2 - m_scaled);
        m[r] = row_max;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < kGroups; ++i) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float x = fmaf(s[4 * i + 2 * r + e], scale_log2, -m_scaled);
                const float p = exp2f(x);
                s[4 * i + 2 * r + e] = p;
                sum += p;
            }
        }
        l[r] = fmaf(l[r], corr[r], sum);
    }
}

// The lazy form below takes both rows' maxima before any exponential (the warp votes on the O
// rescale once), so it computes them apart; the eager form above keeps max and exponentials of
// a row in one pass, which lets ptxas overlap row 1's max with row 0's exponentials (composed
// from block_row_max, it measured up to 13% slower at head_dim 64 causal).

// Row maxima of this block's scores alone (both rows of the thread, completed across the quad).
template <int kNs>
__device__ __forceinline__ void block_row_max(const float (&s)[kNs], float (&bmax)[2]) {
    constexpr int kGroups = kNs / 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float row_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kGroups; ++i) row_max = fmaxf(row_max, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
        bmax[r] = quad_max(row_max);
    }
}

// Multiplies each accumulator row by its factor (O under the old max -> O under the new max).
template <int kNo>
__device__ __forceinline__ void rescale_rows(float (&o)[kNo], const float (&f)[2]) {
#pragma unroll
    for (int i = 0; i < kNo / 4; ++i) {
        o[4 * i + 0] *= f[0];
        o[4 * i + 1] *= f[0];
        o[4 * i + 2] *= f[1];
        o[4 * i + 3] *= f[1];
    }
}

template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    uint32_t r;
    if constexpr (kBf16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

// The f32 accumulator fragment of S (64 x BN) converted pairwise is the A-register fragment of
// the P V wgmma: for k-step kk (keys 16kk..16kk+15) the four A registers are
// (row g, keys 2t..), (row g+8, keys 2t..), (row g, keys 8+2t..), (row g+8, keys 8+2t..),
// which are accumulator pairs 8kk+{0,1}, {2,3}, {4,5}, {6,7}. So no shuffle is needed.
template <bool kBf16, int kNs>
__device__ __forceinline__ void pack_probs(const float (&s)[kNs], uint32_t (&p)[kNs / 2]) {
#pragma unroll
    for (int j = 0; j < kNs / 2; ++j) p[j] = pack2<kBf16>(s[2 * j], s[2 * j + 1]);
}

// Lazy rescaling. The running max m is only a reference: a row whose block scores stay within
// 2^FA_SM90_LAZY_RESCALE_LOG2 of it is exponentiated against it unchanged, so its
// probabilities may exceed 1 (up to 256: exact in fp32 sums and in 16-bit P, whose precision
// is relative) and neither its O nor its l needs rescaling. O / l and lse = m * scale + log(l)
// are the same for any reference. Every decision is per row (a quad shares its row max), so a
// row's result never depends on its neighbours (a NaN row leaves the others bitwise as they
// were); only whether the warp runs the O rescale at all, by 1.0 for the rows that keep their
// reference, is decided per warp.
#define FA_SM90_LAZY_RESCALE_LOG2 8.0f

// Whether a row whose reference max is m must move it for a block whose max is bmax: also
// from a reference of -inf (no key seen yet), and for NaN.
__device__ __forceinline__ bool outgrows(float bmax, float m, float scale_log2) {
    return !((bmax - m) * scale_log2 <= FA_SM90_LAZY_RESCALE_LOG2);
}

// 2^x on the FMA pipe, for x <= 127 (lazy rescaling keeps x <= FA_SM90_LAZY_RESCALE_LOG2):
// 2^x = 2^n 2^f with n = round(x), f in [-1/2, 1/2], 2^f by a degree-3 polynomial (relative
// error below 1.2e-4, under float16's rounding of P; tests/test_exp2_fma.py), n added
// to the exponent field. x is clamped to -127 first: x = -inf (a masked score) then gives
// f = 0, p = 1.0 and a result of exactly +0.0, as MUFU.EX2.FTZ does; x in [-127, -126.5)
// gives p >= 1 and a denormal or 0, never a wrapped sign. A NaN x passes the clamp (max.NaN)
// and the last step adds 0 * x, so the result is NaN, as MUFU's is: the integer add alone
// would turn NaN's bits into a finite number.
__device__ __forceinline__ float exp2_fma(float x) {
    constexpr float kRoundShift = 12582912.f;  // 1.5 * 2^23: x + it holds round(x) in its low mantissa bits
    constexpr float kC1 = 0.69328290f, kC2 = 0.24221097f, kC3 = 0.05500893f;
    constexpr float kLowest = -127.f;
    x = max_nan_f32(x, kLowest);
    const float shifted = __fadd_rn(x, kRoundShift);
    const float n = __fadd_rn(shifted, -kRoundShift);
    const float f = __fadd_rn(x, -n);
    float p = fmaf(kC3, f, kC2);
    p = fmaf(p, f, kC1);
    p = fmaf(p, f, 1.f);
    // The shifted float's bits are 0x4B400000 + n; shifted left by 23 the constant part leaves
    // the 32-bit word and n lands in the exponent field (unsigned: the shift drops those bits).
    const float r = __uint_as_float(__float_as_uint(p) + (__float_as_uint(shifted) << 23));
    return fma_rn_f32(x, 0.f, r);
}

// In place, max first. Returns whether any row of the warp moved its max: O must then be
// rescaled by corr (1 for the rows that did not). Warp-uniform. kFmaEighths of every 8
// eight-column groups of a row take exp2_fma instead of MUFU.
template <int kFmaEighths = 0, int kNs>
__device__ __forceinline__ bool online_softmax_lazy(float (&s)[kNs], float (&m)[2], float (&l)[2], float scale_log2,
                                                    float (&corr)[2]) {
    static_assert(kFmaEighths >= 0 && kFmaEighths <= 8, "eighths of the exponentials on the FMA pipe");
    constexpr int kGroups = kNs / 4;
    float bmax[2];
    block_row_max(s, bmax);
    bool grow[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        grow[r] = outgrows(bmax[r], m[r], scale_log2);
        const float m_new = grow[r] ? fmaxf(m[r], bmax[r]) : m[r];
        const float m_scaled = m_new == -INFINITY ? 0.f : m_new * scale_log2;
        corr[r] = grow[r] ? exp2f(m[r] * scale_log2 - m_scaled) : 1.f;
        m[r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < kGroups; ++i) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float x = fmaf(s[4 * i + 2 * r + e], scale_log2, -m_scaled);
                const float p = (i % 8) < kFmaEighths ? exp2_fma(x) : exp2f(x);
                s[4 * i + 2 * r + e] = p;
                sum += p;
            }
        }
        l[r] = grow[r] ? fmaf(l[r], corr[r], sum) : l[r] + sum;
    }
    return __any_sync(0xffffffffu, grow[0] || grow[1]);
}

// Completes the row sums across the quad, then common/score.h's row end: inv_l scales O, lse is
// the natural log of the denominator, sink included (fa_sink of the row's head).
__device__ __forceinline__ void softmax_finalize(const float (&m)[2], const float (&l)[2], const fa_score &score,
                                                 float sink, float (&inv_l)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
        fa_row_finalize(fa_row_max_logit(m[r], &score), quad_sum(l[r]), sink, &inv_l[r], &lse[r]);
}

}  // namespace fa_sm90

#endif /* FA_SM90_SOFTMAX_CUH */
