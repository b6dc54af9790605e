/*
 * call_module.c -- the Python call engine: any op of flashattn.h on N role-tagged arrays
 * (declared in call.h).
 *
 * fa_call_run takes an op descriptor and the arrays and scalars its parser read, and does
 * what every op needs, once:
 *   1. import each array (tensor.c: DLPack, CUDA array interface, NumPy, torch layouts);
 *   2. check them against the role table (ndim, placement, device, dtype, strides), the op's
 *      shape rules, and the out= rules (shape, dtype, writable, no overlap with an input);
 *   3. build the op's C params with placeholders for buffers that do not exist yet and run the op's
 *      C-API check, so every error is raised before any GPU work or write to out=;
 *   4. allocate new outputs (DeviceArray for device inputs, NumPy for host inputs);
 *   5. with the GIL released, run one of three paths:
 *        device inputs     -> the op on the inputs' GPU, after waiting for their streams
 *        host inputs       -> compact device copies in, the op, results copied back
 *        device_kind cpu   -> the op's host reference, interruptible by signal handlers
 *   6. map a failure to its Python exception (CudaError with the no-GPU diagnosis, ...).
 * No CUDA call happens before step 5, and none at import. Every CUDA runtime call a call or
 * launch_config() makes is made here, so CudaError.call_site reads "<call> failed at
 * csrc/call_module.c:<line>": a *module.c name, as the extension module's sources have, which
 * callers and tests match.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "call.h"

_Alignas(256) unsigned char fa_placeholder[256];

/* ------------------------------------------------------------------------------------------ */
/* Errors recorded without the GIL, raised after it is taken back                              */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void fail(fa_call_error *e, fa_err_kind kind, const char *fmt, ...)
{
    if (e->kind != FA_ERR_KIND_NONE)
        return; /* the first failure is the one to report */
    e->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

/* `line` is the caller's, in this file: the message says "<call> failed at <file>:<line>". */
static void fail_cuda(fa_call_error *e, cudaError_t err, const char *call, int line)
{
    if (e->kind != FA_ERR_KIND_NONE)
        return;
    (void)cudaGetLastError(); /* a non-sticky error must not trip the next call */
    e->cuda = err;
    fail(e, FA_ERR_KIND_CUDA, "%s failed at %s:%d: %s: %s", call, __FILE__, line,
         cudaGetErrorName(err), cudaGetErrorString(err));
}

#define CUDA_OR_FAIL(e, call)                                                                 \
    do {                                                                                      \
        cudaError_t cuda_err_ = (call);                                                       \
        if (cuda_err_ != cudaSuccess)                                                         \
            fail_cuda((e), cuda_err_, #call, __LINE__);                                       \
    } while (0)

void fa_error_status(fa_call_error *e, fa_status s)
{
    switch (s) {
    case FA_OK: return;
    case FA_ERR_INVALID_ARGUMENT:
    case FA_ERR_UNSUPPORTED: fail(e, FA_ERR_KIND_VALUE, "%s", fa_last_error()); return;
    case FA_ERR_CUDA:
        if (e->kind == FA_ERR_KIND_NONE) {
            e->cuda = fa_last_cuda_error();
            fail(e, FA_ERR_KIND_CUDA, "%s", fa_last_error());
        }
        return;
    case FA_ERR_OUT_OF_MEMORY: fail(e, FA_ERR_KIND_MEMORY, "%s", fa_last_error()); return;
    case FA_ERR_INTERRUPTED: fail(e, FA_ERR_KIND_INTERRUPTED, "%s", fa_last_error()); return;
    case FA_ERR_NO_KERNEL_FOR_ARCH:
    case FA_ERR_LAUNCH_CONFIG:
    default: fail(e, FA_ERR_KIND_RUNTIME, "%s", fa_last_error()); return;
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

/* Told apart by what the driver says: no driver at all (driver_version 0, as
 * cudaDriverGetVersion reports when libcuda cannot be loaded), a driver older than the
 * statically linked runtime, no visible device, or another reason. */
void fa_describe_no_gpu(cudaError_t err, int driver_version, char *buf, size_t len)
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

static void raise_cuda_kind(fa_module_state *st, const fa_call_error *e, const char *hint)
{
    if (!is_no_gpu_error(e->cuda)) {
        fa_raise_cuda_error(st->CudaError, e->cuda, e->msg, e->msg);
        return;
    }
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess)
        driver = 0;
    char reason[512], msg[1024];
    fa_describe_no_gpu(e->cuda, driver, reason, sizeof reason);
    snprintf(msg, sizeof msg, "no usable GPU: %s%s", reason, hint ? hint : "");
    fa_raise_cuda_error(st->CudaError, e->cuda, msg, e->msg);
}

PyObject *fa_error_raise(PyObject *module, const fa_call_error *e, const char *hint)
{
    fa_module_state *st = (fa_module_state *)PyModule_GetState(module);
    switch (e->kind) {
    case FA_ERR_KIND_NONE:
        PyErr_SetString(PyExc_SystemError, "flashattn_c: error without a message");
        break;
    case FA_ERR_KIND_VALUE: PyErr_SetString(PyExc_ValueError, e->msg); break;
    case FA_ERR_KIND_TYPE: PyErr_SetString(PyExc_TypeError, e->msg); break;
    case FA_ERR_KIND_RUNTIME: PyErr_SetString(PyExc_RuntimeError, e->msg); break;
    case FA_ERR_KIND_MEMORY:
        PyErr_SetString(PyExc_MemoryError, e->msg[0] ? e->msg : "out of memory");
        break;
    case FA_ERR_KIND_INTERRUPTED:
        /* The signal handler's exception (KeyboardInterrupt for SIGINT) is already set. */
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyboardInterrupt, e->msg);
        break;
    case FA_ERR_KIND_CUDA: raise_cuda_kind(st, e, hint); break;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Scalar arguments                                                                            */

int fa_parse_stream(PyObject *obj, uintptr_t *stream)
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

/* True, False or numpy.bool_ (flashattn_c._api also unwraps 0-d torch bools). Truthiness is
 * not enough: causal="False" is a string, not a flag. */
int fa_parse_flag(PyObject *obj, const char *name, int *flag)
{
    if (PyBool_Check(obj) || PyArray_IsScalar(obj, Bool)) {
        *flag = PyObject_IsTrue(obj);
        return *flag < 0 ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be a bool, got %.100s", name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* An int, float, or a NumPy scalar of either, for a float32 parameter: not a bool, not NaN,
 * >= 0 and at most FLT_MAX, so that it reaches the kernels as a finite float (values below
 * float32's smallest round to 0). An int too large for a double is out of range too. */
int fa_check_sinks_shape(const fa_tensor *sinks, int64_t heads_q)
{
    if (sinks && sinks->shape[0] != heads_q) {
        PyErr_Format(PyExc_ValueError,
                     "sinks must have heads_q = %lld entries (one logit per query head), got %lld",
                     (long long)heads_q, (long long)sinks->shape[0]);
        return -1;
    }
    return 0;
}

void fa_lse_shape_of_q(fa_tensor *const *views, int role, int64_t *shape)
{
    const fa_tensor *q = views[0];
    (void)role;
    shape[0] = q->shape[0];
    shape[1] = q->shape[2];
    shape[2] = q->shape[1];
}

int fa_parse_real(PyObject *obj, const char *name, double *value)
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

/* ------------------------------------------------------------------------------------------ */
/* One call's state                                                                            */

/* Which of the three execution paths a call takes. */
typedef enum { PATH_DEVICE, PATH_HOST_GPU, PATH_HOST_CPU } exec_path;

typedef struct {
    const fa_op *op;
    const fa_call *call;
    fa_tensor *views[FA_MAX_ROLES]; /* imported arrays; NULL: absent, or allocated by the call */
    int present[FA_MAX_ROLES];      /* given, or an output the call allocates */
    int ndim[FA_MAX_ROLES];
    int64_t shape[FA_MAX_ROLES][FA_TENSOR_MAX_DIMS];
    fa_dtype dtype[FA_MAX_ROLES];
    fa_binding b[FA_MAX_ROLES];
    fa_op_params a;
    exec_path path;
    int known_device; /* the inputs' CUDA ordinal when a producer said it, else -1 */
    int stream_on_inputs_device; /* layouts= (torch fast path): torch's current stream of the
                                    tensors' own device, so check_stream_device has no work */
    int exact_alloc;             /* FLASHATTN_C_EXACT_ALLOC, read with the GIL held */
    fa_device_array *da[FA_MAX_ROLES]; /* device path: the outputs the call allocates */
    PyObject *host[FA_MAX_ROLES];      /* host paths: the NumPy outputs the call allocates */
    void *host_data[FA_MAX_ROLES];     /* their data, read with the GIL held */
    fa_call_error err;
} job;

static const fa_role *role_of(const job *j, int r) { return &j->op->roles[r]; }

static int is_output(const job *j, int r) { return (role_of(j, r)->flags & FA_ROLE_OUT) != 0; }

/* An FA_ROLE_WRITTEN input that this call writes: its `like` role, if it names one, is given. */
static int written_input(const fa_role *role, PyObject *const *objs)
{
    if (!(role->flags & FA_ROLE_WRITTEN) || (role->flags & FA_ROLE_OUT))
        return 0;
    return role->like < 0 || (objs[role->like] && objs[role->like] != Py_None);
}

/* Whether the call writes role r's memory: an output, or an input it writes in place. */
static int writes(const job *j, int r)
{
    return is_output(j, r) || (j->views[r] && written_input(role_of(j, r), j->call->objs));
}

static int64_t shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

static size_t role_bytes(const job *j, int r)
{
    if (!j->present[r])
        return 0;
    return (size_t)shape_numel(j->ndim[r], j->shape[r]) * (size_t)fa_dtype_itemsize(j->dtype[r]);
}

static void compact_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t step = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        strides[d] = step;
        step *= shape[d] > 0 ? shape[d] : 1;
    }
}

/* A view the host reference cannot take as is: a strided last dimension, or a compact role
 * that is not compact. Such a view is packed into a compact copy first. */
static int needs_pack(const job *j, int r)
{
    const fa_tensor *t = j->views[r];
    const int last = t->ndim - 1;
    if (last >= 0 && t->shape[last] > 1 && t->strides[last] != 1 && fa_tensor_numel(t) > 0)
        return 1;
    return (role_of(j, r)->flags & FA_ROLE_COMPACT) && !fa_tensor_is_compact(t);
}

/* ------------------------------------------------------------------------------------------ */
/* Checks (GIL held, no CUDA calls): each raises a Python exception naming the argument        */

void fa_format_shape(int ndim, const int64_t *shape, char *buf, size_t len)
{
    if (ndim > FA_TENSOR_MAX_DIMS) {
        snprintf(buf, len, "(%d-D)", ndim);
        return;
    }
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, ndim == 1 ? ",)" : ")");
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

static int check_ndim(const fa_tensor *t, const fa_role *role)
{
    if (t->ndim != role->ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D %s, got %d-D", t->name, role->ndim,
                     role->dims, t->ndim);
        return -1;
    }
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || t->shape[d] > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s dimension %d is %lld: sizes must be in [0, %d]",
                         t->name, d, (long long)t->shape[d], INT_MAX);
            return -1;
        }
    }
    return 0;
}

/* Host and device arrays never mix; a side array lives where role 0 lives. */
static int check_placement(const job *j)
{
    const fa_tensor *first = j->views[0];
    char p1[48], p2[48];
    for (int r = 1; r < j->op->num_roles; r++) {
        const fa_tensor *t = j->views[r];
        if (!t || t->on_device == first->on_device)
            continue;
        format_place(first, p1, sizeof p1);
        format_place(t, p2, sizeof p2);
        if (role_of(j, r)->flags & FA_ROLE_SIDE)
            PyErr_Format(PyExc_ValueError,
                         "%s must live where %s lives (a device array on %s's GPU, a host array "
                         "for host %s): %s is on %s, %s is on %s",
                         t->name, first->name, first->name, first->name, first->name, p1,
                         t->name, p2);
        else
            PyErr_Format(PyExc_ValueError,
                         "host arrays cannot be mixed with device arrays: %s is on %s, %s is on "
                         "%s",
                         first->name, p1, t->name, p2);
        return -1;
    }
    if (j->call->site.device_kind == FA_DEVICE_CPU && first->on_device) {
        format_place(first, p1, sizeof p1);
        PyErr_Format(PyExc_ValueError,
                     "device='cpu' runs the host reference on host arrays, got %s on %s",
                     first->name, p1);
        return -1;
    }
    return 0;
}

/* Device arrays whose producer named their GPU must agree with each other and with device=. */
static int check_devices(job *j)
{
    const fa_tensor *known = NULL;
    j->known_device = -1;
    for (int r = 0; r < j->op->num_roles && j->views[0]->on_device; r++) {
        const fa_tensor *t = j->views[r];
        if (!t || t->device_id < 0)
            continue;
        if (!known) {
            known = t;
        } else if (t->device_id != known->device_id) {
            PyErr_Format(PyExc_ValueError,
                         "%s and %s must be on the same device, got cuda:%d and cuda:%d",
                         known->name, t->name, known->device_id, t->device_id);
            return -1;
        }
    }
    if (!known)
        return 0;
    j->known_device = known->device_id;
    const int asked = j->call->site.device_index;
    if (asked >= 0 && asked != known->device_id) {
        PyErr_Format(PyExc_ValueError, "%s is on cuda:%d but device='cuda:%d' was given",
                     known->name, known->device_id, asked);
        return -1;
    }
    return 0;
}

/* The inputs of the op's compute dtype: each one a dtype the path computes, all the same.
 * float32 and float64 are the host reference's alone: the GPU kernels have no such instance. */
static int check_op_dtype(const job *j)
{
    const int gpu = j->call->site.device_kind != FA_DEVICE_CPU;
    const fa_tensor *first = j->views[0], *odd = NULL;
    char names[128] = "";
    int count = 0;
    for (int r = 0; r < j->op->num_roles; r++) {
        const fa_tensor *t = j->views[r];
        if (!t || is_output(j, r) || role_of(j, r)->dtype != FA_OP_DTYPE)
            continue;
        /* int32 is an element code of index arrays only, never an attention dtype. */
        if (t->dtype == FA_DTYPE_NONE || t->dtype == FA_DTYPE_INT32) {
            PyErr_Format(PyExc_TypeError,
                         "unsupported dtype %s for %s: expected float16 or bfloat16 (float32 or "
                         "float64 on device='cpu')",
                         t->dtype_name, t->name);
            return -1;
        }
        if (gpu && (t->dtype == FA_FLOAT32 || t->dtype == FA_FLOAT64)) {
            PyErr_Format(PyExc_TypeError,
                         "unsupported dtype %s for %s: expected float16 or bfloat16 (%s runs only "
                         "on device='cpu')",
                         t->dtype_name, t->name, fa_dtype_str((fa_dtype)t->dtype));
            return -1;
        }
        if (!odd && t->dtype != first->dtype)
            odd = t;
        count++;
    }
    if (!odd)
        return 0;
    /* "q, k and v": the names of every such input. */
    for (int r = 0, seen = 0; r < j->op->num_roles; r++) {
        const fa_tensor *t = j->views[r];
        if (!t || is_output(j, r) || role_of(j, r)->dtype != FA_OP_DTYPE)
            continue;
        seen++;
        const size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s",
                 seen == 1 ? "" : (seen == count ? " and " : ", "), t->name);
    }
    PyErr_Format(PyExc_TypeError, "%s must have the same dtype, got %s %s, %s %s", names,
                 first->name, first->dtype_name, odd->name, odd->dtype_name);
    return -1;
}

