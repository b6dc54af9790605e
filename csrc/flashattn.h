/*
 * flashattn.h -- the plain C API of flashattn_c: exact softmax attention, forward and backward.
 *
 *   out[b, i, h, :] = sum_j P[b, h, i, j] * v[b, j, h / G, :]
 *   P[b, h, i, :]   = softmax_j(softmax_scale * q[b, i, h, :] . k[b, j, h / G, :])   (masked j excluded)
 *   lse[b, h, i]    = log sum_j exp(softmax_scale * q . k)                            (natural log)
 *
 *   q, out : (batch, seqlen_q, heads_q,  head_dim)    any strides, head_dim stride 1
 *   k, v   : (batch, seqlen_k, heads_kv, head_dim)    any strides, head_dim stride 1
 *   lse    : float32 (batch, heads_q, seqlen_q), contiguous, optional (NULL = not written)
 *   G = heads_q / heads_kv: consecutive q heads share one kv head (GQA / MQA).
 *
 * Masks (common/mask.h holds the rule): rows and keys are aligned bottom-right, as in
 * FlashAttention >= 2.1. A window (window_left, window_right) shows key j to query i when
 *     i + seqlen_k - seqlen_q - window_left <= j <= i + seqlen_k - seqlen_q + window_right,
 * -1 meaning unbounded on that side; causal sets window_right = 0. softcap c > 0 replaces each
 * scaled score x by c * tanh(x / c) before the mask. sinks (float32, one logit per q head)
 * add exp(sinks[h]) to every row's denominator, and to lse, with no value row. A row that sees
 * no key gets out = 0 and lse = -inf (lse = sinks[h] with sinks).
 *
 * Backward (fa_backward), from the forward's out and lse and the gradient dout of out, with
 * t the score hook's value of a visible pair (score.h) and P = exp(logit - lse):
 *
 *   D[i]    = sum_d dout[i, d] * out[i, d]
 *   dS[i,j] = P[i, j] * (dout[i] . v[j] - D[i]) * (softcap ? 1 - t^2 : 1)
 *   dq[i]   = softmax_scale * sum_j dS[i, j] k[j],    dk[j] = softmax_scale * sum_i dS[i, j] q[i]
 *   dv[j]   = sum_i P[i, j] dout[i],                  dsinks[h] = -sum_{b,i} P_sink[b,h,i] D[b,h,i]
 *
 * with dk and dv summed over the q heads of a kv head, and P_sink = exp(sinks[h] - lse).
 *
 * Every op is planned as a list of launches plus device workspace bytes (fa_forward_plan):
 * each launch is checked against the launch contract (block (384,1,1), shared memory, arch,
 * grid) and recorded (fa_last_plan, fa_last_launch).
 *
 * Usable from C with no Python: include this header, link the library's objects and the
 * CUDA runtime (tools/fa_selftest.c is such a program). Nothing here exits or prints,
 * except the opt-in launch log (FLASHATTN_C_LOG_LAUNCH=1, one stderr line per launch).
 */
#ifndef FLASHATTN_H
#define FLASHATTN_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of q, k, v, out (and the gradients). The GPU kernels take float16 and bfloat16;
 * float32 and float64 run only on the host references (fa_forward_cpu, fa_backward_cpu), float64
 * computing in float64 throughout so that finite differences of out can check gradients (the
 * softmax_scale and softcap fields are float32, so a value float32 does not hold exactly is
 * rounded before it is used). lse and sinks are float32 whatever the dtype. */
typedef enum { FA_FLOAT16 = 0, FA_BFLOAT16 = 1, FA_FLOAT32 = 2, FA_FLOAT64 = 3 } fa_dtype;

/* Which kernel family runs a GPU call. AUTO picks the fastest family built for the device. */
typedef enum { FA_KERNEL_AUTO = 0, FA_KERNEL_SM80 = 1, FA_KERNEL_SM90 = 2 } fa_kernel_family;

