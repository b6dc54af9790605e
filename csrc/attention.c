/*
 * attention.c -- the attention forward as an op of the call engine: its arrays, their shape
 * rules, its params builder, and the logic behind forward() and launch_config().
 *
 *   q     (batch, seqlen_q, heads_q, head_dim)     input, fp16 / bf16 (also fp32, fp64 on cpu)
 *   k, v  (batch, seqlen_k, heads_kv, head_dim)    inputs, q's dtype
 *   out   q's shape and dtype                      output, given (out=) or new
 *   lse   float32 (batch, heads_q, seqlen_q)       output when return_lse, compact
 *   sinks float32 (heads_q,)                       optional input where q lives, compact
 * Everything else (import, devices, streams, staging, outputs, GIL) is call_module.c's.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include <limits.h>
#include <math.h>

#include "ops.h"

static const char *const Q_DIMS = "(batch, seqlen_q, heads_q, head_dim)";
static const char *const KV_DIMS = "(batch, seqlen_k, heads_kv, head_dim)";

static const fa_role attention_roles[ATTN_NUM_ROLES] = {
    [ATTN_Q] = {"q", FA_ROLE_IN, 4, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [ATTN_K] = {"k", FA_ROLE_IN, 4, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [ATTN_V] = {"v", FA_ROLE_IN, 4, KV_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [ATTN_OUT] = {"out", FA_ROLE_OUT, 4, Q_DIMS, FA_OP_DTYPE, ATTN_Q, "head_dim"},
    [ATTN_LSE] = {"lse", FA_ROLE_OUT | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT, 3,
                  "(batch, heads_q, seqlen_q)", FA_FLOAT32, -1, NULL},
    [ATTN_SINKS] = {"sinks", FA_ROLE_IN | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT | FA_ROLE_SIDE, 1,
                    "(heads_q,)", FA_FLOAT32, -1, NULL},
};

/* The rules between shapes that the role table cannot state; GQA's heads_q % heads_kv and
 * head_dim's range are fa_check_params's. */
static int attention_check_shapes(fa_tensor *const *views, const void *args)
{
    (void)args;
    const fa_tensor *q = views[ATTN_Q], *k = views[ATTN_K], *v = views[ATTN_V];
    const fa_tensor *sinks = views[ATTN_SINKS];
    for (int d = 0; d < 4; d++) {
        if (k->shape[d] == v->shape[d])
            continue;
        char ks[96], vs[96];
        fa_format_shape(4, k->shape, ks, sizeof ks);
        fa_format_shape(4, v->shape, vs, sizeof vs);
        PyErr_Format(PyExc_ValueError, "k and v must have the same shape, got k %s and v %s", ks,
                     vs);
        return -1;
    }
    if (q->shape[0] != k->shape[0]) {
        PyErr_Format(PyExc_ValueError,
                     "q and k must have the same batch size, got q %lld and k %lld",
                     (long long)q->shape[0], (long long)k->shape[0]);
        return -1;
    }
    if (q->shape[3] != k->shape[3]) {
        PyErr_Format(PyExc_ValueError, "q and k must have the same head_dim, got q %lld and k %lld",
                     (long long)q->shape[3], (long long)k->shape[3]);
        return -1;
    }
    return fa_check_sinks_shape(sinks, q->shape[2]);
}

void attention_strides(const fa_binding *b, int64_t *batch, int64_t *row, int64_t *head)
{
    *batch = b->strides[0];
    *row = b->strides[1];
    *head = b->strides[2];
}

void attention_build_scalars(fa_params *p, const attention_scalars *s)
{
    p->causal = s->causal;
    p->family = (fa_kernel_family)s->kernel;
    p->softmax_scale = isnan(s->softmax_scale)
                           ? (p->head_dim > 0 ? 1.0f / sqrtf((float)p->head_dim) : 1.0f)
                           : (float)s->softmax_scale;
    p->window_left = s->window_left;
    p->window_right = s->window_right;
    p->softcap = (float)s->softcap;
}

