/*
 * cpu_backward.c -- the host reference of fa_backward: the gradients of flashattn.h's
 * backward maths, in float64, from the forward's out and lse as given.
 *
 * For each kv head, its keys are walked in blocks of FA_CPU_BWD_BLOCK_N; each key block
 * visits the query blocks (FA_CPU_BWD_BLOCK_M rows) that fa_block_range_cols gives it, and
 * applies the element mask only on those fa_row_block_needs_mask names, as the GPU kernels'
 * key-owning CTAs do. So a wrong transposed block range shows up here, in CI, as a missing
 * or extra gradient term. For a visible pair (i, j) of q head h, with t the score hook's value
 * (score.h) and logit = t * row_scale:
 *
 *   P  = exp(logit - lse_i),  dP = dout_i . v_j,  dS = P (dP - D_i) (1 - t^2 with a softcap)
 *   dq_i += scale dS k_j,   dk_j += scale dS q_i,   dv_j += P dout_i
 *
 * with D_i = dout_i . out_i, dk and dv summed over the q heads of the kv head, and
 * dsinks[h] = -sum over batch and rows of exp(sinks[h] - lse_i) D_i.
 *
 * Blocking, single-threaded; p->interrupt is polled before each key block.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_range.h"
#include "common/mask.h"
#include "common/score.h"
#include "common/seqlen.h"
#include "fa_internal.h"
#include "host_elem.h"
#include "kernels/kernels.h"

#define FA_CPU_BWD_BLOCK_M 64
#define FA_CPU_BWD_BLOCK_N 64

static double dot64(const double *a, const double *b, int n)
{
    double s = 0.0;
    for (int d = 0; d < n; d++)
        s += a[d] * b[d];
    return s;
}

/* Rows [row0, row0 + rows) of one (batch, head) of a strided array, as float64 (rows x D):
 * float64 elements exactly, the others widened. row0 is the entry's first packed row (seqlen.h;
 * 0 when not packed, sb 0 when packed). */
static void load_rows(const void *base, fa_dtype dt, int64_t sb, int64_t sr, int64_t sh, int b,
                      int64_t row0, int h, int rows, int D, double *dst)
{
    for (int i = 0; i < rows; i++)
        for (int d = 0; d < D; d++)
            dst[(size_t)i * D + d] =
                fa_host_load64(base, b * sb + (row0 + i) * sr + h * sh + d, dt);
}

static void store_rows(void *base, fa_dtype dt, int64_t sb, int64_t sr, int64_t sh, int b,
                       int64_t row0, int h, int rows, int D, const double *src)
{
    for (int i = 0; i < rows; i++)
        for (int d = 0; d < D; d++)
            fa_host_store64(base, b * sb + (row0 + i) * sr + h * sh + d, dt,
                            src[(size_t)i * D + d]);
}

typedef struct {
    double *k, *v, *dk, *dv;       /* one kv head: len_k x D */
    double *q, *dout, *out, *dq;   /* one q head: len_q x D */
    double *delta, *lse;           /* one q head: len_q */
    double *dsinks;                /* heads_q */
} bwd_scratch;

static void bwd_scratch_free(bwd_scratch *w)
{
    double *bufs[] = {w->k, w->v, w->dk, w->dv, w->q, w->dout, w->out, w->dq, w->delta, w->lse,
                      w->dsinks};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}

/* The contributions of keys [j0, j1) of one (batch, q head) to dq, dk and dv. */
static void key_block(const fa_params *p, const bwd_scratch *w, const fa_mask *m, int j0, int j1)
{
    const int D = p->head_dim;
    const fa_score sc = fa_score_make(p->softmax_scale, p->softcap);
    const int softcap = p->softcap > 0.0f;
    /* The hook as the forward computed it: float64 inputs form softmax_scale / softcap in
     * double (cpu_reference.c), the others take fa_score's float quotient. */
    const double softcap_pre = p->dtype == FA_FLOAT64 && softcap
                                   ? (double)p->softmax_scale / (double)p->softcap
                                   : (double)sc.softcap_pre;
    const double scale = p->softmax_scale;
    const fa_row_block_range r = fa_block_range_cols(m, j0, j1, FA_CPU_BWD_BLOCK_M);
    for (int mb = r.m_min; mb < r.m_max; mb++) {
        const int masked = fa_row_block_needs_mask(&r, mb);
        const int i1 = fa_imin(m->len_q, (mb + 1) * FA_CPU_BWD_BLOCK_M);
        for (int i = mb * FA_CPU_BWD_BLOCK_M; i < i1; i++) {
            const double *qi = w->q + (size_t)i * D, *doi = w->dout + (size_t)i * D;
            for (int j = j0; j < j1; j++) {
                /* The rows that see key j (mask.h's transpose, as the sm90 backward masks). */
                const fa_key_span seen_by = fa_mask_col(m, j);
                if (masked && (i < seen_by.lo || i > seen_by.hi))
                    continue;
                const double *kj = w->k + (size_t)j * D, *vj = w->v + (size_t)j * D;
                const double s = dot64(qi, kj, D);
                const double t = softcap ? tanh(s * softcap_pre) : s;
                const double prob = exp(t * (double)sc.row_scale - w->lse[i]);
                double ds = prob * (dot64(doi, vj, D) - w->delta[i]);
                if (softcap)
                    ds *= 1.0 - t * t;
                double *dqi = w->dq + (size_t)i * D, *dkj = w->dk + (size_t)j * D,
                       *dvj = w->dv + (size_t)j * D;
                for (int d = 0; d < D; d++) {
                    dqi[d] += scale * ds * kj[d];
                    dkj[d] += scale * ds * qi[d];
                    dvj[d] += prob * doi[d];
                }
            }
        }
    }
}