/* What the role table says of one input on its own, before the op's shape rules: the ndim of
 * an optional one (required ones are checked first of all) and a fixed dtype. */
static int check_input_kind(const job *j, int r)
{
    const fa_role *role = role_of(j, r);
    const fa_tensor *t = j->views[r];
    if ((role->flags & FA_ROLE_OPTIONAL) && check_ndim(t, role) < 0)
        return -1;
    if (role->dtype != FA_OP_DTYPE && t->dtype != role->dtype) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %s", t->name,
                     fa_dtype_str((fa_dtype)role->dtype), t->dtype_name);
        return -1;
    }
    return 0;
}

/* Layout rules of one view. The kernels read the last dimension's rows with vector loads: a
 * strided one would need a copy, which device arrays never get. A compact role has no strides
 * in the C API at all. */
static int check_layout(const job *j, int r)
{
    const fa_role *role = role_of(j, r);
    const fa_tensor *t = j->views[r];
    const int last = t->ndim - 1;
    if (role->unit_dim && t->on_device && last >= 0 && t->shape[last] > 1 &&
        t->strides[last] != 1 && fa_tensor_numel(t) > 0) {
        PyErr_Format(PyExc_ValueError, "%s must have unit stride on %s, got stride %lld", t->name,
                     role->unit_dim, (long long)t->strides[last]);
        return -1;
    }
    if ((role->flags & FA_ROLE_COMPACT) && !fa_tensor_is_compact(t)) {
        char got[160];
        if (t->ndim == 1)
            snprintf(got, sizeof got, "stride %lld", (long long)t->strides[0]);
        else
            fa_format_shape(t->ndim, t->strides, got, sizeof got);
        PyErr_Format(PyExc_ValueError, "%s must be contiguous, got %s%s", t->name,
                     t->ndim == 1 ? "" : "strides ", got);
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
    const int64_t es = t->itemsize;
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
    return (int64_t)(hi - lo) == fa_tensor_numel(t) * t->itemsize;
}

/* The kernels read the inputs while they write an output (or an input written in place): a
 * shared byte would be read after it was overwritten. Two given outputs that share a byte
 * (dk=buf, dv=buf) would leave one result written over the other. Refused where both views
 * are dense and their spans meet (then they certainly share bytes, e.g. out=q). Views with
 * gaps, e.g. interleaved halves of one packed buffer, may meet without sharing a byte; as
 * with torch's out= checks, they are not judged. */
static int check_overlap(const job *j, const fa_tensor *out)
{
    uintptr_t out_lo, out_hi;
    tensor_span(out, &out_lo, &out_hi);
    if (out_lo == out_hi || !tensor_dense(out, out_lo, out_hi))
        return 0;
    for (int r = 0; r < j->op->num_roles; r++) {
        const fa_tensor *other = j->views[r];
        if (!other || other == out)
            continue;
        uintptr_t lo, hi;
        tensor_span(other, &lo, &hi);
        /* An empty view shares no byte, wherever its pointer lies. */
        if (lo == hi || !(lo < out_hi && out_lo < hi && tensor_dense(other, lo, hi)))
            continue;
        if (is_output(j, r))
            PyErr_Format(PyExc_ValueError,
                         "%s overlaps %s in memory: %s writes both, so one result would "
                         "overwrite the other",
                         out->name, other->name, j->op->name);
        else
            PyErr_Format(PyExc_ValueError,
                         "%s overlaps %s in memory: %s cannot write its result over an input it "
                         "is still reading",
                         out->name, other->name, j->op->name);
        return -1;
    }
    return 0;
}

/* Shape and dtype of every role the call has: a given array's own, or what a new output will
 * have (its `like` role's, or the op's output_shape). */
static void settle_shapes(job *j)
{
    const fa_dtype op_dtype = (fa_dtype)j->views[0]->dtype;
    for (int r = 0; r < j->op->num_roles; r++) {
        const fa_role *role = role_of(j, r);
        j->dtype[r] = role->dtype == FA_OP_DTYPE ? op_dtype : (fa_dtype)role->dtype;
        j->ndim[r] = role->ndim;
        if (!j->present[r])
            continue;
        if (j->views[r] && !is_output(j, r)) {
            memcpy(j->shape[r], j->views[r]->shape, sizeof j->shape[r]);
        } else if (role->like >= 0) {
            memcpy(j->shape[r], j->shape[role->like], sizeof j->shape[r]);
        } else {
            j->op->output_shape(j->views, r, j->shape[r]);
        }
    }
}

/* A given output: the shape and dtype the op writes, writable, laid out as the C API takes
 * it, and sharing no byte with an input. */
static int check_given_output(const job *j, int r)
{
    const fa_role *role = role_of(j, r);
    const fa_tensor *t = j->views[r];
    const char *like = role->like >= 0 ? j->views[role->like]->name : NULL;
    char p1[160], p2[160];
    int same = t->ndim == j->ndim[r];
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == j->shape[r][d];
    if (!same) {
        fa_format_shape(j->ndim[r], j->shape[r], p1, sizeof p1);
        fa_format_shape(t->ndim, t->shape, p2, sizeof p2);
        if (like)
            PyErr_Format(PyExc_ValueError, "%s must have shape %s (%s's shape), got %s", t->name,
                         p1, like, p2);
        else
            PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", t->name, p1, p2);
        return -1;
    }
    if (t->dtype != (int)j->dtype[r]) {
        if (like)
            PyErr_Format(PyExc_TypeError, "%s must have dtype %s (%s's dtype), got %s", t->name,
                         j->views[role->like]->dtype_name, like, t->dtype_name);
        else
            PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %s", t->name,
                         fa_dtype_str(j->dtype[r]), t->dtype_name);
        return -1;
    }
    if (t->readonly) {
        PyErr_Format(PyExc_ValueError, "%s is read-only", t->name);
        return -1;
    }
    if (check_layout(j, r) < 0)
        return -1;
    return check_overlap(j, t);
}

