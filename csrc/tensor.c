/*
 * tensor.c -- DLPack / __cuda_array_interface__ / NumPy arguments to one fa_tensor view.
 *
 * Order of preference for an argument obj (the order flashattn_c documents):
 *   1. obj.__dlpack__ + obj.__dlpack_device__: ask the device first; a CUDA producer gets
 *      __dlpack__(stream=S, max_version=(1, 1)) so it orders its pending work before S, a host
 *      producer __dlpack__(max_version=(1, 1)); a producer that does not know max_version is
 *      asked again without it. Versioned and legacy capsules are both taken, renamed to
 *      "used_..." and their deleter is called once, by fa_tensor_release.
 *   2. obj.__cuda_array_interface__ (v2/v3): pointer, byte strides, typestr, optional stream.
 *      The CUDA array interface has no owner slot: the view keeps obj alive instead.
 *   3. a NumPy array or anything NumPy views without copying rules out (__array_interface__,
 *      __array__, the buffer protocol): host memory.
 * Nothing is copied here. Shapes, dtypes and devices are only recorded; the call engine judges
 * them (call_module.c).
 *
 * Part of the flashattn_c._C extension (built by setup.py with the other C sources in csrc/).
 */
#include "compat.h"

#include <stdio.h>
#include <string.h>

#include "tensor.h"

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                               */

const char *fa_dtype_str(int dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return "float16";
    case FA_BFLOAT16: return "bfloat16";
    case FA_FLOAT32: return "float32";
    case FA_FLOAT64: return "float64";
    case FA_DTYPE_INT32: return "int32";
    }
    return "unknown";
}

int fa_dtype_itemsize(int dtype)
{
    switch (dtype) {
    case FA_FLOAT32:
    case FA_DTYPE_INT32: return 4;
    case FA_FLOAT64: return 8;
    default: return 2;
    }
}

/* 1 and *result set when obj has the attribute, 0 when it has not, -1 on another error. */
static int get_optional_attr(PyObject *obj, const char *attr, PyObject **result)
{
    *result = PyObject_GetAttrString(obj, attr);
    if (*result)
        return 1;
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static void set_compact_strides(fa_tensor *t)
{
    int64_t step = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->strides[d] = step;
        step *= t->shape[d] > 0 ? t->shape[d] : 1;
    }
}

static const char *dl_device_name(long device_type)
{
    switch (device_type) {
    case FA_DL_CPU: return "cpu";
    case FA_DL_CUDA: return "cuda";
    case FA_DL_CUDA_HOST: return "cuda pinned host";
    case 4: return "opencl";
    case 7: return "vulkan";
    case 8: return "metal";
    case FA_DL_ROCM: return "rocm";
    case 11: return "rocm host";
    case FA_DL_CUDA_MANAGED: return "cuda managed";
    case 14: return "oneapi";
    }
    return "unknown";
}

int64_t fa_tensor_numel(const fa_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim && d < FA_TENSOR_MAX_DIMS; d++)
        n *= t->shape[d];
    return n;
}

int fa_tensor_is_compact(const fa_tensor *t)
{
    if (fa_tensor_numel(t) == 0)
        return 1;
    int64_t step = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != step)
            return 0;
        step *= t->shape[d];
    }
    return 1;
}

/* Walks every element of t in row-major order, moving whole innermost rows with one memcpy
 * when they are contiguous. to_compact selects the direction. */
