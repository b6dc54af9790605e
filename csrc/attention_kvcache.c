/*
 * attention_kvcache.c -- attention over a KV cache (FlashAttention's flash_attn_with_kvcache)
 * as an op of the call engine: its arrays, their shape rules, its params builder, and the
 * logic behind kvcache().
 *
 *   q, out           (batch, seqlen_q, heads_q, head_dim)   input / output, float16 / bfloat16
 *                                                           (float32 and float64 on cpu)
 *   k_cache, v_cache dense (batch_cache, max_seqlen, heads_kv, head_dim) or paged (num_pages,
 *                    page_size, heads_kv, head_dim)        inputs in q's dtype, written in place
 *                                                           when k and v are given
 *   k, v             (batch, seqlen_new, heads_kv, head_dim) optional inputs: the new keys and
 *                                                           values, appended to each entry
 *   cache_seqlens    int32 (batch,)                         optional, where q lives, compact:
 *                                                           each entry's cached keys (else the
 *                                                           scalar cache_seqlen for all)
 *   cache_batch_idx  int32 (batch,)                         optional, where q lives, compact:
 *                                                           the dense cache entry of each entry
 *   block_table      int32 (batch, max_pages)               optional, where q lives, unit
 *                                                           stride on max_pages: paged caches
 *   sinks            float32 (heads_q,)                     optional, where q lives, compact
 *   lse              float32 (batch, heads_q, seqlen_q)     output when return_lse, compact
 *
 * The params: the caches are fa_params' k and v; a paged cache has kv_batches = num_pages,
 * page_size = its dim 1 and seqlen_k = max_pages * page_size, a dense one seqlen_k = its
 * dim 1 (and kv_batches = batch_cache with cache_batch_idx). The new keys, the lengths and
 * the split count are the fa_kvcache_params. Values in device memory (lengths, indices, pages)
 * cannot be read without a synchronisation: they are the caller's to get right.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include <limits.h>

#include "ops.h"

static const char *const Q_DIMS = "(batch, seqlen_q, heads_q, head_dim)";
static const char *const CACHE_DIMS =
    "(batch_cache, max_seqlen, heads_kv, head_dim), or paged (num_pages, page_size, heads_kv, "
    "head_dim)";
static const char *const NEW_DIMS = "(batch, seqlen_new, heads_kv, head_dim)";
static const char *const BATCH_DIMS = "(batch,)";

#define SIDE_FLAGS (FA_ROLE_IN | FA_ROLE_OPTIONAL | FA_ROLE_SIDE)

static const fa_role kvcache_roles[KVC_NUM_ROLES] = {
    [KVC_Q] = {"q", FA_ROLE_IN, 4, Q_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    /* Written exactly when new keys (and values) are given. */
    [KVC_K_CACHE] = {"k_cache", FA_ROLE_IN | FA_ROLE_WRITTEN, 4, CACHE_DIMS, FA_OP_DTYPE, KVC_K,
                     "head_dim"},
    [KVC_V_CACHE] = {"v_cache", FA_ROLE_IN | FA_ROLE_WRITTEN, 4, CACHE_DIMS, FA_OP_DTYPE, KVC_V,
                     "head_dim"},
    [KVC_K] = {"k", FA_ROLE_IN | FA_ROLE_OPTIONAL, 4, NEW_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [KVC_V] = {"v", FA_ROLE_IN | FA_ROLE_OPTIONAL, 4, NEW_DIMS, FA_OP_DTYPE, -1, "head_dim"},
    [KVC_CACHE_SEQLENS] = {"cache_seqlens", SIDE_FLAGS | FA_ROLE_COMPACT, 1, BATCH_DIMS,
                           FA_DTYPE_INT32, -1, NULL},
    [KVC_CACHE_BATCH_IDX] = {"cache_batch_idx", SIDE_FLAGS | FA_ROLE_COMPACT, 1, BATCH_DIMS,
                             FA_DTYPE_INT32, -1, NULL},
    [KVC_BLOCK_TABLE] = {"block_table", SIDE_FLAGS, 2, "(batch, max_pages)", FA_DTYPE_INT32, -1,
                         "max_pages"},
    [KVC_SINKS] = {"sinks", SIDE_FLAGS | FA_ROLE_COMPACT, 1, "(heads_q,)", FA_FLOAT32, -1, NULL},
    [KVC_OUT] = {"out", FA_ROLE_OUT, 4, Q_DIMS, FA_OP_DTYPE, KVC_Q, "head_dim"},
    [KVC_LSE] = {"lse", FA_ROLE_OUT | FA_ROLE_OPTIONAL | FA_ROLE_COMPACT, 3,
                 "(batch, heads_q, seqlen_q)", FA_FLOAT32, -1, NULL},
};