void attention_build_params(fa_params *p, const fa_binding *b, const attention_scalars *s)
{
    const int64_t *q = b[ATTN_Q].shape, *k = b[ATTN_K].shape;
    p->batch = (int)q[0];
    p->seqlen_q = (int)q[1];
    p->heads_q = (int)q[2];
    p->head_dim = (int)q[3];
    p->seqlen_k = (int)k[1];
    p->heads_kv = (int)k[2];
    p->dtype = b[ATTN_Q].dtype;
    attention_build_scalars(p, s);
    p->q = b[ATTN_Q].data;
    p->k = b[ATTN_K].data;
    p->v = b[ATTN_V].data;
    p->out = b[ATTN_OUT].data;
    attention_strides(&b[ATTN_Q], &p->q_batch_stride, &p->q_row_stride, &p->q_head_stride);
    attention_strides(&b[ATTN_K], &p->k_batch_stride, &p->k_row_stride, &p->k_head_stride);
    attention_strides(&b[ATTN_V], &p->v_batch_stride, &p->v_row_stride, &p->v_head_stride);
    attention_strides(&b[ATTN_OUT], &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
    p->lse = b[ATTN_LSE].present ? (float *)b[ATTN_LSE].data : NULL;
    p->sinks = b[ATTN_SINKS].present ? (const float *)b[ATTN_SINKS].data : NULL;
}

static void attention_build(fa_op_params *a, const fa_binding *b, const void *args)
{
    attention_build_params(&a->p, b, (const attention_scalars *)args);
}

static int attention_empty(const fa_op_params *a)
{
    return a->p.batch == 0 || a->p.heads_q == 0 || a->p.seqlen_q == 0;
}

fa_status attention_check(const fa_op_params *a, int gpu) { return fa_check_params(&a->p, gpu); }
fa_status attention_run_gpu(const fa_op_params *a, cudaStream_t s) { return fa_forward(&a->p, s); }
fa_status attention_run_cpu(const fa_op_params *a) { return fa_forward_cpu(&a->p); }

const fa_op fa_attention_op = {
    .name = "attention",
    .num_roles = ATTN_NUM_ROLES,
    .roles = attention_roles,
    .check_shapes = attention_check_shapes,
    .output_shape = fa_lse_shape_of_q, /* lse; out is like q */
    .build = attention_build,
    .empty = attention_empty,
    .check = attention_check,
    .run_gpu = attention_run_gpu,
    .run_cpu = attention_run_cpu,
};

/* ------------------------------------------------------------------------------------------ */
/* forward() and launch_config()                                                               */

int attention_check_window(int left, int right)
{
    if (left < -1 || right < -1) {
        PyErr_Format(PyExc_ValueError,
                     "window_size must be (left, right) with each an int >= -1 (-1: unbounded), "
                     "got (%d, %d)",
                     left, right);
        return -1;
    }
    return 0;
}

int attention_check_kernel(int kernel)
{
    if (kernel != FA_KERNEL_AUTO && kernel != FA_KERNEL_SM80 && kernel != FA_KERNEL_SM90) {
        PyErr_Format(PyExc_ValueError, "kernel code must be 0 (auto), 1 (sm80) or 2 (sm90), got %d",
                     kernel);
        return -1;
    }
    return 0;
}

int attention_check_device(int device_kind, int device_index)
{
    if (device_kind != FA_DEVICE_AUTO && device_kind != FA_DEVICE_CPU &&
        device_kind != FA_DEVICE_CUDA) {
        PyErr_Format(PyExc_ValueError, "device_kind must be 0 (auto), 1 (cpu) or 2 (cuda), got %d",
                     device_kind);
        return -1;
    }
    if (device_index < -1) {
        PyErr_Format(PyExc_ValueError, "device ordinal must be >= 0, got %d", device_index);
        return -1;
    }
    return 0;
}

PyObject *attention_call(PyObject *module, const fa_op *op, const attention_call_args *c)
{
    const attention_scalars *s = c->fwd;
    if (attention_check_device(c->site->device_kind, c->site->device_index) < 0 ||
        attention_check_kernel(s->kernel) < 0 ||
        attention_check_window(s->window_left, s->window_right) < 0)
        return NULL;
    fa_call call;
    memset(&call, 0, sizeof call);
    for (int r = 0; r < op->num_roles; r++)
        call.objs[r] = c->arrays[r];
    if (c->want_role >= 0)
        call.want[c->want_role] = 1;
    call.site = *c->site;
    call.args = c->args;
    return fa_call_run(module, op, &call);
}

PyObject *attention_forward_impl(PyObject *module, PyObject *const *arrays,
                                 const fa_call_site *site, const attention_scalars *s)
{
    const attention_call_args c = {arrays, site, s, s, s->return_lse ? ATTN_LSE : -1};
    return attention_call(module, &fa_attention_op, &c);
}

/* Compact bindings of the sizes' arrays at the placeholder: what launch_config plans for. */
static void bind_sizes(const attention_sizes *z, fa_binding *b)
{
    const int64_t q[4] = {z->batch, z->seqlen_q, z->heads_q, z->head_dim};
    const int64_t kv[4] = {z->batch, z->seqlen_k, z->heads_kv, z->head_dim};
    memset(b, 0, sizeof(fa_binding) * ATTN_NUM_ROLES);
    for (int r = 0; r < ATTN_NUM_ROLES; r++) {
        const int64_t *shape = r == ATTN_K || r == ATTN_V ? kv : q;
        b[r].present = r != ATTN_SINKS || z->sinks;
        b[r].data = fa_placeholder;
        b[r].dtype = (fa_dtype)z->dtype;
        for (int d = 0; d < 4; d++)
            b[r].shape[d] = shape[d];
        b[r].strides[3] = 1;
        for (int d = 2; d >= 0; d--)
            b[r].strides[d] = b[r].strides[d + 1] * (shape[d + 1] > 0 ? shape[d + 1] : 1);
    }
}

static fa_status plan_forward(const fa_op_params *a, const fa_device *dev, fa_plan *plan)
{
    return fa_forward_plan(&a->p, dev, plan);
}

int attention_plan_impl(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        int arch_major, int arch_minor, int device, fa_plan *plan)
{
    return attention_plan_with(module, z, s, NULL, plan_forward, arch_major, arch_minor, device,
                               plan);
}

/* A packed batch as the plan sees it: every entry at its longest, the entries' rows one after
 * another (the compact bindings' row and head strides are the packed ones; the batch strides
 * are ignored), offsets at the placeholder (the plan reads only where they are). */
static int attention_plan_packed(fa_params *p, const attention_sizes *z)
{
    const int64_t total_q = (int64_t)z->batch * z->seqlen_q;
    const int64_t total_k = (int64_t)z->batch * z->seqlen_k;
    if (total_q > INT_MAX || total_k > INT_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "varlen: batch x seqlen_q (%lld) and batch x seqlen_k (%lld) packed rows "
                     "must be at most %d",
                     (long long)total_q, (long long)total_k, INT_MAX);
        return -1;
    }
    p->cu_seqlens_q = p->cu_seqlens_k = (const int32_t *)fa_placeholder;
    p->total_q = (int)total_q;
    p->total_k = (int)total_k;
    return 0;
}

