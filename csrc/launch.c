/*
 * launch.c -- from fa_params to a validated, recorded kernel launch.
 *
 *   fa_check_params   every rule on sizes, strides, dtype and scale (one place for all callers)
 *   fa_launch_config  family choice + tile + grid/block/smem for a device, checked against the
 *                     launch contract (block (384,1,1)) and the device's limits; pure host
 *   fa_forward        the above for the current GPU, then: kernel image present for this arch,
 *                     dynamic smem opt-in, launch, record (fa_last_launch), optional stderr log
 *
 * Families are compiled in by setup.py (FA_WITH_SM80, FA_WITH_SM90). A request the build or
 * the device cannot serve is an error naming both sides; nothing ever falls back silently.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_buffer.h"
#include "fa_internal.h"
#include "launch_contract.h"
#include "plan.h"
#include "kernels/kernels.h"
#ifdef FA_WITH_SM80
#include "kernels/sm80_tiles.h"
#endif
#ifdef FA_WITH_SM90
#include "kernels/sm90_tiles.h"
#endif

/* ------------------------------------------------------------------------------------------ */
/* Thread-local error state and launch record                                                  */

static _Thread_local char tl_error[512];
static _Thread_local cudaError_t tl_cuda_error = cudaSuccess;
static _Thread_local fa_plan tl_last_plan;
static _Thread_local int tl_has_last_plan = 0;

fa_status fa_fail(fa_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_error, sizeof tl_error, fmt, ap);
    va_end(ap);
    if (status != FA_ERR_CUDA)
        tl_cuda_error = cudaSuccess;
    return status;
}

fa_status fa_fail_cuda(cudaError_t err, const char *what, const char *file, int line)
{
    tl_cuda_error = err;
    /* Clear a non-sticky error so the next call does not trip over it. */
    (void)cudaGetLastError();
    return fa_fail(FA_ERR_CUDA, "%s failed at %s:%d: %s: %s", what, file, line,
                   cudaGetErrorName(err), cudaGetErrorString(err));
}

const char *fa_last_error(void) { return tl_error; }
cudaError_t fa_last_cuda_error(void) { return tl_cuda_error; }

int fa_last_launch(fa_launch *out)
{
    if (!tl_has_last_plan)
        return 0;
    *out = tl_last_plan.launches[tl_last_plan.main_launch];
    return 1;
}

int fa_last_plan(fa_plan *out)
{
    if (!tl_has_last_plan)
        return 0;
    *out = tl_last_plan;
    return 1;
}

const char *fa_status_name(fa_status s)
{
    switch (s) {
    case FA_OK: return "FA_OK";
    case FA_ERR_INVALID_ARGUMENT: return "FA_ERR_INVALID_ARGUMENT";
    case FA_ERR_UNSUPPORTED: return "FA_ERR_UNSUPPORTED";
    case FA_ERR_NO_KERNEL_FOR_ARCH: return "FA_ERR_NO_KERNEL_FOR_ARCH";
    case FA_ERR_LAUNCH_CONFIG: return "FA_ERR_LAUNCH_CONFIG";
    case FA_ERR_CUDA: return "FA_ERR_CUDA";
    case FA_ERR_OUT_OF_MEMORY: return "FA_ERR_OUT_OF_MEMORY";
    case FA_ERR_INTERRUPTED: return "FA_ERR_INTERRUPTED";
    }
    return "FA_ERR_UNKNOWN";
}

/* ------------------------------------------------------------------------------------------ */
/* Parameter rules                                                                             */

void fa_params_init(fa_params *p)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->window_left = -1;
    p->window_right = -1;
}

/* The first sized layout ends before the window: a caller compiled against it passes that
 * many bytes and gets every later field's default. */
#define FA_PARAMS_MIN_SIZE offsetof(fa_params, window_left)

fa_status fa_resolve_sized(void *out, const void *in, size_t in_size, size_t min_size,
                           size_t full_size, const char *what, const char *init)
{
    if (in_size < min_size || in_size > full_size)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "%s.struct_size is %zu; set it with %s (this library reads %zu to %zu "
                       "bytes)",
                       what, in_size, init, min_size, full_size);
    memcpy(out, in, in_size);
    return FA_OK;
}

fa_status fa_params_resolve(const fa_params *in, fa_params *out)
{
    if (!in)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "params must not be NULL");
    fa_params_init(out);
    const fa_status s = fa_resolve_sized(out, in, in->struct_size, FA_PARAMS_MIN_SIZE, sizeof *in,
                                         "params", "fa_params_init");
    if (s != FA_OK)
        return s;
    /* Packed rows are addressed from the entry's first row alone (common/seqlen.h). */
    if (out->cu_seqlens_q)
        out->q_batch_stride = out->o_batch_stride = 0;
    if (out->cu_seqlens_k)
        out->k_batch_stride = out->v_batch_stride = 0;
    return FA_OK;
}

static const char *dtype_name(fa_dtype d)
{
    switch (d) {
    case FA_FLOAT16: return "float16";
    case FA_BFLOAT16: return "bfloat16";
    case FA_FLOAT32: return "float32";
    case FA_FLOAT64: return "float64";
    }
    return "unknown";
}