static void copy_strided(const fa_tensor *t, char *compact, int to_compact)
{
    const int64_t numel = fa_tensor_numel(t);
    if (numel == 0)
        return;
    const size_t es = (size_t)t->itemsize;
    char *strided_base = (char *)t->data;
    const int nd = t->ndim;
    if (nd == 0) {
        if (to_compact)
            memcpy(compact, strided_base, es);
        else
            memcpy(strided_base, compact, es);
        return;
    }
    const int64_t inner = t->shape[nd - 1];
    const int64_t inner_stride = t->strides[nd - 1];
    const int inner_contiguous = inner == 1 || inner_stride == 1;
    const int64_t outer = numel / inner;
    int64_t idx[FA_TENSOR_MAX_DIMS] = {0};

    for (int64_t o = 0; o < outer; o++) {
        int64_t offset = 0;
        for (int d = 0; d < nd - 1; d++)
            offset += idx[d] * t->strides[d];
        char *row = strided_base + offset * (int64_t)es;
        char *packed = compact + o * inner * (int64_t)es;
        if (inner_contiguous) {
            if (to_compact)
                memcpy(packed, row, (size_t)inner * es);
            else
                memcpy(row, packed, (size_t)inner * es);
        } else {
            for (int64_t i = 0; i < inner; i++) {
                char *elem = row + i * inner_stride * (int64_t)es;
                if (to_compact)
                    memcpy(packed + i * (int64_t)es, elem, es);
                else
                    memcpy(elem, packed + i * (int64_t)es, es);
            }
        }
        for (int d = nd - 2; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
}

void fa_tensor_pack(const fa_tensor *t, void *dst) { copy_strided(t, (char *)dst, 1); }

void fa_tensor_unpack(const void *src, const fa_tensor *t) { copy_strided(t, (char *)src, 0); }

/* A deleter or a DECREF may run Python code, and the view is often released on an error path:
 * the pending exception is set aside meanwhile (running code with one set is an error). */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *traceback;
#endif
} pending_error;

static void pending_error_save(pending_error *e)
{
#if PY_VERSION_HEX >= 0x030C0000
    e->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&e->type, &e->value, &e->traceback);
#endif
}

static void pending_error_restore(pending_error *e)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (e->exc)
        PyErr_SetRaisedException(e->exc);
#else
    if (e->type)
        PyErr_Restore(e->type, e->value, e->traceback);
#endif
}

void fa_tensor_release(fa_tensor *t)
{
    if (!t->managed && !t->owner) {
        t->data = NULL;
        return;
    }
    pending_error pending;
    pending_error_save(&pending);
    if (t->managed) {
        /* Cleared first: a deleter that re-enters Python must not see a live view. */
        void *managed = t->managed;
        t->managed = NULL;
        if (t->managed_versioned) {
            DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)managed;
            if (m->deleter)
                m->deleter(m);
        } else {
            DLManagedTensor *m = (DLManagedTensor *)managed;
            if (m->deleter)
                m->deleter(m);
        }
    }
    Py_CLEAR(t->owner);
    t->data = NULL;
    /* An error raised by a deleter itself has nowhere to go: drop it for the caller's. */
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(NULL);
    pending_error_restore(&pending);
}

/* ------------------------------------------------------------------------------------------ */
/* DLPack                                                                                      */

static void dl_dtype_to_view(DLDataType dt, fa_tensor *t)
{
    t->dtype = FA_DTYPE_NONE;
    t->itemsize = ((int)dt.bits * (int)dt.lanes + 7) / 8;
    char base[32];
    switch (dt.code) {
    case FA_DL_FLOAT:
        snprintf(base, sizeof base, "float%u", dt.bits);
        if (dt.lanes == 1 && dt.bits == 16)
            t->dtype = FA_FLOAT16;
        else if (dt.lanes == 1 && dt.bits == 32)
            t->dtype = FA_FLOAT32;
        else if (dt.lanes == 1 && dt.bits == 64)
            t->dtype = FA_FLOAT64;
        break;
    case FA_DL_BFLOAT:
        snprintf(base, sizeof base, "bfloat%u", dt.bits);
        if (dt.lanes == 1 && dt.bits == 16)
            t->dtype = FA_BFLOAT16;
        break;
    case FA_DL_INT:
        snprintf(base, sizeof base, "int%u", dt.bits);
        if (dt.lanes == 1 && dt.bits == 32)
            t->dtype = FA_DTYPE_INT32;
        break;
    case FA_DL_UINT: snprintf(base, sizeof base, "uint%u", dt.bits); break;
    case FA_DL_BOOL: snprintf(base, sizeof base, "bool"); break;
    case FA_DL_COMPLEX: snprintf(base, sizeof base, "complex%u", dt.bits); break;
    default: snprintf(base, sizeof base, "dlpack_code%u_bits%u", dt.code, dt.bits); break;
    }
    if (dt.lanes != 1)
        snprintf(t->dtype_name, sizeof t->dtype_name, "%sx%u", base, dt.lanes);
    else
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", base);
}