typedef enum {
    FA_OK = 0,
    FA_ERR_INVALID_ARGUMENT,   /* sizes, strides, scale or pointers are wrong */
    FA_ERR_UNSUPPORTED,        /* valid attention, but not something this build computes */
    FA_ERR_NO_KERNEL_FOR_ARCH, /* the device's architecture has no kernel in this build */
    FA_ERR_LAUNCH_CONFIG,      /* the computed launch breaks the contract or a device limit */
    FA_ERR_CUDA,               /* a CUDA runtime call failed: fa_last_cuda_error() has its code */
    FA_ERR_OUT_OF_MEMORY,      /* a host allocation failed */
    FA_ERR_INTERRUPTED,        /* the caller's interrupt callback asked the host path to stop */
} fa_status;

/* Params grow at their end. struct_size is sizeof(fa_params) as the caller compiled it
 * (fa_params_init sets it, with every default): the library reads only that many bytes and
 * gives any later field its default, so a caller built against an older header keeps working. */
typedef struct {
    size_t struct_size;
    const void *q, *k, *v;
    void *out;
    float *lse;                          /* NULL: not written */
    /* Strides in elements; the head_dim stride is 1 by contract. */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
    /* Packed (variable-length) batches: batch + 1 int32 offsets, where q lives; NULL: not
     * packed. See total_q below and common/seqlen.h. */
    const int32_t *cu_seqlens_q, *cu_seqlens_k;
    fa_dtype dtype;
    float softmax_scale;                 /* finite, >= 0; 1/sqrt(head_dim) is the usual value */
    int causal;
    fa_kernel_family family;
    /* Sliding window, -1 = unbounded (default (-1, -1)); with causal, window_right is 0. */
    int window_left, window_right;
    float softcap;                       /* > 0: c * tanh(x / c) on the scaled scores; 0: off */
    const float *sinks;                  /* NULL, or heads_q float32 logits where q lives */
    /* Device scratch of fa_forward_plan's workspace_bytes, 256-byte aligned (as cudaMalloc's
     * are); NULL: allocated stream-ordered inside the call when the plan needs any. */
    void *workspace;
    size_t workspace_bytes;
    /* Host path only: called between chunks of work (with no lock held); nonzero stops the
     * call with FA_ERR_INTERRUPTED. NULL: never interrupted. */
    int (*interrupt)(void *ctx);
    void *interrupt_ctx;
    /* Sequence layout beyond uniform batches (common/seqlen.h holds the rule). The int32
     * arrays live where q lives and are read, never written, by the kernels; what a kernel
     * cannot check (offsets, lengths and page indices in device memory) must be in range.
     * Packed: with cu_seqlens_q, q and out are (total_q, heads_q, head_dim), entry b owning
     * rows [cu_seqlens_q[b], cu_seqlens_q[b+1]); seqlen_q is the longest entry (an upper
     * bound), batch strides are ignored and lse is (heads_q, total_q). cu_seqlens_k likewise
     * for k and v (total_k rows). */
    int total_q, total_k;
    const int32_t *seqused_k;    /* NULL, or (batch,): entry b uses its first seqused_k[b] keys */
    const int32_t *kv_batch_idx; /* NULL, or (batch,): entry b reads k/v entry kv_batch_idx[b] */
    int kv_batches;              /* k/v's first extent when kv_batch_idx or block_table is set */
    /* Paged k/v: (kv_batches pages, page_size, heads_kv, head_dim), their batch stride the
     * page stride; key j of entry b is row j % page_size of page block_table[b * stride +
     * j / page_size]; seqlen_k <= pages per entry * page_size. NULL: not paged. */
    const int32_t *block_table;
    int64_t block_table_stride;
    int page_size;
} fa_params;

/* Zeroes *p and sets struct_size and the defaults (no window, no softcap, no sinks). */
void fa_params_init(fa_params *p);

/* What a device offers the launch logic. From the GPU (fa_device_query) or from a table of
 * nominal devices (fa_device_nominal), so launch configurations can be computed without one. */
typedef struct {
    int major, minor;        /* compute capability */
    int sm_count;
    int smem_optin;          /* max dynamic shared memory per block after opt-in, bytes */
    int max_grid[3];
} fa_device;