/* Largest sequence length the GPU kernels take: 2^31 minus room for rounding up to a block. */
#define FA_MAX_SEQLEN (INT32_MAX - 65536)

const char *fa_dtype_short(fa_dtype d) { return d == FA_BFLOAT16 ? "bf16" : "fp16"; }

/* 16-byte vector loads and TMA boxes need aligned bases and strides of whole 16-byte units.
 * The stride of a dimension of extent 1 is never used, so it is not checked. */
static fa_status check_gpu_layout(const char *name, const void *ptr, int batch, int64_t sb,
                                  int rows, int64_t sr, int heads, int64_t sh)
{
    const int64_t unit = 8; /* elements of a 16-bit dtype in 16 bytes */
    if (((uintptr_t)ptr) % 16 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "%s must be 16-byte aligned for the GPU kernels, got address %p", name, ptr);
    if ((batch > 1 && sb % unit) || (rows > 1 && sr % unit) || (heads > 1 && sh % unit))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "%s strides must be multiples of 8 elements (16 bytes) for the GPU kernels, "
                       "got (batch %lld, seq %lld, head %lld)",
                       name, (long long)sb, (long long)sr, (long long)sh);
    return FA_OK;
}

/* The sequence layout's sizes and combinations (common/seqlen.h); values are checked by
 * check_seq_values where they are host memory. */
static fa_status check_seq_layout(const fa_params *p)
{
    const int packed_q = p->cu_seqlens_q != NULL, packed_k = p->cu_seqlens_k != NULL;
    if ((packed_q && p->total_q < 0) || (packed_k && p->total_k < 0))
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "total_q (%d) and total_k (%d) must be >= 0",
                       p->total_q, p->total_k);
    if (p->block_table && packed_k)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "block_table (paged k/v) cannot be combined with cu_seqlens_k (packed k/v)");
    if (p->kv_batch_idx && (packed_k || p->block_table))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "kv_batch_idx selects dense cache entries; it cannot be combined with %s",
                       packed_k ? "cu_seqlens_k" : "block_table");
    if ((p->block_table || p->kv_batch_idx) && p->kv_batches <= 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "kv_batches (k/v's first extent: %s) must be > 0, got %d",
                       p->block_table ? "pages" : "cache entries", p->kv_batches);
    if (p->block_table) {
        if (p->page_size <= 0)
            return fa_fail(FA_ERR_INVALID_ARGUMENT, "page_size must be > 0, got %d", p->page_size);
        const int64_t pages = ((int64_t)p->seqlen_k + p->page_size - 1) / p->page_size;
        if (p->batch > 1 && p->block_table_stride < pages)
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "block_table_stride (%lld) is less than the %lld pages of seqlen_k %d",
                           (long long)p->block_table_stride, (long long)pages, p->seqlen_k);
    }
    return FA_OK;
}

/* Host arrays only: offsets ascend within their totals, lengths and indices are in range. */
static fa_status check_seq_values(const fa_params *p)
{
    const int32_t *cu[2] = {p->cu_seqlens_q, p->cu_seqlens_k};
    const int total[2] = {p->total_q, p->total_k}, longest[2] = {p->seqlen_q, p->seqlen_k};
    for (int t = 0; t < 2; t++) {
        if (!cu[t])
            continue;
        const char *name = t ? "cu_seqlens_k" : "cu_seqlens_q";
        if (cu[t][0] != 0 || cu[t][p->batch] != total[t])
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "%s must start at 0 and end at %s (%d), got %d and %d", name,
                           t ? "total_k" : "total_q", total[t], cu[t][0], cu[t][p->batch]);
        for (int b = 0; b < p->batch; b++)
            if (cu[t][b + 1] < cu[t][b] || cu[t][b + 1] - cu[t][b] > longest[t])
                return fa_fail(FA_ERR_INVALID_ARGUMENT,
                               "%s[%d..%d] = (%d, %d): lengths must be >= 0 and at most %s (%d)",
                               name, b, b + 1, cu[t][b], cu[t][b + 1],
                               t ? "max_seqlen_k" : "max_seqlen_q", longest[t]);
    }
    for (int b = 0; b < p->batch; b++) {
        if (p->seqused_k && (p->seqused_k[b] < 0 || p->seqused_k[b] > p->seqlen_k))
            return fa_fail(FA_ERR_INVALID_ARGUMENT, "seqused_k[%d] = %d is outside [0, %d]", b,
                           p->seqused_k[b], p->seqlen_k);
        if (p->kv_batch_idx && (p->kv_batch_idx[b] < 0 || p->kv_batch_idx[b] >= p->kv_batches))
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "cache_batch_idx[%d] = %d (fa_params.kv_batch_idx) is outside the "
                           "%d cache entries", b,
                           p->kv_batch_idx[b], p->kv_batches);
        if (p->block_table) {
            const fa_seq_layout layout = fa_seq_layout_of(p);
            const int used = fa_seqlen_at(&layout, b).len_k;
            for (int j = 0; j < (used + p->page_size - 1) / p->page_size; j++) {
                const int32_t page = p->block_table[(int64_t)b * p->block_table_stride + j];
                if (page < 0 || page >= p->kv_batches)
                    return fa_fail(FA_ERR_INVALID_ARGUMENT,
                                   "block_table[%d, %d] = %d is outside the %d pages", b, j, page,
                                   p->kv_batches);
            }
        }
    }
    return FA_OK;
}