static int fill_from_dltensor(fa_tensor *t, const DLTensor *dl)
{
    if (dl->ndim < 0) {
        PyErr_Format(PyExc_ValueError, "%s: DLPack tensor has ndim %d", t->name, (int)dl->ndim);
        return -1;
    }
    if (dl->ndim > 0 && !dl->shape) {
        PyErr_Format(PyExc_ValueError, "%s: DLPack tensor has ndim %d but no shape", t->name,
                     (int)dl->ndim);
        return -1;
    }
    t->ndim = dl->ndim;
    if (t->ndim <= FA_TENSOR_MAX_DIMS) {
        for (int d = 0; d < t->ndim; d++)
            t->shape[d] = dl->shape[d];
        if (dl->strides) {
            for (int d = 0; d < t->ndim; d++)
                t->strides[d] = dl->strides[d];
        } else {
            set_compact_strides(t);
        }
    }
    dl_dtype_to_view(dl->dtype, t);
    switch (dl->device.device_type) {
    case FA_DL_CUDA:
        t->on_device = 1;
        t->device_id = dl->device.device_id;
        break;
    case FA_DL_CPU:
    case FA_DL_CUDA_HOST:
        t->on_device = 0;
        t->device_id = -1;
        break;
    default:
        PyErr_Format(PyExc_ValueError,
                     "%s is on DLPack device type %d (%s): expected cpu (1) or cuda (2)", t->name,
                     (int)dl->device.device_type, dl_device_name(dl->device.device_type));
        return -1;
    }
    t->data = dl->data ? (char *)dl->data + dl->byte_offset : NULL;
    return 0;
}

/* Takes ownership of a DLPack capsule: renames it so its own destructor leaves the deleter to
 * us, and records the managed tensor in the view. Returns 0 or -1 (exception set). */
static int consume_capsule(PyObject *capsule, fa_tensor *t, int for_output)
{
    if (PyCapsule_IsValid(capsule, FA_DLPACK_CAPSULE_VERSIONED)) {
        DLManagedTensorVersioned *m =
            (DLManagedTensorVersioned *)PyCapsule_GetPointer(capsule, FA_DLPACK_CAPSULE_VERSIONED);
        if (!m || PyCapsule_SetName(capsule, FA_DLPACK_CAPSULE_VERSIONED_USED) < 0)
            return -1;
        t->managed = m;
        t->managed_versioned = 1;
        if (m->version.major != FA_DLPACK_MAJOR_VERSION) {
            /* A different major version may lay the struct out differently: the spec allows
             * only calling the deleter. */
            unsigned major = m->version.major, minor = m->version.minor;
            fa_tensor_release(t);
            PyErr_Format(PyExc_BufferError,
                         "%s: DLPack version %u.%u is not readable by this build (DLPack 1.x)",
                         t->name, major, minor);
            return -1;
        }
        t->readonly = (m->flags & FA_DL_FLAG_READ_ONLY) != 0;
        if (for_output && (m->flags & FA_DL_FLAG_IS_COPIED)) {
            fa_tensor_release(t);
            PyErr_Format(PyExc_ValueError,
                         "%s was exported as a copy (DLPack IS_COPIED flag): the result would "
                         "not reach the caller's array",
                         t->name);
            return -1;
        }
        return fill_from_dltensor(t, &m->dl_tensor);
    }
    if (PyCapsule_IsValid(capsule, FA_DLPACK_CAPSULE)) {
        DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(capsule, FA_DLPACK_CAPSULE);
        if (!m || PyCapsule_SetName(capsule, FA_DLPACK_CAPSULE_USED) < 0)
            return -1;
        t->managed = m;
        t->managed_versioned = 0;
        return fill_from_dltensor(t, &m->dl_tensor);
    }
    PyErr_Format(PyExc_TypeError,
                 "%s.__dlpack__() must return an unused DLPack capsule (\"dltensor\" or "
                 "\"dltensor_versioned\"), got %.100s",
                 t->name, Py_TYPE(capsule)->tp_name);
    return -1;
}