/* An input the op writes in place: writable, and sharing no byte with what the op reads. */
static int check_written_input(const job *j, int r)
{
    const fa_tensor *t = j->views[r];
    if (t->readonly) {
        PyErr_Format(PyExc_ValueError, "%s is read-only: %s writes into it in place", t->name,
                     j->op->name);
        return -1;
    }
    return check_overlap(j, t);
}

/* Every rule of the role table and the op, in the order the messages are documented: the
 * required inputs' ndim, where the arrays live, their dtypes, each input's own kind, the op's
 * shape rules, the inputs' layouts and whether those the op writes can be written, then the
 * given outputs. */
static int validate(job *j)
{
    const int n = j->op->num_roles;
    for (int r = 0; r < n; r++) {
        const fa_role *role = role_of(j, r);
        if (j->views[r] && !is_output(j, r) && !(role->flags & FA_ROLE_OPTIONAL) &&
            check_ndim(j->views[r], role) < 0)
            return -1;
    }
    if (check_placement(j) < 0 || check_devices(j) < 0 || check_op_dtype(j) < 0)
        return -1;
    for (int r = 0; r < n; r++)
        if (j->views[r] && !is_output(j, r) && check_input_kind(j, r) < 0)
            return -1;
    if (j->op->check_shapes(j->views, j->call->args) < 0)
        return -1;
    for (int r = 0; r < n; r++) {
        const int like = role_of(j, r)->like;
        if (j->views[r] && is_output(j, r) && like >= 0 && !j->views[like]) {
            /* dsinks= without sinks: an output of an input that is not there. */
            PyErr_Format(PyExc_ValueError, "%s was given without %s", role_of(j, r)->name,
                         role_of(j, like)->name);
            return -1;
        }
    }
    for (int r = 0; r < n; r++)
        if (j->views[r] && !is_output(j, r) && check_layout(j, r) < 0)
            return -1;
    for (int r = 0; r < n; r++)
        if (j->views[r] && !is_output(j, r) && writes(j, r) && check_written_input(j, r) < 0)
            return -1;
    settle_shapes(j);
    for (int r = 0; r < n; r++)
        if (j->views[r] && is_output(j, r) && check_given_output(j, r) < 0)
            return -1;
    return 0;
}

