/*
 * module.c -- flashattn_c._C: the Python entry points over the C API of flashattn.h.
 *
 *   forward(q, k, v, out=None, *, causal, softmax_scale, return_lse, stream, device_kind,
 *           device_index, kernel, stream_owner, window_left, window_right, softcap, sinks)
 *       -> (out, lse or None)
 *       q (batch, seqlen_q, heads_q, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim);
 *       out like q; lse float32 (batch, heads_q, seqlen_q); sinks float32 (heads_q,) where q
 *       lives. Three paths:
 *         device inputs     -> fa_forward on the inputs' GPU, results in DeviceArrays
 *         host inputs       -> copy in, fa_forward, copy out (device_kind auto or cuda)
 *         device_kind cpu   -> fa_forward_cpu on the host arrays
 *   launch_config(...), last_launch(), build_info()   introspection of the launch contract
 * The public wrappers, output-type matching and stream discovery are in flashattn_c/_api.py.
 *
 * Every Python-visible rule is checked, and every error raised, before any GPU work and before
 * anything is written to `out`. The GIL is released around the launch and the host loops,
 * with every Python object read beforehand. No CUDA call happens at import.
 *
 * Built by setup.py into flashattn_c/_C (python -m pip install -e . or
 * python setup.py build_ext --inplace).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL flashattn_c_ARRAY_API
#include <numpy/arrayobject.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "device_array.h"
#include "flashattn.h"
#include "launch_contract.h"
#include "tensor.h"

#if PY_VERSION_HEX < 0x030A0000
/* Python 3.9 lacks these 3.10 conveniences. */
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
static int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* device_kind values of forward(): where the call runs. */
enum { DEVICE_AUTO = 0, DEVICE_CPU = 1, DEVICE_CUDA = 2 };

/* A real, 256-byte aligned host address standing in for buffers that do not exist yet, so
 * fa_check_params can judge layouts (alignment, strides) before anything is allocated. */
static _Alignas(256) unsigned char placeholder[256];

static const char *const Q_DIMS = "(batch, seqlen_q, heads_q, head_dim)";
static const char *const KV_DIMS = "(batch, seqlen_k, heads_kv, head_dim)";

