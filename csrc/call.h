/*
 * call.h -- the Python call engine (call_module.c): one op of flashattn.h called on N
 * role-tagged arrays.
 *
 * An op is described once, by a static fa_op (attention.c holds the forward's):
 *   roles         its array arguments in order: name, input or output (or an input written in
 *                 place), optional or not, ndim, dtype (the op's compute dtype or a fixed one:
 *                 float32, or int32 for index arrays), unit-stride and compact rules
 *   check_shapes  how the arrays' shapes relate (errors name the argument)
 *   output_shape  the shape of a new output the rules above do not give
 *   build         its C params (fa_op_params) from the arrays' bindings (address and strides as
 *                 the C API will see them) and the op's scalar arguments
 *   check, run_gpu, run_cpu    its C entry points (fa_check_params, fa_forward, fa_forward_cpu)
 * and fa_call_run does the rest for every op: importing the arrays (DLPack, CUDA array
 * interface, NumPy, or a torch layout tuple), device and stream resolution, the generic
 * checks, the out= checks, allocating outputs (DeviceArray or NumPy), staging host arrays to
 * the GPU and back, the host path's interrupt callback, releasing the GIL and mapping errors.
 * A new op adds a descriptor and a thin parser in module.c, not a copy of this engine.
 *
 * Include compat.h before this header.
 */
#ifndef FA_CALL_H
#define FA_CALL_H

#ifndef FA_COMPAT_H
#error "include compat.h before call.h"
#endif

#include <cuda_runtime_api.h>

#include "device_array.h"
#include "flashattn.h"
#include "tensor.h"

#define FA_MAX_ROLES 16

/* fa_role.flags */
#define FA_ROLE_IN 0x1u       /* read by the op */
#define FA_ROLE_OUT 0x2u      /* written by the op: given (out=) or allocated by the call */
#define FA_ROLE_OPTIONAL 0x4u /* may be absent (None): an input not given, an output not asked */
#define FA_ROLE_COMPACT 0x8u  /* the C API takes it compact row-major (no strides) */
#define FA_ROLE_SIDE 0x10u    /* a per-op parameter array that lives where role 0 lives */
/* An input the op also writes in place (a KV cache): it must be writable, shares no byte with
 * the other inputs, and host copies of it come back after the GPU work. Its `like` names the
 * role whose presence makes the op write it (-1: always written). */
#define FA_ROLE_WRITTEN 0x20u

/* fa_role.dtype for a role that takes the op's compute dtype (role 0's). */
#define FA_OP_DTYPE (-2)

typedef struct {
    const char *name;     /* the argument, for messages and the layouts tuple */
    unsigned flags;       /* FA_ROLE_* */
    int ndim;
    const char *dims;     /* "(batch, seqlen_q, heads_q, head_dim)", for ndim messages */
    int dtype;            /* FA_OP_DTYPE, or the element code the role always has (fa_dtype or
                             FA_DTYPE_INT32) */
    int like;             /* outputs: the role whose shape and dtype a given one must have;
                             FA_ROLE_WRITTEN inputs: see there; -1 */
    const char *unit_dim; /* non-NULL: the last dim's name; device views need unit stride there */
} fa_role;

/* A role as the C API will see it: where the elements are and their strides in elements. */
typedef struct {
    const fa_tensor *view; /* the imported array; NULL for an output the call allocates */
    void *data;            /* a placeholder while the buffer does not exist yet */
    int64_t shape[FA_TENSOR_MAX_DIMS];
    int64_t strides[FA_TENSOR_MAX_DIMS];
    fa_dtype dtype; /* or FA_DTYPE_INT32 */
    int present;    /* 0: an absent optional role (data NULL) */
} fa_binding;

/* The C params of any op: the forward's (every op has them), the backward's gradients and the
 * KV-cache op's cache parameters. The engine initialises all three (their _init functions)
 * before an op's build fills what it uses. */
typedef struct {
    fa_params p;
    fa_grad_params g;
    fa_kvcache_params c;
} fa_op_params;

