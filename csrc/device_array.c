/*
 * device_array.c -- flashattn_c.DeviceArray: owning, stream-ordered device memory with
 * DLPack and CUDA-array-interface export.
 *
 *   a = fa.attention(q, k, v)            # q, k, v device arrays of no known framework
 *   a.shape, a.strides (elements), a.dtype ("float16" / "bfloat16" / "float32"), a.device,
 *   a.ptr, a.nbytes, a.size, a.ndim, a.stream
 *   torch.from_dlpack(a), cupy.from_dlpack(a)      # zero copy: same data pointer
 *   a.to_numpy()                                    # synchronous copy to the host
 *
 * Lifetime: the memory is freed (cudaFreeAsync on the allocation stream) when the last
 * reference goes: the DeviceArray itself, or a DLPack capsule / consumer tensor made from it
 * (their manager_ctx holds a strong reference). A stream given as an object is kept alive by
 * the array; a raw integer stream handle must outlive it, as with CuPy's external streams.
 *
 * FLASHATTN_C_EXACT_ALLOC=1 swaps the stream-ordered pool for cudaMalloc / cudaFree of exactly
 * nbytes, so compute-sanitizer's memcheck sees the true bounds of every output (device_array.h);
 * a.allocator says which of the two an array uses.
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "device_array.h"
#include "tensor.h"

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0 /* Python 3.9: tp_new is left NULL instead */
#endif
#ifndef Py_TPFLAGS_IMMUTABLETYPE
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

/* The "<call> failed at <file>:<line>" part of a "...: <name>: <text>" failure message. */
static void call_site_of(const char *detail, cudaError_t code, char *buf, size_t len)
{
    char marker[96];
    snprintf(marker, sizeof marker, ": %s", cudaGetErrorName(code));
    const char *end = strstr(detail, marker);
    size_t n = end ? (size_t)(end - detail) : strlen(detail);
    if (n >= len)
        n = len - 1;
    memcpy(buf, detail, n);
    buf[n] = '\0';
}

static int set_str_attr(PyObject *obj, const char *name, const char *value)
{
    PyObject *v = PyUnicode_DecodeUTF8(value, (Py_ssize_t)strlen(value), "replace");
    if (!v)
        return -1;
    int rc = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return rc;
}

void fa_raise_cuda_error(PyObject *cuda_error_type, cudaError_t code, const char *message,
                         const char *detail)
{
    PyObject *exc = PyObject_CallFunction(cuda_error_type, "s", message);
    if (!exc)
        return;
    char site[512];
    call_site_of(detail ? detail : message, code, site, sizeof site);
    PyObject *value = PyLong_FromLong((long)code);
    if (!value || PyObject_SetAttrString(exc, "cuda_error", value) < 0 ||
        set_str_attr(exc, "cuda_error_name", cudaGetErrorName(code)) < 0 ||
        set_str_attr(exc, "cuda_error_string", cudaGetErrorString(code)) < 0 ||
        set_str_attr(exc, "call_site", site) < 0) {
        Py_XDECREF(value);
        Py_DECREF(exc);
        return;
    }
    Py_DECREF(value);
    PyErr_SetObject(cuda_error_type, exc);
    Py_DECREF(exc);
}

static void raise_cuda(fa_device_array *self, cudaError_t err, const char *call, int line)
{
    fa_module_state *st = (fa_module_state *)PyType_GetModuleState(Py_TYPE(self));
    char msg[512];
    snprintf(msg, sizeof msg, "%s failed at %s:%d: %s: %s", call, __FILE__, line,
             cudaGetErrorName(err), cudaGetErrorString(err));
    (void)cudaGetLastError(); /* a non-sticky error must not trip the next call */
    if (st && st->CudaError)
        fa_raise_cuda_error(st->CudaError, err, msg, msg);
    else
        PyErr_SetString(PyExc_RuntimeError, msg);
}

/* Makes `device` current for the scope of a call and puts the previous one back. */
typedef struct {
    int previous;
    int switched;
} device_guard;

static cudaError_t device_guard_enter(device_guard *g, int device)
{
    g->switched = 0;
    cudaError_t err = cudaGetDevice(&g->previous);
    if (err != cudaSuccess)
        return err;
    if (g->previous != device) {
        err = cudaSetDevice(device);
        if (err != cudaSuccess)
            return err;
        g->switched = 1;
    }
    return cudaSuccess;
}