/* The DLPack device type obj reports through __dlpack_device__ (device_fn): CPU, CUDA host
 * or CUDA; -1 with an exception for anything else or a malformed answer. */
static long dlpack_device_type(PyObject *device_fn, const fa_tensor *t)
{
    PyObject *device = PyObject_CallNoArgs(device_fn);
    if (!device)
        return -1;
    long device_type = -1;
    if (!PyTuple_Check(device) || PyTuple_GET_SIZE(device) != 2) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__dlpack_device__() must return (device_type, device_id), got %.100s",
                     t->name, Py_TYPE(device)->tp_name);
    } else {
        device_type = PyLong_AsLong(PyTuple_GET_ITEM(device, 0));
        if (device_type == -1 && PyErr_Occurred()) {
            /* not an int: the exception stands */
        } else if (device_type != FA_DL_CPU && device_type != FA_DL_CUDA && device_type != FA_DL_CUDA_HOST) {
            PyErr_Format(PyExc_ValueError,
                         "%s is on DLPack device type %ld (%s): expected cpu (1) or cuda (2)", t->name,
                         device_type, dl_device_name(device_type));
            device_type = -1;
        }
    }
    Py_DECREF(device);
    return device_type;
}

/* obj.__dlpack__(stream=..., max_version=...) through dlpack_fn: the stream only for a CUDA
 * array; a pre-2023 producer that rejects max_version (TypeError) is asked again without it.
 * Returns the capsule, or NULL with an exception. */
static PyObject *call_dlpack(PyObject *dlpack_fn, int is_cuda, uintptr_t dlpack_stream)
{
    PyObject *capsule = NULL, *empty = PyTuple_New(0), *kwargs = PyDict_New();
    if (!empty || !kwargs)
        goto done;
    if (is_cuda) {
        PyObject *stream = PyLong_FromUnsignedLongLong((unsigned long long)dlpack_stream);
        int set = stream ? PyDict_SetItemString(kwargs, "stream", stream) : -1;
        Py_XDECREF(stream);
        if (set < 0)
            goto done;
    }
    PyObject *max_version = Py_BuildValue("(ii)", FA_DLPACK_MAJOR_VERSION, FA_DLPACK_MINOR_VERSION);
    int set = max_version ? PyDict_SetItemString(kwargs, "max_version", max_version) : -1;
    Py_XDECREF(max_version);
    if (set < 0)
        goto done;

    capsule = PyObject_Call(dlpack_fn, empty, kwargs);
    if (!capsule && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        if (PyDict_DelItemString(kwargs, "max_version") == 0)
            capsule = PyObject_Call(dlpack_fn, empty, kwargs);
    }
done:
    Py_XDECREF(kwargs);
    Py_XDECREF(empty);
    return capsule;
}

/* Returns 0 on success, -1 on error, 1 when a host NumPy array refused DLPack export
 * (BufferError: read-only or byte-swapped under an old NumPy) and the NumPy path should
 * take it instead. */