/* The sizes and scalars every plan function checks first: a window of ints >= -1, a 16-bit
 * float dtype. */
int attention_plan_check(const attention_sizes *z, const attention_scalars *s)
{
    if (attention_check_window(s->window_left, s->window_right) < 0)
        return -1;
    if (z->dtype == FA_FLOAT32 || z->dtype == FA_FLOAT64) {
        PyErr_Format(PyExc_TypeError,
                     "unsupported dtype %s for a GPU launch: expected float16 or bfloat16 (%s "
                     "runs only on device='cpu')",
                     fa_dtype_str((fa_dtype)z->dtype), fa_dtype_str((fa_dtype)z->dtype));
        return -1;
    }
    if (z->dtype != FA_FLOAT16 && z->dtype != FA_BFLOAT16) {
        PyErr_Format(PyExc_ValueError, "dtype code must be 0 or 1, got %d", z->dtype);
        return -1;
    }
    return 0;
}

int attention_plan_with(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        const fa_grad_params *g, attention_planner planner, int arch_major,
                        int arch_minor, int device, fa_plan *plan)
{
    if (attention_plan_check(z, s) < 0)
        return -1;
    fa_binding b[ATTN_NUM_ROLES];
    bind_sizes(z, b);
    fa_op_params a;
    fa_params_init(&a.p);
    attention_build_params(&a.p, b, s);
    if (z->varlen && attention_plan_packed(&a.p, z) < 0)
        return -1;
    if (g)
        a.g = *g;
    else
        fa_grad_params_init(&a.g);
    fa_kvcache_params_init(&a.c);
    return attention_plan_on(module, &a, planner, arch_major, arch_minor, device, plan);
}

int attention_plan_on(PyObject *module, const fa_op_params *a, attention_planner planner,
                      int arch_major, int arch_minor, int device, fa_plan *plan)
{
    fa_call_error e;
    memset(&e, 0, sizeof e);
    fa_device dev;
    if (arch_major >= 0) {
        fa_error_status(&e, fa_device_nominal(arch_major, arch_minor, &dev));
        if (!e.kind)
            fa_error_status(&e, planner(a, &dev, plan));
    } else {
        Py_BEGIN_ALLOW_THREADS
        fa_query_device(&device, &dev, &e);
        if (!e.kind)
            fa_error_status(&e, planner(a, &dev, plan));
        Py_END_ALLOW_THREADS
        if (!e.kind)
            for (int l = 0; l < plan->num_launches; l++)
                plan->launches[l].device = device;
    }
    if (e.kind) {
        fa_error_raise(module, &e,
                       "; pass arch=(major, minor) to compute the configuration for a nominal GPU");
        return -1;
    }
    return 0;
}