static fa_module_state *module_state(PyObject *module)
{
    return (fa_module_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------------------------------ */
/* Errors recorded without the GIL, raised after it is taken back                              */

typedef enum {
    ERR_NONE = 0,
    ERR_VALUE,
    ERR_TYPE,
    ERR_RUNTIME,
    ERR_CUDA,
    ERR_MEMORY,
    ERR_INTERRUPTED, /* the interrupt callback saw a signal handler raise: that exception stands */
} err_kind;

typedef struct {
    err_kind kind;
    cudaError_t cuda;
    char msg[768];
} call_error;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void fail(call_error *e, err_kind kind, const char *fmt, ...)
{
    if (e->kind != ERR_NONE)
        return; /* the first failure is the one to report */
    e->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

static void fail_cuda(call_error *e, cudaError_t err, const char *call, int line)
{
    if (e->kind != ERR_NONE)
        return;
    (void)cudaGetLastError(); /* a non-sticky error must not trip the next call */
    e->cuda = err;
    fail(e, ERR_CUDA, "%s failed at %s:%d: %s: %s", call, __FILE__, line, cudaGetErrorName(err),
         cudaGetErrorString(err));
}

#define CUDA_OR_FAIL(e, call)                                                                 \
    do {                                                                                      \
        cudaError_t cuda_err_ = (call);                                                       \
        if (cuda_err_ != cudaSuccess)                                                         \
            fail_cuda((e), cuda_err_, #call, __LINE__);                                       \
    } while (0)

static void fail_status(call_error *e, fa_status s)
{
    switch (s) {
    case FA_OK: return;
    case FA_ERR_INVALID_ARGUMENT:
    case FA_ERR_UNSUPPORTED: fail(e, ERR_VALUE, "%s", fa_last_error()); return;
    case FA_ERR_CUDA:
        if (e->kind == ERR_NONE) {
            e->cuda = fa_last_cuda_error();
            fail(e, ERR_CUDA, "%s", fa_last_error());
        }
        return;
    case FA_ERR_OUT_OF_MEMORY: fail(e, ERR_MEMORY, "%s", fa_last_error()); return;
    case FA_ERR_INTERRUPTED: fail(e, ERR_INTERRUPTED, "%s", fa_last_error()); return;
    case FA_ERR_NO_KERNEL_FOR_ARCH:
    case FA_ERR_LAUNCH_CONFIG:
    default: fail(e, ERR_RUNTIME, "%s", fa_last_error()); return;
    }
}

/* Errors that mean "there is no GPU to run on", as opposed to a failure on one. */
static int is_no_gpu_error(cudaError_t err)
{
    return err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ||
           err == cudaErrorInitializationError || err == cudaErrorSystemDriverMismatch ||
           err == cudaErrorCompatNotSupportedOnDevice || err == cudaErrorDevicesUnavailable ||
           err == cudaErrorStubLibrary;
}

/* The oldest driver branch that runs a CUDA runtime of this major version. */
static const char *driver_branch_for(int runtime_version)
{
    switch (runtime_version / 1000) {
    case 11: return "R450";
    case 12: return "R525";
    case 13: return "R580";
    }
    return "a newer driver";
}

/* Why there is no usable GPU, told apart by what the driver says: no driver at all
 * (driver_version 0, as cudaDriverGetVersion reports when libcuda cannot be loaded), a driver
 * older than the statically linked runtime, no visible device, or another reason. */
static void describe_no_gpu(cudaError_t err, int driver_version, char *buf, size_t len)
{
    const int rt = CUDART_VERSION;
    if (driver_version <= 0) {
        snprintf(buf, len,
                 "no NVIDIA driver found (the CUDA driver library libcuda.so.1 could not be "
                 "loaded): this machine has no driver, so no GPU to run on");
    } else if (err == cudaErrorInsufficientDriver || driver_version / 1000 < rt / 1000) {
        snprintf(buf, len,
                 "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime this "
                 "build links statically: install a %s or newer driver, or rebuild with the "
                 "toolkit the driver supports",
                 driver_version / 1000, driver_version % 1000 / 10, rt / 1000, rt % 1000 / 10,
                 driver_branch_for(rt));
    } else if (err == cudaErrorNoDevice) {
        const char *visible = getenv("CUDA_VISIBLE_DEVICES");
        if (visible)
            snprintf(buf, len,
                     "the NVIDIA driver (CUDA %d.%d) sees no GPU (CUDA_VISIBLE_DEVICES='%s')",
                     driver_version / 1000, driver_version % 1000 / 10, visible);
        else
            snprintf(buf, len, "the NVIDIA driver (CUDA %d.%d) sees no GPU",
                     driver_version / 1000, driver_version % 1000 / 10);
    } else {
        snprintf(buf, len, "%s: %s", cudaGetErrorName(err), cudaGetErrorString(err));
    }
}

/* Raises e as a Python exception. `hint` is appended when the failure is a missing GPU. */
static PyObject *raise_call_error(fa_module_state *st, const call_error *e, const char *hint)
{
    switch (e->kind) {
    case ERR_NONE: PyErr_SetString(PyExc_SystemError, "flashattn_c: error without a message");
        break;
    case ERR_VALUE: PyErr_SetString(PyExc_ValueError, e->msg); break;
    case ERR_TYPE: PyErr_SetString(PyExc_TypeError, e->msg); break;
    case ERR_RUNTIME: PyErr_SetString(PyExc_RuntimeError, e->msg); break;
    case ERR_MEMORY: PyErr_SetString(PyExc_MemoryError, e->msg[0] ? e->msg : "out of memory");
        break;
    case ERR_INTERRUPTED:
        /* The signal handler's exception (KeyboardInterrupt for SIGINT) is already set. */
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyboardInterrupt, e->msg);
        break;
    case ERR_CUDA:
        if (is_no_gpu_error(e->cuda)) {
            int driver = 0;
            if (cudaDriverGetVersion(&driver) != cudaSuccess)
                driver = 0;
            char reason[512], msg[1024];
            describe_no_gpu(e->cuda, driver, reason, sizeof reason);
            snprintf(msg, sizeof msg, "no usable GPU: %s%s", reason, hint ? hint : "");
            fa_raise_cuda_error(st->CudaError, e->cuda, msg, e->msg);
        } else {
            fa_raise_cuda_error(st->CudaError, e->cuda, e->msg, e->msg);
        }
        break;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Formatting for messages                                                                     */

static void format_shape(const fa_tensor *t, char *buf, size_t len)
{
    if (t->ndim > FA_TENSOR_MAX_DIMS) {
        snprintf(buf, len, "(%d-D)", t->ndim);
        return;
    }
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int d = 0; d < t->ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)t->shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, t->ndim == 1 ? ",)" : ")");
}

static void format_place(const fa_tensor *t, char *buf, size_t len)
{
    if (!t->on_device)
        snprintf(buf, len, "cpu");
    else if (t->device_id >= 0)
        snprintf(buf, len, "cuda:%d", t->device_id);
    else
        snprintf(buf, len, "cuda");
}

static int same_shape(const fa_tensor *a, const fa_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim && d < FA_TENSOR_MAX_DIMS; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

/* Handle 0 is the legacy default stream in this (non per-thread) build: compare as 1. */
static uintptr_t canonical_stream(uintptr_t s) { return s == 0 ? (uintptr_t)1 : s; }

/* ------------------------------------------------------------------------------------------ */
/* Validation of forward()'s arguments (GIL held, no CUDA calls)                               */

/* The array arguments of forward(), each imported into one role-tagged view. */
enum { ROLE_Q = 0, ROLE_K, ROLE_V, ROLE_OUT, ROLE_SINKS, NUM_ROLES };
static const char *const ROLE_NAMES[NUM_ROLES] = {"q", "k", "v", "out", "sinks"};

typedef struct {
    fa_tensor *q, *k, *v, *out; /* out NULL when the call allocates it */
    fa_tensor *sinks;           /* NULL when not given */
    int device_kind, device_index;
    int known_device; /* the inputs' CUDA ordinal when a DLPack producer said it, else -1 */
} call_args;

static int check_ndim(const fa_tensor *t, const char *dims)
{
    if (t->ndim != 4) {
        PyErr_Format(PyExc_ValueError, "%s must be 4-D %s, got %d-D", t->name, dims, t->ndim);
        return -1;
    }
    for (int d = 0; d < 4; d++) {
        if (t->shape[d] < 0 || t->shape[d] > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s dimension %d is %lld: sizes must be in [0, %d]",
                         t->name, d, (long long)t->shape[d], INT_MAX);
            return -1;
        }
    }
    return 0;
}

static int check_dtype(const fa_tensor *t, int gpu)
{
    if (t->dtype == FA_DTYPE_NONE || (gpu && t->dtype == FA_FLOAT32)) {
        PyErr_Format(PyExc_TypeError,
                     "unsupported dtype %s for %s: expected float16 or bfloat16 (float32 on "
                     "device='cpu')",
                     t->dtype_name, t->name);
        return -1;
    }
    return 0;
}

/* The kernels read head_dim rows with vector loads; a strided head_dim would need a copy,
 * which device inputs never get. */
static int check_unit_head_stride(const fa_tensor *t)
{
    if (t->on_device && t->shape[3] > 1 && t->strides[3] != 1 && fa_tensor_numel(t) > 0) {
        PyErr_Format(PyExc_ValueError, "%s must have unit stride on head_dim, got stride %lld",
                     t->name, (long long)t->strides[3]);
        return -1;
    }
    return 0;
}

/* Bytes [*lo, *hi) that a view's elements occupy; an empty view occupies none (*lo == *hi). */
static void tensor_span(const fa_tensor *t, uintptr_t *lo, uintptr_t *hi)
{
    *lo = *hi = (uintptr_t)t->data;
    if (fa_tensor_numel(t) == 0)
        return;
    const int64_t es = fa_dtype_itemsize(t->dtype);
    int64_t first = 0, last = 0; /* element offsets of the lowest and highest element */
    for (int d = 0; d < t->ndim; d++) {
        const int64_t reach = (t->shape[d] - 1) * t->strides[d];
        if (reach < 0)
            first += reach;
        else
            last += reach;
    }
    *lo = (uintptr_t)((const char *)t->data + first * es);
    *hi = (uintptr_t)((const char *)t->data + (last + 1) * es);
}

/* Whether a view's elements fill its span (no gaps), so two such views whose spans meet
 * certainly share bytes. */
static int tensor_dense(const fa_tensor *t, uintptr_t lo, uintptr_t hi)
{
    return (int64_t)(hi - lo) == fa_tensor_numel(t) * fa_dtype_itemsize(t->dtype);
}

/* The kernels read q, k and v while they write out: a shared byte would be read after it was
 * overwritten. Refused where both views are dense and their spans meet (then they certainly
 * share bytes, e.g. out=q). Views with gaps, e.g. interleaved halves of one packed buffer,
 * may meet without sharing a byte; as with torch's out= checks, they are not judged. */
static int check_out_overlap(const fa_tensor *out, fa_tensor *const inputs[3])
{
    uintptr_t out_lo, out_hi;
    tensor_span(out, &out_lo, &out_hi);
    if (out_lo == out_hi || !tensor_dense(out, out_lo, out_hi))
        return 0;
    for (int i = 0; i < 3; i++) {
        uintptr_t lo, hi;
        tensor_span(inputs[i], &lo, &hi);
        if (lo < out_hi && out_lo < hi && tensor_dense(inputs[i], lo, hi)) {
            PyErr_Format(PyExc_ValueError,
                         "out overlaps %s in memory: attention cannot write its result over an "
                         "input it is still reading",
                         inputs[i]->name);
            return -1;
        }
    }
    return 0;
}

/* sinks: float32 (heads_q,), unit stride: one logit per query head, read where q lives. */
static int check_sinks(const fa_tensor *sinks, const fa_tensor *q)
{
    if (sinks->ndim != 1) {
        PyErr_Format(PyExc_ValueError, "sinks must be 1-D (heads_q,), got %d-D", sinks->ndim);
        return -1;
    }
    if (sinks->dtype != FA_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "sinks must be float32, got %s", sinks->dtype_name);
        return -1;
    }
    if (sinks->shape[0] != q->shape[2]) {
        PyErr_Format(PyExc_ValueError,
                     "sinks must have heads_q = %lld entries (one logit per query head), got %lld",
                     (long long)q->shape[2], (long long)sinks->shape[0]);
        return -1;
    }
    if (sinks->shape[0] > 1 && sinks->strides[0] != 1) {
        PyErr_Format(PyExc_ValueError, "sinks must be contiguous, got stride %lld",
                     (long long)sinks->strides[0]);
        return -1;
    }
    return 0;
}

static int validate(call_args *a)
{
    fa_tensor *q = a->q, *k = a->k, *v = a->v, *out = a->out;
    /* Every view given, in role order: q, k, v, then out and sinks when present. */
    fa_tensor *all[NUM_ROLES] = {q, k, v};
    int n = 3;
    if (out)
        all[n++] = out;
    if (a->sinks)
        all[n++] = a->sinks;
    char p1[48], p2[48];

    if (check_ndim(q, Q_DIMS) < 0 || check_ndim(k, KV_DIMS) < 0 || check_ndim(v, KV_DIMS) < 0)
        return -1;

    for (int i = 1; i < n; i++) {
        if (all[i]->on_device != q->on_device) {
            format_place(q, p1, sizeof p1);
            format_place(all[i], p2, sizeof p2);
            if (all[i] == a->sinks)
                PyErr_Format(PyExc_ValueError,
                             "sinks must live where q lives (a device array on q's GPU, a host "
                             "array for host q): q is on %s, sinks is on %s",
                             p1, p2);
            else
                PyErr_Format(PyExc_ValueError,
                             "host arrays cannot be mixed with device arrays: q is on %s, %s is "
                             "on %s",
                             p1, all[i]->name, p2);
            return -1;
        }
    }
    if (a->device_kind == DEVICE_CPU && q->on_device) {
        format_place(q, p1, sizeof p1);
        PyErr_Format(PyExc_ValueError,
                     "device='cpu' runs the host reference on host arrays, got q on %s", p1);
        return -1;
    }
    a->known_device = -1;
    const fa_tensor *known = NULL;
    for (int i = 0; i < n && q->on_device; i++) {
        if (all[i]->device_id < 0)
            continue;
        if (!known) {
            known = all[i];
        } else if (all[i]->device_id != known->device_id) {
            PyErr_Format(PyExc_ValueError,
                         "%s and %s must be on the same device, got cuda:%d and cuda:%d",
                         known->name, all[i]->name, known->device_id, all[i]->device_id);
            return -1;
        }
    }
    if (known) {
        a->known_device = known->device_id;
        if (a->device_index >= 0 && a->device_index != known->device_id) {
            PyErr_Format(PyExc_ValueError, "%s is on cuda:%d but device='cuda:%d' was given",
                         known->name, known->device_id, a->device_index);
            return -1;
        }
    }

    const int gpu = a->device_kind != DEVICE_CPU;
    if (check_dtype(q, gpu) < 0 || check_dtype(k, gpu) < 0 || check_dtype(v, gpu) < 0)
        return -1;
    if (k->dtype != q->dtype || v->dtype != q->dtype) {
        const fa_tensor *odd = k->dtype != q->dtype ? k : v;
        PyErr_Format(PyExc_TypeError, "q, k and v must have the same dtype, got q %s, %s %s",
                     q->dtype_name, odd->name, odd->dtype_name);
        return -1;
    }

    if (!same_shape(k, v)) {
        format_shape(k, p1, sizeof p1);
        format_shape(v, p2, sizeof p2);
        PyErr_Format(PyExc_ValueError, "k and v must have the same shape, got k %s and v %s", p1,
                     p2);
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
    if (check_unit_head_stride(q) < 0 || check_unit_head_stride(k) < 0 ||
        check_unit_head_stride(v) < 0)
        return -1;
    if (a->sinks && check_sinks(a->sinks, q) < 0)
        return -1;

    if (out) {
        if (!same_shape(out, q)) {
            format_shape(q, p1, sizeof p1);
            format_shape(out, p2, sizeof p2);
            PyErr_Format(PyExc_ValueError, "out must have shape %s (q's shape), got %s", p1, p2);
            return -1;
        }
        if (out->dtype != q->dtype) {
            PyErr_Format(PyExc_TypeError, "out must have dtype %s (q's dtype), got %s",
                         q->dtype_name, out->dtype_name);
            return -1;
        }
        if (out->readonly) {
            PyErr_SetString(PyExc_ValueError, "out is read-only");
            return -1;
        }
        if (check_unit_head_stride(out) < 0)
            return -1;
        fa_tensor *const inputs[3] = {q, k, v};
        if (check_out_overlap(out, inputs) < 0)
            return -1;
    }
    return 0;
}

/* Strides of a compact (batch, seq, heads, head_dim) array, in elements. */
static void compact_4d(const int64_t *shape, int64_t *batch, int64_t *row, int64_t *head)
{
    *head = shape[3];
    *row = shape[2] * shape[3];
    *batch = shape[1] * shape[2] * shape[3];
}

static void set_view_strides(const fa_tensor *t, int64_t *batch, int64_t *row, int64_t *head)
{
    *batch = t->strides[0];
    *row = t->strides[1];
    *head = t->strides[2];
}

/* The host reference takes any strides except on head_dim; such a tensor is packed first. */
static int needs_pack_for_cpu(const fa_tensor *t)
{
    return t->shape[3] > 1 && t->strides[3] != 1 && fa_tensor_numel(t) > 0;
}

/* Which of the three execution paths a call takes. */
typedef enum { PATH_DEVICE, PATH_HOST_GPU, PATH_HOST_CPU } exec_path;

/* Pointers and strides as `path` will pass them to the C API. Buffers that do not exist yet
 * (new outputs, device copies of host arrays) are stood in for by `placeholder`, so that
 * fa_check_params judges the real layout rules before anything is allocated or copied. */
static void set_layouts(fa_params *p, const fa_tensor *q, const fa_tensor *k, const fa_tensor *v,
                        const fa_tensor *out, exec_path path)
{
    if (path == PATH_DEVICE) {
        p->q = q->data;
        p->k = k->data;
        p->v = v->data;
        set_view_strides(q, &p->q_batch_stride, &p->q_row_stride, &p->q_head_stride);
        set_view_strides(k, &p->k_batch_stride, &p->k_row_stride, &p->k_head_stride);
        set_view_strides(v, &p->v_batch_stride, &p->v_row_stride, &p->v_head_stride);
        if (out) {
            p->out = out->data;
            set_view_strides(out, &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
        } else {
            p->out = placeholder;
            compact_4d(q->shape, &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
        }
    } else if (path == PATH_HOST_CPU) {
        const fa_tensor *ts[4] = {q, k, v, out};
        int64_t *strides[4][3] = {
            {&p->q_batch_stride, &p->q_row_stride, &p->q_head_stride},
            {&p->k_batch_stride, &p->k_row_stride, &p->k_head_stride},
            {&p->v_batch_stride, &p->v_row_stride, &p->v_head_stride},
            {&p->o_batch_stride, &p->o_row_stride, &p->o_head_stride},
        };
        for (int i = 0; i < 4; i++) {
            const fa_tensor *t = ts[i] ? ts[i] : q;
            if (ts[i] && !needs_pack_for_cpu(ts[i]))
                set_view_strides(t, strides[i][0], strides[i][1], strides[i][2]);
            else
                compact_4d(t->shape, strides[i][0], strides[i][1], strides[i][2]);
        }
        p->q = q->data ? q->data : placeholder;
        p->k = k->data;
        p->v = v->data;
        p->out = placeholder;
    } else {
        p->q = p->k = p->v = placeholder;
        p->out = placeholder;
        compact_4d(q->shape, &p->q_batch_stride, &p->q_row_stride, &p->q_head_stride);
        compact_4d(k->shape, &p->k_batch_stride, &p->k_row_stride, &p->k_head_stride);
        compact_4d(v->shape, &p->v_batch_stride, &p->v_row_stride, &p->v_head_stride);
        compact_4d(q->shape, &p->o_batch_stride, &p->o_row_stride, &p->o_head_stride);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The three execution paths (GIL released: no Python API below until the next banner)         */

typedef struct {
    fa_params p;
    fa_tensor *views[NUM_ROLES]; /* by role; out and sinks NULL when not given */
    int return_lse;
    uintptr_t stream;
    int stream_on_inputs_device; /* layouts= (torch fast path): torch's current stream of the
                                    tensors' own device, so check_stream_device has no work */
    int device_index; /* device= asked for, -1 when not */
    int exact_alloc;  /* FLASHATTN_C_EXACT_ALLOC, read with the GIL held */
    /* device path: results */
    fa_device_array *out_da, *lse_da;
    float *lse_ptr; /* caller-owned lse buffer (lse_ptr=), used instead of lse_da */
    /* host paths: destinations owned by new NumPy arrays */
    void *out_host;
    float *lse_host;
    call_error err;
} job;

/* A stream belongs to one GPU: a launch into another GPU's stream fails, or with peer access
 * reads every operand across the link. Handles 0-2 (legacy and per-thread default streams)
 * name the current device's default stream, which becomes the target's after cudaSetDevice.
 * Returns 0, or -1 with j->err set: "stream belongs to cuda:X but <who><relation> cuda:Y". */
static int check_stream_device(job *j, int target, const char *who, const char *relation)
{
    if (j->stream <= 2 || j->stream_on_inputs_device)
        return 0;
    int stream_device = -1;
    CUDA_OR_FAIL(&j->err, cudaStreamGetDevice((cudaStream_t)j->stream, &stream_device));
    if (j->err.kind)
        return -1;
    if (stream_device != target) {
        fail(&j->err, ERR_VALUE, "stream belongs to cuda:%d but %s%s cuda:%d", stream_device, who,
             relation, target);
        return -1;
    }
    return 0;
}

/* Makes `ours` wait for the work pending on a producer's stream. */
static void wait_for_stream(job *j, cudaStream_t ours, uintptr_t producer)
{
    cudaEvent_t ev = NULL;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (err != cudaSuccess) {
        fail_cuda(&j->err, err, "cudaEventCreateWithFlags", __LINE__);
        return;
    }
    CUDA_OR_FAIL(&j->err, cudaEventRecord(ev, (cudaStream_t)producer));
    if (j->err.kind == ERR_NONE)
        CUDA_OR_FAIL(&j->err, cudaStreamWaitEvent(ours, ev, 0));
    (void)cudaEventDestroy(ev);
}

static void run_device_inputs(job *j)
{
    int previous = -1, target = -1;
    const fa_tensor *target_src = NULL;
    CUDA_OR_FAIL(&j->err, cudaGetDevice(&previous));
    if (j->err.kind)
        return;

    /* Ask the driver where each pointer lives: __cuda_array_interface__ does not say, and a
     * DLPack producer's claim of kDLCUDA is checked rather than trusted (a host address handed
     * to the kernel would fault, or silently read host memory). */
    for (int i = 0; i < NUM_ROLES; i++) {
        fa_tensor *t = j->views[i];
        if (!t)
            continue;
        if (t->data) {
            struct cudaPointerAttributes attr;
            cudaError_t err = cudaPointerGetAttributes(&attr, t->data);
            if (err != cudaSuccess) {
                fail_cuda(&j->err, err, "cudaPointerGetAttributes", __LINE__);
                return;
            }
            if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
                fail(&j->err, ERR_VALUE,
                     "%s points to memory that is not on a GPU (cudaMemoryType %d), though its "
                     "producer says it is",
                     t->name, (int)attr.type);
                return;
            }
            if (t->device_id >= 0 && t->device_id != attr.device) {
                fail(&j->err, ERR_VALUE, "%s claims cuda:%d but its memory is on cuda:%d",
                     t->name, t->device_id, attr.device);
                return;
            }
            t->device_id = attr.device;
        }
        if (t->device_id < 0)
            continue;
        if (!target_src) {
            target_src = t;
            target = t->device_id;
        } else if (t->device_id != target) {
            fail(&j->err, ERR_VALUE,
                 "%s and %s must be on the same device, got cuda:%d and cuda:%d",
                 target_src->name, t->name, target, t->device_id);
            return;
        }
    }
    if (target < 0)
        target = j->device_index >= 0 ? j->device_index : previous;
    if (j->device_index >= 0 && target != j->device_index) {
        fail(&j->err, ERR_VALUE, "%s is on cuda:%d but device='cuda:%d' was given",
             target_src ? target_src->name : "q", target, j->device_index);
        return;
    }
    if (check_stream_device(j, target, target_src ? target_src->name : "q", " is on") < 0)
        return;
    if (j->out_da)
        j->out_da->device = target;
    if (j->lse_da)
        j->lse_da->device = target;
    if (target != previous) {
        CUDA_OR_FAIL(&j->err, cudaSetDevice(target));
        if (j->err.kind)
            return;
    }

    cudaStream_t stream = (cudaStream_t)j->stream;
    for (int i = 0; i < NUM_ROLES && !j->err.kind; i++) {
        const fa_tensor *t = j->views[i];
        if (t && t->has_stream && canonical_stream(t->stream) != canonical_stream(j->stream))
            wait_for_stream(j, stream, t->stream);
    }
    if (!j->err.kind && j->out_da) {
        CUDA_OR_FAIL(&j->err, fa_device_array_allocate(j->out_da));
        j->p.out = j->out_da->ptr;
    }
    if (!j->err.kind && j->lse_da) {
        CUDA_OR_FAIL(&j->err, fa_device_array_allocate(j->lse_da));
        j->p.lse = (float *)j->lse_da->ptr;
    } else if (j->lse_ptr) {
        j->p.lse = j->lse_ptr;
    }
    if (!j->err.kind)
        fail_status(&j->err, fa_forward(&j->p, stream));
    if (target != previous)
        (void)cudaSetDevice(previous);
}

/* Host arrays, computed on the GPU: compact device copies in, compact results out. */
static void run_host_on_gpu(job *j)
{
    fa_tensor *q = j->views[ROLE_Q], *k = j->views[ROLE_K], *v = j->views[ROLE_V];
    fa_tensor *out = j->views[ROLE_OUT], *sinks = j->views[ROLE_SINKS];
    const size_t es = (size_t)fa_dtype_itemsize(j->p.dtype);
    const size_t q_bytes = (size_t)fa_tensor_numel(q) * es;
    const size_t kv_bytes = (size_t)fa_tensor_numel(k) * es;
    const size_t lse_bytes =
        j->return_lse ? (size_t)j->p.batch * (size_t)j->p.heads_q * (size_t)j->p.seqlen_q * 4 : 0;
    const size_t sinks_bytes = sinks ? (size_t)fa_tensor_numel(sinks) * 4 : 0;
    void *d_q = NULL, *d_k = NULL, *d_v = NULL, *d_out = NULL, *d_lse = NULL, *d_sinks = NULL;
    void *staging[4] = {NULL, NULL, NULL, NULL};
    int previous = -1;
    cudaStream_t stream = (cudaStream_t)j->stream;

    CUDA_OR_FAIL(&j->err, cudaGetDevice(&previous));
    if (j->err.kind)
        return;
    const int target = j->device_index >= 0 ? j->device_index : previous;
    if (check_stream_device(j, target, j->device_index >= 0 ? "device=" : "the current device",
                            j->device_index >= 0 ? " selects" : " is") < 0)
        return;
    if (target != previous) {
        CUDA_OR_FAIL(&j->err, cudaSetDevice(target));
        if (j->err.kind)
            return;
    }

    /* Allocations first: nothing is copied to a GPU that cannot hold the whole problem. */
    const int exact = j->exact_alloc;
    CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_q, q_bytes, stream, exact));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_k, kv_bytes, stream, exact));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_v, kv_bytes, stream, exact));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_out, q_bytes, stream, exact));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_lse, lse_bytes, stream, exact));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&d_sinks, sinks_bytes, stream, exact));

    /* sinks is contiguous (validate): copied as is, like a compact input. */
    fa_tensor *inputs[4] = {q, k, v, sinks};
    void *device_bufs[4] = {d_q, d_k, d_v, d_sinks};
    const size_t sizes[4] = {q_bytes, kv_bytes, kv_bytes, sinks_bytes};
    for (int i = 0; i < 4 && !j->err.kind; i++) {
        if (!sizes[i])
            continue;
        const void *src = inputs[i]->data;
        if (!fa_tensor_is_compact(inputs[i])) {
            staging[i] = malloc(sizes[i]);
            if (!staging[i]) {
                fail(&j->err, ERR_MEMORY, "out of host memory");
                break;
            }
            fa_tensor_pack(inputs[i], staging[i]);
            src = staging[i];
        }
        CUDA_OR_FAIL(&j->err, cudaMemcpyAsync(device_bufs[i], src, sizes[i],
                                              cudaMemcpyHostToDevice, stream));
    }

    if (!j->err.kind) {
        j->p.q = d_q;
        j->p.k = d_k;
        j->p.v = d_v;
        j->p.out = d_out;
        j->p.lse = (float *)d_lse;
        j->p.sinks = sinks ? (const float *)d_sinks : NULL;
        fail_status(&j->err, fa_forward(&j->p, stream));
    }

    void *out_dst = j->out_host;
    if (!j->err.kind && out) {
        if (fa_tensor_is_compact(out)) {
            out_dst = out->data;
        } else {
            staging[3] = malloc(q_bytes);
            if (!staging[3])
                fail(&j->err, ERR_MEMORY, "out of host memory");
            out_dst = staging[3];
        }
    }
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err,
                      cudaMemcpyAsync(out_dst, d_out, q_bytes, cudaMemcpyDeviceToHost, stream));
    if (!j->err.kind && lse_bytes)
        CUDA_OR_FAIL(&j->err, cudaMemcpyAsync(j->lse_host, d_lse, lse_bytes,
                                              cudaMemcpyDeviceToHost, stream));
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, cudaStreamSynchronize(stream));
    if (!j->err.kind && staging[3])
        fa_tensor_unpack(staging[3], out);

    void *device_all[6] = {d_q, d_k, d_v, d_out, d_lse, d_sinks};
    for (int i = 0; i < 6; i++)
        (void)fa_device_buffer_free(device_all[i], stream, exact);
    if (j->err.kind)
        (void)cudaStreamSynchronize(stream); /* the host buffers must outlive queued copies */
    for (int i = 0; i < 4; i++)
        free(staging[i]);
    if (target != previous)
        (void)cudaSetDevice(previous);
}