/* Pointers and strides as the path will pass them to the C API, for the check before any
 * work: arrays that will be passed as they are bind their own; buffers that do not exist yet
 * (new outputs, device copies of host arrays, packed copies) bind the placeholder with compact
 * strides, so the C API judges the real layout rules before anything is allocated or copied. */
static void bind_for_check(job *j)
{
    for (int r = 0; r < j->op->num_roles; r++) {
        fa_binding *b = &j->b[r];
        memset(b, 0, sizeof *b);
        b->view = j->views[r];
        b->present = j->present[r];
        if (!b->present)
            continue;
        memcpy(b->shape, j->shape[r], sizeof b->shape);
        b->dtype = j->dtype[r];
        const fa_tensor *t = j->views[r];
        const int as_is = t && (j->path == PATH_DEVICE ||
                                (j->path == PATH_HOST_CPU && !needs_pack(j, r)));
        if (as_is) {
            b->data = t->data;
            memcpy(b->strides, t->strides, sizeof b->strides);
        } else {
            b->data = fa_placeholder;
            compact_strides(j->ndim[r], j->shape[r], b->strides);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The three execution paths (GIL released: no Python API below until the next banner)         */

/* A stream belongs to one GPU: a launch into another GPU's stream fails, or with peer access
 * reads every operand across the link. Handles 0-2 (legacy and per-thread default streams)
 * name the current device's default stream, which becomes the target's after cudaSetDevice.
 * Returns 0, or -1 with j->err set: "stream belongs to cuda:X but <who><relation> cuda:Y". */
static int check_stream_device(job *j, int target, const char *who, const char *relation)
{
    if (j->call->site.stream <= 2 || j->stream_on_inputs_device)
        return 0;
    int stream_device = -1;
    CUDA_OR_FAIL(&j->err, cudaStreamGetDevice((cudaStream_t)j->call->site.stream, &stream_device));
    if (j->err.kind)
        return -1;
    if (stream_device != target) {
        fail(&j->err, FA_ERR_KIND_VALUE, "stream belongs to cuda:%d but %s%s cuda:%d",
             stream_device, who, relation, target);
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
    if (j->err.kind == FA_ERR_KIND_NONE)
        CUDA_OR_FAIL(&j->err, cudaStreamWaitEvent(ours, ev, 0));
    (void)cudaEventDestroy(ev);
}

/* Asks the driver where a view's memory lives: __cuda_array_interface__ does not say, and a
 * DLPack producer's claim of kDLCUDA is checked rather than trusted (a host address handed to
 * the kernel would fault, or silently read host memory). A torch tensor's layout needs no
 * question: its device is torch's own record of where its allocator put the memory (and the
 * question costs a driver call per array on the path that exists to be fast). */
static int locate_device_view(job *j, fa_tensor *t)
{
    if (!t->data || t->device_read_off_owner)
        return 0;
    struct cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, t->data);
    if (err != cudaSuccess) {
        fail_cuda(&j->err, err, "cudaPointerGetAttributes", __LINE__);
        return -1;
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
        fail(&j->err, FA_ERR_KIND_VALUE,
             "%s points to memory that is not on a GPU (cudaMemoryType %d), though its producer "
             "says it is",
             t->name, (int)attr.type);
        return -1;
    }
    if (t->device_id >= 0 && t->device_id != attr.device) {
        fail(&j->err, FA_ERR_KIND_VALUE, "%s claims cuda:%d but its memory is on cuda:%d",
             t->name, t->device_id, attr.device);
        return -1;
    }
    t->device_id = attr.device;
    return 0;
}

/* The GPU every device view is on (they must agree), else device= or the current one.
 * Returns -1 with j->err set when they disagree. */
static int device_target(job *j, int current)
{
    const fa_tensor *src = NULL;
    int target = -1;
    for (int r = 0; r < j->op->num_roles; r++) {
        fa_tensor *t = j->views[r];
        if (!t)
            continue;
        if (locate_device_view(j, t) < 0)
            return -1;
        if (t->device_id < 0)
            continue;
        if (!src) {
            src = t;
            target = t->device_id;
        } else if (t->device_id != target) {
            fail(&j->err, FA_ERR_KIND_VALUE,
                 "%s and %s must be on the same device, got cuda:%d and cuda:%d", src->name,
                 t->name, target, t->device_id);
            return -1;
        }
    }
    const int asked = j->call->site.device_index;
    const char *who = src ? src->name : j->op->roles[0].name;
    if (target < 0)
        target = asked >= 0 ? asked : current;
    if (asked >= 0 && target != asked) {
        fail(&j->err, FA_ERR_KIND_VALUE, "%s is on cuda:%d but device='cuda:%d' was given", who,
             target, asked);
        return -1;
    }
    if (check_stream_device(j, target, who, " is on") < 0)
        return -1;
    return target;
}

/* Device arrays in, new outputs allocated stream-ordered on the call's stream. */
static void run_device_inputs(job *j)
{
    int previous = -1;
    CUDA_OR_FAIL(&j->err, cudaGetDevice(&previous));
    if (j->err.kind)
        return;
    const int target = device_target(j, previous);
    if (target < 0)
        return;
    for (int r = 0; r < j->op->num_roles; r++)
        if (j->da[r])
            j->da[r]->device = target;
    if (target != previous) {
        CUDA_OR_FAIL(&j->err, cudaSetDevice(target));
        if (j->err.kind)
            return;
    }

    cudaStream_t stream = (cudaStream_t)j->call->site.stream;
    for (int r = 0; r < j->op->num_roles && !j->err.kind; r++) {
        const fa_tensor *t = j->views[r];
        if (t && t->has_stream &&
            fa_canonical_stream(t->stream) != fa_canonical_stream(j->call->site.stream))
            wait_for_stream(j, stream, t->stream);
    }
    for (int r = 0; r < j->op->num_roles && !j->err.kind; r++) {
        if (!j->da[r])
            continue;
        CUDA_OR_FAIL(&j->err, fa_device_array_allocate(j->da[r]));
        j->b[r].data = j->da[r]->ptr;
    }
    if (!j->err.kind) {
        j->op->build(&j->a, j->b, j->call->args);
        fa_error_status(&j->err, j->op->run_gpu(&j->a, stream));
    }
    if (target != previous)
        (void)cudaSetDevice(previous);
}

/* Host inputs to compact device buffers (packed first where strided). */
static void stage_in(job *j, void *const *dev, void **staging, cudaStream_t stream)
{
    for (int r = 0; r < j->op->num_roles && !j->err.kind; r++) {
        fa_tensor *t = j->views[r];
        const size_t bytes = role_bytes(j, r);
        if (!t || is_output(j, r) || !bytes)
            continue;
        const void *src = t->data;
        if (!fa_tensor_is_compact(t)) {
            staging[r] = malloc(bytes);
            if (!staging[r]) {
                fail(&j->err, FA_ERR_KIND_MEMORY, "out of host memory");
                break;
            }
            fa_tensor_pack(t, staging[r]);
            src = staging[r];
        }
        CUDA_OR_FAIL(&j->err, cudaMemcpyAsync(dev[r], src, bytes, cudaMemcpyHostToDevice, stream));
    }
}

/* Device results back to their host arrays (outputs, and inputs the op wrote in place): a new
 * one, a compact given one, or a staging buffer unpacked into a strided given one once the
 * copies are done. A written input that was packed on the way in reuses its staging buffer. */
static void stage_out(job *j, void *const *dev, void **staging, cudaStream_t stream)
{
    for (int r = 0; r < j->op->num_roles && !j->err.kind; r++) {
        const fa_tensor *t = j->views[r];
        const size_t bytes = role_bytes(j, r);
        if (!writes(j, r) || !bytes)
            continue;
        void *dst = j->host_data[r];
        if (t && fa_tensor_is_compact(t)) {
            dst = t->data;
        } else if (t) {
            if (!staging[r])
                staging[r] = malloc(bytes);
            if (!staging[r]) {
                fail(&j->err, FA_ERR_KIND_MEMORY, "out of host memory");
                break;
            }
            dst = staging[r];
        }
        CUDA_OR_FAIL(&j->err, cudaMemcpyAsync(dst, dev[r], bytes, cudaMemcpyDeviceToHost, stream));
    }
    if (!j->err.kind)
        CUDA_OR_FAIL(&j->err, cudaStreamSynchronize(stream));
    for (int r = 0; r < j->op->num_roles && !j->err.kind; r++)
        if (writes(j, r) && j->views[r] && staging[r])
            fa_tensor_unpack(staging[r], j->views[r]);
}

/* Host arrays, computed on the GPU: compact device copies in, compact results out. */
static void run_host_on_gpu(job *j)
{
    void *dev[FA_MAX_ROLES] = {NULL}, *staging[FA_MAX_ROLES] = {NULL};
    const int n = j->op->num_roles, asked = j->call->site.device_index;
    cudaStream_t stream = (cudaStream_t)j->call->site.stream;
    int previous = -1;
    CUDA_OR_FAIL(&j->err, cudaGetDevice(&previous));
    if (j->err.kind)
        return;
    const int target = asked >= 0 ? asked : previous;
    if (check_stream_device(j, target, asked >= 0 ? "device=" : "the current device",
                            asked >= 0 ? " selects" : " is") < 0)
        return;
    if (target != previous) {
        CUDA_OR_FAIL(&j->err, cudaSetDevice(target));
        if (j->err.kind)
            return;
    }

    /* Allocations first: nothing is copied to a GPU that cannot hold the whole problem. */
    for (int r = 0; r < n && !j->err.kind; r++)
        CUDA_OR_FAIL(&j->err, fa_device_buffer_alloc(&dev[r], role_bytes(j, r), stream,
                                                      j->exact_alloc));
    stage_in(j, dev, staging, stream);
    if (!j->err.kind) {
        for (int r = 0; r < n; r++)
            if (j->present[r])
                j->b[r].data = dev[r];
        j->op->build(&j->a, j->b, j->call->args);
        fa_error_status(&j->err, j->op->run_gpu(&j->a, stream));
    }
    if (!j->err.kind)
        stage_out(j, dev, staging, stream);

    for (int r = 0; r < n; r++)
        (void)fa_device_buffer_free(dev[r], stream, j->exact_alloc);
    if (j->err.kind)
        (void)cudaStreamSynchronize(stream); /* the host buffers must outlive queued copies */
    for (int r = 0; r < n; r++)
        free(staging[r]);
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

/* Host arrays on the C reference (device='cpu'): views it cannot take as they are go through
 * compact copies, packed before (inputs) or unpacked after (outputs). */
static void run_host_on_cpu(job *j)
{
    void *staging[FA_MAX_ROLES] = {NULL};
    const int n = j->op->num_roles;
    for (int r = 0; r < n; r++) {
        fa_tensor *t = j->views[r];
        if (!j->present[r])
            continue;
        if (!t) {
            j->b[r].data = j->host_data[r];
        } else if (needs_pack(j, r)) {
            staging[r] = malloc(role_bytes(j, r));
            if (!staging[r]) {
                fail(&j->err, FA_ERR_KIND_MEMORY, "out of host memory");
                goto done;
            }
            if (!is_output(j, r))
                fa_tensor_pack(t, staging[r]);
            j->b[r].data = staging[r];
        } else {
            j->b[r].data = t->data;
        }
    }
    j->op->build(&j->a, j->b, j->call->args);
    interrupt_state interrupt;
    (void)clock_gettime(CLOCK_MONOTONIC, &interrupt.last);
    j->a.p.interrupt = check_interrupt;
    j->a.p.interrupt_ctx = &interrupt;
    fa_error_status(&j->err, j->op->run_cpu(&j->a));
    j->a.p.interrupt = NULL;
    j->a.p.interrupt_ctx = NULL;
    for (int r = 0; r < n && !j->err.kind; r++)
        if (writes(j, r) && j->views[r] && staging[r])
            fa_tensor_unpack(staging[r], j->views[r]);
done:
    for (int r = 0; r < n; r++)
        free(staging[r]);
}

void fa_query_device(int *ordinal, fa_device *dev, fa_call_error *e)
{
    int device = *ordinal;
    if (device < 0)
        CUDA_OR_FAIL(e, cudaGetDevice(&device));
    *ordinal = device;
    if (!e->kind)
        fa_error_status(e, fa_device_query(device, dev));
}

/* ------------------------------------------------------------------------------------------ */
/* The call                                                                                    */

/* NumPy has no bfloat16: host bfloat16 results are returned as their uint16 bit patterns and
 * reinterpreted by flashattn_c/_api.py. */
static int host_typenum(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return NPY_HALF;
    case FA_BFLOAT16: return NPY_UINT16;
    case FA_FLOAT32: return NPY_FLOAT;
    case FA_FLOAT64: return NPY_DOUBLE;
    }
    return (int)dtype == FA_DTYPE_INT32 ? NPY_INT32 : NPY_HALF;
}

/* New outputs, before the GIL is released: DeviceArrays (memory allocated later, on the
 * call's stream and device) or NumPy arrays. Returns 0, or -1 with an exception set. */
static int allocate_outputs(PyObject *module, job *j)
{
    fa_module_state *st = (fa_module_state *)PyModule_GetState(module);
    const fa_call *c = j->call;
    /* The inputs' device is settled in run_device_inputs when only the driver knows it. */
    const int asked = c->site.device_index;
    const int device = j->known_device >= 0 ? j->known_device : (asked >= 0 ? asked : 0);
    for (int r = 0; r < j->op->num_roles; r++) {
        if (!is_output(j, r) || !j->present[r] || j->views[r])
            continue;
        if (j->path == PATH_DEVICE) {
            j->da[r] = fa_device_array_new(st->DeviceArray, j->ndim[r], j->shape[r], j->dtype[r],
                                           device, c->site.stream, c->site.stream_owner);
            if (!j->da[r])
                return -1;
            continue;
        }
        npy_intp dims[FA_TENSOR_MAX_DIMS];
        for (int d = 0; d < j->ndim[r]; d++)
            dims[d] = (npy_intp)j->shape[r][d];
        j->host[r] = PyArray_SimpleNew(j->ndim[r], dims, host_typenum(j->dtype[r]));
        if (!j->host[r])
            return -1;
        j->host_data[r] = PyArray_DATA((PyArrayObject *)j->host[r]);
    }
    return 0;
}

/* One item per output role: the given array, the new one, or None. */
static PyObject *collect_outputs(job *j)
{
    int count = 0;
    for (int r = 0; r < j->op->num_roles; r++)
        count += is_output(j, r);
    PyObject *result = PyTuple_New(count);
    for (int r = 0, i = 0; result && r < j->op->num_roles; r++) {
        if (!is_output(j, r))
            continue;
        PyObject *item = Py_None;
        if (j->views[r])
            item = j->call->objs[r];
        else if (j->da[r])
            item = (PyObject *)j->da[r];
        else if (j->host[r])
            item = j->host[r];
        PyTuple_SET_ITEM(result, i++, Py_NewRef(item));
    }
    return result;
}

static const char *const NO_GPU_HINT_HOST =
    "; pass device='cpu' to run the C reference on the host instead";

/* The paths, with the GIL released; returns -1 with the exception raised on failure. */
static int execute(PyObject *module, job *j)
{
    if (!j->op->empty(&j->a)) {
        Py_BEGIN_ALLOW_THREADS
        switch (j->path) {
        case PATH_DEVICE: run_device_inputs(j); break;
        case PATH_HOST_GPU: run_host_on_gpu(j); break;
        case PATH_HOST_CPU: run_host_on_cpu(j); break;
        }
        Py_END_ALLOW_THREADS
    }
    if (j->err.kind) {
        fa_error_raise(module, &j->err, j->path == PATH_HOST_GPU ? NO_GPU_HINT_HOST : NULL);
        return -1;
    }
    /* A signal handler raised during the last poll of a call that then finished anyway: the
     * exception is the call's outcome, as it would have been a chunk earlier. */
    if (j->path != PATH_DEVICE && PyErr_Occurred())
        return -1;
    return 0;
}

/* Imports every given array into views[r] (a torch layout tuple where layouts has one). */
static int import_all(const fa_op *op, const fa_call *c, fa_tensor *views, job *j)
{
    if (c->site.layouts != Py_None &&
        (!PyTuple_Check(c->site.layouts) || PyTuple_GET_SIZE(c->site.layouts) != op->num_roles)) {
        PyErr_Format(PyExc_TypeError, "layouts must be None or a %d-tuple, one item per role",
                     op->num_roles);
        return -1;
    }
    /* DLPack has no 0: the legacy default stream is spelled 1 there. */
    const uintptr_t dlpack_stream = c->site.stream == 0 ? FA_STREAM_LEGACY : c->site.stream;
    for (int r = 0; r < op->num_roles; r++) {
        PyObject *obj = c->objs[r];
        const int out = (op->roles[r].flags & FA_ROLE_OUT) != 0;
        const int optional = out || (op->roles[r].flags & FA_ROLE_OPTIONAL);
        /* None for a required input is imported too: the import names what is wrong. */
        if (!obj || (obj == Py_None && optional)) {
            j->present[r] = out && (!(op->roles[r].flags & FA_ROLE_OPTIONAL) || c->want[r]);
            continue;
        }
        j->present[r] = 1;
        PyObject *layout =
            c->site.layouts != Py_None ? PyTuple_GET_ITEM(c->site.layouts, r) : Py_None;
        const char *name = op->roles[r].name;
        /* An array the op writes must be the caller's memory, not a copy of it. */
        const int receives = out || written_input(&op->roles[r], c->objs);
        int rc = layout != Py_None ? fa_tensor_from_layout(obj, layout, name, &views[r])
                                   : fa_tensor_import(obj, name, dlpack_stream, receives,
                                                      &views[r]);
        if (rc < 0)
            return -1;
        j->views[r] = &views[r];
    }
    return 0;
}

static void raise_status(PyObject *module, fa_status status)
{
    fa_call_error e;
    memset(&e, 0, sizeof e);
    fa_error_status(&e, status);
    fa_error_raise(module, &e, NULL);
}

/* Host arrays bound for the GPU: the side arrays' values (offsets, lengths, page indices),
 * which the C API checks only where they are host memory, are judged now, while they still
 * are: the op's check runs as for the host path, and its check_values, with the side arrays
 * bound to their host memory (the other arrays keep their placeholders; only the side arrays'
 * values are read). The bindings are rebuilt afterwards. Returns 0, or -1 with an exception. */
static int check_side_values(PyObject *module, job *j)
{
    fa_binding saved[FA_MAX_ROLES];
    memcpy(saved, j->b, sizeof saved);
    for (int r = 0; r < j->op->num_roles; r++) {
        const fa_tensor *t = j->views[r];
        if (t && (role_of(j, r)->flags & FA_ROLE_SIDE) && !is_output(j, r)) {
            j->b[r].data = t->data;
            memcpy(j->b[r].strides, t->strides, sizeof j->b[r].strides);
        }
    }
    j->op->build(&j->a, j->b, j->call->args);
    const fa_status status = j->op->check(&j->a, 0);
    int rc = 0;
    if (status != FA_OK) {
        raise_status(module, status);
        rc = -1;
    } else if (j->op->check_values) {
        rc = j->op->check_values(&j->a);
    }
    memcpy(j->b, saved, sizeof saved);
    j->op->build(&j->a, j->b, j->call->args);
    return rc;
}

/* Checks everything, the C API's own rules included, before any work. */
static int prepare(PyObject *module, job *j)
{
    if (validate(j) < 0)
        return -1;
    const fa_call *c = j->call;
    j->path = j->views[0]->on_device ? PATH_DEVICE
              : c->site.device_kind == FA_DEVICE_CPU ? PATH_HOST_CPU : PATH_HOST_GPU;
    bind_for_check(j);
    fa_params_init(&j->a.p);
    fa_grad_params_init(&j->a.g);
    fa_kvcache_params_init(&j->a.c);
    j->op->build(&j->a, j->b, c->args);
    fa_status status = j->op->check(&j->a, j->path != PATH_HOST_CPU);
    if (status != FA_OK) {
        raise_status(module, status);
        return -1;
    }
    if (j->path == PATH_HOST_GPU && check_side_values(module, j) < 0)
        return -1;
    if (j->path == PATH_HOST_CPU && j->op->check_values && j->op->check_values(&j->a) < 0)
        return -1;
    j->stream_on_inputs_device = c->site.layouts != Py_None;
    j->exact_alloc = fa_exact_alloc_requested();
    return allocate_outputs(module, j);
}

PyObject *fa_call_run(PyObject *module, const fa_op *op, const fa_call *call)
{
    fa_tensor views[FA_MAX_ROLES];
    memset(views, 0, sizeof views);
    job j;
    memset(&j, 0, sizeof j);
    j.op = op;
    j.call = call;
    j.known_device = -1;
    PyObject *result = NULL;
    if (import_all(op, call, views, &j) == 0 && prepare(module, &j) == 0 &&
        execute(module, &j) == 0)
        result = collect_outputs(&j);
    /* After the launch is enqueued: producers may now reuse their memory in stream order. */
    for (int r = 0; r < op->num_roles; r++) {
        fa_tensor_release(&views[r]);
        Py_XDECREF((PyObject *)j.da[r]);
        Py_XDECREF(j.host[r]);
    }
    return result;
}

PyObject *fa_op_roles(const fa_op *op)
{
    PyObject *roles = PyTuple_New(op->num_roles);
    for (int r = 0; roles && r < op->num_roles; r++) {
        const fa_role *role = &op->roles[r];
        PyObject *dtype = role->dtype == FA_OP_DTYPE ? Py_NewRef(Py_None)
                                                     : PyLong_FromLong(role->dtype);
        PyObject *item = dtype ? Py_BuildValue("(sNN)", role->name,
                                               PyBool_FromLong((role->flags & FA_ROLE_OUT) != 0),
                                               dtype)
                               : NULL;
        if (!item) {
            Py_CLEAR(roles);
            break;
        }
        PyTuple_SET_ITEM(roles, r, item);
    }
    return roles;
}