static int import_dlpack(PyObject *obj, PyObject *dlpack_fn, PyObject *device_fn,
                         uintptr_t dlpack_stream, fa_tensor *t, int for_output)
{
    int rc = -1;
    const long device_type = dlpack_device_type(device_fn, t);
    if (device_type < 0) {
        fa_tensor_release(t);
        return -1;
    }
    const int is_cuda = device_type == FA_DL_CUDA;
    PyObject *capsule = call_dlpack(dlpack_fn, is_cuda, dlpack_stream);
    if (capsule) {
        t->protocol = "__dlpack__";
        rc = consume_capsule(capsule, t, for_output);
        Py_DECREF(capsule); /* renamed "used_...": its destructor leaves the deleter alone */
    } else if (!is_cuda && PyArray_Check(obj) && PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        rc = 1;
    }
    if (rc < 0)
        fa_tensor_release(t);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* __cuda_array_interface__                                                                    */

/* typestr is NumPy's array-interface string: byte order, kind, size in bytes ("<f2"). */
static int parse_typestr(PyObject *typestr, fa_tensor *t)
{
    const char *ts = PyUnicode_Check(typestr) ? PyUnicode_AsUTF8(typestr) : NULL;
    if (!ts) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError,
                         "%s.__cuda_array_interface__['typestr'] must be a str, got %.100s",
                         t->name, Py_TYPE(typestr)->tp_name);
        return -1;
    }
    size_t len = strlen(ts);
    char order = len > 0 ? ts[0] : '?';
    char kind = len > 1 ? ts[1] : '?';
    int size = len > 2 ? atoi(ts + 2) : 0;
    if (size <= 0 || (order != '<' && order != '>' && order != '|' && order != '=')) {
        PyErr_Format(PyExc_ValueError,
                     "%s.__cuda_array_interface__['typestr'] is not a type string: '%s'", t->name,
                     ts);
        return -1;
    }
    /* Every CUDA GPU is little-endian: '>' with more than one byte is foreign data. */
    int native = order != '>' || size == 1;
    t->itemsize = size;
    t->dtype = FA_DTYPE_NONE;
    if (!native) {
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s (big-endian)", ts);
        return 0;
    }
    switch (kind) {
    case 'f':
        snprintf(t->dtype_name, sizeof t->dtype_name, "float%d", size * 8);
        if (size == 2)
            t->dtype = FA_FLOAT16;
        else if (size == 4)
            t->dtype = FA_FLOAT32;
        else if (size == 8)
            t->dtype = FA_FLOAT64;
        break;
    case 'i':
        snprintf(t->dtype_name, sizeof t->dtype_name, "int%d", size * 8);
        if (size == 4)
            t->dtype = FA_DTYPE_INT32;
        break;
    case 'u': snprintf(t->dtype_name, sizeof t->dtype_name, "uint%d", size * 8); break;
    case 'b': snprintf(t->dtype_name, sizeof t->dtype_name, "bool"); break;
    case 'c': snprintf(t->dtype_name, sizeof t->dtype_name, "complex%d", size * 8); break;
    case 'V':
        /* What bfloat16 producers put here: opaque 2-byte values, dtype unknowable. */
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s (raw bytes)", ts);
        break;
    default: snprintf(t->dtype_name, sizeof t->dtype_name, "%s", ts); break;
    }
    return 0;
}

static int cai_int(PyObject *item, const char *name, const char *key, long long *out)
{
    *out = PyLong_AsLongLong(item);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__['%s'] must hold ints, got %.100s", name, key,
                     Py_TYPE(item)->tp_name);
        return -1;
    }
    return 0;
}

/* 'shape', a tuple of ints, into t->ndim and (when it fits) t->shape. */
static int cai_shape(PyObject *shape, fa_tensor *t)
{
    if (!PyTuple_Check(shape)) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__['shape'] must be a tuple, got %.100s", t->name,
                     Py_TYPE(shape)->tp_name);
        return -1;
    }
    t->ndim = (int)PyTuple_GET_SIZE(shape);
    if (t->ndim > FA_TENSOR_MAX_DIMS)
        return 0; /* the rank check names it */
    for (int d = 0; d < t->ndim; d++) {
        long long v;
        if (cai_int(PyTuple_GET_ITEM(shape, d), t->name, "shape", &v) < 0)
            return -1;
        t->shape[d] = v;
    }
    return 0;
}

/* 'data', (pointer, read_only), into t->data and t->readonly. */
static int cai_data(PyObject *data, fa_tensor *t)
{
    if (!PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__['data'] must be (pointer, read_only)", t->name);
        return -1;
    }
    unsigned long long ptr = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(data, 0));
    if (ptr == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__['data'][0] must be a non-negative int pointer",
                     t->name);
        return -1;
    }
    int readonly = PyObject_IsTrue(PyTuple_GET_ITEM(data, 1));
    if (readonly < 0)
        return -1;
    t->data = (void *)(uintptr_t)ptr;
    t->readonly = readonly;
    return 0;
}

