/*
 * ops.h -- the ops flashattn_c._C exposes, each a descriptor for the call engine (call.h) and
 * the logic its thin parser in module.c calls (the split of CPython's Argument Clinic: the
 * parser converts arguments, the _impl function holds only the logic).
 *
 * Adding an op (backward, varlen, KV cache): a file like attention.c with its role table,
 * shape rules, params builder and _impl functions, declared here, and a parser plus a method
 * table entry in module.c.
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
PyObject *attention_forward_impl(PyObject *module, PyObject *const *arrays, PyObject *layouts,
                                 const attention_scalars *s, uintptr_t stream,
                                 PyObject *stream_owner, int device_kind, int device_index);

/* launch_config(): the plan of a forward of these sizes, for a nominal GPU (arch_major >= 0)
 * or the GPU `device` (-1: current). Returns 0, or -1 with an exception set. */
typedef struct {
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype;
    int sinks;
} attention_sizes;

/* Shared with the other attention ops (attention_backward.c). */
void attention_build_params(fa_params *p, const fa_binding *b, const attention_scalars *s);
void attention_strides(const fa_binding *b, int64_t *batch, int64_t *row, int64_t *head);
int attention_check_window(int left, int right); /* each side an int >= -1 */
int attention_check_kernel(int kernel);
int attention_check_device(int device_kind, int device_index);

int attention_plan_impl(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        int arch_major, int arch_minor, int device, fa_plan *plan);

/* The engine of the plan functions: the params of sizes z (arrays compact at the placeholder;
 * g, if given, the gradients' params) planned by `planner` for the nominal or real device. */
typedef fa_status (*attention_planner)(const fa_op_params *a, const fa_device *dev, fa_plan *plan);
int attention_plan_with(PyObject *module, const attention_sizes *z, const attention_scalars *s,
                        const fa_grad_params *g, attention_planner planner, int arch_major,
                        int arch_minor, int device, fa_plan *plan);

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

/* backward(): `arrays` by role. Returns (dq, dk, dv, dsinks or None). */
PyObject *attention_backward_impl(PyObject *module, PyObject *const *arrays, PyObject *layouts,
                                  const backward_scalars *s, uintptr_t stream,
                                  PyObject *stream_owner, int device_kind, int device_index);

/* backward_plan(): the plan of a backward of these sizes (as attention_plan_impl). */
int attention_backward_plan_impl(PyObject *module, const attention_sizes *z,
                                 const backward_scalars *s, int arch_major, int arch_minor,
                                 int device, fa_plan *plan);

#endif /* FA_OPS_H */
