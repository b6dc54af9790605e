/*
 * module.c -- flashattn_c._C: the PEP 489 module, its method table and thin parsers.
 *
 *   forward(q, k, v, out=None, *, return_lse, lse, sinks, <common>) -> (out, lse or None)
 *   backward(dout, q, k, v, out, lse, *, dq, dk, dv, dsinks, deterministic, sinks, <common>)
 *            -> (dq, dk, dv, dsinks or None)
 *   launch_config(...), last_launch(), build_info()   introspection of the launch contract
 *   varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...),
 *   varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, ...)   packed batches
 *   kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, ...)   over a KV cache
 *   <common>: causal, softmax_scale, stream, device_kind, device_index, kernel, stream_owner,
 *             layouts, window_left, window_right, softcap (COMMON_KWLIST: every op takes them)
 *   forward_roles, backward_roles, varlen_forward_roles, varlen_backward_roles, kvcache_roles
 *                     each op's arrays in order: (name, is_output, fixed dtype or None)
 *
 * Each parser only converts its arguments (as CPython's Argument Clinic generates them) and
 * calls the op's _impl function (ops.h); the op is a descriptor run by the call engine
 * (call.h), which checks everything and raises every error before any GPU work and before
 * anything is written to an output, and releases the GIL around the work. The public
 * wrappers, output-type matching and stream discovery are in flashattn_c/_api.py.
 * No CUDA call happens at import.
 *
 * Built by setup.py into flashattn_c/_C (python -m pip install -e . or
 * python setup.py build_ext --inplace).
 */
#define FA_NUMPY_API_OWNER /* this file defines the NumPy C-API table (compat.h) */
#include "compat.h"

#include <math.h>

#include "device_array.h"
#include "launch_contract.h"
#include "ops.h"

static fa_module_state *module_state(PyObject *module)
{
    return (fa_module_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------------------------------ */
/* Parsers                                                                                     */

/* softmax_scale: None -> NaN (meaning "1/sqrt(head_dim)"), else a real in [0, FLT_MAX]. */
static int parse_scale(PyObject *obj, double *scale)
{
    *scale = NAN;
    if (obj == Py_None)
        return 0;
    return fa_parse_real(obj, "softmax_scale", scale);
}

/* softcap: a real in [0, FLT_MAX], 0 = off; NULL (not given) is off too. */
static int parse_softcap(PyObject *obj, double *softcap)
{
    *softcap = 0.0;
    if (!obj)
        return 0;
    return fa_parse_real(obj, "softcap", softcap);
}

/* The keywords every attention op takes after its own. Each parser's kwlist, format and
 * arguments end with COMMON_KWLIST, COMMON_FORMAT and COMMON_ARGS(k), in this order, and
 * finish_common converts what they read. layouts (internal, from flashattn_c._api): per role a
 * layout tuple read off a torch tensor, or None for the generic import; the stream is then
 * torch's current one on the tensors' device. */
typedef struct {
    PyObject *causal, *softmax_scale, *stream, *stream_owner, *layouts, *softcap;
    int device_kind, device_index, kernel, window_left, window_right;
} common_kwargs;

#define COMMON_KWARGS_INIT                                                                     \
    {.causal = Py_False, .softmax_scale = Py_None, .stream = Py_None, .stream_owner = Py_None, \
     .layouts = Py_None, .softcap = NULL, .device_kind = FA_DEVICE_AUTO, .device_index = -1,   \
     .kernel = FA_KERNEL_AUTO, .window_left = -1, .window_right = -1}
#define COMMON_KWLIST                                                                         \
    "causal", "softmax_scale", "stream", "device_kind", "device_index", "kernel",             \
        "stream_owner", "layouts", "window_left", "window_right", "softcap"
#define COMMON_FORMAT "OOOiiiOOiiO"
#define COMMON_ARGS(k)                                                                         \
    &(k).causal, &(k).softmax_scale, &(k).stream, &(k).device_kind, &(k).device_index,         \
        &(k).kernel, &(k).stream_owner, &(k).layouts, &(k).window_left, &(k).window_right,     \
        &(k).softcap

/* The common keywords as the forward's scalars and the call's site; return_lse_obj NULL: the
 * op has no such flag. */
static int finish_common(const common_kwargs *k, PyObject *return_lse_obj, attention_scalars *s,
                         fa_call_site *site)
{
    s->kernel = k->kernel;
    s->window_left = k->window_left;
    s->window_right = k->window_right;
    site->layouts = k->layouts;
    site->stream_owner = k->stream_owner;
    site->device_kind = k->device_kind;
    site->device_index = k->device_index;
    if (fa_parse_flag(k->causal, "causal", &s->causal) < 0 ||
        (return_lse_obj && fa_parse_flag(return_lse_obj, "return_lse", &s->return_lse) < 0) ||
        fa_parse_stream(k->stream, &site->stream) < 0 ||
        parse_scale(k->softmax_scale, &s->softmax_scale) < 0 ||
        parse_softcap(k->softcap, &s->softcap) < 0)
        return -1;
    return 0;
}

/* lse (internal): a caller-owned float32 output, as out= is for out. */
static PyObject *py_forward(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k", "v", "out", "return_lse", "lse", "sinks", COMMON_KWLIST,
                             NULL};
    PyObject *arrays[ATTN_NUM_ROLES] = {NULL};
    PyObject *return_lse_obj = Py_False;
    common_kwargs k = COMMON_KWARGS_INIT;
    attention_scalars s = {0};
    fa_call_site site;
    arrays[ATTN_OUT] = arrays[ATTN_LSE] = arrays[ATTN_SINKS] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O$OOO" COMMON_FORMAT ":forward", kwlist,
                                     &arrays[ATTN_Q], &arrays[ATTN_K], &arrays[ATTN_V],
                                     &arrays[ATTN_OUT], &return_lse_obj, &arrays[ATTN_LSE],
                                     &arrays[ATTN_SINKS], COMMON_ARGS(k)) ||
        finish_common(&k, return_lse_obj, &s, &site) < 0)
        return NULL;
    return attention_forward_impl(module, arrays, &site, &s);
}

