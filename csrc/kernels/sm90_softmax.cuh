/*
 * sm90_softmax.cuh -- online softmax on a warpgroup's score fragment (64 rows x BN keys).
 *
 * Each thread holds two rows (see sm90_mask.cuh for the fragment layout); the four threads of
 * a quad (lanes 4g..4g+3) share a row, so a row max takes two xor-shuffles. Base 2 with the
 * scale folded in: P = exp2(s * scale_log2 - m * scale_log2), one FFMA + one MUFU.EX2 each,
 * with m the running row max of the raw scores. The row sum stays per thread until
 * finalize. A row with no visible key keeps m = -inf and l = 0: its P are exactly 0 (the max
 * is replaced by 0 before the subtraction, so -inf - -inf never happens), and finalize gives
 * out = 0, lse = -inf. scale_log2 is > 0 (the launcher clamps a zero scale to FLT_MIN), so
 * -inf * scale_log2 stays -inf.
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_SOFTMAX_CUH
#define FA_SM90_SOFTMAX_CUH

#include <stdint.h>

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
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = m[r];
#pragma unroll
        for (int i = 0; i < kNs / 4; ++i) mx = fmaxf(mx, fmaxf(s[4 * i + 2 * r], s[4 * i + 2 * r + 1]));
        mx = quad_max(mx);
        const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        corr[r] = exp2f(m[r] * scale_log2 - m_scaled);
        m[r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < kNs / 4; ++i) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float p = exp2f(fmaf(s[4 * i + 2 * r + e], scale_log2, -m_scaled));
                s[4 * i + 2 * r + e] = p;
                sum += p;
            }
        }
        l[r] = fmaf(l[r], corr[r], sum);
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

// Completes the row sums across the quad; inv_l = 1/l (0 for an empty row) and the natural-log
// LSE = m * scale + log(l) (-inf for an empty row).
__device__ __forceinline__ void softmax_finalize(const float (&m)[2], const float (&l)[2], float scale_log2,
                                                 float (&inv_l)[2], float (&lse)[2]) {
    const float kLn2 = 0.6931471805599453f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float sum = quad_sum(l[r]);
        const bool has_keys = sum > 0.f;
        inv_l[r] = has_keys ? 1.f / sum : 0.f;
        lse[r] = has_keys ? (m[r] * scale_log2) * kLn2 + logf(sum) : -INFINITY;
    }
}

}  // namespace fa_sm90

#endif /* FA_SM90_SOFTMAX_CUH */