static void device_guard_exit(device_guard *g)
{
    if (g->switched)
        (void)cudaSetDevice(g->previous);
    g->switched = 0;
}


/* ------------------------------------------------------------------------------------------ */
/* Construction and destruction                                                                */

fa_device_array *fa_device_array_new(PyTypeObject *type, int ndim, const int64_t *shape,
                                     fa_dtype dtype, int device, uintptr_t stream,
                                     PyObject *stream_owner)
{
    if (ndim < 0 || ndim > FA_DEVICE_ARRAY_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "DeviceArray supports 0 to %d dimensions, got %d",
                     FA_DEVICE_ARRAY_MAX_DIMS, ndim);
        return NULL;
    }
    size_t nbytes = (size_t)fa_dtype_itemsize(dtype);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            PyErr_Format(PyExc_ValueError, "DeviceArray dimension %d is negative (%lld)", d,
                         (long long)shape[d]);
            return NULL;
        }
        if (shape[d] != 0 && nbytes > SIZE_MAX / (size_t)shape[d]) {
            PyErr_SetString(PyExc_OverflowError, "DeviceArray size overflows size_t");
            return NULL;
        }
        nbytes *= (size_t)shape[d];
    }
    fa_device_array *a = (fa_device_array *)type->tp_alloc(type, 0);
    if (!a)
        return NULL;
    a->ptr = NULL;
    a->nbytes = nbytes;
    a->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        a->shape[d] = shape[d];
    a->dtype = dtype;
    a->device = device;
    a->stream = stream;
    a->stream_owner = (stream_owner && stream_owner != Py_None) ? Py_NewRef(stream_owner) : NULL;
    a->exact_alloc = fa_exact_alloc_requested();
    return a;
}

cudaError_t fa_device_array_allocate(fa_device_array *a)
{
    return fa_device_buffer_alloc(&a->ptr, a->nbytes, (cudaStream_t)a->stream, a->exact_alloc);
}

static void da_dealloc(fa_device_array *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->ptr) {
        /* Ordered after every use enqueued on the allocation stream. Errors cannot be raised
         * from a destructor; at interpreter exit the runtime may already be unloading. */
        device_guard g;
        if (device_guard_enter(&g, self->device) == cudaSuccess)
            (void)fa_device_buffer_free(self->ptr, (cudaStream_t)self->stream, self->exact_alloc);
        device_guard_exit(&g);
        (void)cudaGetLastError();
        self->ptr = NULL;
    }
    Py_CLEAR(self->stream_owner);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------------------------------ */
/* Attributes                                                                                  */

static PyObject *int64_tuple(const int64_t *v, int n)
{
    PyObject *t = PyTuple_New(n);
    if (!t)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (!x) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static void compact_strides(const fa_device_array *a, int64_t *strides)
{
    int64_t step = 1;
    for (int d = a->ndim - 1; d >= 0; d--) {
        strides[d] = step;
        step *= a->shape[d] > 0 ? a->shape[d] : 1;
    }
}

static int64_t da_size(const fa_device_array *a)
{
    int64_t n = 1;
    for (int d = 0; d < a->ndim; d++)
        n *= a->shape[d];
    return n;
}

static PyObject *da_get_shape(fa_device_array *self, void *c)
{
    (void)c;
    return int64_tuple(self->shape, self->ndim);
}

static PyObject *da_get_strides(fa_device_array *self, void *c)
{
    (void)c;
    int64_t strides[FA_DEVICE_ARRAY_MAX_DIMS];
    compact_strides(self, strides);
    return int64_tuple(strides, self->ndim);
}

static PyObject *da_get_dtype(fa_device_array *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(fa_dtype_str(self->dtype));
}

static PyObject *da_get_device(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->device);
}

static PyObject *da_get_ptr(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)self->ptr);
}

static PyObject *da_get_nbytes(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromSize_t(self->nbytes);
}

static PyObject *da_get_size(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(da_size(self));
}

static PyObject *da_get_ndim(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->ndim);
}

static PyObject *da_get_stream(fa_device_array *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong((unsigned long long)self->stream);
}

static PyObject *da_get_allocator(fa_device_array *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(self->exact_alloc ? "cudaMalloc" : "cudaMallocFromPoolAsync");
}