/* dq, dk, dv, dsinks: caller-owned outputs, as out= is for the forward; layouts per role of
 * backward_roles. */
static PyObject *py_backward(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dout", "q",  "k",      "v",     "out",           "lse",
                             "dq",   "dk", "dv",     "dsinks", "deterministic", "sinks",
                             COMMON_KWLIST, NULL};
    PyObject *arrays[BWD_NUM_ROLES] = {NULL};
    PyObject *det_obj = Py_False;
    common_kwargs k = COMMON_KWARGS_INIT;
    backward_scalars s = {0};
    fa_call_site site;
    arrays[BWD_DQ] = arrays[BWD_DK] = arrays[BWD_DV] = arrays[BWD_DSINKS] = Py_None;
    arrays[BWD_SINKS] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|$OOOOOO" COMMON_FORMAT ":backward",
                                     kwlist, &arrays[BWD_DOUT], &arrays[BWD_Q], &arrays[BWD_K],
                                     &arrays[BWD_V], &arrays[BWD_OUT], &arrays[BWD_LSE],
                                     &arrays[BWD_DQ], &arrays[BWD_DK], &arrays[BWD_DV],
                                     &arrays[BWD_DSINKS], &det_obj, &arrays[BWD_SINKS],
                                     COMMON_ARGS(k)) ||
        fa_parse_flag(det_obj, "deterministic", &s.deterministic) < 0 ||
        finish_common(&k, NULL, &s.fwd, &site) < 0)
        return NULL;
    return attention_backward_impl(module, arrays, &site, &s);
}

/* Packed batches: arrays and keywords as forward's, plus the int32 offsets and the longest
 * entry of each side; lse is (heads_q, total_q). */