/* Sizes, head_dim, the head ratio and the scalar arguments. */
static fa_status check_scalars(const fa_params *p)
{
    if (p->batch < 0 || p->seqlen_q < 0 || p->seqlen_k < 0 || p->heads_q < 0 || p->heads_kv < 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "sizes must be >= 0, got batch %d, seqlen_q %d, seqlen_k %d, heads_q %d, "
                       "heads_kv %d", p->batch, p->seqlen_q, p->seqlen_k, p->heads_q, p->heads_kv);
    if (fa_head_dim_padded(p->head_dim) == 0)
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "head_dim must be a multiple of 8 in [8, 256], got %d", p->head_dim);
    if (p->heads_q > 0 && (p->heads_kv == 0 || p->heads_q % p->heads_kv != 0))
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "heads_q (%d) must be a multiple of heads_kv (%d)",
                       p->heads_q, p->heads_kv);
    if (!isfinite(p->softmax_scale) || p->softmax_scale < 0.0f)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "softmax_scale must be finite and >= 0, got %g",
                       (double)p->softmax_scale);
    if (p->window_left < -1 || p->window_right < -1)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "window_size must be a pair of ints >= -1 (-1: unbounded), got (%d, %d)",
                       p->window_left, p->window_right);
    if (!isfinite(p->softcap) || p->softcap < 0.0f)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "softcap must be finite and >= 0 (0: off), got %g",
                       (double)p->softcap);
    return FA_OK;
}

/* What the GPU kernels need of the arrays: 16-byte bases and strides (check_gpu_layout) over
 * the extents the strides step over (packed rows are one batch of total rows; pages and cache
 * entries are kv_batches entries of page_size or seqlen_k rows), 4-byte int32 and float arrays. */
static fa_status check_gpu_arrays(const fa_params *p, int has_keys)
{
    fa_status s;
    const int q_batches = p->cu_seqlens_q ? 1 : p->batch;
    const int q_rows = p->cu_seqlens_q ? p->total_q : p->seqlen_q;
    const int kv_batches = p->cu_seqlens_k ? 1
                           : (p->block_table || p->kv_batch_idx) ? p->kv_batches : p->batch;
    const int kv_rows = p->cu_seqlens_k ? p->total_k : p->block_table ? p->page_size : p->seqlen_k;
    if ((s = check_gpu_layout("q", p->q, q_batches, p->q_batch_stride, q_rows, p->q_row_stride,
                              p->heads_q, p->q_head_stride)) != FA_OK ||
        (has_keys && (s = check_gpu_layout("k", p->k, kv_batches, p->k_batch_stride, kv_rows,
                                           p->k_row_stride, p->heads_kv, p->k_head_stride)) != FA_OK) ||
        (has_keys && (s = check_gpu_layout("v", p->v, kv_batches, p->v_batch_stride, kv_rows,
                                           p->v_row_stride, p->heads_kv, p->v_head_stride)) != FA_OK) ||
        (s = check_gpu_layout("out", p->out, q_batches, p->o_batch_stride, q_rows, p->o_row_stride,
                              p->heads_q, p->o_head_stride)) != FA_OK)
        return s;
    const int32_t *arrays[] = {p->cu_seqlens_q, p->cu_seqlens_k, p->seqused_k, p->kv_batch_idx,
                               p->block_table};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        if (((uintptr_t)arrays[i]) % 4 != 0)
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "cu_seqlens, seqused_k, kv_batch_idx and block_table must be 4-byte "
                           "aligned int32 arrays");
    if (p->lse && ((uintptr_t)p->lse) % 4 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "lse must be 4-byte aligned");
    if (p->sinks && ((uintptr_t)p->sinks) % 4 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "sinks must be 4-byte aligned");
    return FA_OK;
}