static PyObject *da_get_cai(fa_device_array *self, void *c)
{
    (void)c;
    const char *typestr;
    switch (self->dtype) {
    case FA_FLOAT16: typestr = "<f2"; break;
    case FA_FLOAT32: typestr = "<f4"; break;
    default:
        /* "<f2" would read as float16 and "<V2" as raw bytes: neither says bfloat16. */
        PyErr_SetString(PyExc_AttributeError,
                        "bfloat16 has no __cuda_array_interface__ type string; use __dlpack__ "
                        "(torch.from_dlpack / cupy.from_dlpack) instead");
        return NULL;
    }
    return Py_BuildValue("{s:N,s:s,s:(K,O),s:O,s:i,s:K}", "shape",
                         int64_tuple(self->shape, self->ndim), "typestr", typestr, "data",
                         (unsigned long long)(uintptr_t)self->ptr, Py_False, "strides", Py_None,
                         "version", 3, "stream",
                         (unsigned long long)fa_canonical_stream(self->stream));
}

/* ------------------------------------------------------------------------------------------ */
/* DLPack export                                                                               */

/* One allocation per export: the managed tensor (either ABI) first, then the arrays it points
 * at, so a deleter frees everything with one free(). */
typedef struct {
    union {
        DLManagedTensorVersioned versioned;
        DLManagedTensor legacy;
    } m;
    int64_t shape[FA_DEVICE_ARRAY_MAX_DIMS];
    int64_t strides[FA_DEVICE_ARRAY_MAX_DIMS];
} da_export;

/* May run on any thread, with or without the GIL, after the consumer is done. */
static void release_manager(PyObject *owner)
{
    if (!Py_IsInitialized())
        return; /* interpreter gone: leaking the array beats crashing */
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_DECREF(owner);
    PyGILState_Release(gil);
}

static void da_deleter_versioned(DLManagedTensorVersioned *self)
{
    if (!self)
        return;
    release_manager((PyObject *)self->manager_ctx);
    free(self); /* self == &export->m.versioned == export */
}

static void da_deleter_legacy(DLManagedTensor *self)
{
    if (!self)
        return;
    release_manager((PyObject *)self->manager_ctx);
    free(self);
}

/* A capsule nobody consumed still owns its tensor; a renamed ("used_...") one does not. */
static void da_capsule_destructor(PyObject *capsule)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *pending = PyErr_GetRaisedException();
#else
    PyObject *ptype, *pvalue, *ptrace;
    PyErr_Fetch(&ptype, &pvalue, &ptrace);
#endif
    if (PyCapsule_IsValid(capsule, FA_DLPACK_CAPSULE_VERSIONED)) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)PyCapsule_GetPointer(
            capsule, FA_DLPACK_CAPSULE_VERSIONED);
        if (m && m->deleter)
            m->deleter(m);
    } else if (PyCapsule_IsValid(capsule, FA_DLPACK_CAPSULE)) {
        DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(capsule, FA_DLPACK_CAPSULE);
        if (m && m->deleter)
            m->deleter(m);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending);
#else
    PyErr_Restore(ptype, pvalue, ptrace);
#endif
}

/* DLPack stream argument -> the consumer's stream, or *no_sync for -1. */
static int parse_consumer_stream(PyObject *arg, uintptr_t *consumer, int *no_sync)
{
    *no_sync = 0;
    if (arg == Py_None) {
        *consumer = FA_STREAM_LEGACY; /* the spec: None means the legacy default stream */
        return 0;
    }
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "__dlpack__: stream must be an int or None, got %.100s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred()) {
        /* Larger than int64: still a valid pointer-sized handle. */
        PyErr_Clear();
        unsigned long long u = PyLong_AsUnsignedLongLong(arg);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        *consumer = (uintptr_t)u;
        return 0;
    }
    if (v == -1) {
        *no_sync = 1;
        return 0;
    }
    if (v == 0) {
        /* Disallowed by DLPack as ambiguous; older consumers sent it meaning the legacy default
         * stream, and waiting on that stream is the safe reading. */
        *consumer = FA_STREAM_LEGACY;
        return 0;
    }
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "__dlpack__: stream must be -1, None or a handle, got %lld",
                     v);
        return -1;
    }
    *consumer = (uintptr_t)v;
    return 0;
}

