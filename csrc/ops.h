/*
 * ops.h -- the ops flashattn_c._C exposes, each a descriptor for the call engine (call.h) and
 * the logic its thin parser in module.c calls (the split of CPython's Argument Clinic: the
 * parser converts arguments, the _impl function holds only the logic).
 *
 * Adding an op: a file like attention.c with its role table, shape rules, params builder and
 * _impl functions, declared here, and a parser plus a method table entry in module.c.
 *
 * Include compat.h before this header.
 */
#ifndef FA_OPS_H
#define FA_OPS_H

#include "call.h"

/* attention.c: the forward. Roles, in the order of forward()'s arrays and its layouts tuple. */
enum {
    ATTN_Q = 0,
    ATTN_K,
    ATTN_V,
    ATTN_OUT,
    ATTN_LSE,
    ATTN_SINKS,
    ATTN_NUM_ROLES,
};

extern const fa_op fa_attention_op;

/* The forward's scalars as the parser converted them. */
typedef struct {
    int causal, return_lse;
    double softmax_scale; /* NaN: 1/sqrt(head_dim) */
    int window_left, window_right;
    double softcap;
    int kernel; /* fa_kernel_family code */
} attention_scalars;

/* forward(): `arrays` by role (NULL or None: absent). Returns (out, lse or None). */
PyObject *attention_forward_impl(PyObject *module, PyObject *const *arrays,
                                 const fa_call_site *site, const attention_scalars *s);

/* launch_config(): the plan of a forward of these sizes, for a nominal GPU (arch_major >= 0)
 * or the GPU `device` (-1: current). Returns 0, or -1 with an exception set. */
typedef struct {
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype;
    int sinks;
    int varlen; /* packed: batch entries of at most seqlen_q / seqlen_k rows along one dim */
} attention_sizes;

/* Shared with the other attention ops (attention_backward.c, attention_varlen.c,
 * attention_kvcache.c). */
void attention_build_params(fa_params *p, const fa_binding *b, const attention_scalars *s);
/* The scalars' part of the params (mask, softcap, scale, family); p->head_dim set first. */
void attention_build_scalars(fa_params *p, const attention_scalars *s);
/* Element strides of a binding as the C API takes them: (batch, seqlen, heads, head_dim). */
typedef void (*attention_stride_fn)(const fa_binding *b, int64_t *batch, int64_t *row,
                                    int64_t *head);
void attention_strides(const fa_binding *b, int64_t *batch, int64_t *row, int64_t *head);
int attention_check_window(int left, int right); /* each side an int >= -1 */
int attention_check_kernel(int kernel);
int attention_check_device(int device_kind, int device_index);
/* ValueError "<what>, got <a's shape> and <b's shape>" unless a and b have the same shape. */
int attention_same_shape(const fa_tensor *a, const fa_tensor *b, const char *what);
/* The forward's C entry points, as an op's check, run_gpu and run_cpu. */
fa_status attention_check(const fa_op_params *a, int gpu);
fa_status attention_run_gpu(const fa_op_params *a, cudaStream_t stream);
fa_status attention_run_cpu(const fa_op_params *a);

/* What an attention op's _impl hands the call engine. */
typedef struct {
    PyObject *const *arrays;       /* by role; NULL or None: absent */
    const fa_call_site *site;
    const attention_scalars *fwd;  /* the forward's scalars, checked here (kernel, window) */
    const void *args;              /* the op's scalars, for its build */
    int want_role;                 /* an optional output to produce; -1: none */
} attention_call_args;

/* Checks the scalars every attention op shares, then runs op through the call engine. */
PyObject *attention_call(PyObject *module, const fa_op *op, const attention_call_args *c);

int attention_plan_impl(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        int arch_major, int arch_minor, int device, fa_plan *plan);

/* The engine of the plan functions: the params of sizes z (arrays compact at the placeholder;
 * g, if given, the gradients' params) planned by `planner` for the nominal or real device. */
typedef fa_status (*attention_planner)(const fa_op_params *a, const fa_device *dev, fa_plan *plan);
int attention_plan_with(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        const fa_grad_params *g, attention_planner planner, int arch_major,
                        int arch_minor, int device, fa_plan *plan);
/* Its parts: the checks of the sizes and scalars, and the planning of built params a. */
int attention_plan_check(const attention_sizes *z, const attention_scalars *s);
int attention_plan_on(PyObject *module, const fa_op_params *a, attention_planner planner,
                      int arch_major, int arch_minor, int device, fa_plan *plan);

/* attention_backward.c: the backward. Roles, in the order of backward()'s arrays. */
enum {
    BWD_DOUT = 0,
    BWD_Q,
    BWD_K,
    BWD_V,
    BWD_OUT,
    BWD_LSE,
    BWD_SINKS,
    BWD_DQ,
    BWD_DK,
    BWD_DV,
    BWD_DSINKS,
    BWD_NUM_ROLES,
};