static PyObject *py_varlen_forward(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q",           "k",           "v",          "cu_seqlens_q",
                             "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "out",
                             "return_lse",  "lse",         "sinks",      COMMON_KWLIST,
                             NULL};
    PyObject *arrays[VL_NUM_ROLES] = {NULL};
    PyObject *return_lse_obj = Py_False;
    common_kwargs k = COMMON_KWARGS_INIT;
    varlen_scalars s = {0};
    fa_call_site site;
    arrays[VL_OUT] = arrays[VL_LSE] = arrays[VL_SINKS] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOOii|O$OOO" COMMON_FORMAT ":varlen_forward", kwlist, &arrays[VL_Q],
            &arrays[VL_K], &arrays[VL_V], &arrays[VL_CU_Q], &arrays[VL_CU_K], &s.max_seqlen_q,
            &s.max_seqlen_k, &arrays[VL_OUT], &return_lse_obj, &arrays[VL_LSE],
            &arrays[VL_SINKS], COMMON_ARGS(k)) ||
        finish_common(&k, return_lse_obj, &s.fwd, &site) < 0)
        return NULL;
    return attention_varlen_impl(module, arrays, &site, &s);
}

/* The backward of varlen_forward: arrays and keywords as backward's, plus the offsets and the
 * longest entries; lse is the forward's (heads_q, total_q). */
static PyObject *py_varlen_backward(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dout",         "q",            "k",            "v",
                             "out",          "lse",          "cu_seqlens_q", "cu_seqlens_k",
                             "max_seqlen_q", "max_seqlen_k", "dq",           "dk",
                             "dv",           "dsinks",       "deterministic", "sinks",
                             COMMON_KWLIST,  NULL};
    PyObject *arrays[VLB_NUM_ROLES] = {NULL};
    PyObject *det_obj = Py_False;
    common_kwargs k = COMMON_KWARGS_INIT;
    varlen_scalars s = {0};
    fa_call_site site;
    arrays[VLB_DQ] = arrays[VLB_DK] = arrays[VLB_DV] = arrays[VLB_DSINKS] = Py_None;
    arrays[VLB_SINKS] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOOOOOii|$OOOOOO" COMMON_FORMAT ":varlen_backward", kwlist,
            &arrays[VLB_DOUT], &arrays[VLB_Q], &arrays[VLB_K], &arrays[VLB_V], &arrays[VLB_OUT],
            &arrays[VLB_LSE], &arrays[VLB_CU_Q], &arrays[VLB_CU_K], &s.max_seqlen_q,
            &s.max_seqlen_k, &arrays[VLB_DQ], &arrays[VLB_DK], &arrays[VLB_DV],
            &arrays[VLB_DSINKS], &det_obj, &arrays[VLB_SINKS], COMMON_ARGS(k)) ||
        fa_parse_flag(det_obj, "deterministic", &s.deterministic) < 0 ||
        finish_common(&k, NULL, &s.fwd, &site) < 0)
        return NULL;
    return attention_varlen_backward_impl(module, arrays, &site, &s);
}

/* The KV-cache op: q, the caches (written in place when k and v are given), the optional new
 * keys and values and index arrays; cache_seqlen is every entry's cached keys when
 * cache_seqlens (the array) is None. */
static PyObject *py_kvcache(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q",          "k_cache",     "v_cache",       "k",
                             "v",          "cache_seqlens", "cache_batch_idx", "block_table",
                             "sinks",      "out",         "lse",           "cache_seqlen",
                             "num_splits", "return_lse",  COMMON_KWLIST,   NULL};
    PyObject *arrays[KVC_NUM_ROLES] = {NULL};
    PyObject *return_lse_obj = Py_False;
    common_kwargs k = COMMON_KWARGS_INIT;
    kvcache_scalars s = {0};
    fa_call_site site;
    for (int r = KVC_K; r < KVC_NUM_ROLES; r++)
        arrays[r] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOO|OO$OOOOOOiiO" COMMON_FORMAT ":kvcache", kwlist, &arrays[KVC_Q],
            &arrays[KVC_K_CACHE], &arrays[KVC_V_CACHE], &arrays[KVC_K], &arrays[KVC_V],
            &arrays[KVC_CACHE_SEQLENS], &arrays[KVC_CACHE_BATCH_IDX], &arrays[KVC_BLOCK_TABLE],
            &arrays[KVC_SINKS], &arrays[KVC_OUT], &arrays[KVC_LSE], &s.cache_seqlen,
            &s.num_splits, &return_lse_obj, COMMON_ARGS(k)) ||
        finish_common(&k, return_lse_obj, &s.fwd, &site) < 0)
        return NULL;
    return attention_kvcache_impl(module, arrays, &site, &s);
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

