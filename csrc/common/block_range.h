/*
 * block_range.h -- which key blocks a group of query rows visits, and which of them need the
 * element mask (mask.h). One function for causal, window and, later, split-KV ranges.
 *
 * Rows [row_begin, row_end) of one sequence (row_end <= len_q) against keys cut into blocks
 * of block_n: block n holds keys [n * block_n, (n + 1) * block_n).
 *
 *   visited   n_min <= n < n_max     the blocks that hold a key some row sees; none are
 *                                    loaded outside it (n_max == n_min: the rows see no key)
 *   unmasked  n_full_min <= n < n_full_max   every key of the block is seen by every row
 *                                    (and lies below len_k); a subrange of the visited one
 *
 * The masked blocks sit at both ends of the visited range: above n_full_max (the causal or
 * right-window edge, and the ragged last block) and below n_full_min (the left-window edge).
 * Because a row's span only slides right as the row grows, the union of the spans is
 * [span(row_begin).lo, span(row_end - 1).hi] and the keys all rows share are
 * [span(row_end - 1).lo, span(row_begin).hi].
 */
#ifndef FA_COMMON_BLOCK_RANGE_H
#define FA_COMMON_BLOCK_RANGE_H

#include "mask.h"

typedef struct {
    int n_min, n_max;
    int n_full_min, n_full_max;
} fa_block_range;

FA_HD fa_block_range fa_block_range_rows(const fa_mask *m, int row_begin, int row_end, int block_n)
{
    fa_block_range r = {0, 0, 0, 0};
    if (row_end <= row_begin || m->len_k <= 0)
        return r;
    const fa_key_span first = fa_mask_row(m, row_begin);
    const fa_key_span last = fa_mask_row(m, row_end - 1);
    if (last.hi < first.lo)
        return r;
    r.n_min = first.lo / block_n;
    r.n_max = last.hi / block_n + 1;
    /* Keys every row sees: [last.lo, first.hi]; first.hi may be negative (row_begin sees none). */
    r.n_full_min = fa_imax(r.n_min, (last.lo + block_n - 1) / block_n);
    r.n_full_max = fa_imin(r.n_max, first.hi < 0 ? 0 : (first.hi + 1) / block_n);
    if (r.n_full_max < r.n_full_min)
        r.n_full_max = r.n_full_min;
    return r;
}

FA_HD int fa_block_needs_mask(const fa_block_range *r, int n)
{
    return n < r->n_full_min || n >= r->n_full_max;
}

#endif /* FA_COMMON_BLOCK_RANGE_H */