/* 'strides', None (compact) or a tuple of byte strides in whole elements, into t->strides;
 * after the shape and the typestr. */
static int cai_strides(PyObject *strides, fa_tensor *t)
{
    if (t->ndim > FA_TENSOR_MAX_DIMS)
        return 0;
    if (!strides || strides == Py_None) {
        set_compact_strides(t);
        return 0;
    }
    if (!PyTuple_Check(strides) || PyTuple_GET_SIZE(strides) != t->ndim) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__['strides'] must be None or a tuple of %d ints",
                     t->name, t->ndim);
        return -1;
    }
    for (int d = 0; d < t->ndim; d++) {
        long long bytes;
        if (cai_int(PyTuple_GET_ITEM(strides, d), t->name, "strides", &bytes) < 0)
            return -1;
        if (bytes % t->itemsize != 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s has a stride of %lld bytes on dimension %d, not a whole number of "
                         "%d-byte elements",
                         t->name, bytes, d, t->itemsize);
            return -1;
        }
        t->strides[d] = bytes / t->itemsize;
    }
    return 0;
}

/* 'stream' (v3), the stream the producer's work is on, into t->stream; 0 is disallowed as
 * ambiguous, and the legacy default stream is its safe reading. */
static int cai_stream(PyObject *stream, fa_tensor *t)
{
    if (!stream || stream == Py_None)
        return 0;
    long long s;
    if (cai_int(stream, t->name, "stream", &s) < 0)
        return -1;
    if (s == 0)
        s = 1;
    if (s < 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s.__cuda_array_interface__['stream'] must be a stream handle, got %lld",
                     t->name, s);
        return -1;
    }
    t->has_stream = 1;
    t->stream = (uintptr_t)s;
    return 0;
}

static int import_cai(PyObject *obj, PyObject *cai, fa_tensor *t)
{
    const char *name = t->name;
    if (!PyDict_Check(cai)) {
        PyErr_Format(PyExc_TypeError, "%s.__cuda_array_interface__ must be a dict, got %.100s",
                     name, Py_TYPE(cai)->tp_name);
        return -1;
    }
    PyObject *shape = PyDict_GetItemString(cai, "shape");     /* borrowed */
    PyObject *typestr = PyDict_GetItemString(cai, "typestr"); /* borrowed */
    PyObject *data = PyDict_GetItemString(cai, "data");       /* borrowed */
    PyObject *strides = PyDict_GetItemString(cai, "strides"); /* borrowed, may be absent */
    PyObject *mask = PyDict_GetItemString(cai, "mask");       /* borrowed, may be absent */
    PyObject *stream = PyDict_GetItemString(cai, "stream");   /* borrowed, may be absent */
    PyObject *version = PyDict_GetItemString(cai, "version"); /* borrowed */
    if (!shape || !typestr || !data) {
        PyErr_Format(PyExc_TypeError,
                     "%s.__cuda_array_interface__ must have 'shape', 'typestr' and 'data'", name);
        return -1;
    }
    /* v2 and v3 are what this reader knows ('stream' is v3); anything else is not guessed at. */
    long version_number = version && PyLong_CheckExact(version) ? PyLong_AsLong(version) : -1;
    if (version_number != 2 && version_number != 3) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%s.__cuda_array_interface__['version'] must be 2 or 3, got %.50R", name,
                     version ? version : Py_None);
        return -1;
    }
    if (cai_shape(shape, t) < 0 || parse_typestr(typestr, t) < 0 || cai_data(data, t) < 0 ||
        cai_strides(strides, t) < 0)
        return -1;
    if (mask && mask != Py_None) {
        PyErr_Format(PyExc_ValueError,
                     "%s.__cuda_array_interface__ has a mask: masked arrays are not supported",
                     name);
        return -1;
    }
    if (cai_stream(stream, t) < 0)
        return -1;
    t->protocol = "__cuda_array_interface__";
    t->on_device = 1;
    t->device_id = -1; /* not in the interface: the call engine asks the driver */
    Py_INCREF(obj);
    t->owner = obj;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* NumPy (host)                                                                                */

