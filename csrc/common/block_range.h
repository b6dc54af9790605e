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
 * Across query blocks, the same growth gives each block's count of key blocks its shape
 * (fa_block_range_plateau), which orders a persistent kernel's tiles (tile_order.h).
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

/* The key blocks of `rows` rows from row_begin, cut at len_q (a tile's rows, or a warpgroup's:
 * the last ones of a sequence may stop short). */
FA_HD fa_block_range fa_block_range_span(const fa_mask *m, int row_begin, int rows, int block_n)
{
    return fa_block_range_rows(m, row_begin, fa_imin(row_begin + rows, m->len_q), block_n);
}

/* How the key blocks a query block visits change with its index mb (num_m_blocks blocks of
 * block_m rows). Both ends of the visited range only grow with mb, so the count
 *   rises      on [0, begin)        the bottom end held at key block 0, the top end growing
 *   is largest on [begin, end)      both ends moving together (a window inside the keys), or
 *                                   both held (every key block)
 *   falls      on [end, num_m_blocks)   the top end held at the last block, the bottom growing
 * with begin < end, and rising_only when no query block's range leaves key block 0 and the
 * right edge is the diagonal: the count grows with mb to the last block, as under causal.
 * The ends are found by bisection, O(log num_m_blocks) ranges (host, once per launch). */
typedef struct {
    int begin, end;
    int rising_only;
} fa_block_plateau;

FA_HD fa_block_plateau fa_block_range_plateau(const fa_mask *m, int num_m_blocks, int block_m, int block_n)
{
    fa_block_plateau p = {0, num_m_blocks > 0 ? num_m_blocks : 1, 0};
    if (num_m_blocks <= 1)
        return p;
    const int n_top = fa_block_range_span(m, (num_m_blocks - 1) * block_m, block_m, block_n).n_max;
    int lo = 0, hi = num_m_blocks; /* the first block whose range starts above key block 0 */
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (fa_block_range_span(m, mid * block_m, block_m, block_n).n_min > 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    const int bottom_moves = lo;
    lo = 0;
    hi = num_m_blocks - 1; /* the first block whose range reaches the last key block */
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (fa_block_range_span(m, mid * block_m, block_m, block_n).n_max >= n_top)
            hi = mid;
        else
            lo = mid + 1;
    }
    const int top_held = lo;
    p.begin = fa_imin(bottom_moves, top_held);
    p.end = fa_imax(bottom_moves, top_held);
    if (p.begin == p.end) {
        if (p.end < num_m_blocks)
            p.end++;
        else
            p.begin--;
    }
    p.rising_only = m->right == 0 && bottom_moves == num_m_blocks;
    return p;
}

/* The transpose, for kernels that own keys (the backward): keys [key_begin, key_end) of one
 * sequence against query rows cut into blocks of block_m.
 *
 *   visited   m_min <= m < m_max          the query blocks with a row that sees one of the keys
 *   unmasked  m_full_min <= m < m_full_max   every row of the block sees every key (rows and
 *                                         keys inside the lengths)
 *
 * Row i sees a key of the range when span(i).lo <= key_end - 1 and span(i).hi >= key_begin;
 * both ends grow with i, so the rows form one interval. Key block n visits query block m
 * exactly when query block m visits key block n (fa_block_range_rows). */
typedef struct {
    int m_min, m_max;
    int m_full_min, m_full_max;
} fa_row_block_range;

FA_HD fa_row_block_range fa_block_range_cols(const fa_mask *m, int key_begin, int key_end,
                                             int block_m)
{
    fa_row_block_range r = {0, 0, 0, 0};
    /* A block reaching past len_k or below first_key holds hidden keys: never unmasked. */
    const int partial = key_end > m->len_k || key_begin < m->first_key;
    if (key_end > m->len_k)
        key_end = m->len_k;
    if (key_begin < m->first_key)
        key_begin = m->first_key;
    if (key_end <= key_begin || m->len_q <= 0)
        return r;
    const long long d = (long long)m->len_k - m->len_q;
    /* First row whose span reaches key_begin: hi(i) = i + d + right >= key_begin. */
    long long first = m->right < 0 ? 0 : (long long)key_begin - d - m->right;
    /* Last row whose span starts at or before key_end - 1: lo(i) = i + d - left <= key_end - 1. */
    long long last = m->left < 0 ? m->len_q - 1 : (long long)key_end - 1 - d + m->left;
    /* Rows that see every key: hi(i) >= key_end - 1 and lo(i) <= key_begin. */
    long long full_first = m->right < 0 ? 0 : (long long)key_end - 1 - d - m->right;
    long long full_last = m->left < 0 ? m->len_q - 1 : (long long)key_begin - d + m->left;
    if (first < 0)
        first = 0;
    if (last > m->len_q - 1)
        last = m->len_q - 1;
    if (last < first)
        return r;
    r.m_min = (int)(first / block_m);
    r.m_max = (int)(last / block_m) + 1;
    if (full_first < 0)
        full_first = 0;
    if (full_last > m->len_q - 1)
        full_last = m->len_q - 1;
    if (partial || full_last < full_first) {
        r.m_full_min = r.m_full_max = r.m_min;
        return r;
    }
    r.m_full_min = fa_imax(r.m_min, (int)((full_first + block_m - 1) / block_m));
    r.m_full_max = fa_imin(r.m_max, (int)((full_last + 1) / block_m));
    if (r.m_full_max < r.m_full_min)
        r.m_full_max = r.m_full_min;
    return r;
}

FA_HD int fa_row_block_needs_mask(const fa_row_block_range *r, int m)
{
    return m < r->m_full_min || m >= r->m_full_max;
}

#endif /* FA_COMMON_BLOCK_RANGE_H */
