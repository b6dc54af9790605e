/*
 * attention_varlen.c -- attention on packed (variable-length) batches as ops of the call engine:
 * the forward and the backward, their arrays, shape rules and params builders, and the logic
 * behind varlen_forward() and varlen_backward().
 *
 *   q, out        (total_q, heads_q, head_dim)    input / output, float16 / bfloat16 (float32
 *                                                 and float64 on cpu)
 *   k, v          (total_k, heads_kv, head_dim)   inputs, q's dtype
 *   cu_seqlens_q  int32 (batch + 1,)              input where q lives, compact: entry b owns the
 *   cu_seqlens_k  int32 (batch + 1,)              rows [cu[b], cu[b + 1]) of q (of k and v)
 *   lse           float32 (heads_q, total_q)      output when return_lse, compact
 *   sinks         float32 (heads_q,)              optional input where q lives, compact
 * and for the backward dout (q's shape), the forward's out and lse as inputs, and the outputs
 * dq, dk, dv (shaped like q, k, v) and dsinks (exactly when sinks is given).
 *
 * The scalars max_seqlen_q and max_seqlen_k bound every entry's length: they are the params'
 * seqlen_q and seqlen_k (common/seqlen.h). Offsets in host memory are checked by the C API
 * (ascending, from 0 to total, no entry longer than its max_seqlen); offsets in device memory
 * cannot be read without a synchronisation and are the caller's to get right.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include "ops.h"

static const char *const Q_DIMS = "(total_q, heads_q, head_dim)";
static const char *const KV_DIMS = "(total_k, heads_kv, head_dim)";
static const char *const CU_DIMS = "(batch + 1,)";
static const char *const LSE_DIMS = "(heads_q, total_q)";

#define CU_FLAGS (FA_ROLE_IN | FA_ROLE_COMPACT | FA_ROLE_SIDE)

static const fa_role varlen_roles[VL_NUM_ROLES] = {
    [VL_Q] = {"q", FA_ROLE_IN, 3, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VL_K] = {"k", FA_ROLE_IN, 3, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VL_V] = {"v", FA_ROLE_IN, 3, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VL_CU_Q] = {"cu_seqlens_q", CU_FLAGS, 1, CU_DIMS, FA_DTYPE_INT32, -1, NULL},
    [VL_CU_K] = {"cu_seqlens_k", CU_FLAGS, 1, CU_DIMS, FA_DTYPE_INT32, -1, NULL},
    [VL_OUT] = {"out", FA_ROLE_OUT, 3, Q_DIMS, FA_OP_DTYPE, VL_Q, "head_dim"},
    [VL_LSE] = {"lse", FA_ROLE_OUT | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT, 2, LSE_DIMS, FA_FLOAT32,
                -1, NULL},
    [VL_SINKS] = {"sinks", FA_ROLE_IN | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                  "(heads_q,)", FA_FLOAT32, -1, NULL},
};

static const fa_role varlen_backward_roles[VLB_NUM_ROLES] = {
    [VLB_DOUT] = {"dout", FA_ROLE_IN, 3, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VLB_Q] = {"q", FA_ROLE_IN, 3, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VLB_K] = {"k", FA_ROLE_IN, 3, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VLB_V] = {"v", FA_ROLE_IN, 3, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VLB_OUT] = {"out", FA_ROLE_IN, 3, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [VLB_LSE] = {"lse", FA_ROLE_IN | FA_ROLE_COMPACT, 2, LSE_DIMS, FA_FLOAT32, -1, NULL},
    [VLB_CU_Q] = {"cu_seqlens_q", CU_FLAGS, 1, CU_DIMS, FA_DTYPE_INT32, -1, NULL},
    [VLB_CU_K] = {"cu_seqlens_k", CU_FLAGS, 1, CU_DIMS, FA_DTYPE_INT32, -1, NULL},
    [VLB_SINKS] = {"sinks", FA_ROLE_IN | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                   "(heads_q,)", FA_FLOAT32, -1, NULL},
    [VLB_DQ] = {"dq", FA_ROLE_OUT, 3, Q_DIMS, FA_OP_DTYPE, VLB_Q, "head_dim"},
    [VLB_DK] = {"dk", FA_ROLE_OUT, 3, KV_DIMS, FA_OP_DTYPE, VLB_K, "head_dim"},
    [VLB_DV] = {"dv", FA_ROLE_OUT, 3, KV_DIMS, FA_OP_DTYPE, VLB_V, "head_dim"},
    [VLB_DSINKS] = {"dsinks", FA_ROLE_OUT | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                    "(heads_q,)", FA_FLOAT32, VLB_SINKS, NULL},
};

/* Where the forward's arrays sit in an op's role table (the forward's or the backward's). */
typedef struct {
    int q, k, v, cu_q, cu_k, out, lse, sinks;
} varlen_roles_of;