/* Makes `consumer` wait for everything enqueued so far on the array's stream. */
static int order_before_consumer(fa_device_array *self, uintptr_t consumer)
{
    cudaError_t err;
    const char *call = "cudaGetDevice/cudaSetDevice";
    int line = __LINE__;
    device_guard g;
    cudaEvent_t event = NULL;
    Py_BEGIN_ALLOW_THREADS
    err = device_guard_enter(&g, self->device);
    if (err == cudaSuccess) {
        call = "cudaEventCreateWithFlags";
        line = __LINE__;
        err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    }
    if (err == cudaSuccess) {
        call = "cudaEventRecord(producer stream)";
        line = __LINE__;
        err = cudaEventRecord(event, (cudaStream_t)self->stream);
    }
    if (err == cudaSuccess) {
        call = "cudaStreamWaitEvent(consumer stream)";
        line = __LINE__;
        err = cudaStreamWaitEvent((cudaStream_t)consumer, event, 0);
    }
    if (event)
        (void)cudaEventDestroy(event); /* released once the wait has been satisfied */
    device_guard_exit(&g);
    Py_END_ALLOW_THREADS
    if (err != cudaSuccess) {
        raise_cuda(self, err, call, line);
        return -1;
    }
    return 0;
}

/* What a __dlpack__ request may ask of this array: no copy, its own device; *versioned when
 * the consumer takes DLPack 1.x (max_version). */
static int dlpack_request_ok(fa_device_array *self, PyObject *copy, PyObject *dl_device,
                             PyObject *max_version, int *versioned)
{
    if (copy != Py_None) {
        int want_copy = PyObject_IsTrue(copy);
        if (want_copy < 0)
            return -1;
        if (want_copy) {
            PyErr_SetString(PyExc_BufferError,
                            "DeviceArray.__dlpack__: copy=True is not supported; DeviceArray "
                            "exports its own memory only");
            return -1;
        }
    }
    if (dl_device != Py_None) {
        int dev_type, dev_id;
        if (!PyArg_ParseTuple(dl_device, "ii:__dlpack__ dl_device", &dev_type, &dev_id))
            return -1;
        if (dev_type != FA_DL_CUDA || dev_id != self->device) {
            PyErr_Format(PyExc_BufferError,
                         "DeviceArray.__dlpack__: the array lives on cuda:%d (DLPack (2, %d)); "
                         "exporting to (%d, %d) would need a copy",
                         self->device, self->device, dev_type, dev_id);
            return -1;
        }
    }
    *versioned = 0;
    if (max_version != Py_None) {
        unsigned int major, minor;
        if (!PyArg_ParseTuple(max_version, "II:__dlpack__ max_version", &major, &minor))
            return -1;
        *versioned = major >= 1;
    }
    return 0;
}

/* The capsule that hands the array's memory to a consumer ("dltensor_versioned" or
 * "dltensor"), which holds a reference to the array until its deleter runs. */
static PyObject *dlpack_capsule(fa_device_array *self, int versioned)
{
    da_export *e = (da_export *)calloc(1, sizeof *e);
    if (!e)
        return PyErr_NoMemory();
    int64_t strides[FA_DEVICE_ARRAY_MAX_DIMS];
    compact_strides(self, strides);
    for (int d = 0; d < self->ndim; d++) {
        e->shape[d] = self->shape[d];
        e->strides[d] = strides[d];
    }
    DLTensor *dl = versioned ? &e->m.versioned.dl_tensor : &e->m.legacy.dl_tensor;
    dl->data = self->ptr;
    dl->device.device_type = FA_DL_CUDA;
    dl->device.device_id = self->device;
    dl->ndim = self->ndim;
    dl->dtype.code = self->dtype == FA_BFLOAT16 ? FA_DL_BFLOAT : FA_DL_FLOAT;
    dl->dtype.bits = (uint8_t)(8 * fa_dtype_itemsize(self->dtype));
    dl->dtype.lanes = 1;
    dl->shape = e->shape;
    dl->strides = e->strides;
    dl->byte_offset = 0;

    PyObject *capsule;
    Py_INCREF(self); /* the consumer's reference, dropped by the deleter */
    if (versioned) {
        e->m.versioned.version.major = FA_DLPACK_MAJOR_VERSION;
        e->m.versioned.version.minor = FA_DLPACK_MINOR_VERSION;
        e->m.versioned.manager_ctx = self;
        e->m.versioned.deleter = da_deleter_versioned;
        e->m.versioned.flags = 0; /* writable, not a copy */
        capsule = PyCapsule_New(&e->m.versioned, FA_DLPACK_CAPSULE_VERSIONED,
                                da_capsule_destructor);
    } else {
        e->m.legacy.manager_ctx = self;
        e->m.legacy.deleter = da_deleter_legacy;
        capsule = PyCapsule_New(&e->m.legacy, FA_DLPACK_CAPSULE, da_capsule_destructor);
    }
    if (!capsule) {
        Py_DECREF(self);
        free(e);
        return NULL;
    }
    return capsule;
}