fa_status fa_check_params(const fa_params *caller, int gpu)
{
    fa_params resolved;
    fa_status s = fa_params_resolve(caller, &resolved);
    if (s != FA_OK)
        return s;
    const fa_params *p = &resolved;
    if ((s = check_scalars(p)) != FA_OK || (s = check_seq_layout(p)) != FA_OK)
        return s;
    if (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16 && p->dtype != FA_FLOAT32 &&
        p->dtype != FA_FLOAT64)
        return fa_fail(FA_ERR_UNSUPPORTED, "unsupported dtype code %d", (int)p->dtype);
    /* Kernels round row counts up to whole blocks in 32-bit ints: keep headroom for that. */
    if (gpu && (p->seqlen_q > FA_MAX_SEQLEN || p->seqlen_k > FA_MAX_SEQLEN))
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "seqlen_q (%d) and seqlen_k (%d) must be at most %d for the GPU kernels",
                       p->seqlen_q, p->seqlen_k, FA_MAX_SEQLEN);
    if (gpu && (p->dtype == FA_FLOAT32 || p->dtype == FA_FLOAT64))
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "%s runs only on the host reference path; the GPU kernels take "
                       "float16 or bfloat16", p->dtype == FA_FLOAT64 ? "float64" : "float32");
    if (fa_params_empty(p))
        return FA_OK;
    /* An empty k/v (seqlen_k == 0) may come with NULL data: it is never read. */
    const int has_keys = p->seqlen_k > 0;
    if (!p->q || !p->out || (has_keys && (!p->k || !p->v)))
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "q, k, v and out pointers must not be NULL");
    return gpu ? check_gpu_arrays(p, has_keys) : check_seq_values(p);
}

/* ------------------------------------------------------------------------------------------ */
/* Devices                                                                                     */

/* Nominal devices: what launch_config(arch=...) computes for when no GPU is asked.
 * smem_optin = cudaDevAttrMaxSharedMemoryPerBlockOptin of the named part. */
static const struct {
    int major, minor, sm_count, smem_optin;
    const char *example;
} nominal_devices[] = {
    {8, 0, 108, 166912, "A100"},
    {8, 6, 84, 101376, "RTX 3090 / A40"},
    {8, 9, 58, 101376, "L4"},
    {9, 0, 132, 232448, "H100 SXM / H200"},
    {10, 0, 148, 232448, "B200"},
    {12, 0, 170, 101376, "RTX 5090"},
};

fa_status fa_device_nominal(int major, int minor, fa_device *out)
{
    for (size_t i = 0; i < sizeof nominal_devices / sizeof nominal_devices[0]; i++) {
        if (nominal_devices[i].major == major && nominal_devices[i].minor == minor) {
            out->major = major;
            out->minor = minor;
            out->sm_count = nominal_devices[i].sm_count;
            out->smem_optin = nominal_devices[i].smem_optin;
            out->max_grid[0] = 2147483647;
            out->max_grid[1] = 65535;
            out->max_grid[2] = 65535;
            return FA_OK;
        }
    }
    return fa_fail(FA_ERR_INVALID_ARGUMENT,
                   "no nominal device for sm_%d%d; known: sm_80 (A100), sm_86, sm_89 (L4), "
                   "sm_90 (H100/H200), sm_100 (B200), sm_120", major, minor);
}

#define FA_MAX_DEVICES 64
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static fa_device device_cache[FA_MAX_DEVICES];
static int device_cached[FA_MAX_DEVICES];

fa_status fa_device_query(int device, fa_device *out)
{
    if (device < 0 || device >= FA_MAX_DEVICES)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "device ordinal %d out of range", device);
    pthread_mutex_lock(&cache_lock);
    int cached = device_cached[device];
    if (cached)
        *out = device_cache[device];
    pthread_mutex_unlock(&cache_lock);
    if (cached)
        return FA_OK;

    fa_device d;
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                       device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.max_grid[0], cudaDevAttrMaxGridDimX, device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.max_grid[1], cudaDevAttrMaxGridDimY, device));
    FA_CUDA_TRY(cudaDeviceGetAttribute(&d.max_grid[2], cudaDevAttrMaxGridDimZ, device));

    pthread_mutex_lock(&cache_lock);
    device_cache[device] = d;
    device_cached[device] = 1;
    pthread_mutex_unlock(&cache_lock);
    *out = d;
    return FA_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Families                                                                                    */

const char *fa_family_name(fa_kernel_family family)
{
    switch (family) {
    case FA_KERNEL_AUTO: return "auto";
    case FA_KERNEL_SM80: return "sm80";
    case FA_KERNEL_SM90: return "sm90";
    }
    return "unknown";
}

/* What each kernel family built into this library provides (kernels/kernels.h). */
typedef struct {
    fa_kernel_family family;
    int (*tile)(const fa_params *p, fa_tile *t);
    const void *(*kernel_fn)(const fa_params *p, const fa_tile *t);
    cudaError_t (*launch)(const fa_params *p, const fa_launch *cfg, cudaStream_t stream);
    /* The same kernel reading the KV-cache op's new keys and copying them into the cache;
       NULL: the family's forward cannot (the op then plans the append kernel before it). */
    cudaError_t (*launch_appending)(const fa_params *p, const fa_kvcache_params *c,
                                    const fa_launch *cfg, cudaStream_t stream);
    int (*archs)(int *archs, int max);
} family_ops;

static const family_ops built_families[] = {
#ifdef FA_WITH_SM80
    {FA_KERNEL_SM80, fa_sm80_tile, fa_sm80_kernel_fn, fa_sm80_launch, NULL, fa_sm80_archs},
#endif
#ifdef FA_WITH_SM90
    {FA_KERNEL_SM90, fa_sm90_tile, fa_sm90_kernel_fn, fa_sm90_launch, fa_sm90_launch_appending,
     fa_sm90_archs},
#endif
    {FA_KERNEL_AUTO, NULL, NULL, NULL, NULL, NULL}, /* end; also keeps the array non-empty */
};