typedef struct {
    const char *name; /* the op as messages name it: "attention" */
    int num_roles;
    const fa_role *roles;
    /* The op's rules between shapes (and the op's scalars: args as for build), after the
     * role table's checks of each array (ndim, place, device, dtype) and before those of its
     * layout. Returns 0, or -1 with a Python exception set. views[r] is NULL for an absent
     * role or an output the call allocates. */
    int (*check_shapes)(fa_tensor *const *views, const void *args);
    /* The shape of output role `role` (ndim from its fa_role) when it has no `like`; NULL
     * when every output role has one. */
    void (*output_shape)(fa_tensor *const *views, int role, int64_t *shape);
    /* Fills a (its structs already initialised) from the bindings and the op's scalars. No
     * Python: called again with the GIL released once real buffers replace the placeholders. */
    void (*build)(fa_op_params *a, const fa_binding *b, const void *args);
    int (*empty)(const fa_op_params *a); /* nothing to compute: outputs are returned unwritten */
    fa_status (*check)(const fa_op_params *a, int gpu);
    /* Optional (NULL: none). The values of side arrays that the C API reads only when it runs
     * (a KV cache's lengths): judged here where they are host memory, the host path's arrays
     * and host arrays bound for the GPU before they are copied. Returns 0, or -1 with a Python
     * exception set. */
    int (*check_values)(const fa_op_params *a);
    fa_status (*run_gpu)(const fa_op_params *a, cudaStream_t stream);
    fa_status (*run_cpu)(const fa_op_params *a); /* a->p.interrupt is set */
} fa_op;

/* device_kind of a call: where it runs. */
enum { FA_DEVICE_AUTO = 0, FA_DEVICE_CPU = 1, FA_DEVICE_CUDA = 2 };

/* Where a call runs, as its parser read it. */
typedef struct {
    PyObject *layouts;      /* None, or per role a torch layout tuple or None */
    uintptr_t stream;       /* 0: legacy default */
    PyObject *stream_owner; /* kept alive by new DeviceArrays; may be None */
    int device_kind, device_index;
} fa_call_site;

/* One call as its parser read it. */
typedef struct {
    PyObject *objs[FA_MAX_ROLES]; /* by role; NULL or None: absent (an output then allocated) */
    int want[FA_MAX_ROLES];       /* optional outputs: 1 to produce it (a given one always is) */
    fa_call_site site;
    const void *args; /* the op's scalars, for build */
} fa_call;

/* Shape rules several ops share, for their check_shapes and output_shape. */
int fa_check_sinks_shape(const fa_tensor *sinks, int64_t heads_q); /* NULL sinks: 0 */
/* lse (batch, heads_q, seqlen_q) of a (batch, seqlen_q, heads_q, head_dim) q in role 0. */
void fa_lse_shape_of_q(fa_tensor *const *views, int role, int64_t *shape);

/* Runs op on the call's arrays. Returns a tuple with one item per output role, in role order:
 * the given array, a new one (DeviceArray for device inputs, NumPy for host inputs; bfloat16
 * as uint16 bits), or None for an optional output not asked for. NULL with an exception set
 * on failure; nothing is written to a given output unless every check passed. */
PyObject *fa_call_run(PyObject *module, const fa_op *op, const fa_call *call);

/* ((name, is_output, fixed dtype code or None), ...) of an op, for flashattn_c._api. */
PyObject *fa_op_roles(const fa_op *op);

/* Scalar arguments, shared by every op's parser. Each returns 0, or -1 with an exception. */
int fa_parse_stream(PyObject *obj, uintptr_t *stream);
int fa_parse_flag(PyObject *obj, const char *name, int *flag);
int fa_parse_real(PyObject *obj, const char *name, double *value); /* finite, in [0, FLT_MAX] */

/* A real address, 256-byte aligned, standing in for buffers that do not exist yet, so the C
 * API's checks judge layouts (alignment, strides) before anything is allocated. */
extern unsigned char fa_placeholder[256];

/* Errors recorded without the GIL, raised once it is taken back. */
typedef enum {
    FA_ERR_KIND_NONE = 0,
    FA_ERR_KIND_VALUE,
    FA_ERR_KIND_TYPE,
    FA_ERR_KIND_RUNTIME,
    FA_ERR_KIND_CUDA,
    FA_ERR_KIND_MEMORY,
    FA_ERR_KIND_INTERRUPTED, /* a signal handler raised in the interrupt callback: that stands */
} fa_err_kind;

typedef struct {
    fa_err_kind kind;
    cudaError_t cuda;
    char msg[768];
} fa_call_error;

/* The first failure recorded is the one reported; later ones are ignored. */
void fa_error_status(fa_call_error *e, fa_status s);

/* Raises e as a Python exception; `hint` is appended when the failure is a missing GPU.
 * Returns NULL. */
PyObject *fa_error_raise(PyObject *module, const fa_call_error *e, const char *hint);

/* The GPU `*ordinal` (-1: the current one, written back) as the launch logic sees it. CUDA
 * calls only: usable with the GIL released. */
void fa_query_device(int *ordinal, fa_device *dev, fa_call_error *e);

/* "(2, 16, 4, 64)"; "(8,)" for 1-D. */
void fa_format_shape(int ndim, const int64_t *shape, char *buf, size_t len);

/* Why there is no usable GPU, for a cudaError_t and cudaDriverGetVersion result (0: none). */
void fa_describe_no_gpu(cudaError_t err, int driver_version, char *buf, size_t len);

#endif /* FA_CALL_H */