static int check_dim(const fa_tensor *t, int d, int64_t want, const char *what)
{
    if (t->shape[d] == want)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s must have %s = %lld, got %lld", t->name, what,
                 (long long)want, (long long)t->shape[d]);
    return -1;
}

/* The new keys and values: both or neither, shaped (batch, seqlen_new, heads_kv, head_dim). */
static int check_new(fa_tensor *const *views)
{
    const fa_tensor *q = views[KVC_Q], *kc = views[KVC_K_CACHE];
    const fa_tensor *k = views[KVC_K], *v = views[KVC_V];
    if (!k != !v) {
        PyErr_Format(PyExc_ValueError,
                     "k and v (the new keys and their values) must be given together, got %s "
                     "without %s",
                     k ? "k" : "v", k ? "v" : "k");
        return -1;
    }
    if (!k)
        return 0;
    if (attention_same_shape(k, v, "k and v must have the same shape") < 0 ||
        check_dim(k, 0, q->shape[0], "batch (q's)") < 0 ||
        check_dim(k, 2, kc->shape[2], "heads_kv (k_cache's)") < 0 ||
        check_dim(k, 3, q->shape[3], "head_dim (q's)") < 0)
        return -1;
    return 0;
}

/* Paged caches: a (batch, max_pages) table of page indices, read a row at a time. The C API's
 * layout takes the table's row stride only, so its pages are unit stride wherever it lives. */
static int check_block_table(fa_tensor *const *views)
{
    const fa_tensor *q = views[KVC_Q], *kc = views[KVC_K_CACHE];
    const fa_tensor *bt = views[KVC_BLOCK_TABLE];
    if (views[KVC_CACHE_BATCH_IDX]) {
        PyErr_Format(PyExc_ValueError,
                     "cache_batch_idx selects entries of a dense cache; with block_table (a "
                     "paged cache) each entry's pages are its row of block_table: pass one of "
                     "them");
        return -1;
    }
    if (check_dim(bt, 0, q->shape[0], "batch (q's)") < 0)
        return -1;
    if (bt->shape[1] > 1 && bt->strides[1] != 1) {
        PyErr_Format(PyExc_ValueError, "block_table must have unit stride on max_pages, got %lld",
                     (long long)bt->strides[1]);
        return -1;
    }
    if (kc->shape[1] == 0) {
        PyErr_Format(PyExc_ValueError, "k_cache must have page_size >= 1 (dim 1 of a paged "
                                       "cache), got 0");
        return -1;
    }
    if (bt->shape[1] * kc->shape[1] > INT_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "block_table's %lld pages of page_size %lld hold more than %d keys",
                     (long long)bt->shape[1], (long long)kc->shape[1], INT_MAX);
        return -1;
    }
    return 0;
}

/* The keys an entry's cache holds: its pages' keys, or a dense entry's rows. */
static int64_t capacity(fa_tensor *const *views)
{
    const fa_tensor *kc = views[KVC_K_CACHE], *bt = views[KVC_BLOCK_TABLE];
    return bt ? bt->shape[1] * kc->shape[1] : kc->shape[1];
}

static int kvcache_check_shapes(fa_tensor *const *views, const void *args)
{
    const kvcache_scalars *s = (const kvcache_scalars *)args;
    const fa_tensor *q = views[KVC_Q], *kc = views[KVC_K_CACHE], *vc = views[KVC_V_CACHE];
    const fa_tensor *k = views[KVC_K], *sinks = views[KVC_SINKS];
    if (attention_same_shape(kc, vc, "k_cache and v_cache must have the same shape") < 0)
        return -1;
    if (kc->shape[3] != q->shape[3]) {
        PyErr_Format(PyExc_ValueError,
                     "q and k_cache must have the same head_dim, got q %lld and k_cache %lld",
                     (long long)q->shape[3], (long long)kc->shape[3]);
        return -1;
    }
    if (check_new(views) < 0)
        return -1;
    for (int r = KVC_CACHE_SEQLENS; r <= KVC_CACHE_BATCH_IDX; r++)
        if (views[r] && check_dim(views[r], 0, q->shape[0], "batch (q's) entries") < 0)
            return -1;
    if (views[KVC_BLOCK_TABLE]) {
        if (check_block_table(views) < 0)
            return -1;
    } else if (!views[KVC_CACHE_BATCH_IDX] && kc->shape[0] != q->shape[0]) {
        PyErr_Format(PyExc_ValueError,
                     "k_cache must have batch = %lld entries (q's batch), got %lld: pass "
                     "cache_batch_idx to read other entries of a larger cache",
                     (long long)q->shape[0], (long long)kc->shape[0]);
        return -1;
    }
    const int64_t keys = capacity(views), added = k ? k->shape[1] : 0;
    if (added > keys) {
        PyErr_Format(PyExc_ValueError,
                     "k has seqlen_new = %lld new keys, more than the cache's %lld per entry",
                     (long long)added, (long long)keys);
        return -1;
    }
    if (!views[KVC_CACHE_SEQLENS] && s->cache_seqlen > keys - added) {
        PyErr_Format(PyExc_ValueError,
                     "cache_seqlens = %d cached keys plus %lld new ones exceed the cache's %lld "
                     "keys per entry",
                     s->cache_seqlen, (long long)added, (long long)keys);
        return -1;
    }
    return fa_check_sinks_shape(sinks, q->shape[2]);
}

