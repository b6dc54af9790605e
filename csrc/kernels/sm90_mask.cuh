/*
 * sm90_mask.cuh -- the shared mask rule (common/mask.h) and block range (common/block_range.h)
 * applied to a warpgroup's score fragment, and the score hook (common/score.h) on it.
 *
 * Key blocks are visited in descending order, n_max - 1 down to n_min, so the blocks at the
 * causal or right-window edge (and the ragged end of the keys) come first and those at the
 * left-window edge last; only blocks outside [n_full_min, n_full_max) are masked. Instances
 * without a window know n_min = n_full_min = 0 at compile time. The window instances also
 * serve appended keys, whose block 0 may hold keys below mask.first_key (sm90_scheduler.cuh's
 * key_origin_shift): their lower edge is a window's.
 *
 * Scores live in the wgmma accumulator fragment of one warpgroup (64 rows x BN columns):
 * thread (warp w, lane L) holds rows 16w + L/4 and 16w + L/4 + 8, and in every 8-column
 * group i the columns 8i + 2(L%4) and +1; s[4i + 2r + e] is row r (0, 1), column 8i + 2(L%4) + e.
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_MASK_CUH
#define FA_SM90_MASK_CUH

#include "../common/block_range.h"
#include "kernels.h"
#include "sm90_ptx.cuh"

namespace fa_sm90 {

// The mask of one sequence as an instance sees it. Full and causal instances build it with
// constant edges, so the compiler folds the window arithmetic away: (-1, 0) is already
// normalised for any sequence with a query row (len_q >= 1, the only ones a tile visits).
template <int kMask>
__device__ __forceinline__ fa_mask make_mask(int len_q, int len_k, int window_left, int window_right) {
    if constexpr (kMask == FA_MASK_LOCAL) return fa_mask_make(len_q, len_k, window_left, window_right, 0);
    fa_mask m;
    m.len_q = len_q;
    m.len_k = len_k;
    m.left = -1;
    m.right = kMask == FA_MASK_CAUSAL ? 0 : -1;
    m.first_key = 0;
    return m;
}

template <int kMask>
__device__ __forceinline__ int first_block(const fa_block_range &r) {
    return kMask == FA_MASK_LOCAL ? r.n_min : 0;
}

template <int kMask>
__device__ __forceinline__ bool block_needs_mask(const fa_block_range &r, int n) {
    return kMask == FA_MASK_LOCAL ? fa_block_needs_mask(&r, n) != 0 : n >= r.n_full_max;
}

// Sets the scores of keys a row does not see to -inf. row0: query index (within the sequence)
// of this thread's first row.
template <int kBlockN, int kMask>
__device__ __forceinline__ void mask_scores(float (&s)[kBlockN / 2], int n_block, int row0, const fa_mask &mask,
                                            int lane) {
    const int col0 = n_block * kBlockN + 2 * (lane & 3);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const fa_key_span span = fa_mask_row(&mask, row0 + 8 * r);
        // Per-row offsets, so every element costs one integer compare + select per edge.
        const int rel_hi = span.hi - col0;
        const int rel_lo = span.lo - col0;
#pragma unroll
        for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const bool hidden = 8 * i + e > rel_hi || (kMask == FA_MASK_LOCAL && 8 * i + e < rel_lo);
                if (hidden) s[4 * i + 2 * r + e] = -INFINITY;
            }
        }
    }
}

// The softcap hook: t = tanh(s * softcap_pre), before the mask (common/score.h).
template <int kBlockN>
__device__ __forceinline__ void softcap_scores(float (&s)[kBlockN / 2], float softcap_pre) {
#pragma unroll
    for (int i = 0; i < kBlockN / 2; ++i) s[i] = tanh_approx_f32(s[i] * softcap_pre);
}

}  // namespace fa_sm90

#endif /* FA_SM90_MASK_CUH */