/* The built family's operations, or NULL when `family` is not in this build. */
static const family_ops *find_family(fa_kernel_family family)
{
    for (const family_ops *f = built_families; f->tile; f++)
        if (f->family == family)
            return f;
    return NULL;
}

int fa_family_built(fa_kernel_family family) { return find_family(family) != NULL; }

int fa_family_appends(fa_kernel_family family)
{
    const family_ops *f = find_family(family);
    return f && f->launch_appending;
}

int fa_family_archs(fa_kernel_family family, int *archs, int max)
{
    const family_ops *f = find_family(family);
    return f ? f->archs(archs, max) : 0;
}

/* "sm_80, sm_90" for error messages. */
static void format_archs(fa_kernel_family family, char *buf, size_t len)
{
    int archs[16];
    int n = fa_family_archs(family, archs, 16);
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%ssm_%d%s", i ? ", " : "", archs[i],
                                 (family == FA_KERNEL_SM90 && archs[i] == 90) ? "a" : "");
    if (n == 0)
        snprintf(buf, len, "none");
}

/* Which family serves `requested` on a device of compute capability major.minor. sm90 kernels
 * are sm_90a code: they run on sm_90 only. sm80 kernels run on sm_80 and newer (SASS for the
 * built targets, PTX for later ones). */
fa_status fa_choose_family(fa_kernel_family requested, int major, int minor,
                               fa_kernel_family *chosen)
{
    if (major < 8)
        return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                       "GPU sm_%d%d is not supported: flashattn_c needs sm_80 (Ampere) or newer",
                       major, minor);
    if (requested == FA_KERNEL_AUTO) {
        if (major == 9 && minor == 0 && fa_family_built(FA_KERNEL_SM90))
            *chosen = FA_KERNEL_SM90;
        else if (fa_family_built(FA_KERNEL_SM80))
            *chosen = FA_KERNEL_SM80;
        else
            return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                           "this build has no kernel family for sm_%d%d (families built: %s)",
                           major, minor, fa_family_built(FA_KERNEL_SM90) ? "sm90 only" : "none");
        return FA_OK;
    }
    if (requested != FA_KERNEL_SM80 && requested != FA_KERNEL_SM90)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "unknown kernel family code %d", (int)requested);
    if (!fa_family_built(requested))
        return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                       "kernel family %s is not in this build (set FLASHATTN_C_ARCHS when building)",
                       fa_family_name(requested));
    if (requested == FA_KERNEL_SM90 && !(major == 9 && minor == 0)) {
        char built[64];
        format_archs(FA_KERNEL_SM90, built, sizeof built);
        return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                       "kernel family sm90 is built for %s only; this GPU is sm_%d%d", built,
                       major, minor);
    }
    *chosen = requested;
    return FA_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Launch configuration                                                                        */

/* The contract, checked on every config before it can be launched. */
static fa_status validate_launch(const fa_launch *cfg, const fa_device *dev)
{
    if (cfg->block[0] != FA_THREADS_PER_BLOCK || cfg->block[1] != 1 || cfg->block[2] != 1)
        return fa_fail(FA_ERR_LAUNCH_CONFIG, "%s: block must be (%d,1,1), got (%u,%u,%u)",
                       cfg->kernel, FA_THREADS_PER_BLOCK, cfg->block[0], cfg->block[1],
                       cfg->block[2]);
    if (cfg->smem_bytes > (size_t)dev->smem_optin)
        return fa_fail(FA_ERR_LAUNCH_CONFIG,
                       "%s needs %zu bytes of shared memory; sm_%d%d allows %d per block",
                       cfg->kernel, cfg->smem_bytes, dev->major, dev->minor, dev->smem_optin);
    for (int i = 0; i < 3; i++)
        if (cfg->grid[i] < 1 || cfg->grid[i] > (unsigned)dev->max_grid[i])
            return fa_fail(FA_ERR_LAUNCH_CONFIG,
                           "%s: grid (%u,%u,%u) exceeds the device limit (%d,%d,%d) in dimension "
                           "%c (batch is grid.z and heads_q grid.y for this family)",
                           cfg->kernel, cfg->grid[0], cfg->grid[1], cfg->grid[2],
                           dev->max_grid[0], dev->max_grid[1], dev->max_grid[2], "xyz"[i]);
    return FA_OK;
}

fa_status fa_plan_validate(const fa_plan *plan, const fa_device *dev)
{
    for (int i = 0; i < plan->num_launches; i++) {
        fa_status s = validate_launch(&plan->launches[i], dev);
        if (s != FA_OK)
            return s;
    }
    return FA_OK;
}

const char *fa_mask_suffix(const fa_params *p)
{
    static const char *const suffix[] = {"", "_causal", "_window"};
    return suffix[fa_params_mask_kind(p)];
}