static PyObject *da_dlpack(fa_device_array *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", kwlist, &stream,
                                     &max_version, &dl_device, &copy))
        return NULL;
    int versioned;
    if (dlpack_request_ok(self, copy, dl_device, max_version, &versioned) < 0)
        return NULL;
    /* The consumer's stream waits for this array's last writer unless it is the same stream. */
    uintptr_t consumer = FA_STREAM_LEGACY;
    int no_sync = 0;
    if (parse_consumer_stream(stream, &consumer, &no_sync) < 0)
        return NULL;
    if (!no_sync && self->nbytes > 0 &&
        fa_canonical_stream(consumer) != fa_canonical_stream(self->stream) &&
        order_before_consumer(self, consumer) < 0)
        return NULL;
    return dlpack_capsule(self, versioned);
}

static PyObject *da_dlpack_device(fa_device_array *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(ii)", FA_DL_CUDA, self->device);
}

/* ------------------------------------------------------------------------------------------ */
/* Host copy                                                                                   */

static float bf16_bits_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static PyObject *da_to_numpy(fa_device_array *self, PyObject *unused)
{
    (void)unused;
    npy_intp dims[FA_DEVICE_ARRAY_MAX_DIMS];
    for (int d = 0; d < self->ndim; d++)
        dims[d] = (npy_intp)self->shape[d];
    int typenum = self->dtype == FA_FLOAT16 ? NPY_HALF : NPY_FLOAT; /* bfloat16 widens */
    PyArrayObject *arr = (PyArrayObject *)PyArray_SimpleNew(self->ndim, dims, typenum);
    if (!arr || self->nbytes == 0)
        return (PyObject *)arr;
    if (!self->ptr) {
        Py_DECREF(arr);
        PyErr_SetString(PyExc_RuntimeError, "DeviceArray holds no memory");
        return NULL;
    }

    int is_bf16 = self->dtype == FA_BFLOAT16;
    void *dst = PyArray_DATA(arr);
    float *widened = (float *)PyArray_DATA(arr);
    uint16_t *staging = NULL;
    if (is_bf16) {
        staging = (uint16_t *)malloc(self->nbytes);
        if (!staging) {
            Py_DECREF(arr);
            return PyErr_NoMemory();
        }
        dst = staging;
    }
    cudaError_t err;
    const char *call = "cudaGetDevice/cudaSetDevice";
    int line = __LINE__;
    device_guard g;
    Py_BEGIN_ALLOW_THREADS
    err = device_guard_enter(&g, self->device);
    if (err == cudaSuccess) {
        call = "cudaMemcpyAsync(device to host)";
        line = __LINE__;
        err = cudaMemcpyAsync(dst, self->ptr, self->nbytes, cudaMemcpyDeviceToHost,
                              (cudaStream_t)self->stream);
    }
    if (err == cudaSuccess) {
        call = "cudaStreamSynchronize";
        line = __LINE__;
        err = cudaStreamSynchronize((cudaStream_t)self->stream);
    }
    device_guard_exit(&g);
    if (err == cudaSuccess && is_bf16) {
        size_t n = self->nbytes / 2;
        for (size_t i = 0; i < n; i++)
            widened[i] = bf16_bits_to_float(staging[i]);
    }
    Py_END_ALLOW_THREADS
    free(staging);
    if (err != cudaSuccess) {
        Py_DECREF(arr);
        raise_cuda(self, err, call, line);
        return NULL;
    }
    return (PyObject *)arr;
}

/* ------------------------------------------------------------------------------------------ */

