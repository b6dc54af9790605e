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
 * it, never tanh(-inf)). A zero scale would make -inf * 0 = NaN for masked scores; scale_log2
 * is raised to FLT_MIN instead, which gives the same uniform softmax.
 *
 * Finalisation: a row's running max m (in units of t) and sum l = sum_j exp2(t_j * scale_log2
 * - m * scale_log2) become the output scale inv (out = acc * inv) and the natural-log lse.
 * A sink adds one logit z per query head to every row's denominator with no value row:
 *
 *   total = l * 2^(m2 - M) + 2^(z2 - M),   M = max(m2, z2),  m2 = m * scale_log2,  z2 = z log2(e)
 *   inv   = 2^(m2 - M) / total,            lse = (M + log2(total)) ln 2
 *
 * A row that sees no key has m = -inf and l = 0: inv = 0 and lse = -inf without a sink,
 * lse = z with one. A NaN sum (NaN inputs) gives NaN out and lse, never an empty row.
 */
#ifndef FA_COMMON_SCORE_H
#define FA_COMMON_SCORE_H

#include <float.h>
#include <math.h>

#include "hd.h"

#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

typedef struct {
    float scale_log2;  /* > 0 */
    float softcap_pre; /* 0: no softcap */
} fa_score;

FA_HD fa_score fa_score_make(float softmax_scale, float softcap)
{
    fa_score s;
    const float mult = softcap > 0.0f ? softcap : softmax_scale;
    s.scale_log2 = mult * FA_LOG2E > FLT_MIN ? mult * FA_LOG2E : FLT_MIN;
    s.softcap_pre = softcap > 0.0f ? softmax_scale / softcap : 0.0f;
    return s;
}

/* The sink in base 2, or -inf when the row has none. */
FA_HD float fa_sink_log2(const float *sinks, int head)
{
    return sinks ? sinks[head] * FA_LOG2E : -INFINITY;
}

/* m2 = m * scale_log2 (-inf: no key), sum >= 0 or NaN, sink_log2 from fa_sink_log2. */
FA_HD void fa_row_finalize(float m2, float sum, float sink_log2, float *inv, float *lse)
{
    if (sink_log2 == -INFINITY) {
        const int empty = sum == 0.0f;
        *inv = empty ? 0.0f : 1.0f / sum;
        *lse = empty ? -INFINITY : m2 * FA_LN2 + logf(sum);
        return;
    }
    const float top = m2 > sink_log2 ? m2 : sink_log2;
    const float keys = sum == 0.0f ? 0.0f : exp2f(m2 - top);
    const float total = sum * keys + exp2f(sink_log2 - top);
    *inv = keys / total;
    *lse = (top + log2f(total)) * FA_LN2;
}

#endif /* FA_COMMON_SCORE_H */