/* The main launch's dict, plus "launches" (every launch of the plan in the order they run),
 * "main_launch" (the main one's index there) and "workspace_bytes". */
static PyObject *plan_to_dict(const fa_plan *plan)
{
    PyObject *d = launch_to_dict(&plan->launches[plan->main_launch]);
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
    PyObject *main_index = ws ? PyLong_FromLong(plan->main_launch) : NULL;
    if (!main_index || PyDict_SetItemString(d, "launches", launches) < 0 ||
        PyDict_SetItemString(d, "workspace_bytes", ws) < 0 ||
        PyDict_SetItemString(d, "main_launch", main_index) < 0) {
        Py_XDECREF(ws);
        Py_XDECREF(main_index);
        Py_DECREF(launches);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(ws);
    Py_DECREF(main_index);
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
                             "sinks",  "backward", "deterministic", "varlen", "kvcache",
                             "seqlen_new", "page_size", "num_splits", NULL};
    attention_sizes z;
    attention_scalars s = {.softmax_scale = NAN, .kernel = FA_KERNEL_AUTO, .window_left = -1,
                           .window_right = -1};
    int arch_major = -1, arch_minor = 0, device = -1;
    PyObject *causal_obj = Py_False, *softcap_obj = NULL, *sinks_obj = Py_False;
    PyObject *backward_obj = Py_False, *det_obj = Py_False, *varlen_obj = Py_False;
    PyObject *kvcache_obj = Py_False;
    int seqlen_new = 0, page_size = 0, num_splits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiiii|OiiiiiiOOOOOOiii:launch_config",
                                     kwlist, &z.batch, &z.seqlen_q, &z.seqlen_k, &z.heads_q,
                                     &z.heads_kv, &z.head_dim, &z.dtype, &causal_obj, &arch_major,
                                     &arch_minor, &s.kernel, &device, &s.window_left,
                                     &s.window_right, &softcap_obj, &sinks_obj, &backward_obj,
                                     &det_obj, &varlen_obj, &kvcache_obj, &seqlen_new, &page_size,
                                     &num_splits))
        return NULL;
    int backward = 0, kvcache = 0;
    backward_scalars bs;
    if (fa_parse_flag(causal_obj, "causal", &s.causal) < 0 ||
        fa_parse_flag(sinks_obj, "sinks", &z.sinks) < 0 ||
        fa_parse_flag(varlen_obj, "varlen", &z.varlen) < 0 ||
        fa_parse_flag(backward_obj, "backward", &backward) < 0 ||
        fa_parse_flag(kvcache_obj, "kvcache", &kvcache) < 0 ||
        fa_parse_flag(det_obj, "deterministic", &bs.deterministic) < 0 ||
        parse_softcap(softcap_obj, &s.softcap) < 0)
        return NULL;
    if (kvcache && (backward || z.varlen)) {
        PyErr_SetString(PyExc_ValueError, "kvcache=True plans attention_with_kvcache(), which has "
                                          "no backward and no packed variant: leave backward and "
                                          "varlen False");
        return NULL;
    }
    bs.fwd = s;
    const kvcache_scalars ks = {.fwd = s, .cache_seqlen = 0, .num_splits = num_splits};
    fa_plan plan;
    int rc;
    if (kvcache)
        rc = attention_kvcache_plan_impl(module, &z, &ks, seqlen_new, page_size, arch_major,
                                         arch_minor, device, &plan);
    else if (backward)
        rc = attention_backward_plan_impl(module, &z, &bs, arch_major, arch_minor, device, &plan);
    else
        rc = attention_plan_impl(module, &z, &s, arch_major, arch_minor, device, &plan);
    return rc < 0 ? NULL : plan_to_dict(&plan);
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
    fa_describe_no_gpu((cudaError_t)err, driver, reason, sizeof reason);
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

