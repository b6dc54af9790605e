/*
 * sm90_mask.cuh -- which key blocks a 128-row query tile visits, and the score mask.
 *
 * Causal is bottom-right aligned: key j is visible to query i iff j <= i + len_k - len_q.
 * Blocks entirely above the diagonal are never loaded (n_max); only blocks from n_mask_lo up
 * (the ones crossing the diagonal or the ragged end of the keys) are masked. Blocks are
 * visited in descending order, so the masked ones come first.
 *
 * Scores live in the wgmma accumulator fragment of one warpgroup (64 rows x BN columns):
 * thread (warp w, lane L) holds rows 16w + L/4 and 16w + L/4 + 8, and in every 8-column
 * group i the columns 8i + 2(L%4) and +1; s[4i + 2r + e] is row r (0, 1), column 8i + 2(L%4) + e.
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_MASK_CUH
#define FA_SM90_MASK_CUH

namespace fa_sm90 {

struct KeyBlockRange {
    int n_max;      // blocks [0, n_max) are visited; 0: the tile sees no key
    int n_mask_lo;  // blocks n >= n_mask_lo need the mask
};

__host__ __device__ __forceinline__ int ceil_div_pos(int a, int b) { return (a + b - 1) / b; }

__host__ __device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

template <int kBlockM, int kBlockN, bool kCausal>
__host__ __device__ __forceinline__ KeyBlockRange key_block_range(int m_block, int len_q, int len_k) {
    const int n_all = ceil_div_pos(len_k, kBlockN);
    KeyBlockRange r;
    r.n_max = n_all;
    r.n_mask_lo = n_all;
    if (kCausal) {
        // The tile's last real row sees keys [0, end_row + len_k - len_q).
        const int end_row = min((m_block + 1) * kBlockM, len_q);
        const int visible_end = end_row + len_k - len_q;
        r.n_max = visible_end <= 0 ? 0 : min(n_all, ceil_div_pos(visible_end, kBlockN));
        // The tile's first row sees keys up to diag; a block whose last key is beyond it is masked.
        const int diag = m_block * kBlockM + len_k - len_q;
        r.n_mask_lo = max(0, floor_div(diag + 1, kBlockN));
    }
    if (len_k % kBlockN != 0) r.n_mask_lo = min(r.n_mask_lo, n_all - 1);
    r.n_mask_lo = min(r.n_mask_lo, r.n_max);
    return r;
}

// Key blocks seen by the query rows [row_begin, row_end) of one warpgroup, inside its tile's
// range (row_end <= len_q; no rows see none). The same rule as key_block_range, kept apart
// because folding the tile's range into it measured slower (head_dim 64, up to 6%).
template <int kBlockN>
__host__ __device__ __forceinline__ KeyBlockRange causal_key_block_range_rows(int row_begin, int row_end, int len_q,
                                                                             int len_k) {
    const int n_all = ceil_div_pos(len_k, kBlockN);
    const int visible_end = row_end + len_k - len_q;
    KeyBlockRange r;
    r.n_max = row_end <= row_begin || visible_end <= 0 ? 0 : min(n_all, ceil_div_pos(visible_end, kBlockN));
    r.n_mask_lo = max(0, floor_div(row_begin + len_k - len_q + 1, kBlockN));
    if (len_k % kBlockN != 0) r.n_mask_lo = min(r.n_mask_lo, n_all - 1);
    r.n_mask_lo = min(r.n_mask_lo, r.n_max);
    return r;
}

// Sets masked scores to -inf. row0: query index (within the batch) of this thread's first row.
template <int kBlockN, bool kCausal>
__device__ __forceinline__ void mask_scores(float (&s)[kBlockN / 2], int n_block, int row0, int len_q, int len_k,
                                            int lane) {
    const int col0 = n_block * kBlockN + 2 * (lane & 3);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int limit = len_k - 1;
        if (kCausal) limit = min(limit, row0 + 8 * r + len_k - len_q);
        // Compare against a per-row offset so every element costs one integer compare + select.
        const int rel = limit - col0;
#pragma unroll
        for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                if (8 * i + e > rel) s[4 * i + 2 * r + e] = -INFINITY;
            }
        }
    }
}

}  // namespace fa_sm90

#endif /* FA_SM90_MASK_CUH */