static int is_numpy_viewable(PyObject *obj)
{
    if (PyArray_Check(obj) || PyObject_CheckBuffer(obj))
        return 1;
    return PyObject_HasAttrString(obj, "__array_interface__") ||
           PyObject_HasAttrString(obj, "__array__");
}

/* NumPy has no bfloat16; ml_dtypes (JAX's dtype package) registers one as a user dtype named
 * "bfloat16", 2 bytes wide, whose scalar type lives in ml_dtypes. NumPy will not export it
 * through DLPack, so such arrays arrive here. */
static int is_ml_dtypes_bfloat16(PyArrayObject *arr)
{
    PyArray_Descr *d = PyArray_DESCR(arr);
    if (PyArray_TYPE(arr) < NPY_USERDEF || PyArray_ITEMSIZE(arr) != 2 || !d->typeobj)
        return 0;
    const char *name = d->typeobj->tp_name; /* "ml_dtypes.bfloat16" or "bfloat16" */
    const char *dot = strrchr(name, '.');
    return strcmp(dot ? dot + 1 : name, "bfloat16") == 0;
}

/* A new reference to obj as a NumPy array: itself, or (inputs only) a view of a buffer. */
static PyArrayObject *numpy_array_of(PyObject *obj, const fa_tensor *t, int for_output)
{
    if (PyArray_Check(obj)) {
        Py_INCREF(obj);
        return (PyArrayObject *)obj;
    }
    if (for_output) {
        /* Converting would write the result into a temporary the caller never sees. */
        PyErr_Format(PyExc_TypeError,
                     "%s must be an array the result can be written into (NumPy array, "
                     "__dlpack__ or __cuda_array_interface__), got %.100s",
                     t->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (is_numpy_viewable(obj))
        return (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    PyErr_Format(PyExc_TypeError,
                 "%s must be an array (an object with __dlpack__ or __cuda_array_interface__, or "
                 "a NumPy array), got %.100s",
                 t->name, Py_TYPE(obj)->tp_name);
    return NULL;
}

/* The array's dtype: its name for messages, its item size, and the code of a dtype the
 * project reads (native byte order only). */
static int numpy_dtype(PyArrayObject *arr, fa_tensor *t)
{
    PyObject *descr_str = PyObject_Str((PyObject *)PyArray_DESCR(arr));
    const char *dname = descr_str ? PyUnicode_AsUTF8(descr_str) : NULL;
    if (!dname) {
        Py_XDECREF(descr_str);
        return -1;
    }
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dname);
    Py_DECREF(descr_str);
    t->itemsize = (int)PyArray_ITEMSIZE(arr);
    t->dtype = FA_DTYPE_NONE;
    if (!PyArray_ISNOTSWAPPED(arr))
        return 0;
    if (PyArray_TYPE(arr) == NPY_HALF)
        t->dtype = FA_FLOAT16;
    else if (PyArray_TYPE(arr) == NPY_FLOAT)
        t->dtype = FA_FLOAT32;
    else if (PyArray_TYPE(arr) == NPY_DOUBLE)
        t->dtype = FA_FLOAT64;
    else if (is_ml_dtypes_bfloat16(arr))
        t->dtype = FA_BFLOAT16;
    /* By kind and size: NPY_INT32 is NPY_INT or NPY_LONG depending on the platform. */
    else if (PyArray_ISSIGNED(arr) && PyArray_ITEMSIZE(arr) == 4)
        t->dtype = FA_DTYPE_INT32;
    return 0;
}

/* Shape, and byte strides as whole elements (when the rank fits). */
static int numpy_shape(PyArrayObject *arr, fa_tensor *t)
{
    t->ndim = PyArray_NDIM(arr);
    if (t->ndim > FA_TENSOR_MAX_DIMS)
        return 0; /* the rank check names it */
    for (int d = 0; d < t->ndim; d++) {
        npy_intp bytes = PyArray_STRIDE(arr, d);
        t->shape[d] = PyArray_DIM(arr, d);
        if (t->itemsize == 0 || bytes % t->itemsize != 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s has a stride of %lld bytes on dimension %d, not a whole number of "
                         "%d-byte elements",
                         t->name, (long long)bytes, d, t->itemsize);
            return -1;
        }
        t->strides[d] = bytes / t->itemsize;
    }
    return 0;
}

static int import_numpy(PyObject *obj, fa_tensor *t, int for_output)
{
    PyArrayObject *arr = numpy_array_of(obj, t, for_output);
    if (!arr)
        return -1;
    t->owner = (PyObject *)arr; /* released by fa_tensor_release on every failure below */
    t->protocol = "numpy";
    if (numpy_dtype(arr, t) < 0 || numpy_shape(arr, t) < 0) {
        fa_tensor_release(t);
        return -1;
    }
    t->data = PyArray_DATA(arr);
    t->readonly = !PyArray_ISWRITEABLE(arr);
    t->on_device = 0;
    t->device_id = -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static int import_any(PyObject *obj, uintptr_t dlpack_stream, fa_tensor *t, int for_output)
{
    PyObject *dlpack_fn = NULL, *device_fn = NULL, *cai = NULL;
    int rc;

    int has = get_optional_attr(obj, "__dlpack__", &dlpack_fn);
    if (has < 0)
        return -1;
    if (has) {
        has = get_optional_attr(obj, "__dlpack_device__", &device_fn);
        if (has < 0) {
            Py_DECREF(dlpack_fn);
            return -1;
        }
        if (has) {
            rc = import_dlpack(obj, dlpack_fn, device_fn, dlpack_stream, t, for_output);
            Py_DECREF(dlpack_fn);
            Py_DECREF(device_fn);
            if (rc <= 0)
                return rc;
            return import_numpy(obj, t, for_output); /* NumPy refused its own DLPack export */
        }
        Py_DECREF(dlpack_fn); /* __dlpack__ alone is not the protocol: try the others */
    }

    has = get_optional_attr(obj, "__cuda_array_interface__", &cai);
    if (has < 0)
        return -1;
    if (has) {
        rc = import_cai(obj, cai, t);
        Py_DECREF(cai);
        if (rc < 0)
            fa_tensor_release(t);
        return rc;
    }
    return import_numpy(obj, t, for_output);
}

int fa_tensor_import(PyObject *obj, const char *name, uintptr_t dlpack_stream, int for_output,
                     fa_tensor *t)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->device_id = -1;
    t->dtype = FA_DTYPE_NONE;
    if (import_any(obj, dlpack_stream, t, for_output) < 0) {
        fa_tensor_release(t);
        return -1;
    }
    return 0;
}

int fa_tensor_from_layout(PyObject *obj, PyObject *layout, const char *name, fa_tensor *t)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->protocol = "layout";
    t->device_id = -1;
    t->dtype = FA_DTYPE_NONE;
    unsigned long long ptr;
    PyObject *shape, *strides; /* borrowed */
    int dtype, device;
    if (!PyArg_ParseTuple(layout, "KO!O!ii:layout", &ptr, &PyTuple_Type, &shape, &PyTuple_Type,
                          &strides, &dtype, &device))
        return -1;
    if (PyTuple_GET_SIZE(strides) != PyTuple_GET_SIZE(shape) ||
        (dtype != FA_FLOAT16 && dtype != FA_BFLOAT16 && dtype != FA_FLOAT32 &&
         dtype != FA_DTYPE_INT32) ||
        device < 0) {
        PyErr_Format(PyExc_ValueError, "%s: malformed layout %R", name, layout);
        return -1;
    }
    t->ndim = (int)PyTuple_GET_SIZE(shape);
    for (int d = 0; d < t->ndim && d < FA_TENSOR_MAX_DIMS; d++) {
        t->shape[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
        t->strides[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, d));
    }
    if (PyErr_Occurred())
        return -1;
    t->dtype = dtype;
    t->itemsize = fa_dtype_itemsize(dtype);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", fa_dtype_str(dtype));
    t->on_device = 1;
    t->device_id = device;
    t->device_read_off_owner = 1;
    t->data = (void *)(uintptr_t)ptr;
    t->owner = Py_NewRef(obj);
    return 0;
}