void fa_launch_start(fa_launch *cfg, const char *kernel, fa_kernel_family family,
                     const fa_device *dev)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->kernel, sizeof cfg->kernel, "%s", kernel);
    cfg->family = family;
    cfg->block[0] = FA_THREADS_PER_BLOCK;
    cfg->block[1] = 1;
    cfg->block[2] = 1;
    cfg->regs = -1;
    cfg->arch_major = dev->major;
    cfg->arch_minor = dev->minor;
    cfg->device = -1;
}

void fa_launch_take_tile(fa_launch *cfg, const fa_tile *t)
{
    cfg->smem_bytes = t->smem_bytes;
    cfg->block_m = t->block_m;
    cfg->block_n = t->block_n;
    cfg->stages = t->stages;
    cfg->head_dim_padded = t->head_dim_padded;
}

fa_status fa_launch_grid(fa_launch *cfg, int64_t x, int64_t y, int64_t z, const char *dims,
                         const fa_device *dev)
{
    if (x > dev->max_grid[0] || y > dev->max_grid[1] || z > dev->max_grid[2])
        return fa_fail(FA_ERR_LAUNCH_CONFIG,
                       "%s: grid (%lld,%lld,%lld) = %s exceeds the device limit (%d,%d,%d)",
                       cfg->kernel, (long long)x, (long long)y, (long long)z, dims,
                       dev->max_grid[0], dev->max_grid[1], dev->max_grid[2]);
    cfg->grid[0] = (unsigned)x;
    cfg->grid[1] = (unsigned)y;
    cfg->grid[2] = (unsigned)z;
    return FA_OK;
}

/* The forward's one launch: the family's tile for p, its grid for dev. p is resolved. */
fa_status fa_forward_family(const fa_params *p, const fa_device *dev, fa_kernel_family *family)
{
    fa_status s = fa_choose_family(p->family, dev->major, dev->minor, family);
    if (s != FA_OK || *family != FA_KERNEL_SM90)
        return s;
#ifdef FA_WITH_SM90
    /* auto takes the sm80 family for the layouts the sm90 kernel lacks; the kernel name in
     * the plan and the launch log says which ran. */
    const char *why = fa_sm90_seq_unsupported(p);
    if (!why)
        return FA_OK;
    if (p->family == FA_KERNEL_AUTO && fa_family_built(FA_KERNEL_SM80)) {
        *family = FA_KERNEL_SM80;
        return FA_OK;
    }
    return fa_fail(FA_ERR_UNSUPPORTED, "kernel family sm90: %s", why);
#else
    return FA_OK;
#endif
}

fa_status fa_plan_forward_launch(const fa_params *p, const fa_device *dev,
                                 fa_kernel_family family, fa_launch *cfg)
{
    fa_tile t;
    memset(&t, 0, sizeof t);
    if (find_family(family)->tile(p, &t) != 0)
        return fa_fail(FA_ERR_UNSUPPORTED, "kernel family %s has no tile for head_dim %d",
                       fa_family_name(family), p->head_dim);

    /* fwd_<family>_hd<D>_<dtype>[_causal|_window][_softcap][_sinks]: the instance and what it adds. */
    char name[FA_KERNEL_NAME_MAX];
    snprintf(name, sizeof name, "fwd_%s_hd%d_%s%s%s%s", fa_family_name(family),
             t.head_dim_padded, fa_dtype_short(p->dtype), fa_mask_suffix(p),
             p->softcap > 0.0f ? "_softcap" : "", p->sinks ? "_sinks" : "");
    fa_launch_start(cfg, name, family, dev);
    fa_launch_take_tile(cfg, &t);

    /* Empty problems launch nothing; keep a well-formed config for introspection. */
    int64_t m_blocks = p->seqlen_q > 0 ? ((int64_t)p->seqlen_q + t.block_m - 1) / t.block_m : 1;
    int64_t heads = p->heads_q > 0 ? p->heads_q : 1;
    int64_t batch = p->batch > 0 ? p->batch : 1;
    if (t.persistent) {
        int64_t tiles = m_blocks * heads * batch;
        /* The persistent scheduler numbers tiles with 32-bit ints and steps by the grid size. */
        const int64_t tile_limit = (int64_t)INT32_MAX - dev->sm_count;
        if (tiles > tile_limit)
            return fa_fail(FA_ERR_LAUNCH_CONFIG,
                           "%s: %lld tiles (query blocks x heads_q x batch) exceed the scheduler's "
                           "limit of %lld", cfg->kernel, (long long)tiles, (long long)tile_limit);
        cfg->grid[0] = (unsigned)(tiles < dev->sm_count ? tiles : dev->sm_count);
        cfg->grid[1] = 1;
        cfg->grid[2] = 1;
        return FA_OK;
    }
    return fa_launch_grid(cfg, m_blocks, heads, batch, "(query blocks, heads_q, batch)", dev);
}

/* Plans from resolved, checked params: every launch is checked against the contract here, so
 * a plan that exists can be launched as it stands. */