static void kvcache_build(fa_op_params *a, const fa_binding *b, const void *args)
{
    const kvcache_scalars *s = (const kvcache_scalars *)args;
    fa_params *p = &a->p;
    const int64_t *q = b[KVC_Q].shape, *kc = b[KVC_K_CACHE].shape;
    p->batch = (int)q[0];
    p->seqlen_q = (int)q[1];
    p->heads_q = (int)q[2];
    p->head_dim = (int)q[3];
    p->heads_kv = (int)kc[2];
    p->dtype = b[KVC_Q].dtype;
    attention_build_scalars(p, &s->fwd);
    p->q = b[KVC_Q].data;
    p->k = b[KVC_K_CACHE].data;
    p->v = b[KVC_V_CACHE].data;
    p->out = b[KVC_OUT].data;
    attention_strides(&b[KVC_Q], &p->q_batch_stride, &p->q_row_stride, &p->q_head_stride);
    attention_strides(&b[KVC_K_CACHE], &p->k_batch_stride, &p->k_row_stride, &p->k_head_stride);
    attention_strides(&b[KVC_V_CACHE], &p->v_batch_stride, &p->v_row_stride, &p->v_head_stride);
    attention_strides(&b[KVC_OUT], &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
    p->lse = b[KVC_LSE].present ? (float *)b[KVC_LSE].data : NULL;
    p->sinks = b[KVC_SINKS].present ? (const float *)b[KVC_SINKS].data : NULL;
    if (b[KVC_BLOCK_TABLE].present) {
        const fa_binding *bt = &b[KVC_BLOCK_TABLE];
        p->block_table = (const int32_t *)bt->data;
        p->block_table_stride = bt->strides[0];
        p->page_size = (int)kc[1];
        p->kv_batches = (int)kc[0];
        p->seqlen_k = (int)(bt->shape[1] * kc[1]);
    } else {
        p->seqlen_k = (int)kc[1];
        if (b[KVC_CACHE_BATCH_IDX].present) {
            p->kv_batch_idx = (const int32_t *)b[KVC_CACHE_BATCH_IDX].data;
            p->kv_batches = (int)kc[0];
        }
    }

    fa_kvcache_params *c = &a->c;
    if (b[KVC_K].present) {
        c->k_new = b[KVC_K].data;
        c->v_new = b[KVC_V].data;
        c->seqlen_new = (int)b[KVC_K].shape[1];
        attention_strides(&b[KVC_K], &c->kn_batch_stride, &c->kn_row_stride, &c->kn_head_stride);
        attention_strides(&b[KVC_V], &c->vn_batch_stride, &c->vn_row_stride, &c->vn_head_stride);
    }
    c->cache_seqlens =
        b[KVC_CACHE_SEQLENS].present ? (const int32_t *)b[KVC_CACHE_SEQLENS].data : NULL;
    c->cache_seqlen = s->cache_seqlen;
    c->num_splits = s->num_splits;
}

/* Nothing to attend and nothing to append. */
static int kvcache_empty(const fa_op_params *a)
{
    return a->p.batch == 0 || a->p.heads_q == 0 || (a->p.seqlen_q == 0 && a->c.seqlen_new == 0);
}

/* fa_kvcache_check: the general rules (the caches as k and v of their full capacity) and the
 * cache's own, the host arrays' values among them (cache_seqlens, cache_batch_idx, pages,
 * overlapping appends), which the call engine has checked while they are host memory, also on
 * the way to the GPU. */
static fa_status kvcache_check(const fa_op_params *a, int gpu)
{
    return fa_kvcache_check(&a->p, &a->c, gpu);
}

static fa_status plan_kvcache(const fa_op_params *a, const fa_device *dev, fa_plan *plan)
{
    return fa_kvcache_plan(&a->p, &a->c, dev, plan);
}

/* Compact arrays of the sizes at the placeholder: q and out (batch, seqlen_q, heads_q,
 * head_dim); the caches (batch, seqlen_k, heads_kv, head_dim), or paged (batch * pages,
 * page_size, ...) with a (batch, pages) block_table; k and v (batch, seqlen_new, ...) when
 * seqlen_new > 0; cache_seqlens an array (batch,), as serving passes it: the plan then reads
 * the caches' capacity, never the lengths (one int for every entry plans for that length). */
int attention_kvcache_plan_impl(PyObject *module, const attention_sizes *z,
                                const kvcache_scalars *s, int seqlen_new, int page_size,
                                int arch_major, int arch_minor, int device, fa_plan *plan)
{
    if (attention_plan_check(z, &s->fwd) < 0)
        return -1;
    if (seqlen_new < 0 || page_size < 0 || s->num_splits < 0) {
        PyErr_Format(PyExc_ValueError,
                     "seqlen_new (%d), page_size (%d) and num_splits (%d) must be >= 0",
                     seqlen_new, page_size, s->num_splits);
        return -1;
    }
    const int pages = page_size ? (z->seqlen_k + page_size - 1) / page_size : 0;
    const int64_t q[4] = {z->batch, z->seqlen_q, z->heads_q, z->head_dim};
    const int64_t cache[4] = {page_size ? (int64_t)z->batch * pages : z->batch,
                              page_size ? page_size : z->seqlen_k, z->heads_kv, z->head_dim};
    const int64_t added[4] = {z->batch, seqlen_new, z->heads_kv, z->head_dim};
    const int64_t table[2] = {z->batch, pages};
    const int64_t heads[1] = {z->heads_q}, entries[1] = {z->batch};
    const struct {
        int role, ndim;
        const int64_t *shape;
        int present;
        fa_dtype dtype;
    } arrays[] = {
        {KVC_Q, 4, q, 1, (fa_dtype)z->dtype},
        {KVC_K_CACHE, 4, cache, 1, (fa_dtype)z->dtype},
        {KVC_V_CACHE, 4, cache, 1, (fa_dtype)z->dtype},
        {KVC_K, 4, added, seqlen_new > 0, (fa_dtype)z->dtype},
        {KVC_V, 4, added, seqlen_new > 0, (fa_dtype)z->dtype},
        {KVC_CACHE_SEQLENS, 1, entries, 1, FA_DTYPE_INT32},
        {KVC_BLOCK_TABLE, 2, table, page_size > 0, FA_DTYPE_INT32},
        {KVC_SINKS, 1, heads, z->sinks, FA_FLOAT32},
        {KVC_OUT, 4, q, 1, (fa_dtype)z->dtype},
    };
    fa_binding b[KVC_NUM_ROLES];
    memset(b, 0, sizeof b);
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) {
        fa_binding *x = &b[arrays[i].role];
        x->present = arrays[i].present;
        x->data = x->present ? fa_placeholder : NULL;
        x->dtype = arrays[i].dtype;
        const int nd = arrays[i].ndim;
        x->strides[nd - 1] = 1;
        for (int d = 0; d < nd; d++)
            x->shape[d] = arrays[i].shape[d];
        for (int d = nd - 2; d >= 0; d--)
            x->strides[d] = x->strides[d + 1] * (x->shape[d + 1] > 0 ? x->shape[d + 1] : 1);
    }
    fa_op_params a;
    fa_params_init(&a.p);
    fa_grad_params_init(&a.g);
    fa_kvcache_params_init(&a.c);
    kvcache_build(&a, b, s);
    return attention_plan_on(module, &a, plan_kvcache, arch_major, arch_minor, device, plan);
}