static PyObject *py_pool_usage(PyObject *module, PyObject *args)
{
    int device;
    if (!PyArg_ParseTuple(args, "i:_pool_usage", &device))
        return NULL;
    size_t used, reserved;
    const cudaError_t err = fa_device_pool_usage(device, &used, &reserved);
    if (err != cudaSuccess)
        return PyErr_Format(PyExc_RuntimeError, "reading the pool of cuda:%d failed: %s", device,
                            cudaGetErrorName(err));
    (void)module;
    return Py_BuildValue("(nn)", (Py_ssize_t)used, (Py_ssize_t)reserved);
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
     "        layouts=None, lse=None, window_left=-1, window_right=-1, softcap=0.0,\n"
     "        sinks=None)\n"
     "--\n\n"
     "Low-level attention forward; flashattn_c.attention is the public entry point.\n"
     "device_kind: 0 = where the inputs live (host inputs run on the GPU), 1 = the host C\n"
     "reference, 2 = the GPU. kernel: 0 = auto, 1 = sm80, 2 = sm90. stream: a cudaStream_t\n"
     "as an int (0 = legacy default). stream_owner is kept alive by the DeviceArrays made.\n"
     "causal and return_lse are bools. window_left/right: -1 = unbounded; softcap: 0 = off;\n"
     "sinks: float32 (heads_q,) where q lives, or None.\n"
     "layouts (internal): per role of forward_roles (q, k, v, out, lse, sinks) a (data_ptr,\n"
     "shape, strides, dtype, device) tuple read off a torch tensor, or None; the stream must\n"
     "then be torch's current stream of the tensors' device (it is not checked again).\n"
     "lse: a caller-owned contiguous float32 (batch, heads_q, seqlen_q) array that receives\n"
     "lse, as out does for out.\n"
     "Returns (out, lse or None): DeviceArrays for device inputs, NumPy arrays for host\n"
     "inputs (bfloat16 as uint16 bit patterns); a given out or lse is returned as is."},
    {"backward", (PyCFunction)(void (*)(void))py_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(dout, q, k, v, out, lse, *, dq=None, dk=None, dv=None, dsinks=None,\n"
     "         causal=False, softmax_scale=None, stream=0, device_kind=0, device_index=-1,\n"
     "         kernel=0, stream_owner=None, layouts=None, window_left=-1, window_right=-1,\n"
     "         softcap=0.0, sinks=None, deterministic=False)\n"
     "--\n\n"
     "Low-level attention backward; flashattn_c.attention_backward is the public entry point.\n"
     "out and lse are the forward's; the scalars are the forward's. Arguments as forward's;\n"
     "layouts per role of backward_roles. Returns (dq, dk, dv, dsinks or None)."},
    {"varlen_forward", (PyCFunction)(void (*)(void))py_varlen_forward,
     METH_VARARGS | METH_KEYWORDS,
     "varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out=None,\n"
     "               *, causal=False, softmax_scale=None, return_lse=False, stream=0,\n"
     "               device_kind=0, device_index=-1, kernel=0, stream_owner=None, layouts=None,\n"
     "               lse=None, window_left=-1, window_right=-1, softcap=0.0, sinks=None)\n"
     "--\n\n"
     "Low-level forward on packed batches; flashattn_c.attention_varlen is the public entry\n"
     "point. q (total_q, heads_q, head_dim), k and v (total_k, heads_kv, head_dim),\n"
     "cu_seqlens_q/k int32 (batch + 1,) where q lives; lse (heads_q, total_q). Other arguments\n"
     "as forward's; layouts per role of varlen_forward_roles. Returns (out, lse or None)."},
    {"varlen_backward", (PyCFunction)(void (*)(void))py_varlen_backward,
     METH_VARARGS | METH_KEYWORDS,
     "varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,\n"
     "                max_seqlen_k, *, dq=None, dk=None, dv=None, dsinks=None, causal=False,\n"
     "                softmax_scale=None, stream=0, device_kind=0, device_index=-1, kernel=0,\n"
     "                stream_owner=None, layouts=None, window_left=-1, window_right=-1,\n"
     "                softcap=0.0, sinks=None, deterministic=False)\n"
     "--\n\n"
     "Low-level backward of varlen_forward; flashattn_c.attention_varlen_backward is the public\n"
     "entry point. Arguments as backward's and varlen_forward's; layouts per role of\n"
     "varlen_backward_roles. Returns (dq, dk, dv, dsinks or None)."},
    {"kvcache", (PyCFunction)(void (*)(void))py_kvcache, METH_VARARGS | METH_KEYWORDS,
     "kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, cache_batch_idx=None,\n"
     "        block_table=None, sinks=None, out=None, lse=None, cache_seqlen=0, num_splits=0,\n"
     "        causal=False, softmax_scale=None, return_lse=False, stream=0, device_kind=0,\n"
     "        device_index=-1, kernel=0, stream_owner=None, layouts=None, window_left=-1,\n"
     "        window_right=-1, softcap=0.0)\n"
     "--\n\n"
     "Low-level attention over a KV cache; flashattn_c.attention_with_kvcache is the public\n"
     "entry point. k and v (new keys and values) are written into k_cache and v_cache in place.\n"
     "cache_seqlens: int32 (batch,) where q lives, or None for cache_seqlen in every entry.\n"
     "Other arguments as forward's; layouts per role of kvcache_roles. Returns (out, lse or\n"
     "None)."},
    {"launch_config", (PyCFunction)(void (*)(void))py_launch_config,
     METH_VARARGS | METH_KEYWORDS,
     "launch_config(*, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype,\n"
     "              causal=False, arch_major=-1, arch_minor=0, kernel=0, device=-1,\n"
     "              window_left=-1, window_right=-1, softcap=0.0, sinks=False,\n"
     "              backward=False, deterministic=False, varlen=False, kvcache=False,\n"
     "              seqlen_new=0, page_size=0, num_splits=0)\n"
     "--\n\n"
     "The plan fa_forward (or, with backward, fa_backward; with kvcache, fa_kvcache) would run,\n"
     "without launching; varlen: for batch packed entries of seqlen_q / seqlen_k rows; kvcache:\n"
     "caches of seqlen_k keys per entry (paged when page_size > 0), seqlen_new appended.\n"
     "arch_major >= 0: a nominal device of that compute capability (pure host); else the GPU\n"
     "`device` (-1: current)."},
    {"last_launch", (PyCFunction)py_last_launch, METH_NOARGS,
     "last_launch()\n--\n\nThe launch this thread issued last, as a dict, or None."},
    {"_no_gpu_reason", (PyCFunction)py_no_gpu_reason, METH_VARARGS,
     "_no_gpu_reason(cuda_error, driver_version)\n--\n\n"
     "The reason a no-GPU CudaError states for that cudaError_t and driver version (tests)."},
    {"_pool_usage", (PyCFunction)py_pool_usage, METH_VARARGS,
     "_pool_usage(device)\n--\n\n"
     "(used, reserved) bytes of flashattn_c's stream-ordered pool on cuda:device (tests)."},
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
        PyModule_AddIntConstant(m, "FLOAT64", FA_FLOAT64) < 0 ||
        PyModule_AddIntConstant(m, "INT32", FA_DTYPE_INT32) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_AUTO", FA_KERNEL_AUTO) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_SM80", FA_KERNEL_SM80) < 0 ||
        PyModule_AddIntConstant(m, "KERNEL_SM90", FA_KERNEL_SM90) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_AUTO", FA_DEVICE_AUTO) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CPU", FA_DEVICE_CPU) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CUDA", FA_DEVICE_CUDA) < 0 ||
        PyModule_AddIntConstant(m, "THREADS_PER_BLOCK", FA_THREADS_PER_BLOCK) < 0)
        return -1;
    const struct {
        const char *name;
        const fa_op *op;
    } ops[] = {{"forward_roles", &fa_attention_op},
               {"backward_roles", &fa_attention_backward_op},
               {"varlen_forward_roles", &fa_attention_varlen_op},
               {"varlen_backward_roles", &fa_attention_varlen_backward_op},
               {"kvcache_roles", &fa_attention_kvcache_op}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        PyObject *roles = fa_op_roles(ops[i].op);
        if (!roles || PyModule_AddObjectRef(m, ops[i].name, roles) < 0) {
            Py_XDECREF(roles);
            return -1;
        }
        Py_DECREF(roles);
    }
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
    .m_doc = "flashattn_c's C extension: attention forward and backward (uniform or packed "
             "batches) and attention over a KV cache, over the C API in flashattn.h.",
    .m_size = sizeof(fa_module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