/* The host reference's interrupt callback (fa_params.interrupt), called between chunks with no
 * lock held and the GIL released: at most every INTERRUPT_POLL_NS it takes the GIL and runs
 * the pending signal handlers (only the main thread has any). A handler that raises, as
 * SIGINT's does with KeyboardInterrupt, stops the call; its exception stays set on this
 * thread and is what the call raises. */
#define INTERRUPT_POLL_NS 20000000LL

typedef struct {
    struct timespec last;
} interrupt_state;

static long long elapsed_ns(const struct timespec *from, const struct timespec *to)
{
    return (long long)(to->tv_sec - from->tv_sec) * 1000000000LL + (to->tv_nsec - from->tv_nsec);
}

static int check_interrupt(void *ctx)
{
    interrupt_state *st = (interrupt_state *)ctx;
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) == 0 && elapsed_ns(&st->last, &now) < INTERRUPT_POLL_NS)
        return 0;
    st->last = now;
    PyGILState_STATE gil = PyGILState_Ensure();
    const int raised = PyErr_CheckSignals() < 0;
    PyGILState_Release(gil);
    return raised;
}

/* Host arrays on the C reference (device='cpu'). */
static void run_host_on_cpu(job *j)
{
    fa_tensor *q = j->views[0], *k = j->views[1], *v = j->views[2], *out = j->views[3];
    const size_t es = (size_t)fa_dtype_itemsize(j->p.dtype);
    void *staging[4] = {NULL, NULL, NULL, NULL};
    fa_tensor *inputs[3] = {q, k, v};
    const void **targets[3] = {&j->p.q, &j->p.k, &j->p.v};

    for (int i = 0; i < 3; i++) {
        *targets[i] = inputs[i]->data;
        if (needs_pack_for_cpu(inputs[i])) {
            staging[i] = malloc((size_t)fa_tensor_numel(inputs[i]) * es);
            if (!staging[i]) {
                fail(&j->err, ERR_MEMORY, "out of host memory");
                goto done;
            }
            fa_tensor_pack(inputs[i], staging[i]);
            *targets[i] = staging[i];
        }
    }
    if (out && needs_pack_for_cpu(out)) {
        staging[3] = malloc((size_t)fa_tensor_numel(out) * es);
        if (!staging[3]) {
            fail(&j->err, ERR_MEMORY, "out of host memory");
            goto done;
        }
        j->p.out = staging[3];
    } else {
        j->p.out = out ? out->data : j->out_host;
    }
    j->p.lse = j->return_lse ? j->lse_host : NULL;
    interrupt_state interrupt;
    (void)clock_gettime(CLOCK_MONOTONIC, &interrupt.last);
    j->p.interrupt = check_interrupt;
    j->p.interrupt_ctx = &interrupt;
    fail_status(&j->err, fa_forward_cpu(&j->p));
    j->p.interrupt = NULL;
    j->p.interrupt_ctx = NULL;
    if (!j->err.kind && staging[3])
        fa_tensor_unpack(staging[3], out);
done:
    for (int i = 0; i < 4; i++)
        free(staging[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* forward()                                                                                   */

static int parse_stream(PyObject *obj, uintptr_t *stream)
{
    *stream = 0;
    if (!obj || obj == Py_None)
        return 0;
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "stream must be an int handle, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "stream must be a non-negative int handle, got %R", obj);
        return -1;
    }
    *stream = (uintptr_t)v;
    return 0;
}

/* A bool flag: True, False or numpy.bool_ (flashattn_c._api also unwraps 0-d torch bools).
 * Truthiness is not enough: causal="False" is a string, not a flag. */
static int parse_flag(PyObject *obj, const char *name, int *flag)
{
    if (PyBool_Check(obj) || PyArray_IsScalar(obj, Bool)) {
        *flag = PyObject_IsTrue(obj);
        return *flag < 0 ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be a bool, got %.100s", name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* A real number (int, float, or a NumPy scalar of either) for a float32 parameter: not a bool,
 * not NaN, >= 0 and at most FLT_MAX, so that it reaches the kernels as a finite float (values
 * below float32's smallest round to 0). An int too large for a double is out of range too. */
static int parse_real(PyObject *obj, const char *name, double *value)
{
    if (PyBool_Check(obj) || PyArray_IsScalar(obj, Bool) || PyComplex_Check(obj) ||
        PyArray_IsScalar(obj, ComplexFloating) ||
        !(PyFloat_Check(obj) || PyLong_Check(obj) || PyArray_IsScalar(obj, Number))) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number (int or float), got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    char limit[32], text[64];
    snprintf(limit, sizeof limit, "%g", (double)FLT_MAX);
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%s must be at most %s (the largest float32), got an int beyond float range",
                     name, limit);
        return -1;
    }
    snprintf(text, sizeof text, "%g", v);
    if (!isfinite(v) || v < 0.0) {
        PyErr_Format(PyExc_ValueError, "%s must be finite and >= 0, got %s", name, text);
        return -1;
    }
    if (v > (double)FLT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be at most %s (the largest float32), got %s",
                     name, limit, text);
        return -1;
    }
    *value = v;
    return 0;
}

/* softmax_scale: None -> NaN (meaning "1/sqrt(head_dim)"), else a real in [0, FLT_MAX]. */
static int parse_scale(PyObject *obj, double *scale)
{
    *scale = NAN;
    if (obj == Py_None)
        return 0;
    return parse_real(obj, "softmax_scale", scale);
}

/* softcap: a real in [0, FLT_MAX], 0 = off; NULL (not given) is off too. */
static int parse_softcap(PyObject *obj, double *softcap)
{
    *softcap = 0.0;
    if (!obj)
        return 0;
    return parse_real(obj, "softcap", softcap);
}

/* window_size as the C layer takes it: each side an int >= -1 (-1: unbounded). */
static int check_window(int left, int right)
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

static PyObject *new_host_array(int ndim, const int64_t *shape, int typenum)
{
    npy_intp dims[4];
    for (int d = 0; d < ndim; d++)
        dims[d] = (npy_intp)shape[d];
    return PyArray_SimpleNew(ndim, dims, typenum);
}

/* NumPy has no bfloat16: host bfloat16 results are returned as their uint16 bit patterns and
 * reinterpreted by flashattn_c/_api.py. */
static int host_typenum(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return NPY_HALF;
    case FA_BFLOAT16: return NPY_UINT16;
    case FA_FLOAT32: return NPY_FLOAT;
    }
    return NPY_HALF;
}

static const char *const NO_GPU_HINT_HOST =
    "; pass device='cpu' to run the C reference on the host instead";

static PyObject *py_forward(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q",      "k",           "v",            "out",
                             "causal", "softmax_scale", "return_lse", "stream",
                             "device_kind", "device_index", "kernel",  "stream_owner",
                             "layouts", "lse_ptr", "window_left", "window_right",
                             "softcap", "sinks", NULL};
    fa_module_state *st = module_state(module);
    PyObject *q_obj, *k_obj, *v_obj, *out_obj = Py_None, *scale_obj = Py_None;
    PyObject *stream_obj = Py_None, *stream_owner = Py_None, *layouts = Py_None;
    PyObject *causal_obj = Py_False, *return_lse_obj = Py_False, *softcap_obj = NULL;
    PyObject *sinks_obj = Py_None;
    unsigned long long lse_ptr = 0;
    int causal = 0, return_lse = 0, device_kind = DEVICE_AUTO, device_index = -1;
    int kernel = FA_KERNEL_AUTO, window_left = -1, window_right = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O$OOOOiiiOOKiiOO:forward", kwlist, &q_obj,
                                     &k_obj, &v_obj, &out_obj, &causal_obj, &scale_obj,
                                     &return_lse_obj, &stream_obj, &device_kind, &device_index,
                                     &kernel, &stream_owner, &layouts, &lse_ptr, &window_left,
                                     &window_right, &softcap_obj, &sinks_obj))
        return NULL;
    if (parse_flag(causal_obj, "causal", &causal) < 0 ||
        parse_flag(return_lse_obj, "return_lse", &return_lse) < 0)
        return NULL;
    /* layouts (internal, from flashattn_c._api): per argument q, k, v, out and sinks, a layout
     * tuple read off a torch tensor, or None for the generic import. lse_ptr (internal): a
     * caller-owned contiguous float32 (batch, heads_q, seqlen_q) buffer on the inputs' GPU,
     * 16-byte aligned, that receives lse instead of a new DeviceArray. */
    if (layouts != Py_None && (!PyTuple_Check(layouts) || PyTuple_GET_SIZE(layouts) != NUM_ROLES)) {
        PyErr_SetString(PyExc_TypeError,
                        "layouts must be None or a 5-tuple (q, k, v, out, sinks)");
        return NULL;
    }
    if (lse_ptr && (!return_lse || lse_ptr % 16)) {
        PyErr_SetString(PyExc_ValueError, "lse_ptr needs return_lse and a 16-byte aligned address");
        return NULL;
    }

    if (device_kind != DEVICE_AUTO && device_kind != DEVICE_CPU && device_kind != DEVICE_CUDA) {
        PyErr_Format(PyExc_ValueError, "device_kind must be 0 (auto), 1 (cpu) or 2 (cuda), got %d",
                     device_kind);
        return NULL;
    }
    if (device_index < -1) {
        PyErr_Format(PyExc_ValueError, "device ordinal must be >= 0, got %d", device_index);
        return NULL;
    }
    if (kernel != FA_KERNEL_AUTO && kernel != FA_KERNEL_SM80 && kernel != FA_KERNEL_SM90) {
        PyErr_Format(PyExc_ValueError, "kernel code must be 0 (auto), 1 (sm80) or 2 (sm90), got %d",
                     kernel);
        return NULL;
    }
    uintptr_t stream;
    double scale, softcap;
    if (parse_stream(stream_obj, &stream) < 0 || parse_scale(scale_obj, &scale) < 0 ||
        check_window(window_left, window_right) < 0 || parse_softcap(softcap_obj, &softcap) < 0)
        return NULL;
    /* DLPack has no 0: the legacy default stream is spelled 1 there. */
    const uintptr_t dlpack_stream = stream == 0 ? 1 : stream;

    fa_tensor views[NUM_ROLES];
    memset(views, 0, sizeof views);
    fa_tensor *q = &views[ROLE_Q], *k = &views[ROLE_K], *v = &views[ROLE_V];
    fa_tensor *out = out_obj != Py_None ? &views[ROLE_OUT] : NULL;
    fa_tensor *sinks = sinks_obj != Py_None ? &views[ROLE_SINKS] : NULL;
    PyObject *out_result = NULL, *lse_result = NULL, *result = NULL;
    fa_device_array *out_da = NULL, *lse_da = NULL;
    job j;
    memset(&j, 0, sizeof j);
    fa_params_init(&j.p);

    PyObject *objs[NUM_ROLES] = {q_obj, k_obj, v_obj, out_obj, sinks_obj};
    for (int i = 0; i < NUM_ROLES; i++) {
        if (objs[i] == Py_None && (i == ROLE_OUT || i == ROLE_SINKS))
            continue;
        PyObject *layout = layouts != Py_None ? PyTuple_GET_ITEM(layouts, i) : Py_None;
        int rc = layout != Py_None
                     ? fa_tensor_from_layout(objs[i], layout, ROLE_NAMES[i], &views[i])
                     : fa_tensor_import(objs[i], ROLE_NAMES[i], dlpack_stream, i == ROLE_OUT,
                                        &views[i]);
        if (rc < 0)
            goto done;
    }

    call_args a = {q, k, v, out, sinks, device_kind, device_index, -1};
    if (validate(&a) < 0)
        goto done;

    const int on_device = q->on_device;
    const int on_cpu = device_kind == DEVICE_CPU;
    fa_params *p = &j.p;
    p->batch = (int)q->shape[0];
    p->seqlen_q = (int)q->shape[1];
    p->heads_q = (int)q->shape[2];
    p->head_dim = (int)q->shape[3];
    p->seqlen_k = (int)k->shape[1];
    p->heads_kv = (int)k->shape[2];
    p->dtype = (fa_dtype)q->dtype;
    p->causal = causal;
    p->family = (fa_kernel_family)kernel;
    p->softmax_scale =
        isnan(scale) ? (p->head_dim > 0 ? 1.0f / sqrtf((float)p->head_dim) : 1.0f) : (float)scale;
    p->window_left = window_left;
    p->window_right = window_right;
    p->softcap = (float)softcap;

    const exec_path path = on_device ? PATH_DEVICE : (on_cpu ? PATH_HOST_CPU : PATH_HOST_GPU);
    set_layouts(p, q, k, v, out, path);
    /* Host sinks bound for the GPU are copied there (run_host_on_gpu); the others are read in
     * place. An empty one (heads_q == 0) may have no address: the call then launches nothing. */
    if (sinks)
        p->sinks = path == PATH_HOST_GPU || !sinks->data ? (const float *)placeholder
                                                          : (const float *)sinks->data;
    p->lse = return_lse ? (float *)placeholder : NULL;
    fa_status status = fa_check_params(p, !on_cpu);
    if (status != FA_OK) {
        call_error e;
        memset(&e, 0, sizeof e);
        fail_status(&e, status);
        raise_call_error(st, &e, NULL);
        goto done;
    }

    const int64_t lse_shape[3] = {q->shape[0], q->shape[2], q->shape[1]};
    const int empty = fa_tensor_numel(q) == 0;
    j.views[ROLE_Q] = q;
    j.views[ROLE_K] = k;
    j.views[ROLE_V] = v;
    j.views[ROLE_OUT] = out;
    j.views[ROLE_SINKS] = sinks;
    j.return_lse = return_lse;
    j.stream = stream;
    j.stream_on_inputs_device = layouts != Py_None;
    j.device_index = device_index;
    j.exact_alloc = fa_exact_alloc_requested();

    if (on_device) {
        /* The inputs' device is settled in run_device_inputs when only the driver knows it. */
        int device = a.known_device >= 0 ? a.known_device : (device_index >= 0 ? device_index : 0);
        if (!out) {
            out_da = fa_device_array_new(st->DeviceArray, 4, q->shape, p->dtype, device, stream,
                                         stream_owner);
            if (!out_da)
                goto done;
        }
        if (return_lse && !lse_ptr) {
            lse_da = fa_device_array_new(st->DeviceArray, 3, lse_shape, FA_FLOAT32, device, stream,
                                         stream_owner);
            if (!lse_da)
                goto done;
        }
        j.out_da = out_da;
        j.lse_da = lse_da;
        j.lse_ptr = (float *)(uintptr_t)lse_ptr;
        if (!empty) {
            Py_BEGIN_ALLOW_THREADS
            run_device_inputs(&j);
            Py_END_ALLOW_THREADS
        }
        if (j.err.kind) {
            raise_call_error(st, &j.err, NULL);
            goto done;
        }
        out_result = out ? Py_NewRef(out_obj) : (PyObject *)out_da;
        out_da = NULL;
        lse_result = return_lse && lse_da ? (PyObject *)lse_da : Py_NewRef(Py_None);
        lse_da = NULL;
    } else {
        if (lse_ptr) {
            PyErr_SetString(PyExc_ValueError, "lse_ptr is for device inputs only");
            goto done;
        }
        if (!out) {
            out_result = new_host_array(4, q->shape, host_typenum(p->dtype));
            if (!out_result)
                goto done;
            j.out_host = PyArray_DATA((PyArrayObject *)out_result);
        } else {
            out_result = Py_NewRef(out_obj);
        }
        if (return_lse) {
            lse_result = new_host_array(3, lse_shape, NPY_FLOAT);
            if (!lse_result)
                goto done;
            j.lse_host = (float *)PyArray_DATA((PyArrayObject *)lse_result);
        } else {
            lse_result = Py_NewRef(Py_None);
        }
        if (!empty) {
            Py_BEGIN_ALLOW_THREADS
            if (on_cpu)
                run_host_on_cpu(&j);
            else
                run_host_on_gpu(&j);
            Py_END_ALLOW_THREADS
        }
        if (j.err.kind) {
            raise_call_error(st, &j.err, on_cpu ? NULL : NO_GPU_HINT_HOST);
            goto done;
        }
        /* A signal handler raised during the last poll of a call that then finished anyway:
         * the exception is the call's outcome, as it would have been a chunk earlier. */
        if (PyErr_Occurred())
            goto done;
    }
    result = PyTuple_Pack(2, out_result, lse_result);