#define FA_KERNEL_NAME_MAX 64

/* One launch: computed by fa_launch_config, recorded by fa_forward. */
typedef struct {
    char kernel[FA_KERNEL_NAME_MAX];  /* e.g. "fwd_sm90_hd128_bf16_causal" */
    fa_kernel_family family;
    unsigned grid[3], block[3];
    size_t smem_bytes;                /* dynamic shared memory */
    int regs;                         /* registers per thread; -1 when no GPU was asked */
    int arch_major, arch_minor;       /* the device the config is for */
    int device;                       /* CUDA ordinal; -1 for a nominal device */
    uintptr_t stream;
    int block_m, block_n, stages, head_dim_padded;
} fa_launch;

#define FA_PLAN_MAX_LAUNCHES 4

/* An op as the GPU runs it: its launches in the order they run, which of them is the main
 * kernel (the others are auxiliary: a preprocess, a conversion, a combine), and the device
 * workspace they share. */
typedef struct {
    int num_launches;
    fa_launch launches[FA_PLAN_MAX_LAUNCHES];
    size_t workspace_bytes;
    int main_launch;                  /* index into launches */
} fa_plan;

/* Pure host: check params (GPU rules) and plan the forward for `dev`. Touches no CUDA API. */
fa_status fa_forward_plan(const fa_params *p, const fa_device *dev, fa_plan *plan);

/* The main launch of fa_forward_plan. */
fa_status fa_launch_config(const fa_params *p, const fa_device *dev, fa_launch *cfg);

/* Validate, plan, check the kernel images and launch on the current device. Asynchronous
 * on `stream`; records the plan (fa_last_plan, fa_last_launch) only when it was issued. */
fa_status fa_forward(const fa_params *p, cudaStream_t stream);

/* The gradients of a backward: what it reads besides the forward's params (dout) and what it
 * writes. Sized like fa_params (fa_grad_params_init sets struct_size). */
typedef struct {
    size_t struct_size;
    const void *dout;                    /* out's shape and dtype */
    void *dq;                            /* q's shape and dtype */
    void *dk, *dv;                       /* k's shape and dtype */
    float *dsinks;                       /* heads_q float32 where sinks live; written iff sinks */
    int64_t do_batch_stride, do_row_stride, do_head_stride;
    int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
    /* 1: dq is summed in a fixed order, so gradients are bitwise reproducible; 0: fp32 atomics
     * in whatever order the key blocks finish. */
    int deterministic;
} fa_grad_params;

void fa_grad_params_init(fa_grad_params *g);

/* The backward of the forward p describes: p->out and p->lse (required) are the forward's
 * outputs and are read, never written. p->workspace, if set, holds the plan's workspace_bytes;
 * else the call allocates it stream-ordered (cudaMallocFromPoolAsync, from flashattn_c's pool)
 * and frees it after its last launch. Plan, launch and record work as for the forward (fa_last_plan).
 * Main kernels: FA_KERNEL_SM90 serves head_dim up to 256, uniform or packed batches
 * (FA_ERR_UNSUPPORTED otherwise, naming why); FA_KERNEL_SM80 serves every
 * problem; FA_KERNEL_AUTO takes sm90 on sm_90 where it serves, else sm80. */
fa_status fa_backward_plan(const fa_params *p, const fa_grad_params *g, const fa_device *dev,
                           fa_plan *plan);
fa_status fa_backward(const fa_params *p, const fa_grad_params *g, cudaStream_t stream);

/* Host reference backward: float64 accumulation; lse and out are read as given. */
fa_status fa_backward_cpu(const fa_params *p, const fa_grad_params *g);

/* The backward's rules on top of fa_check_params's (lse present, gradient pointers, layouts). */
fa_status fa_check_grad_params(const fa_params *p, const fa_grad_params *g, int gpu);