static const varlen_roles_of forward_map = {VL_Q,    VL_K,   VL_V,   VL_CU_Q,
                                            VL_CU_K, VL_OUT, VL_LSE, VL_SINKS};
static const varlen_roles_of backward_map = {VLB_Q,    VLB_K,   VLB_V,   VLB_CU_Q,
                                             VLB_CU_K, VLB_OUT, VLB_LSE, VLB_SINKS};

/* A packed side holds at most batch entries of at most max_seqlen rows; a bound past its rows
 * leaves rows no entry owns, which the kernels would never write. The offsets themselves are
 * the C API's to check (host memory only). */
static int check_rows(const fa_tensor *x, const char *total, const char *cu_name,
                      const char *max_name, int64_t batch, int max_seqlen)
{
    if ((int64_t)max_seqlen * batch >= x->shape[0])
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s has %s = %lld rows, more than batch (%lld, from %s) x %s (%d) can hold",
                 x->name, total, (long long)x->shape[0], (long long)batch, cu_name, max_name,
                 max_seqlen);
    return -1;
}

/* The rules between the forward's shapes; GQA's heads_q % heads_kv and head_dim's range are
 * fa_check_params's. */
static int varlen_check_forward_shapes(fa_tensor *const *views, const varlen_roles_of *m,
                                       const varlen_scalars *s)
{
    const fa_tensor *q = views[m->q], *k = views[m->k], *v = views[m->v];
    const fa_tensor *cu_q = views[m->cu_q], *cu_k = views[m->cu_k], *sinks = views[m->sinks];
    if (attention_same_shape(k, v, "k and v must have the same shape") < 0)
        return -1;
    if (q->shape[2] != k->shape[2]) {
        PyErr_Format(PyExc_ValueError, "q and k must have the same head_dim, got q %lld and k %lld",
                     (long long)q->shape[2], (long long)k->shape[2]);
        return -1;
    }
    if (cu_q->shape[0] < 1) {
        PyErr_Format(PyExc_ValueError,
                     "cu_seqlens_q must have batch + 1 >= 1 entries (0, then each entry's end), "
                     "got 0");
        return -1;
    }
    if (cu_k->shape[0] != cu_q->shape[0]) {
        PyErr_Format(PyExc_ValueError,
                     "cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got "
                     "%lld and %lld",
                     (long long)cu_q->shape[0], (long long)cu_k->shape[0]);
        return -1;
    }
    const int64_t batch = cu_q->shape[0] - 1;
    if (check_rows(q, "total_q", "cu_seqlens_q", "max_seqlen_q", batch, s->max_seqlen_q) < 0 ||
        check_rows(k, "total_k", "cu_seqlens_k", "max_seqlen_k", batch, s->max_seqlen_k) < 0)
        return -1;
    return fa_check_sinks_shape(sinks, q->shape[1]);
}

static int varlen_check_shapes(fa_tensor *const *views, const void *args)
{
    return varlen_check_forward_shapes(views, &forward_map, (const varlen_scalars *)args);
}

/* lse: (heads_q, total_q), FlashAttention's varlen layout. out takes q's shape (`like`). */
static void varlen_output_shape(fa_tensor *const *views, int role, int64_t *shape)
{
    (void)role;
    shape[0] = views[VL_Q]->shape[1];
    shape[1] = views[VL_Q]->shape[0];
}

/* Packed rows: no batch stride (fa_params ignores it); rows and heads are dims 0 and 1. */
static void varlen_strides(const fa_binding *b, int64_t *batch, int64_t *row, int64_t *head)
{
    *batch = 0;
    *row = b->strides[0];
    *head = b->strides[1];
}