done:
    /* After the launch is enqueued: producers may now reuse their memory in stream order. */
    for (int i = 0; i < NUM_ROLES; i++)
        fa_tensor_release(&views[i]);
    Py_XDECREF(out_result);
    Py_XDECREF(lse_result);
    Py_XDECREF((PyObject *)out_da);
    Py_XDECREF((PyObject *)lse_da);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Introspection                                                                               */

/* regs is None until a launch has asked the GPU (fa_launch.regs == -1). */
static PyObject *launch_to_dict(const fa_launch *l)
{
    PyObject *regs = l->regs >= 0 ? PyLong_FromLong(l->regs) : Py_NewRef(Py_None);
    if (!regs)
        return NULL;
    return Py_BuildValue(
        "{s:s,s:s,s:(III),s:(III),s:K,s:N,s:(ii),s:i,s:K,s:i,s:i,s:i,s:i}", "kernel", l->kernel,
        "family", fa_family_name(l->family), "grid", l->grid[0], l->grid[1], l->grid[2], "block",
        l->block[0], l->block[1], l->block[2], "smem_bytes", (unsigned long long)l->smem_bytes,
        "regs", regs, "arch", l->arch_major, l->arch_minor, "device", l->device, "stream",
        (unsigned long long)l->stream, "block_m", l->block_m, "block_n", l->block_n, "stages",
        l->stages, "head_dim_padded", l->head_dim_padded);
}