static fa_status kvcache_run_gpu(const fa_op_params *a, cudaStream_t stream)
{
    return fa_kvcache(&a->p, &a->c, stream);
}

static fa_status kvcache_run_cpu(const fa_op_params *a) { return fa_kvcache_cpu(&a->p, &a->c); }

const fa_op fa_attention_kvcache_op = {
    .name = "attention_with_kvcache",
    .num_roles = KVC_NUM_ROLES,
    .roles = kvcache_roles,
    .check_shapes = kvcache_check_shapes,
    .output_shape = fa_lse_shape_of_q, /* lse; out is like q */
    .build = kvcache_build,
    .empty = kvcache_empty,
    .check = kvcache_check,
    .run_gpu = kvcache_run_gpu,
    .run_cpu = kvcache_run_cpu,
};

PyObject *attention_kvcache_impl(PyObject *module, PyObject *const *arrays,
                                 const fa_call_site *site, const kvcache_scalars *s)
{
    if (s->cache_seqlen < 0 || s->num_splits < 0) {
        PyErr_Format(PyExc_ValueError,
                     "cache_seqlens (as an int) and num_splits must be >= 0, got %d and %d",
                     s->cache_seqlen, s->num_splits);
        return NULL;
    }
    const attention_call_args c = {arrays, site, &s->fwd, s, s->fwd.return_lse ? KVC_LSE : -1};
    return attention_call(module, &fa_attention_kvcache_op, &c);
}
