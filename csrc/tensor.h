/*
 * tensor.h -- one view of an array argument, whatever protocol brought it in.
 *
 * An argument of flashattn_c.attention arrives as an object with __dlpack__ (PyTorch, CuPy,
 * JAX, NumPy), an object with __cuda_array_interface__ (Numba, older CuPy), or a NumPy-like
 * host array. fa_tensor_import turns any of them into an fa_tensor: a data address, shape,
 * element strides, dtype, device and read-only flag, plus what keeps the memory alive. The
 * view owns that keep-alive until fa_tensor_release, which calls a DLPack producer's deleter
 * exactly once.
 *
 * Also here: the DLPack v1.1 ABI (dlpack.h of dmlc/dlpack), declared from the spec because
 * both the consumer (tensor.c) and the producer (device_array.c) need its structs.
 *
 * Include compat.h (which includes Python.h) before this header, as the Python-facing
 * sources of the extension do.
 */
#ifndef FA_TENSOR_H
#define FA_TENSOR_H

#ifndef Py_PYTHON_H
#error "include Python.h before tensor.h"
#endif

#include <stdint.h>

#include "flashattn.h"

/* ------------------------------------------------------------------------------------------ */
/* DLPack v1.1 ABI                                                                             */

#define FA_DLPACK_MAJOR_VERSION 1
#define FA_DLPACK_MINOR_VERSION 1

/* DLDeviceType values used here (the spec lists more; any other is rejected by name). */
enum {
    FA_DL_CPU = 1,
    FA_DL_CUDA = 2,
    FA_DL_CUDA_HOST = 3,
    FA_DL_ROCM = 10,
    FA_DL_CUDA_MANAGED = 13,
};

/* DLDataTypeCode values. */
enum {
    FA_DL_INT = 0,
    FA_DL_UINT = 1,
    FA_DL_FLOAT = 2,
    FA_DL_OPAQUE_HANDLE = 3,
    FA_DL_BFLOAT = 4,
    FA_DL_COMPLEX = 5,
    FA_DL_BOOL = 6,
};

/* DLManagedTensorVersioned.flags bits. */
#define FA_DL_FLAG_READ_ONLY (UINT64_C(1) << 0)
#define FA_DL_FLAG_IS_COPIED (UINT64_C(1) << 1)

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

typedef struct {
    int32_t device_type; /* the spec's DLDeviceType enum: a 32-bit int on every supported ABI */
    int32_t device_id;
} DLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;     /* elements; NULL = compact row-major */
    uint64_t byte_offset; /* bytes from data to the first element */
} DLTensor;

typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

/* Capsule names: a producer hands out the first, a consumer renames it to the second so the
 * producer's capsule destructor knows the deleter is now the consumer's to call. */
#define FA_DLPACK_CAPSULE "dltensor"
#define FA_DLPACK_CAPSULE_USED "used_dltensor"
#define FA_DLPACK_CAPSULE_VERSIONED "dltensor_versioned"
#define FA_DLPACK_CAPSULE_VERSIONED_USED "used_dltensor_versioned"

/* ------------------------------------------------------------------------------------------ */
/* The uniform view                                                                            */

#define FA_TENSOR_MAX_DIMS 8
#define FA_DTYPE_NONE (-1) /* fa_tensor.dtype when the element type is none of fa_dtype */
/* int32, for the ops' index arrays (cu_seqlens, cache_seqlens, block_table, ...). An element
 * code of the Python layer alone: the C API's fa_dtype is the attention's element types, and
 * its int32 arrays have no dtype field. Far from fa_dtype's values so that enum can grow. */
#define FA_DTYPE_INT32 16

typedef struct {
    const char *name;     /* the argument, for messages: "q", "k", "v", "out" */
    const char *protocol; /* "__dlpack__", "__cuda_array_interface__" or "numpy" */
    void *data;           /* address of element [0, 0, ...]: DLPack byte_offset already added */
    int ndim;             /* may exceed FA_TENSOR_MAX_DIMS; then shape/strides are not filled */
    int64_t shape[FA_TENSOR_MAX_DIMS];
    int64_t strides[FA_TENSOR_MAX_DIMS]; /* elements, may be negative */
    int dtype;                           /* an fa_dtype, FA_DTYPE_INT32 or FA_DTYPE_NONE */
    int itemsize;                        /* bytes per element */
    char dtype_name[40];                 /* "float16", "bfloat16", "float64", "int32", ... */
    int on_device;                       /* 1: CUDA device memory; 0: host memory */
    int device_id;                       /* CUDA ordinal; -1: host, or not yet known */
    int device_read_off_owner;           /* device_id is the framework's own record of where
                                            its tensor lives (a layout), not a protocol's claim */
    int readonly;
    int has_stream;     /* __cuda_array_interface__ named a stream our work must wait for */
    uintptr_t stream;   /* that stream (1 = legacy default, 2 = per-thread default) */

    /* What keeps the memory alive while the view is used. */
    void *managed;         /* DLManagedTensor(Versioned) whose deleter is ours to call */
    int managed_versioned; /* which of the two `managed` is */
    PyObject *owner;       /* strong reference: the NumPy array or the exporting object */
} fa_tensor;

/* Fills *t from obj. dlpack_stream is the stream value handed to CUDA DLPack producers: the
 * stream the caller will launch on, with the legacy default stream spelled 1 (0 is not a valid
 * DLPack stream). for_output: obj is to receive results, so anything that would only hand over
 * a copy (a list, a DLPack export flagged IS_COPIED) is refused. Returns 0, or -1 with a
 * Python exception set and *t empty. */
int fa_tensor_import(PyObject *obj, const char *name, uintptr_t dlpack_stream, int for_output,
                     fa_tensor *t);

/* Fills *t from a layout tuple (data_ptr, shape, strides, dtype, device) that the Python layer
 * read off a device tensor of a framework it recognises (torch.Tensor), sparing the DLPack
 * round trip; strides in elements, dtype an fa_dtype code (float16, bfloat16, float32) or
 * FA_DTYPE_INT32, device a CUDA ordinal. The view keeps
 * obj alive. Returns 0, or -1 with a Python exception set and *t empty. */
int fa_tensor_from_layout(PyObject *obj, PyObject *layout, const char *name, fa_tensor *t);

/* Gives back what the view holds (DLPack deleter, references). Safe on an empty or already
 * released view. Needs the GIL. */
void fa_tensor_release(fa_tensor *t);

/* Number of elements (0 if any dimension is 0). */
int64_t fa_tensor_numel(const fa_tensor *t);

/* 1 when the elements are laid out compact row-major (strides of size-1 dims ignored). */
int fa_tensor_is_compact(const fa_tensor *t);

/* Copies the strided elements of t into dst, compact row-major, or back. No Python calls:
 * usable with the GIL released. */
void fa_tensor_pack(const fa_tensor *t, void *dst);
void fa_tensor_unpack(const void *src, const fa_tensor *t);

/* "float16", "bfloat16", "float32", "float64", "int32" (dtype: an fa_dtype or FA_DTYPE_INT32). */
const char *fa_dtype_str(int dtype);
int fa_dtype_itemsize(int dtype);

#endif /* FA_TENSOR_H */
