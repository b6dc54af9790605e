/*
 * device_array.h -- flashattn_c.DeviceArray, the owning device buffer results come back in,
 * and the module state shared by the extension's Python-facing sources.
 *
 * A DeviceArray owns one compact row-major allocation made with cudaMallocAsync on the stream
 * of the launch that fills it, and frees it with cudaFreeAsync on that same stream (or, opted
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

#include "flashattn.h"

/* State of the flashattn_c._C module (PEP 489): types and exceptions it created. */
typedef struct {
    PyObject *CudaError;       /* flashattn_c.CudaError, a RuntimeError subclass */
    PyTypeObject *DeviceArray; /* flashattn_c.DeviceArray */
} fa_module_state;

#define FA_DEVICE_ARRAY_MAX_DIMS 4

/* FLASHATTN_C_EXACT_ALLOC -- opt-in allocation mode for memory checkers, read from the
 * environment each time a DeviceArray is made (so a test may set it for one call).
 *
 *   unset, "" or "0"             cudaMallocAsync / cudaFreeAsync on the launch stream, from the
 *                                device's stream-ordered pool (the default, and the fast one)
 *   "1", "true", "yes" or "on"   cudaMalloc of exactly nbytes / cudaFree
 *
 * Why: a pool hands out slices of larger blocks, so a kernel that runs past the end of its
 * output usually lands in memory that is valid as far as compute-sanitizer's memcheck can tell,
 * and nothing is reported. A dedicated cudaMalloc allocation has bounds memcheck knows exactly.
 * cudaFree synchronizes the device: this mode is for sanitizer runs (tools/sanitize.sh sets
 * it), not for production. DeviceArray.allocator says which mode an array was made with. */
#define FA_EXACT_ALLOC_ENV "FLASHATTN_C_EXACT_ALLOC"

/* 1 when FLASHATTN_C_EXACT_ALLOC asks for exact allocations now. Reads the environment: call
 * with the GIL held (Python's os.environ writes take it too). */
int fa_exact_alloc_requested(void);

/* One device buffer of nbytes: cudaMalloc when `exact`, else cudaMallocAsync on `stream`.
 * nbytes == 0 gives *ptr = NULL and cudaSuccess. The current device must be the target one.
 * No Python calls: usable with the GIL released. */
cudaError_t fa_device_buffer_alloc(void **ptr, size_t nbytes, cudaStream_t stream, int exact);

/* Frees what fa_device_buffer_alloc gave, with the same `exact` (NULL is a no-op): cudaFree,
 * or cudaFreeAsync on `stream`, ordered after the work already enqueued there. */
cudaError_t fa_device_buffer_free(void *ptr, cudaStream_t stream, int exact);

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

/* Allocates a->nbytes: cudaMallocAsync on a->stream, or cudaMalloc in exact mode. The current
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