static fa_status plan_forward(const fa_params *p, const fa_device *dev, fa_plan *plan)
{
    fa_status s;
    fa_kernel_family family = FA_KERNEL_AUTO;
    if ((s = fa_forward_family(p, dev, &family)) != FA_OK)
        return s;
    memset(plan, 0, sizeof *plan);
    if ((s = fa_plan_forward_launch(p, dev, family, &plan->launches[0])) != FA_OK)
        return s;
    plan->num_launches = 1;
    plan->main_launch = 0;
    plan->workspace_bytes = 0;
    return fa_plan_validate(plan, dev);
}

fa_status fa_forward_plan(const fa_params *caller, const fa_device *dev, fa_plan *plan)
{
    fa_params p;
    fa_status s = fa_params_resolve(caller, &p);
    if (s != FA_OK || (s = fa_check_params(&p, 1)) != FA_OK)
        return s;
    return plan_forward(&p, dev, plan);
}

fa_status fa_launch_config(const fa_params *p, const fa_device *dev, fa_launch *cfg)
{
    fa_plan plan;
    fa_status s = fa_forward_plan(p, dev, &plan);
    if (s == FA_OK)
        *cfg = plan.launches[plan.main_launch];
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* Per-kernel attributes: queried once per (kernel, device)                                    */

typedef struct {
    const void *fn;
    int device;
    int regs;
    int max_threads;
    size_t static_smem;
    size_t smem_opted_in;
} kernel_attrs;

#define FA_MAX_KERNEL_ATTRS 256
static kernel_attrs attrs_cache[FA_MAX_KERNEL_ATTRS];
static int attrs_count;

/* Looks up or queries fn's attributes and raises its dynamic smem limit if needed. A missing
 * kernel image for this device is reported with the built and the device's archs. */
fa_status fa_prepare_kernel(const void *fn, int device, const fa_device *dev, fa_launch *cfg,
                            cudaStream_t stream)
{
    pthread_mutex_lock(&cache_lock);
    kernel_attrs *a = NULL;
    for (int i = 0; i < attrs_count; i++)
        if (attrs_cache[i].fn == fn && attrs_cache[i].device == device)
            a = &attrs_cache[i];
    kernel_attrs local = {fn, device, 0, 0, 0, 0};
    if (a)
        local = *a;
    pthread_mutex_unlock(&cache_lock);

    if (!a) {
        struct cudaFuncAttributes attr;
        cudaError_t err = cudaFuncGetAttributes(&attr, fn);
        if (err == cudaErrorInvalidDeviceFunction || err == cudaErrorNoKernelImageForDevice) {
            char built[64];
            format_archs(cfg->family, built, sizeof built);
            (void)cudaGetLastError();
            return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                           "%s has no kernel image for this GPU (sm_%d%d); family %s is built for "
                           "%s (%s)",
                           cfg->kernel, dev->major, dev->minor, fa_family_name(cfg->family), built,
                           cudaGetErrorName(err));
        }
        if (err != cudaSuccess)
            return fa_fail_cuda(err, "cudaFuncGetAttributes", __FILE__, __LINE__);
        local.regs = attr.numRegs;
        local.max_threads = attr.maxThreadsPerBlock;
        local.static_smem = attr.sharedSizeBytes;
    }
    if (local.max_threads < FA_THREADS_PER_BLOCK)
        return fa_fail(FA_ERR_LAUNCH_CONFIG,
                       "%s can run at most %d threads per block (%d registers per thread); the "
                       "launch contract needs %d",
                       cfg->kernel, local.max_threads, local.regs, FA_THREADS_PER_BLOCK);
    if (local.static_smem + cfg->smem_bytes > (size_t)dev->smem_optin)
        return fa_fail(FA_ERR_LAUNCH_CONFIG,
                       "%s needs %zu static + %zu dynamic bytes of shared memory; the GPU allows %d",
                       cfg->kernel, local.static_smem, cfg->smem_bytes, dev->smem_optin);
    if (cfg->smem_bytes > local.smem_opted_in) {
        FA_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)cfg->smem_bytes));
        local.smem_opted_in = cfg->smem_bytes;
    }

    pthread_mutex_lock(&cache_lock);
    if (!a && attrs_count < FA_MAX_KERNEL_ATTRS)
        attrs_cache[attrs_count++] = local;
    else if (a)
        *a = local;
    pthread_mutex_unlock(&cache_lock);
    cfg->regs = local.regs;
    cfg->device = device;
    cfg->stream = (uintptr_t)stream;
    return FA_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Forward                                                                                     */

static int log_launches(void)
{
    const char *v = getenv("FLASHATTN_C_LOG_LAUNCH");
    return v && v[0] && strcmp(v, "0") != 0;
}