extern const fa_op fa_attention_backward_op;

typedef struct {
    attention_scalars fwd; /* the forward's scalars (return_lse unused) */
    int deterministic;
} backward_scalars;

/* Shared with the varlen backward: the gradients' params from the bindings of the roles
 * named here, their strides read by `strides`; and the backward's entry points. */
typedef struct {
    int dout, dq, dk, dv, dsinks;
} backward_grad_roles;

void backward_build_grads(fa_grad_params *g, const fa_binding *b, const backward_grad_roles *r,
                          attention_stride_fn strides, int deterministic);
int backward_empty(const fa_op_params *a);
/* dout and out have q's shape, and lse the forward's: want, its dims named by lse_dims
 * ("(batch, heads_q, seqlen_q)"). Returns 0, or -1 with a ValueError set. */
int backward_check_forward_results(const fa_tensor *dout, const fa_tensor *out,
                                   const fa_tensor *q, const fa_tensor *lse, const int64_t *want,
                                   const char *lse_dims);
fa_status backward_check(const fa_op_params *a, int gpu);
fa_status backward_run_gpu(const fa_op_params *a, cudaStream_t stream);
fa_status backward_run_cpu(const fa_op_params *a);

/* backward(): `arrays` by role. Returns (dq, dk, dv, dsinks or None). */
PyObject *attention_backward_impl(PyObject *module, PyObject *const *arrays,
                                  const fa_call_site *site, const backward_scalars *s);

/* backward_plan(): the plan of a backward of these sizes (as attention_plan_impl). */
int attention_backward_plan_impl(PyObject *module, const attention_sizes *z,
                                 const backward_scalars *s, int arch_major, int arch_minor,
                                 int device, fa_plan *plan);

/* attention_varlen.c: the forward and backward on packed (variable-length) batches. Roles, in
 * the order of varlen_forward()'s and varlen_backward()'s arrays. */
enum {
    VL_Q = 0,
    VL_K,
    VL_V,
    VL_CU_Q,
    VL_CU_K,
    VL_OUT,
    VL_LSE,
    VL_SINKS,
    VL_NUM_ROLES,
};

enum {
    VLB_DOUT = 0,
    VLB_Q,
    VLB_K,
    VLB_V,
    VLB_OUT,
    VLB_LSE,
    VLB_CU_Q,
    VLB_CU_K,
    VLB_SINKS,
    VLB_DQ,
    VLB_DK,
    VLB_DV,
    VLB_DSINKS,
    VLB_NUM_ROLES,
};

extern const fa_op fa_attention_varlen_op;
extern const fa_op fa_attention_varlen_backward_op;

/* The packed layout's scalars: the longest entry of each side (an upper bound the kernels
 * size their grids by). */
typedef struct {
    attention_scalars fwd;
    int max_seqlen_q, max_seqlen_k;
    int deterministic; /* backward only */
} varlen_scalars;

/* varlen_forward(): returns (out, lse or None); varlen_backward(): (dq, dk, dv, dsinks or
 * None). `arrays` by role. */
PyObject *attention_varlen_impl(PyObject *module, PyObject *const *arrays,
                                const fa_call_site *site, const varlen_scalars *s);
PyObject *attention_varlen_backward_impl(PyObject *module, PyObject *const *arrays,
                                         const fa_call_site *site, const varlen_scalars *s);

/* attention_kvcache.c: attention over a KV cache, new keys and values appended in place. Roles,
 * in the order of kvcache()'s arrays. */
enum {
    KVC_Q = 0,
    KVC_K_CACHE,
    KVC_V_CACHE,
    KVC_K,
    KVC_V,
    KVC_CACHE_SEQLENS,
    KVC_CACHE_BATCH_IDX,
    KVC_BLOCK_TABLE,
    KVC_SINKS,
    KVC_OUT,
    KVC_LSE,
    KVC_NUM_ROLES,
};

extern const fa_op fa_attention_kvcache_op;

typedef struct {
    attention_scalars fwd;
    int cache_seqlen; /* every entry's cached keys when cache_seqlens is not an array */
    int num_splits;   /* 0: the plan picks */
} kvcache_scalars;

/* launch_config(kvcache=True): the plan of a KV-cache call of sizes z (seqlen_k: each entry's
 * cache capacity), seqlen_new appended keys (0: none) and a paged cache of page_size keys per
 * page (0: dense), as attention_plan_impl. */
int attention_kvcache_plan_impl(PyObject *module, const attention_sizes *z,
                                const kvcache_scalars *s, int seqlen_new, int page_size,
                                int arch_major, int arch_minor, int device, fa_plan *plan);

/* kvcache(): returns (out, lse or None); k_cache and v_cache are written in place. */
PyObject *attention_kvcache_impl(PyObject *module, PyObject *const *arrays,
                                 const fa_call_site *site, const kvcache_scalars *s);

#endif /* FA_OPS_H */
