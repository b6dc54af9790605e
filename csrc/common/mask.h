/*
 * mask.h -- which keys a query row sees: the one element rule of every op, both kernel
 * families, the host reference (and, spelled in NumPy, tests/reference.py).
 *
 * Rows and keys are aligned bottom-right, as in FlashAttention >= 2.1: with d = len_k - len_q,
 * query row i sits on key i + d. A window (left, right) makes key j visible to row i when
 *
 *     i + d - left  <=  j  <=  i + d + right,        0 <= j < len_k,
 *
 * with -1 meaning unbounded on that side. causal is the window (-1, 0) or, with a window,
 * right = 0. A row whose span is empty (i + d + right < 0) sees no key: out = 0 and
 * lse = -inf, or lse = the sink logit where sinks are given (score.h).
 *
 * fa_mask_make normalises a window against one sequence's lengths: a left bound of len_k or
 * more, or a right bound of len_q or more, hides nothing and becomes -1, so a kernel that
 * was built without a window serves it. The spans are computed without overflow for every
 * length up to INT32_MAX.
 *
 * first_key (0 from fa_mask_make) hides the keys below it too. A kernel that numbers its keys
 * from a shifted origin sets it: the sm90 forward with appended keys counts key blocks from
 * first_key keys below the sequence's first key (sm90_fwd_mainloop.cuh), with len_k grown by
 * the same, so that its block boundaries fall where the cached keys end.
 */
#ifndef FA_COMMON_MASK_H
#define FA_COMMON_MASK_H

#include "hd.h"

typedef struct {
    int len_q, len_k;
    int left, right; /* -1: unbounded; else 0 <= left < len_k, 0 <= right < len_q */
    int first_key;   /* 0 <= first_key < len_k; keys below it are hidden */
} fa_mask;

/* Keys lo..hi (inclusive) of one row; hi < lo: the row sees none. */
typedef struct {
    int lo, hi;
} fa_key_span;

FA_HD fa_mask fa_mask_make(int len_q, int len_k, int window_left, int window_right, int causal)
{
    fa_mask m;
    m.len_q = len_q;
    m.len_k = len_k;
    if (causal)
        window_right = 0;
    m.left = (window_left < 0 || window_left >= len_k) ? -1 : window_left;
    m.right = (window_right < 0 || window_right >= len_q) ? -1 : window_right;
    m.first_key = 0;
    return m;
}

/* 0 <= row < len_q. */
FA_HD fa_key_span fa_mask_row(const fa_mask *m, int row)
{
    const int diag = row + (m->len_k - m->len_q); /* in [-len_q, len_k) */
    fa_key_span s;
    s.lo = (m->left >= 0 && diag > m->left) ? diag - m->left : 0;
    if (s.lo < m->first_key)
        s.lo = m->first_key;
    if (m->right < 0 || diag >= m->len_k - 1 - m->right)
        s.hi = m->len_k - 1;
    else
        s.hi = diag + m->right; /* < len_k - 1: no overflow */
    return s;
}

FA_HD int fa_mask_visible(const fa_mask *m, int row, int key)
{
    const fa_key_span s = fa_mask_row(m, row);
    return key >= s.lo && key <= s.hi;
}

/* The transpose of fa_mask_row, for code that holds keys in rows (the sm90 backward's S^T, the
 * host reference backward, which walks key blocks as the kernels do): the
 * query rows lo..hi (inclusive) that see key j; hi < lo: none (also for j outside [0, len_k)).
 * Row i sees j when i + d - left <= j <= i + d + right (an unbounded side drops its bound), so
 * the rows are j - d - right <= i <= j - d + left, clipped to [0, len_q). */
FA_HD fa_key_span fa_mask_col(const fa_mask *m, int key)
{
    fa_key_span s = {0, -1};
    if (key < m->first_key || key >= m->len_k)
        return s;
    const long long d = (long long)m->len_k - m->len_q;
    const long long lo = m->right < 0 ? 0 : (long long)key - d - m->right;
    const long long hi = m->left < 0 ? m->len_q - 1 : (long long)key - d + m->left;
    s.lo = lo < 0 ? 0 : (int)(lo > m->len_q ? m->len_q : lo);
    s.hi = hi > m->len_q - 1 ? m->len_q - 1 : (int)(hi < -1 ? -1 : hi);
    return s;
}

#endif /* FA_COMMON_MASK_H */