static PyObject *da_repr(fa_device_array *self)
{
    char shape[128];
    size_t used = (size_t)snprintf(shape, sizeof shape, "(");
    for (int d = 0; d < self->ndim && used < sizeof shape; d++)
        used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                                 (long long)self->shape[d]);
    if (used < sizeof shape)
        snprintf(shape + used, sizeof shape - used, self->ndim == 1 ? ",)" : ")");
    char text[320];
    snprintf(text, sizeof text,
             "flashattn_c.DeviceArray(shape=%s, dtype=%s, device=cuda:%d, stream=0x%llx, "
             "ptr=0x%llx)",
             shape, fa_dtype_str(self->dtype), self->device, (unsigned long long)self->stream,
             (unsigned long long)(uintptr_t)self->ptr);
    return PyUnicode_FromString(text);
}

static PyMethodDef da_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))da_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None)\n--\n\n"
     "Export as a DLPack capsule, no copy. max_version >= (1, 0) gives a versioned capsule,\n"
     "otherwise a legacy one. stream is the consumer's stream (None or 1: legacy default,\n"
     "2: per-thread default, -1: no synchronization, other: a cudaStream_t): when it differs\n"
     "from the array's stream, it is made to wait (CUDA event) for the array's pending work.\n"
     "0, which DLPack disallows, is read as the legacy default stream.\n"
     "copy=True and a dl_device other than this GPU raise BufferError."},
    {"__dlpack_device__", (PyCFunction)da_dlpack_device, METH_NOARGS,
     "__dlpack_device__()\n--\n\nReturn (2, device): DLPack's kDLCUDA and the CUDA ordinal."},
    {"to_numpy", (PyCFunction)da_to_numpy, METH_NOARGS,
     "to_numpy()\n--\n\n"
     "Copy to a new NumPy array, synchronously (after the work pending on the array's\n"
     "stream). float16 and float32 keep their dtype; bfloat16, which NumPy lacks, is widened\n"
     "exactly to float32."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef da_getset[] = {
    {"shape", (getter)da_get_shape, NULL, "Tuple of dimension sizes.", NULL},
    {"strides", (getter)da_get_strides, NULL, "Tuple of strides in elements (compact row-major).",
     NULL},
    {"dtype", (getter)da_get_dtype, NULL, "'float16', 'bfloat16' or 'float32'.", NULL},
    {"device", (getter)da_get_device, NULL, "CUDA device ordinal.", NULL},
    {"ptr", (getter)da_get_ptr, NULL, "Device address of the first element (0 when empty).",
     NULL},
    {"nbytes", (getter)da_get_nbytes, NULL, "Size in bytes.", NULL},
    {"size", (getter)da_get_size, NULL, "Number of elements.", NULL},
    {"ndim", (getter)da_get_ndim, NULL, "Number of dimensions.", NULL},
    {"stream", (getter)da_get_stream, NULL,
     "Handle of the stream the memory is ordered on (0 = legacy default stream).", NULL},
    {"allocator", (getter)da_get_allocator, NULL,
     "'cudaMallocFromPoolAsync' (flashattn_c's stream-ordered pool, the default) or\n"
     "'cudaMalloc' (exact-size\n"
     "allocations, chosen with FLASHATTN_C_EXACT_ALLOC=1 when the array was made).", NULL},
    {"__cuda_array_interface__", (getter)da_get_cai, NULL,
     "CUDA array interface v3 (float16 / float32 only: bfloat16 has no type string).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot da_slots[] = {
    {Py_tp_dealloc, (void *)da_dealloc},
    {Py_tp_repr, (void *)da_repr},
    {Py_tp_methods, da_methods},
    {Py_tp_getset, da_getset},
    {Py_tp_doc,
     (void *)"Owning device buffer returned by flashattn_c.attention for device inputs of no\n"
             "known framework (torch and CuPy inputs get their own type back through it).\n\n"
             "Allocated from flashattn_c's stream-ordered pool on the launch stream\n"
             "(cudaMallocFromPoolAsync) and freed with cudaFreeAsync\n"
             "on the same stream once neither the array nor any DLPack export of it is alive\n"
             "(cudaMalloc / cudaFree of exactly nbytes under FLASHATTN_C_EXACT_ALLOC=1).\n"
             "A stream passed as an object is kept alive by the array; a raw integer handle\n"
             "must outlive it. Not constructible from Python."},
    {0, NULL},
};

PyType_Spec fa_device_array_spec = {
    .name = "flashattn_c.DeviceArray",
    .basicsize = sizeof(fa_device_array),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = da_slots,
};
