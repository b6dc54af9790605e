/*
 * attention_backward.c -- the attention backward as an op of the call engine: its arrays,
 * their shape rules, its params builder, and the logic behind backward() and the backward's
 * plan.
 *
 *   dout  (batch, seqlen_q, heads_q, head_dim)   input, the gradient of out; the op's dtype
 *   q, k, v, out                                 inputs, as the forward took and gave them
 *   lse   float32 (batch, heads_q, seqlen_q)     input, the forward's, compact
 *   sinks float32 (heads_q,)                     optional input where dout lives, compact
 *   dq, dk, dv                                   outputs shaped like q, k, v
 *   dsinks float32 (heads_q,)                    output exactly when sinks is given
 * The forward's scalars (causal, scale, window, softcap, kernel) mean what they meant for the
 * forward that made out and lse; attention.c builds that part of the params.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include "ops.h"

static const char *const Q_DIMS = "(batch, seqlen_q, heads_q, head_dim)";
static const char *const KV_DIMS = "(batch, seqlen_k, heads_kv, head_dim)";

static const fa_role backward_roles[BWD_NUM_ROLES] = {
    [BWD_DOUT] = {"dout", FA_ROLE_IN, 4, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [BWD_Q] = {"q", FA_ROLE_IN, 4, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [BWD_K] = {"k", FA_ROLE_IN, 4, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [BWD_V] = {"v", FA_ROLE_IN, 4, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [BWD_OUT] = {"out", FA_ROLE_IN, 4, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [BWD_LSE] = {"lse", FA_ROLE_IN | FA_ROLE_COMPACT, 3, "(batch, heads_q, seqlen_q)", FA_FLOAT32,
                 -1, NULL},
    [BWD_SINKS] = {"sinks", FA_ROLE_IN | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                   "(heads_q,)", FA_FLOAT32, -1, NULL},
    [BWD_DQ] = {"dq", FA_ROLE_OUT, 4, Q_DIMS, FA_OP_DTYPE, BWD_Q, "head_dim"},
    [BWD_DK] = {"dk", FA_ROLE_OUT, 4, KV_DIMS, FA_OP_DTYPE, BWD_K, "head_dim"},
    [BWD_DV] = {"dv", FA_ROLE_OUT, 4, KV_DIMS, FA_OP_DTYPE, BWD_V, "head_dim"},
    [BWD_DSINKS] = {"dsinks", FA_ROLE_OUT | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                    "(heads_q,)", FA_FLOAT32, BWD_SINKS, NULL},
};

int attention_same_shape(const fa_tensor *a, const fa_tensor *b, const char *what)
{
    for (int d = 0; d < a->ndim; d++) {
        if (a->shape[d] == b->shape[d])
            continue;
        char as[96], bs[96];
        fa_format_shape(a->ndim, a->shape, as, sizeof as);
        fa_format_shape(b->ndim, b->shape, bs, sizeof bs);
        PyErr_Format(PyExc_ValueError, "%s, got %s and %s", what, as, bs);
        return -1;
    }
    return 0;
}

int backward_check_forward_results(const fa_tensor *dout, const fa_tensor *out,
                                   const fa_tensor *q, const fa_tensor *lse, const int64_t *want,
                                   const char *lse_dims)
{
    if (attention_same_shape(dout, q, "dout must have q's shape") < 0 ||
        attention_same_shape(out, q, "out must be the forward's output, of q's shape") < 0)
        return -1;
    for (int d = 0; d < lse->ndim; d++) {
        if (lse->shape[d] == want[d])
            continue;
        char got[96], exp[96];
        fa_format_shape(lse->ndim, lse->shape, got, sizeof got);
        fa_format_shape(lse->ndim, want, exp, sizeof exp);
        PyErr_Format(PyExc_ValueError, "lse must be the forward's, %s = %s, got %s", lse_dims,
                     exp, got);
        return -1;
    }
    return 0;
}

/* The forward's rules between q, k, v and sinks, then the forward's results. */
static int backward_check_shapes(fa_tensor *const *views, const void *args)
{
    fa_tensor *fwd[ATTN_NUM_ROLES] = {
        [ATTN_Q] = views[BWD_Q], [ATTN_K] = views[BWD_K], [ATTN_V] = views[BWD_V],
        [ATTN_SINKS] = views[BWD_SINKS]};
    if (fa_attention_op.check_shapes(fwd, &((const backward_scalars *)args)->fwd) < 0)
        return -1;
    const fa_tensor *q = views[BWD_Q];
    const int64_t want[3] = {q->shape[0], q->shape[2], q->shape[1]};
    return backward_check_forward_results(views[BWD_DOUT], views[BWD_OUT], q, views[BWD_LSE],
                                          want, "(batch, heads_q, seqlen_q)");
}