/* The C reference: host pointers, float16/bfloat16/float32 (float32 arithmetic) and float64
 * (float64 arithmetic),
 * the same tiled online softmax and semantics as the kernels (masks, softcap, sinks). Blocking;
 * p->interrupt is polled between chunks. */
fa_status fa_forward_cpu(const fa_params *p);

/* Checks shared by every path; gpu != 0 adds the GPU-only rules (dtype, alignment). */
fa_status fa_check_params(const fa_params *p, int gpu);

fa_status fa_device_query(int device, fa_device *out);
fa_status fa_device_nominal(int major, int minor, fa_device *out);

/* Thread-local: the main launch of the last plan this thread issued (of any op), or the whole plan.
 * Return 0 when there was none. */
int fa_last_launch(fa_launch *out);
int fa_last_plan(fa_plan *out);
/* Thread-local: the message and CUDA code of this thread's last failed call. */
const char *fa_last_error(void);
cudaError_t fa_last_cuda_error(void);
const char *fa_status_name(fa_status s);

/* Attention over a KV cache (FlashAttention's flash_attn_with_kvcache). In p, k and v are the
 * caches: dense (kv_batches or batch, seqlen_k, heads_kv, head_dim) with seqlen_k its capacity,
 * or paged through p->block_table; p->seqused_k must be NULL (the op derives it). Entry b first
 * writes its seqlen_new new keys and values into rows cache_seqlens[b] .. + seqlen_new - 1 of
 * its cache (in place), then attends over its first cache_seqlens[b] + seqlen_new keys. q is
 * (batch, seqlen_q, heads_q, head_dim); causal and windows align bottom-right per entry. */
typedef struct {
    size_t struct_size;
    const void *k_new, *v_new;      /* NULL (nothing appended), or (batch, seqlen_new, heads_kv, head_dim) */
    int seqlen_new;
    int64_t kn_batch_stride, kn_row_stride, kn_head_stride;
    int64_t vn_batch_stride, vn_row_stride, vn_head_stride;
    const int32_t *cache_seqlens;   /* (batch,) int32 where q lives; NULL: cache_seqlen for all */
    int cache_seqlen;
    /* Key splits of the split-KV decode kernel: 0 picks them (kvcache.c's opening comment has
     * the rule), 1 runs without a split, n > 1 asks for n (fewer when there are fewer key
     * blocks) and so runs the decode kernel however long the query chunk. */
    int num_splits;
} fa_kvcache_params;

void fa_kvcache_params_init(fa_kvcache_params *c);

/* Plan (pure host), run, and the host reference of the KV-cache op. The plan is up to three
 * launches: the append (when k_new is given; it also writes each entry's key count into the
 * workspace), the attention kernel (the split-KV decode kernel when an entry has at most 128
 * packed rows, seqlen_q * heads_q / heads_kv, or num_splits > 1; else the forward family's
 * kernel, unsplit), and the combine of the splits (when there are several). */
fa_status fa_kvcache_plan(const fa_params *p, const fa_kvcache_params *c, const fa_device *dev,
                          fa_plan *plan);
fa_status fa_kvcache(const fa_params *p, const fa_kvcache_params *c, cudaStream_t stream);
fa_status fa_kvcache_cpu(const fa_params *p, const fa_kvcache_params *c);

/* The KV-cache op's rules on top of fa_check_params's. gpu == 0: also the values of the host
 * arrays (cache_seqlens leave room for seqlen_new; no two entries append into the same cache
 * slot, through a repeated kv_batch_idx or a page that two block_table rows share); gpu != 0:
 * the GPU-only rules (alignment). Device arrays' values are the caller's to get right. */
fa_status fa_kvcache_check(const fa_params *p, const fa_kvcache_params *c, int gpu);

/* Compiled SASS targets of a family, as compute-capability numbers (90 = sm_90 or sm_90a):
 * returns how many were written to archs[0..max). */
int fa_family_archs(fa_kernel_family family, int *archs, int max);
const char *fa_family_name(fa_kernel_family family);   /* "sm80", "sm90" */

#ifdef __cplusplus
}
#endif
#endif /* FLASHATTN_H */