static void varlen_build_params(fa_params *p, const fa_binding *b, const varlen_roles_of *m,
                                const varlen_scalars *s)
{
    const int64_t *q = b[m->q].shape, *k = b[m->k].shape;
    p->batch = (int)(b[m->cu_q].shape[0] - 1);
    p->seqlen_q = s->max_seqlen_q;
    p->seqlen_k = s->max_seqlen_k;
    p->total_q = (int)q[0];
    p->total_k = (int)k[0];
    p->heads_q = (int)q[1];
    p->head_dim = (int)q[2];
    p->heads_kv = (int)k[1];
    p->dtype = b[m->q].dtype;
    attention_build_scalars(p, &s->fwd);
    p->q = b[m->q].data;
    p->k = b[m->k].data;
    p->v = b[m->v].data;
    p->out = b[m->out].data;
    p->cu_seqlens_q = (const int32_t *)b[m->cu_q].data;
    p->cu_seqlens_k = (const int32_t *)b[m->cu_k].data;
    varlen_strides(&b[m->q], &p->q_batch_stride, &p->q_row_stride, &p->q_head_stride);
    varlen_strides(&b[m->k], &p->k_batch_stride, &p->k_row_stride, &p->k_head_stride);
    varlen_strides(&b[m->v], &p->v_batch_stride, &p->v_row_stride, &p->v_head_stride);
    varlen_strides(&b[m->out], &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
    p->lse = b[m->lse].present ? (float *)b[m->lse].data : NULL;
    p->sinks = b[m->sinks].present ? (const float *)b[m->sinks].data : NULL;
}

static void varlen_build(fa_op_params *a, const fa_binding *b, const void *args)
{
    varlen_build_params(&a->p, b, &forward_map, (const varlen_scalars *)args);
}

static int varlen_empty(const fa_op_params *a)
{
    return a->p.batch == 0 || a->p.heads_q == 0 || a->p.total_q == 0;
}

const fa_op fa_attention_varlen_op = {
    .name = "attention_varlen",
    .num_roles = VL_NUM_ROLES,
    .roles = varlen_roles,
    .check_shapes = varlen_check_shapes,
    .output_shape = varlen_output_shape,
    .build = varlen_build,
    .empty = varlen_empty,
    .check = attention_check,
    .run_gpu = attention_run_gpu,
    .run_cpu = attention_run_cpu,
};

/* ------------------------------------------------------------------------------------------ */
/* The backward                                                                                */

/* The forward's rules, then the forward's results. */
static int varlen_backward_check_shapes(fa_tensor *const *views, const void *args)
{
    if (varlen_check_forward_shapes(views, &backward_map, (const varlen_scalars *)args) < 0)
        return -1;
    const fa_tensor *q = views[VLB_Q];
    const int64_t want[2] = {q->shape[1], q->shape[0]};
    return backward_check_forward_results(views[VLB_DOUT], views[VLB_OUT], q, views[VLB_LSE],
                                          want, "(heads_q, total_q)");
}

static const backward_grad_roles varlen_grad_roles = {VLB_DOUT, VLB_DQ, VLB_DK, VLB_DV,
                                                      VLB_DSINKS};

static void varlen_backward_build(fa_op_params *a, const fa_binding *b, const void *args)
{
    const varlen_scalars *s = (const varlen_scalars *)args;
    varlen_build_params(&a->p, b, &backward_map, s);
    backward_build_grads(&a->g, b, &varlen_grad_roles, varlen_strides, s->deterministic);
}

const fa_op fa_attention_varlen_backward_op = {
    .name = "attention_varlen_backward",
    .num_roles = VLB_NUM_ROLES,
    .roles = varlen_backward_roles,
    .check_shapes = varlen_backward_check_shapes,
    .build = varlen_backward_build,
    .empty = backward_empty,
    .check = backward_check,
    .run_gpu = backward_run_gpu,
    .run_cpu = backward_run_cpu,
};

/* ------------------------------------------------------------------------------------------ */
/* varlen_forward() and varlen_backward()                                                      */

static int check_max_seqlens(const varlen_scalars *s)
{
    if (s->max_seqlen_q < 0 || s->max_seqlen_k < 0) {
        PyErr_Format(PyExc_ValueError,
                     "max_seqlen_q and max_seqlen_k must be >= 0 (the longest entry of each "
                     "side), got %d and %d",
                     s->max_seqlen_q, s->max_seqlen_k);
        return -1;
    }
    return 0;
}

PyObject *attention_varlen_impl(PyObject *module, PyObject *const *arrays,
                                const fa_call_site *site, const varlen_scalars *s)
{
    if (check_max_seqlens(s) < 0)
        return NULL;
    const attention_call_args c = {arrays, site, &s->fwd, s, s->fwd.return_lse ? VL_LSE : -1};
    return attention_call(module, &fa_attention_varlen_op, &c);
}

PyObject *attention_varlen_backward_impl(PyObject *module, PyObject *const *arrays,
                                         const fa_call_site *site, const varlen_scalars *s)
{
    if (check_max_seqlens(s) < 0)
        return NULL;
    const int sinks = arrays[VLB_SINKS] && arrays[VLB_SINKS] != Py_None;
    const attention_call_args c = {arrays, site, &s->fwd, s, sinks ? VLB_DSINKS : -1};
    return attention_call(module, &fa_attention_varlen_backward_op, &c);
}
