/*
 * device_array.h -- flashattn_c.DeviceArray, the owning device buffer results come back in,
 * and the module state shared by the extension's Python-facing sources.
 *
 * A DeviceArray owns one compact row-major allocation made stream-ordered (device_buffer.h's
 * pool) on the stream of the launch that fills it, and frees it with cudaFreeAsync on that same stream (or, opted
 * into with FLASHATTN_C_EXACT_ALLOC=1, cudaMalloc / cudaFree of exactly nbytes). It exports
 * __dlpack__ / __dlpack_device__ (so torch.from_dlpack / cupy.from_dlpack take it with no
 * copy) and, except for bfloat16, __cuda_array_interface__ v3. Shapes up to 4-D: out is
 * (batch, seqlen_q, heads_q, head_dim), lse (batch, heads_q, seqlen_q).
 *
 * Include compat.h (which includes Python.h) before this header, as the Python-facing
 * sources of the extension do.
 */
#ifndef FA_DEVICE_ARRAY_H
#define FA_DEVICE_ARRAY_H

#ifndef Py_PYTHON_H
#error "include Python.h before device_array.h"
#endif

#include <stdint.h>

#include "device_buffer.h"
#include "flashattn.h"

/* State of the flashattn_c._C module (PEP 489): types and exceptions it created. */
typedef struct {
    PyObject *CudaError;       /* flashattn_c.CudaError, a RuntimeError subclass */
    PyTypeObject *DeviceArray; /* flashattn_c.DeviceArray */
} fa_module_state;

#define FA_DEVICE_ARRAY_MAX_DIMS 4

/* Device buffers and FLASHATTN_C_EXACT_ALLOC: device_buffer.h. */


typedef struct {
    PyObject_HEAD
    void *ptr;     /* device address; NULL while unallocated or when nbytes == 0 */
    size_t nbytes; /* compact size of shape x dtype */
    int ndim;
    int64_t shape[FA_DEVICE_ARRAY_MAX_DIMS];
    fa_dtype dtype;
    int device;              /* CUDA ordinal the memory lives on */
    uintptr_t stream;        /* the stream the allocation is ordered on and freed on */
    PyObject *stream_owner;  /* keeps the caller's stream object alive; NULL for a raw handle */
    int exact_alloc;         /* 1: cudaMalloc / cudaFree (FLASHATTN_C_EXACT_ALLOC); 0: the pool */
} fa_device_array;

extern PyType_Spec fa_device_array_spec;

/* A DeviceArray with shape and dtype set and nothing allocated yet (ptr NULL). nbytes is
 * computed; returns NULL with an exception set if it overflows. The allocation mode
 * (FLASHATTN_C_EXACT_ALLOC) is read here, with the GIL held. */
fa_device_array *fa_device_array_new(PyTypeObject *type, int ndim, const int64_t *shape,
                                     fa_dtype dtype, int device, uintptr_t stream,
                                     PyObject *stream_owner);

/* Allocates a->nbytes: from the pool on a->stream, or cudaMalloc in exact mode. The current
 * device must be a->device. No Python calls: usable with the GIL released (nobody else can see
 * `a` yet). */
cudaError_t fa_device_array_allocate(fa_device_array *a);

/* Raises `cuda_error_type` (flashattn_c.CudaError) with `message`. Attributes of the exception:
 * cuda_error (the numeric cudaError_t), cuda_error_name ("cudaErrorNoDevice"),
 * cuda_error_string (CUDA's description) and call_site ("<call> failed at <file>:<line>", read
 * off `detail`, a "<call> failed at <file>:<line>: <name>: <text>" message; NULL: `message`). */
void fa_raise_cuda_error(PyObject *cuda_error_type, cudaError_t code, const char *message,
                         const char *detail);

#endif /* FA_DEVICE_ARRAY_H */