static void log_launch(const fa_launch *cfg, const fa_params *p)
{
    /* The tile (query rows x keys per block), where the kernel has one: instances of one name
     * differ in it (head_dim 128's key blocks by seqlen_k, for one). */
    char tile[32] = "";
    if (cfg->block_m > 0)
        snprintf(tile, sizeof tile, " tile=%dx%d", cfg->block_m, cfg->block_n);
    fprintf(stderr,
            "[flashattn_c] %s grid=(%u,%u,%u) block=(%u,%u,%u)%s smem=%zu regs=%d sm_%d%d "
            "stream=0x%llx B=%d Sq=%d Sk=%d Hq=%d Hkv=%d D=%d %s window=(%d,%d) softcap=%g sinks=%d "
            "layout=%s\n",
            cfg->kernel, cfg->grid[0], cfg->grid[1], cfg->grid[2], cfg->block[0], cfg->block[1],
            cfg->block[2], tile, cfg->smem_bytes, cfg->regs, cfg->arch_major, cfg->arch_minor,
            (unsigned long long)cfg->stream, p->batch, p->seqlen_q, p->seqlen_k, p->heads_q,
            p->heads_kv, p->head_dim, dtype_name(p->dtype), p->window_left,
            p->causal ? 0 : p->window_right, (double)p->softcap, p->sinks != NULL,
            fa_layout_name(p));
}

const char *fa_layout_name(const fa_params *p)
{
    if (p->block_table)
        return p->cu_seqlens_q ? "packed_q+paged" : "paged";
    if (p->cu_seqlens_q || p->cu_seqlens_k)
        return "packed";
    if (p->kv_batch_idx || p->seqused_k)
        return "cache";
    return "dense";
}

void fa_plan_record(const fa_plan *plan, const fa_params *p)
{
    tl_last_plan = *plan;
    tl_has_last_plan = 1;
    if (log_launches())
        for (int i = 0; i < plan->num_launches; i++)
            log_launch(&plan->launches[i], p);
}

fa_status fa_workspace_acquire(const fa_params *p, size_t need, const char *planner,
                               cudaStream_t stream, fa_workspace *w)
{
    memset(w, 0, sizeof *w);
    if (p->workspace) {
        if (p->workspace_bytes < need)
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "workspace holds %zu bytes; this plan needs %zu (%s)",
                           p->workspace_bytes, need, planner);
        if (((uintptr_t)p->workspace) % 256 != 0)
            return fa_fail(FA_ERR_INVALID_ARGUMENT, "workspace must be 256-byte aligned");
        w->base = p->workspace;
        return FA_OK;
    }
    /* Stream-ordered: the allocation and its release sit on `stream` between the launches,
     * so no host synchronisation is needed and a CUDA graph can capture them. */
    w->exact = fa_exact_alloc_requested();
    w->owned = 1;
    FA_CUDA_TRY(fa_device_buffer_alloc(&w->base, need, stream, w->exact));
    return FA_OK;
}

fa_status fa_workspace_release(fa_workspace *w, cudaStream_t stream, fa_status status)
{
    if (!w->owned)
        return status;
    cudaError_t err = fa_device_buffer_free(w->base, stream, w->exact);
    w->owned = 0;
    if (status == FA_OK && err != cudaSuccess)
        return fa_fail_cuda(err, "fa_device_buffer_free", __FILE__, __LINE__);
    return status;
}

fa_status fa_current_device(int *device, fa_device *dev)
{
    FA_CUDA_TRY(cudaGetDevice(device));
    return fa_device_query(*device, dev);
}

fa_status fa_forward(const fa_params *caller, cudaStream_t stream)
{
    fa_params p;
    fa_status s = fa_params_resolve(caller, &p);
    if (s != FA_OK || (s = fa_check_params(&p, 1)) != FA_OK)
        return s;
    if (fa_params_empty(&p))
        return FA_OK;

    int device;
    fa_device dev;
    fa_plan plan;
    if ((s = fa_current_device(&device, &dev)) != FA_OK || (s = plan_forward(&p, &dev, &plan)) != FA_OK)
        return s;

    /* The forward is one launch with no workspace. */
    if ((s = fa_run_forward_launch(&p, NULL, &plan.launches[0], device, &dev, stream)) != FA_OK)
        return s;
    fa_plan_record(&plan, &p);
    return FA_OK;
}

fa_status fa_run_forward_launch(const fa_params *p, const fa_kvcache_params *append, fa_launch *cfg,
                                int device, const fa_device *dev, cudaStream_t stream)
{
    const family_ops *ops = find_family(cfg->family); /* the planner chose a built one */
    fa_tile t;
    memset(&t, 0, sizeof t);
    ops->tile(p, &t);
    const void *fn = ops->kernel_fn(p, &t);
    if (!fn)
        return fa_fail(FA_ERR_UNSUPPORTED, "%s is not instantiated in this build", cfg->kernel);
    fa_status s = fa_prepare_kernel(fn, device, dev, cfg, stream);
    if (s != FA_OK)
        return s;
    if (append && !ops->launch_appending)
        return fa_fail(FA_ERR_UNSUPPORTED, "%s: kernel family %s does not append keys",
                       cfg->kernel, fa_family_name(cfg->family));
    cudaError_t err = append ? ops->launch_appending(p, append, cfg, stream) : ops->launch(p, cfg, stream);
    if (err != cudaSuccess)
        return fa_fail_cuda(err, cfg->kernel, __FILE__, __LINE__);
    return FA_OK;
}
