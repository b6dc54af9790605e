/*
 * bwd_reference.h -- one query row of the attention backward in double, for dev/bwd_check.cu's
 * uniform and packed cases alike (host only). With t the score hook's value (softcap c:
 * tanh(scale s / c)), P the row's probabilities and D = dout . out:
 *
 *   dS_j = P_j (dout . v_j - D) (1 - t_j^2 with a softcap)
 *   dq  += scale sum_j dS_j k_j,   dk_j += scale dS_j q,   dv_j += P_j dout
 *
 * The lse and delta it returns are what the kernels read: delta from out and dout rounded to
 * the input dtype, as the preprocess forms it; dS uses the exact one.
 */
#ifndef FA_DEV_BWD_REFERENCE_H
#define FA_DEV_BWD_REFERENCE_H

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/mask.h"
#include "dev_check.h"

struct RowStats {
    double lse, delta;
};

/* Per-thread work space of reference_row_backward, for rows of up to `keys` keys and D columns. */
struct RowScratch {
    std::vector<double> logit, tanh_t, p, o;
    RowScratch(int keys, int D) : logit(std::max(keys, 1)), tanh_t(std::max(keys, 1)), p(std::max(keys, 1)), o(D) {}
};

/* Row q (D values) with gradient dout, over keys span.lo .. span.hi: key j's K and V rows at
   k + j * key_stride and v + j * key_stride. Adds the row's dq to dq_row and key j's dk and dv
   terms to dk + j * grad_stride and dv + j * grad_stride. */
static inline RowStats reference_row_backward(const double *q, const double *dout, const double *k, const double *v,
                                              size_t key_stride, fa_key_span span, int D, double scale,
                                              double softcap, bool bf16, double *dq_row, double *dk, double *dv,
                                              size_t grad_stride, RowScratch &s)
{
    double mx = -INFINITY;
    for (int j = span.lo; j <= span.hi; ++j) {
        const double *kj = k + j * key_stride;
        double dot = 0;
        for (int d = 0; d < D; ++d)
            dot += q[d] * kj[d];
        double l = scale * dot;
        if (softcap > 0) {
            s.tanh_t[j] = tanh(l / softcap);
            l = softcap * s.tanh_t[j];
        }
        s.logit[j] = l;
        mx = std::max(mx, l);
    }
    double sum = 0;
    for (int j = span.lo; j <= span.hi; ++j)
        sum += exp(s.logit[j] - mx);
    const double lse = span.hi >= span.lo ? mx + log(sum) : -INFINITY;
    std::fill(s.o.begin(), s.o.end(), 0.0);
    for (int j = span.lo; j <= span.hi; ++j) {
        s.p[j] = exp(s.logit[j] - lse);
        const double *vj = v + j * key_stride;
        for (int d = 0; d < D; ++d)
            s.o[d] += s.p[j] * vj[d];
    }
    double delta_exact = 0, delta_rounded = 0;
    for (int d = 0; d < D; ++d) {
        delta_exact += dout[d] * s.o[d];
        delta_rounded += (double)from_bits(to_bits((float)dout[d], bf16), bf16) *
                         from_bits(to_bits((float)s.o[d], bf16), bf16);
    }
    for (int j = span.lo; j <= span.hi; ++j) {
        const double *vj = v + j * key_stride, *kj = k + j * key_stride;
        double dp = 0;
        for (int d = 0; d < D; ++d)
            dp += dout[d] * vj[d];
        double ds = s.p[j] * (dp - delta_exact);
        if (softcap > 0)
            ds *= 1.0 - s.tanh_t[j] * s.tanh_t[j];
        for (int d = 0; d < D; ++d) {
            dq_row[d] += scale * ds * kj[d];
            dk[j * grad_stride + d] += scale * ds * q[d];
            dv[j * grad_stride + d] += s.p[j] * dout[d];
        }
    }
    return RowStats{lse, delta_rounded};
}

#endif /* FA_DEV_BWD_REFERENCE_H */