void backward_build_grads(fa_grad_params *g, const fa_binding *b, const backward_grad_roles *r,
                          attention_stride_fn strides, int deterministic)
{
    g->dout = b[r->dout].data;
    g->dq = b[r->dq].data;
    g->dk = b[r->dk].data;
    g->dv = b[r->dv].data;
    g->dsinks = b[r->dsinks].present ? (float *)b[r->dsinks].data : NULL;
    strides(&b[r->dout], &g->do_batch_stride, &g->do_row_stride, &g->do_head_stride);
    strides(&b[r->dq], &g->dq_batch_stride, &g->dq_row_stride, &g->dq_head_stride);
    strides(&b[r->dk], &g->dk_batch_stride, &g->dk_row_stride, &g->dk_head_stride);
    strides(&b[r->dv], &g->dv_batch_stride, &g->dv_row_stride, &g->dv_head_stride);
    g->deterministic = deterministic;
}

static const backward_grad_roles grad_roles = {BWD_DOUT, BWD_DQ, BWD_DK, BWD_DV, BWD_DSINKS};

static void backward_build(fa_op_params *a, const fa_binding *b, const void *args)
{
    const backward_scalars *s = (const backward_scalars *)args;
    /* The forward's params, from the forward's arrays. */
    fa_binding fwd[ATTN_NUM_ROLES];
    fwd[ATTN_Q] = b[BWD_Q];
    fwd[ATTN_K] = b[BWD_K];
    fwd[ATTN_V] = b[BWD_V];
    fwd[ATTN_OUT] = b[BWD_OUT];
    fwd[ATTN_LSE] = b[BWD_LSE];
    fwd[ATTN_SINKS] = b[BWD_SINKS];
    attention_build_params(&a->p, fwd, &s->fwd);
    backward_build_grads(&a->g, b, &grad_roles, attention_strides, s->deterministic);
}

/* Nothing to write: every gradient has zero elements. Packed rows count their totals. */
int backward_empty(const fa_op_params *a)
{
    const fa_params *p = &a->p;
    const int64_t q_rows = p->cu_seqlens_q ? p->total_q : (int64_t)p->batch * p->seqlen_q;
    const int64_t k_rows = p->cu_seqlens_k ? p->total_k : (int64_t)p->batch * p->seqlen_k;
    return q_rows * p->heads_q == 0 && k_rows * p->heads_kv == 0 && (!p->sinks || p->heads_q == 0);
}

fa_status backward_check(const fa_op_params *a, int gpu)
{
    return fa_check_grad_params(&a->p, &a->g, gpu);
}

fa_status backward_run_gpu(const fa_op_params *a, cudaStream_t stream)
{
    return fa_backward(&a->p, &a->g, stream);
}

fa_status backward_run_cpu(const fa_op_params *a) { return fa_backward_cpu(&a->p, &a->g); }

const fa_op fa_attention_backward_op = {
    .name = "attention_backward",
    .num_roles = BWD_NUM_ROLES,
    .roles = backward_roles,
    .check_shapes = backward_check_shapes,
    .build = backward_build,
    .empty = backward_empty,
    .check = backward_check,
    .run_gpu = backward_run_gpu,
    .run_cpu = backward_run_cpu,
};

PyObject *attention_backward_impl(PyObject *module, PyObject *const *arrays,
                                  const fa_call_site *site, const backward_scalars *s)
{
    const int sinks = arrays[BWD_SINKS] && arrays[BWD_SINKS] != Py_None;
    const attention_call_args c = {arrays, site, &s->fwd, s, sinks ? BWD_DSINKS : -1};
    return attention_call(module, &fa_attention_backward_op, &c);
}

/* The gradients of a compact problem at the placeholder, for the plan's checks. */
static fa_status plan_backward(const fa_op_params *a, const fa_device *dev, fa_plan *plan)
{
    fa_op_params full = *a;
    fa_grad_params *g = &full.g;
    const fa_params *p = &a->p;
    g->dout = g->dq = p->q ? (void *)fa_placeholder : NULL;
    g->dk = g->dv = fa_placeholder;
    g->do_batch_stride = g->dq_batch_stride = p->q_batch_stride;
    g->do_row_stride = g->dq_row_stride = p->q_row_stride;
    g->do_head_stride = g->dq_head_stride = p->q_head_stride;
    g->dk_batch_stride = g->dv_batch_stride = p->k_batch_stride;
    g->dk_row_stride = g->dv_row_stride = p->k_row_stride;
    g->dk_head_stride = g->dv_head_stride = p->k_head_stride;
    g->dsinks = p->sinks ? (float *)fa_placeholder : NULL;
    full.p.lse = (float *)fa_placeholder;
    return fa_backward_plan(&full.p, g, dev, plan);
}

int attention_backward_plan_impl(PyObject *module, const attention_sizes *z,
                                 const backward_scalars *s, int arch_major, int arch_minor,
                                 int device, fa_plan *plan)
{
    fa_grad_params g;
    fa_grad_params_init(&g);
    g.deterministic = s->deterministic;
    return attention_plan_with(module, z, &s->fwd, &g, plan_backward, arch_major, arch_minor,
                               device, plan);
}