/* One q head h of batch entry b: its rows' dq, its terms of dk, dv and dsinks[h]. */
static fa_status q_head(const fa_params *p, const fa_grad_params *g, const bwd_scratch *w,
                        const fa_mask *m, const fa_seq_layout *L, const fa_seqlen *e, int b,
                        int h)
{
    const int D = p->head_dim, len_q = m->len_q;
    const int64_t r0 = e->q_row0;
    load_rows(p->q, p->dtype, p->q_batch_stride, p->q_row_stride, p->q_head_stride, b, r0, h,
              len_q, D, w->q);
    load_rows(g->dout, p->dtype, g->do_batch_stride, g->do_row_stride, g->do_head_stride, b, r0,
              h, len_q, D, w->dout);
    load_rows(p->out, p->dtype, p->o_batch_stride, p->o_row_stride, p->o_head_stride, b, r0, h,
              len_q, D, w->out);
    const double sink = fa_sink(p->sinks, h);
    for (int i = 0; i < len_q; i++) {
        w->delta[i] = dot64(w->dout + (size_t)i * D, w->out + (size_t)i * D, D);
        w->lse[i] = p->lse[fa_lse_index(L, e, b, p->heads_q, h, i)];
        if (p->sinks)
            w->dsinks[h] -= exp(sink - w->lse[i]) * w->delta[i];
    }
    memset(w->dq, 0, sizeof(double) * (size_t)len_q * D);
    for (int j0 = 0; j0 < m->len_k; j0 += FA_CPU_BWD_BLOCK_N) {
        if (p->interrupt && p->interrupt(p->interrupt_ctx))
            return fa_fail(FA_ERR_INTERRUPTED, "host reference: interrupted");
        key_block(p, w, m, j0, fa_imin(m->len_k, j0 + FA_CPU_BWD_BLOCK_N));
    }
    store_rows(g->dq, p->dtype, g->dq_batch_stride, g->dq_row_stride, g->dq_head_stride, b, r0, h,
               len_q, D, w->dq);
    return FA_OK;
}

fa_status fa_backward_cpu(const fa_params *pc, const fa_grad_params *gc)
{
    fa_params p;
    fa_grad_params g;
    fa_status s = fa_params_resolve(pc, &p);
    if (s != FA_OK || (s = fa_check_grad_params(pc, gc, 0)) != FA_OK)
        return s;
    if ((s = fa_grad_params_resolve(&p, gc, &g)) != FA_OK)
        return s;
    if (p.heads_q == 0)
        return FA_OK;

    const int D = p.head_dim, group = p.heads_kv > 0 ? p.heads_q / p.heads_kv : 1;
    const size_t q_elems = (size_t)p.seqlen_q * D + 1, k_elems = (size_t)p.seqlen_k * D + 1;
    bwd_scratch w;
    w.k = malloc(sizeof(double) * k_elems);
    w.v = malloc(sizeof(double) * k_elems);
    w.dk = malloc(sizeof(double) * k_elems);
    w.dv = malloc(sizeof(double) * k_elems);
    w.q = malloc(sizeof(double) * q_elems);
    w.dout = malloc(sizeof(double) * q_elems);
    w.out = malloc(sizeof(double) * q_elems);
    w.dq = malloc(sizeof(double) * q_elems);
    w.delta = malloc(sizeof(double) * ((size_t)p.seqlen_q + 1));
    w.lse = malloc(sizeof(double) * ((size_t)p.seqlen_q + 1));
    w.dsinks = calloc((size_t)p.heads_q, sizeof(double));
    if (!w.k || !w.v || !w.dk || !w.dv || !w.q || !w.dout || !w.out || !w.dq || !w.delta ||
        !w.lse || !w.dsinks) {
        s = fa_fail(FA_ERR_OUT_OF_MEMORY,
                    "host reference backward: out of memory for one head's float64 working set "
                    "(%d query rows, %d keys, head_dim %d)", p.seqlen_q, p.seqlen_k, D);
        goto done;
    }
    const fa_seq_layout layout = fa_seq_layout_of(&p);
    for (int b = 0; b < p.batch; b++) {
        const fa_seqlen len = fa_seqlen_at(&layout, b);
        const int64_t k0 = len.k_row0;
        const fa_mask m = fa_mask_make(len.len_q, len.len_k, p.window_left, p.window_right,
                                       p.causal);
        for (int hk = 0; hk < p.heads_kv; hk++) {
            load_rows(p.k, p.dtype, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, k0, hk,
                      len.len_k, D, w.k);
            load_rows(p.v, p.dtype, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, k0, hk,
                      len.len_k, D, w.v);
            memset(w.dk, 0, sizeof(double) * k_elems);
            memset(w.dv, 0, sizeof(double) * k_elems);
            for (int h = hk * group; h < (hk + 1) * group; h++)
                if ((s = q_head(&p, &g, &w, &m, &layout, &len, b, h)) != FA_OK)
                    goto done;
            store_rows(g.dk, p.dtype, g.dk_batch_stride, g.dk_row_stride, g.dk_head_stride, b, k0,
                       hk, len.len_k, D, w.dk);
            store_rows(g.dv, p.dtype, g.dv_batch_stride, g.dv_row_stride, g.dv_head_stride, b, k0,
                       hk, len.len_k, D, w.dv);
        }
    }
    if (g.dsinks)
        for (int h = 0; h < p.heads_q; h++)
            g.dsinks[h] = (float)w.dsinks[h];
    s = FA_OK;
done:
    bwd_scratch_free(&w);
    return s;
}