/* The main launch's dict, plus "launches" (every launch of the plan in order, the main one
 * first: auxiliary kernels of other ops join it) and "workspace_bytes". */
static PyObject *plan_to_dict(const fa_plan *plan)
{
    PyObject *d = launch_to_dict(&plan->launches[0]);
    PyObject *launches = d ? PyList_New(plan->num_launches) : NULL;
    if (!launches) {
        Py_XDECREF(d);
        return NULL;
    }
    for (int i = 0; i < plan->num_launches; i++) {
        PyObject *item = launch_to_dict(&plan->launches[i]);
        if (!item) {
            Py_DECREF(launches);
            Py_DECREF(d);
            return NULL;
        }
        PyList_SET_ITEM(launches, i, item);
    }
    PyObject *ws = PyLong_FromSize_t(plan->workspace_bytes);
    if (!ws || PyDict_SetItemString(d, "launches", launches) < 0 ||
        PyDict_SetItemString(d, "workspace_bytes", ws) < 0) {
        Py_XDECREF(ws);
        Py_DECREF(launches);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(ws);
    Py_DECREF(launches);
    return d;
}

static PyObject *py_last_launch(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    fa_plan plan;
    if (!fa_last_plan(&plan))
        Py_RETURN_NONE;
    return plan_to_dict(&plan);
}

static PyObject *py_launch_config(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"batch",  "seqlen_q",   "seqlen_k",   "heads_q", "heads_kv",
                             "head_dim", "dtype",    "causal",     "arch_major", "arch_minor",
                             "kernel", "device",     "window_left", "window_right", "softcap",
                             "sinks",  NULL};
    fa_module_state *st = module_state(module);
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype;
    int causal = 0, arch_major = -1, arch_minor = 0, kernel = FA_KERNEL_AUTO, device = -1;
    int window_left = -1, window_right = -1, sinks = 0;
    PyObject *causal_obj = Py_False, *softcap_obj = NULL, *sinks_obj = Py_False;
    double softcap = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiiii|OiiiiiiOO:launch_config", kwlist,
                                     &batch, &seqlen_q, &seqlen_k, &heads_q, &heads_kv,
                                     &head_dim, &dtype, &causal_obj, &arch_major, &arch_minor,
                                     &kernel, &device, &window_left, &window_right, &softcap_obj,
                                     &sinks_obj))
        return NULL;
    if (parse_flag(causal_obj, "causal", &causal) < 0 || parse_flag(sinks_obj, "sinks", &sinks) < 0 ||
        check_window(window_left, window_right) < 0 || parse_softcap(softcap_obj, &softcap) < 0)
        return NULL;
    if (dtype == FA_FLOAT32) {
        PyErr_SetString(PyExc_TypeError,
                        "unsupported dtype float32 for a GPU launch: expected float16 or bfloat16 "
                        "(float32 runs only on device='cpu')");
        return NULL;
    }
    if (dtype != FA_FLOAT16 && dtype != FA_BFLOAT16) {
        PyErr_Format(PyExc_ValueError, "dtype code must be 0 or 1, got %d", dtype);
        return NULL;
    }

    fa_params p;
    fa_params_init(&p);
    p.batch = batch;
    p.seqlen_q = seqlen_q;
    p.seqlen_k = seqlen_k;
    p.heads_q = heads_q;
    p.heads_kv = heads_kv;
    p.head_dim = head_dim;
    p.dtype = (fa_dtype)dtype;
    p.causal = causal;
    p.family = (fa_kernel_family)kernel;
    p.softmax_scale = head_dim > 0 ? 1.0f / sqrtf((float)head_dim) : 1.0f;
    p.window_left = window_left;
    p.window_right = window_right;
    p.softcap = (float)softcap;
    p.sinks = sinks ? (const float *)placeholder : NULL;
    p.q = p.k = p.v = placeholder;
    p.out = placeholder;
    p.lse = (float *)placeholder;
    const int64_t q_shape[4] = {batch, seqlen_q, heads_q, head_dim};
    const int64_t kv_shape[4] = {batch, seqlen_k, heads_kv, head_dim};
    compact_4d(q_shape, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
    compact_4d(kv_shape, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
    compact_4d(kv_shape, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
    compact_4d(q_shape, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);

    call_error e;
    memset(&e, 0, sizeof e);
    fa_device dev;
    fa_plan plan;
    if (arch_major >= 0) {
        fail_status(&e, fa_device_nominal(arch_major, arch_minor, &dev));
        if (!e.kind)
            fail_status(&e, fa_forward_plan(&p, &dev, &plan));
    } else {
        Py_BEGIN_ALLOW_THREADS
        if (device < 0)
            CUDA_OR_FAIL(&e, cudaGetDevice(&device));
        if (!e.kind)
            fail_status(&e, fa_device_query(device, &dev));
        if (!e.kind)
            fail_status(&e, fa_forward_plan(&p, &dev, &plan));
        Py_END_ALLOW_THREADS
        if (!e.kind)
            for (int l = 0; l < plan.num_launches; l++)
                plan.launches[l].device = device;
    }
    if (e.kind)
        return raise_call_error(
            st, &e, "; pass arch=(major, minor) to compute the configuration for a nominal GPU");
    return plan_to_dict(&plan);
}

/* _no_gpu_reason(cuda_error, driver_version): the reason a no-GPU CudaError gives, for a given
 * cudaError_t and cudaDriverGetVersion result (0: no driver). For tests; no CUDA call. */
static PyObject *py_no_gpu_reason(PyObject *module, PyObject *args)
{
    (void)module;
    int err, driver;
    if (!PyArg_ParseTuple(args, "ii:_no_gpu_reason", &err, &driver))
        return NULL;
    char reason[512];
    describe_no_gpu((cudaError_t)err, driver, reason, sizeof reason);
    return PyUnicode_FromString(reason);
}

static PyObject *archs_list(fa_kernel_family family)
{
    int archs[16];
    int n = fa_family_archs(family, archs, 16);
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < n; i++) {
        PyObject *x = PyLong_FromLong(archs[i]);
        if (!x || PyList_Append(list, x) < 0) {
            Py_XDECREF(x);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(x);
    }
    return list;
}

static PyObject *py_build_info(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *sm80 = archs_list(FA_KERNEL_SM80);
    PyObject *sm90 = sm80 ? archs_list(FA_KERNEL_SM90) : NULL;
    if (!sm90) {
        Py_XDECREF(sm80);
        return NULL;
    }
    return Py_BuildValue("{s:i,s:i,s:i,s:{s:N,s:N},s:i}", "threads_per_block",
                         FA_THREADS_PER_BLOCK, "warps_per_block", FA_NUM_WARPS_PER_BLOCK,
                         "warpgroups", FA_NUM_WARPGROUPS, "families", "sm80", sm80, "sm90", sm90,
                         "cuda_runtime_version", CUDART_VERSION);
}

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                      */

static PyMethodDef module_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))py_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(q, k, v, out=None, *, causal=False, softmax_scale=None, return_lse=False,\n"
     "        stream=0, device_kind=0, device_index=-1, kernel=0, stream_owner=None,\n"
     "        layouts=None, lse_ptr=0, window_left=-1, window_right=-1, softcap=0.0,\n"
     "        sinks=None)\n"
     "--\n\n"
     "Low-level attention forward; flashattn_c.attention is the public entry point.\n"
     "device_kind: 0 = where the inputs live (host inputs run on the GPU), 1 = the host C\n"
     "reference, 2 = the GPU. kernel: 0 = auto, 1 = sm80, 2 = sm90. stream: a cudaStream_t\n"
     "as an int (0 = legacy default). stream_owner is kept alive by the DeviceArrays made.\n"
     "causal and return_lse are bools. window_left/right: -1 = unbounded; softcap: 0 = off;\n"
     "sinks: float32 (heads_q,) where q lives, or None.\n"
     "layouts (internal): per argument (q, k, v, out, sinks) a (data_ptr, shape, strides, dtype,\n"
     "device) tuple read off a torch tensor, or None; the stream must then be torch's current\n"
     "stream of the tensors' device (it is not checked again); lse_ptr (internal): a caller-owned\n"
     "float32 (batch, heads_q, seqlen_q) device buffer that receives lse (lse is then None).\n"
     "Returns (out, lse or None): DeviceArrays for device inputs, NumPy arrays for host\n"
     "inputs (bfloat16 as uint16 bit patterns); a given `out` is returned as is."},
    {"launch_config", (PyCFunction)(void (*)(void))py_launch_config,
     METH_VARARGS | METH_KEYWORDS,
     "launch_config(*, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype,\n"
     "              causal=False, arch_major=-1, arch_minor=0, kernel=0, device=-1,\n"
     "              window_left=-1, window_right=-1, softcap=0.0, sinks=False)\n"
     "--\n\n"
     "The launch fa_forward would make, without launching. arch_major >= 0: a nominal\n"
     "device of that compute capability (pure host); else the GPU `device` (-1: current)."},
    {"last_launch", (PyCFunction)py_last_launch, METH_NOARGS,
     "last_launch()\n--\n\nThe launch this thread issued last, as a dict, or None."},
    {"_no_gpu_reason", (PyCFunction)py_no_gpu_reason, METH_VARARGS,
     "_no_gpu_reason(cuda_error, driver_version)\n--\n\n"
     "The reason a no-GPU CudaError states for that cudaError_t and driver version (tests)."},
    {"build_info", (PyCFunction)py_build_info, METH_NOARGS,
     "build_info()\n--\n\nLaunch contract constants and compiled kernel families."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m)
{
    if (PyArray_ImportNumPyAPI() < 0)
        return -1;
    fa_module_state *st = module_state(m);
    /* Class-level defaults: an instance raised by the library overrides each of them. */
    PyObject *defaults = Py_BuildValue("{s:O,s:O,s:O,s:O}", "cuda_error", Py_None,
                                       "cuda_error_name", Py_None, "cuda_error_string", Py_None,
                                       "call_site", Py_None);
    if (!defaults)
        return -1;
    st->CudaError = PyErr_NewExceptionWithDoc(
        "flashattn_c.CudaError",
        "A CUDA runtime call failed. The message names the call, its source location, the\n"
        "CUDA error name and its description. Attributes: cuda_error (the numeric\n"
        "cudaError_t), cuda_error_name (e.g. 'cudaErrorNoDevice'), cuda_error_string (CUDA's\n"
        "description) and call_site ('<call> failed at <file>:<line>').",
        PyExc_RuntimeError, defaults);
    Py_DECREF(defaults);
    if (!st->CudaError || PyModule_AddObjectRef(m, "CudaError", st->CudaError) < 0)
        return -1;
    st->DeviceArray = (PyTypeObject *)PyType_FromModuleAndSpec(m, &fa_device_array_spec, NULL);
    if (!st->DeviceArray || PyModule_AddType(m, st->DeviceArray) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "FLOAT16", FA_FLOAT16) < 0 ||
        PyModule_AddIntConstant(m, "BFLOAT16", FA_BFLOAT16) < 0 ||
        PyModule_AddIntConstant(m, "FLOAT32", FA_FLOAT32) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_AUTO", FA_KERNEL_AUTO) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_SM80", FA_KERNEL_SM80) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_SM90", FA_KERNEL_SM90) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_AUTO", DEVICE_AUTO) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CPU", DEVICE_CPU) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CUDA", DEVICE_CUDA) < 0 ||
        PyModule_AddIntConstant(m, "THREADS_PER_BLOCK", FA_THREADS_PER_BLOCK) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    fa_module_state *st = module_state(m);
    Py_VISIT(st->CudaError);
    Py_VISIT(st->DeviceArray);
    return 0;
}

static int module_clear(PyObject *m)
{
    fa_module_state *st = module_state(m);
    Py_CLEAR(st->CudaError);
    Py_CLEAR(st->DeviceArray);
    return 0;
}

static void module_free(void *m) { (void)module_clear((PyObject *)m); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, (void *)module_exec},
#ifdef Py_mod_multiple_interpreters
    /* The CUDA runtime state (current device, caches in launch.c) is per process. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "flashattn_c._C",
    .m_doc = "flashattn_c's C extension: attention forward over the C API in flashattn.h.",
    .m_size = sizeof(fa_module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
