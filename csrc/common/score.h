/*
 * score.h -- the score hook (softmax scale, softcap) and the row finalisation with an
 * attention sink, shared by both kernel families and the host reference.
 *
 * Scores are kept in base 2 with the scale folded in. For a raw score s = q . k:
 *
 *   no softcap:  t = s,                          logit = scale * s
 *   softcap c:   t = tanh(s * softcap_pre),      logit = c * tanh(scale * s / c)
 *
 * and in both cases logit * log2(e) = t * scale_log2, with
 *
 *   scale_log2  = scale * log2(e)   or  c * log2(e)
 *   softcap_pre = 0 (off)           or  scale / c.
 *
 * The hook runs on t before the mask (FlashAttention's order: masked scores are -inf after
 * it, never tanh(-inf)). scale_log2 is kept in [FLT_MIN, 2^64]: a zero scale would make
 * -inf * 0 = NaN for masked scores, and a scale near FLT_MAX would overflow every scaled score.
 * Both ends give the same softmax as the exact scale: uniform at the bottom, and at the top
 * one-hot on the row max (ties shared), since any two distinguishable float32 scores of
 * magnitude above 1e-10 differ by more than 2^-64 * 150. Scores of 16-bit inputs stay below
 * 2^41 in magnitude, so t * 2^64 never overflows.
 *
 * Finalisation: a row's running max m (in units of t) and sum l = sum_j exp2(t_j * scale_log2
 * - m * scale_log2) become the output scale inv (out = acc * inv) and the natural-log lse. The
 * row's largest logit M = m * row_scale takes the exact scale (or cap), so lse is the exact
 * one, +-inf where it leaves float32. A sink adds one logit z per query head to every row's
 * denominator with no value row:
 *
 *   top = max(M, z),   total = l * e^(M - top) + e^(z - top),
 *   inv = e^(M - top) / total,   lse = top + log(total)
 *
 * A row that sees no key has m = -inf and l = 0: inv = 0 and lse = -inf without a sink,
 * lse = z exactly with one. A NaN sum (NaN inputs) gives NaN out and lse, never an empty row.
 */
#ifndef FA_COMMON_SCORE_H
#define FA_COMMON_SCORE_H

#include <float.h>
#include <math.h>

#include "hd.h"

#define FA_LOG2E 1.4426950408889634f

#define FA_SCALE_LOG2_MAX 18446744073709551616.0f /* 2^64 */

typedef struct {
    float scale_log2;  /* in [FLT_MIN, 2^64] */
    float softcap_pre; /* 0: no softcap */
    float row_scale;   /* softmax_scale, or the cap: logit = t * row_scale */
} fa_score;

FA_HD fa_score fa_score_make(float softmax_scale, float softcap)
{
    fa_score s;
    const float mult = softcap > 0.0f ? softcap : softmax_scale;
    const float scale_log2 = mult * FA_LOG2E; /* inf for mult above FLT_MAX / log2(e) */
    s.scale_log2 = scale_log2 > FLT_MIN ? (scale_log2 < FA_SCALE_LOG2_MAX ? scale_log2 : FA_SCALE_LOG2_MAX)
                                        : FLT_MIN;
    s.softcap_pre = softcap > 0.0f ? softmax_scale / softcap : 0.0f;
    s.row_scale = mult;
    return s;
}

/* The row's largest logit from its running max m (-inf: no key). */
FA_HD float fa_row_max_logit(float m, const fa_score *s)
{
    return m == -INFINITY ? -INFINITY : m * s->row_scale;
}

/* The sink logit of a head, or -inf when there are no sinks. */
FA_HD float fa_sink(const float *sinks, int head)
{
    return sinks ? sinks[head] : -INFINITY;
}

/* e^(x - top) for x <= top, exact at x == top (also where both are infinite). */
FA_HD float fa_exp_below(float x, float top)
{
    return x == top ? 1.0f : exp2f((x - top) * FA_LOG2E);
}

/* max_logit from fa_row_max_logit, sum >= 0 or NaN, sink from fa_sink. */
FA_HD void fa_row_finalize(float max_logit, float sum, float sink, float *inv, float *lse)
{
    if (sink == -INFINITY) {
        const int empty = sum == 0.0f;
        *inv = empty ? 0.0f : 1.0f / sum;
        *lse = empty ? -INFINITY : max_logit + logf(sum);
        return;
    }
    const float top = max_logit > sink ? max_logit : sink;
    const float keys = sum == 0.0f ? 0.0f : fa_exp_below(max_logit, top);
    const float total = sum * keys + fa_exp_below(sink, top);
    *inv = keys / total;
    *lse = top + logf(total);
}

#endif /* FA_COMMON_SCORE_H */
