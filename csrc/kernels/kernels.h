/*
 * kernels.h -- what a kernel family gives the launch logic (launch.c).
 *
 * Each family (fwd_sm80.cu, fwd_sm90.cu) implements, with C linkage:
 *   fa_<fam>_tile(p, &t)    in <fam>_tiles.h: pure host tile choice + shared-memory bytes
 *   fa_<fam>_kernel_fn(...) the __global__ function a launch would run, NULL if not compiled
 *   fa_<fam>_launch(...)    the one <<<>>> site of the family; returns cudaGetLastError()
 *   fa_<fam>_archs(...)     the SASS targets the file was compiled for (__CUDA_ARCH_LIST__)
 * launch.c validates everything (block, smem, arch, grid) before it calls fa_<fam>_launch.
 *
 * The backward (backward.c plans it) runs three launches, each (384, 1, 1):
 *   1. fa_bwd_pre     grid (ceil(seqlen_q / FA_BWD_PRE_ROWS), heads_q, batch), no dynamic smem:
 *                     delta = rowsum(dout * out) in fp32; zeroes its rows of dq_accum and the
 *                     dq_lock counters of the main kernel's query blocks that start in its rows;
 *                     with sinks, dsink_part[b, h, x] = -sum over its rows of
 *                     exp(sinks[h] - lse) * delta (a fixed order inside the CTA)
 *   2. fa_<fam>_bwd   grid (ceil(seqlen_k / block_n), heads_kv, batch): one CTA owns block_n
 *                     keys of one kv head, loops over the q heads of its group and the query
 *                     blocks that see its keys (block_range.h), keeps dk and dv in registers
 *                     and writes them (dk scaled by softmax_scale), and adds its unscaled
 *                     dS K into dq_accum: fp32 atomics, or, when deterministic, in key-block
 *                     order, last first, through dq_lock (the CTA of key block n adds to
 *                     query block m of head h when dq_lock[b, h, m] == last key block of m - n,
 *                     then increments it; blockIdx.x counts key blocks from the last)
 *   3. fa_bwd_post    grid as 1: dq = softmax_scale * dq_accum in q's dtype and strides; the
 *                     CTA (0, h, 0) sums dsink_part[:, h, :] in a fixed order into dsinks[h]
 */
#ifndef FA_KERNELS_H
#define FA_KERNELS_H

#include "../flashattn.h"
#include "../common/mask.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A family's tile for one problem (its head_dim, dtype, mask kind and, for sm90, seqlen_k). */
typedef struct {
    int block_m;          /* query rows per CTA tile */
    int block_n;          /* key rows per main-loop step */
    int stages;           /* K/V pipeline depth */
    int head_dim_padded;  /* head_dim rounded up to the instantiated size (64, 128, 256) */
    size_t smem_bytes;    /* dynamic shared memory of the launch */
    int persistent;       /* 1: grid = min(tiles, SMs), the kernel loops over tiles */
} fa_tile;

#ifdef __CUDACC__
/* Whether the kernels of the including translation unit run on a GPU of compute capability
 * major.minor as code nvcc generated for that very architecture, at sm_90 or later: the only
 * code in which griddepcontrol.wait exists. A GPU the build has no code of its own for runs
 * the lowest target's PTX, JIT-compiled, where every griddepcontrol wrapper is empty; a kernel
 * launched there as a programmatic dependent would read what the grid before it may not have
 * made visible yet. (__CUDA_ARCH_LIST__: the virtual architectures nvcc compiles this file
 * for, 10x the capability.) */
static inline bool fa_sass_has_griddepcontrol(int major, int minor)
{
#ifdef __CUDA_ARCH_LIST__
    const int archs[] = {__CUDA_ARCH_LIST__};
    const int arch = 100 * major + 10 * minor;
    for (int a : archs)
        if (a == arch)
            return a >= 900;
#endif
    (void)major;
    (void)minor;
    return false;
}
#endif

/* head_dim rounded up to the size every family instantiates (64, 128, 256): the missing columns
 * are zero-filled on load and never stored. 0 when head_dim is not a multiple of 8 in [8, 256]
 * (16-byte rows: 8 16-bit elements). */
static inline int fa_head_dim_padded(int head_dim)
{
    if (head_dim < 8 || head_dim > 256 || head_dim % 8 != 0)
        return 0;
    return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

/* The mask an instance is built for. A window that hides nothing for the problem's lengths
 * (mask.h normalises it) runs the full or causal instance; anything else, the local one. */
typedef enum { FA_MASK_NONE = 0, FA_MASK_CAUSAL = 1, FA_MASK_LOCAL = 2 } fa_mask_kind;

static inline fa_mask_kind fa_params_mask_kind(const fa_params *p)
{
    /* Empty lengths launch nothing; counting them as 1 keeps the name of such a config. */
    const fa_mask m = fa_mask_make(p->seqlen_q > 0 ? p->seqlen_q : 1, p->seqlen_k > 0 ? p->seqlen_k : 1,
                                   p->window_left, p->window_right, p->causal);
    if (m.left < 0 && m.right < 0)
        return FA_MASK_NONE;
    return m.left < 0 && m.right == 0 ? FA_MASK_CAUSAL : FA_MASK_LOCAL;
}

/* The sequence layout of p, as every kernel's argument block carries it. */
static inline fa_seq_layout fa_seq_layout_of(const fa_params *p)
{
    fa_seq_layout s;
    s.seqlen_q = p->seqlen_q;
    s.seqlen_k = p->seqlen_k;
    s.total_q = p->total_q;
    s.cu_seqlens_q = p->cu_seqlens_q;
    s.cu_seqlens_k = p->cu_seqlens_k;
    s.seqused_k = p->seqused_k;
    s.kv_batch_idx = p->kv_batch_idx;
    s.block_table = p->block_table;
    s.block_table_stride = p->block_table_stride;
    s.page_size = p->page_size;
    s.seqlen_new = 0;
    return s;
}

/* Copies tensor t's three strides from the public params src (fa_params, fa_grad_params,
 * fa_kvcache_params) into a kernel's argument block dst, whose fields carry the public names:
 * FA_COPY_STRIDES(a, p, q) sets a.q_batch_stride, a.q_row_stride and a.q_head_stride. */
#define FA_COPY_STRIDES(dst, src, t)                                                           \
    ((dst).t##_batch_stride = (src)->t##_batch_stride,                                         \
     (dst).t##_row_stride = (src)->t##_row_stride, (dst).t##_head_stride = (src)->t##_head_stride)

/* Query rows per CTA of the backward's preprocess and postprocess. */
#define FA_BWD_PRE_ROWS 64

/* Which key block the backward's CTA blockIdx.x owns: first + step * blockIdx.x, over a grid of
 * key_blocks. Deterministic grids run their key blocks last first (dq_turns.cuh says why);
 * otherwise in order, so that under a causal mask the longest walks start first. */
typedef struct {
    int first, step;
} fa_key_block_order;

static inline fa_key_block_order fa_key_block_order_of(int deterministic, int key_blocks)
{
    fa_key_block_order o = {0, 1};
    if (deterministic) {
        o.first = key_blocks - 1;
        o.step = -1;
    }
    return o;
}

/* The backward's device workspace, carved from one allocation (backward.c). Offsets are
 * 256-byte aligned. */
typedef struct {
    float *dq_accum;   /* (batch, heads_q, seqlen_q, head_dim) fp32, row-major */
    float *delta;      /* (batch, heads_q, seqlen_q) fp32 */
    float *dsink_part; /* (batch, heads_q, ceil(seqlen_q / FA_BWD_PRE_ROWS)); NULL without sinks */
    int *dq_lock;      /* (batch, heads_q, ceil(seqlen_q / block_m)); NULL unless deterministic */
    int block_m;       /* the main kernel's query rows per step: dq_lock's granularity */
} fa_bwd_workspace;

const void *fa_sm80_kernel_fn(const fa_params *p, const fa_tile *t);
cudaError_t fa_sm80_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream);
int fa_sm80_archs(int *archs, int max);

const void *fa_sm90_kernel_fn(const fa_params *p, const fa_tile *t);
cudaError_t fa_sm90_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream);
/* The KV-cache op's main launch with its append fused (kvcache.c): fa_sm90_launch over the
 * dense caches p->k, p->v holding each entry's cached keys (p->seqused_k[b], or with no
 * seqused_k p->seqlen_k - c->seqlen_new for every entry), plus c's seqlen_new new keys and
 * values, which the kernel reads from c->k_new and c->v_new and copies into the caches after
 * them (sm90_fwd_kernel.cuh). The kernel is fa_sm90_kernel_fn's. */
cudaError_t fa_sm90_launch_appending(const fa_params *p, const fa_kvcache_params *c,
                                     const fa_launch *cfg, cudaStream_t stream);
int fa_sm90_archs(int *archs, int max);
/* NULL when the sm90 forward runs p's sequence layout, else why not (pure host). */
const char *fa_sm90_seq_unsupported(const fa_params *p);

/* Backward (bwd_sm80*.cu, bwd_sm90.cu). The tile, fa_sm80_bwd_tile(p, g, smem_optin, &t), is pure
 * host and static inline in sm80_bwd_tiles.h (as fa_sm80_tile is in sm80_tiles.h); the kernel
 * is the instance of t's block sizes (NULL for sizes no instance has). */
const void *fa_sm80_bwd_kernel_fn(const fa_params *p, const fa_grad_params *g, const fa_tile *t);
cudaError_t fa_sm80_bwd_launch(const fa_params *p, const fa_grad_params *g,
                               const fa_bwd_workspace *ws, const fa_launch *cfg,
                               cudaStream_t stream);
/* The sm90 backward (bwd_sm90.cu); its tile, fa_sm90_bwd_tile(p, g, &t), and what it does not
 * serve, fa_sm90_bwd_unsupported(p, g), are pure host in sm90_bwd_tiles.h. */
const void *fa_sm90_bwd_kernel_fn(const fa_params *p, const fa_grad_params *g, const fa_tile *t);
cudaError_t fa_sm90_bwd_launch(const fa_params *p, const fa_grad_params *g,
                               const fa_bwd_workspace *ws, const fa_launch *cfg,
                               cudaStream_t stream);
/* The auxiliary kernels (bwd_sm80_aux.cu; generic CUDA, built with the sm80 family). */
const void *fa_bwd_pre_kernel_fn(const fa_params *p);
cudaError_t fa_bwd_pre_launch(const fa_params *p, const fa_grad_params *g,
                              const fa_bwd_workspace *ws, const fa_launch *cfg,
                              cudaStream_t stream);
const void *fa_bwd_post_kernel_fn(const fa_params *p);
cudaError_t fa_bwd_post_launch(const fa_params *p, const fa_grad_params *g,
                               const fa_bwd_workspace *ws, const fa_launch *cfg,
                               cudaStream_t stream);

/* The KV-cache op (kvcache.c plans it): up to three launches, each (384, 1, 1).
 *   1. fa_append    (when k_new is given and the main launch does not copy it itself:
 *                   fa_sm90_launch_appending) grid (ceil(seqlen_new / FA_APPEND_ROWS), heads_kv,
 *                   batch): copies k_new/v_new rows i to cache key cache_seqlens[b] + i of entry
 *                   b (dense or paged, common/seqlen.h); with cache_seqlens, CTA (0, 0, b) also
 *                   writes seqused[b] = cache_seqlens[b] + seqlen_new.
 *   2. fa_decode    grid (num_splits * m_tiles, heads_kv, batch): GQA packing, the q heads of
 *                   kv head hk and the query rows of entry b form packed rows r = i * G + g
 *                   (query row i, q head hk * G + g), m_tiles = ceil(seqlen_q * G / block_m).
 *                   Split s of the entry's visible key blocks (block_range.h over the tile's
 *                   rows, cut into num_splits contiguous runs of whole blocks) is reduced by one
 *                   CTA. num_splits == 1: out and lse (dense layout) are written, sinks
 *                   included; else o_partial and lse_partial (sinks left to the combine), a
 *                   split with no visible key writing lse -inf and o 0.
 *   3. fa_combine   (num_splits > 1) grid (ceil(seqlen_q * heads_q / fa_combine_rows(head_dim,
 *                   num_splits)), batch): lse = log(sum_s exp(lse_s) + exp(sink)), out = sum_s exp(lse_s -
 *                   lse) o_s, out 0 and lse -inf (sink with sinks) for a row no split saw.
 *                   Where the build has code for the GPU's own architecture, sm_90 or later,
 *                   it is launched as a programmatic dependent of the decode launch
 *                   (fa_combine_launch), so it is scheduled while the decode grid drains and
 *                   waits for its results in the kernel (griddepcontrol.wait). */
#define FA_APPEND_ROWS 64

#define FA_SPLIT_MIN_KEYS 64     /* fewest keys a split is planned for */
#define FA_SPLIT_WAVE_SHARE 0.95 /* of the best wave efficiency that a split count must reach */
#define FA_MAX_SPLITS 128

/* The split count the KV-cache plan takes when none is asked for (kvcache.c's header states the
 * rule and the measurements behind it): ctas decode CTAs unsplit, seqlen_k keys of cache
 * capacity, sm_count SMs. Pure host. */
static inline int fa_kvcache_splits(int64_t ctas, int seqlen_k, int sm_count)
{
    if (ctas >= (int64_t)sm_count * 4 / 5)
        return 1;
    int most = seqlen_k / FA_SPLIT_MIN_KEYS;
    const int64_t two_waves = 2 * (int64_t)sm_count / ctas;
    if (most > two_waves)
        most = (int)two_waves;
    if (most > FA_MAX_SPLITS)
        most = FA_MAX_SPLITS;
    if (most <= 1)
        return 1;
    double eff[FA_MAX_SPLITS + 1], best = 0.0;
    for (int s = 1; s <= most; s++) {
        const double waves = (double)(ctas * s) / sm_count;
        const double whole = (double)(int64_t)(waves + 0.999999);
        eff[s] = waves / whole;
        if (eff[s] > best)
            best = eff[s];
    }
    for (int s = 1; s <= most; s++)
        if (eff[s] >= FA_SPLIT_WAVE_SHARE * best)
            return s;
    return 1;
}

/* Threads that share one (row, 4 columns) item of the combine: each sums every t-th batch of
 * 16 splits, so that a thread waits on at most two round trips of loads for up to 128 splits
 * (64 at head_dim 256, whose 64 items a row leave room for 4 threads each in a CTA); the
 * threads of an item then merge through warp shuffles. */
static inline int fa_combine_threads_per_item(int head_dim, int num_splits)
{
    const int items = head_dim / 4; /* of a row */
    int t = 1;
    while (t < 8 && t * 2 * 16 < num_splits && items * t * 2 <= FA_THREADS_PER_BLOCK)
        t *= 2;
    return t;
}

/* Rows a combine CTA merges (at least 1): its 384 threads cover whole items. */
static inline int fa_combine_rows(int head_dim, int num_splits)
{
    return FA_THREADS_PER_BLOCK / (head_dim / 4 * fa_combine_threads_per_item(head_dim, num_splits));
}

typedef struct {
    float *o_partial;   /* (num_splits, batch, heads_q, seqlen_q, head_dim) fp32, row-major */
    float *lse_partial; /* (num_splits, batch, heads_q, seqlen_q) fp32 */
    int num_splits;
} fa_split_workspace;

/* The decode kernel's tile for p on a device with smem_optin bytes of shared memory per block
 * (fwd_sm80_decode.cu; pure host): block_m packed rows, block_n keys per step. Returns 0 when
 * the head_dim has no instance. */
int fa_decode_tile(const fa_params *p, int smem_optin, fa_tile *t);
const void *fa_decode_kernel_fn(const fa_params *p, const fa_tile *t);
cudaError_t fa_decode_launch(const fa_params *p, const fa_split_workspace *ws,
                             const fa_launch *cfg, cudaStream_t stream);
const void *fa_append_kernel_fn(const fa_params *p);
cudaError_t fa_append_launch(const fa_params *p, const fa_kvcache_params *c, int32_t *seqused,
                             const fa_launch *cfg, cudaStream_t stream);
const void *fa_combine_kernel_fn(const fa_params *p);
cudaError_t fa_combine_launch(const fa_params *p, const fa_split_workspace *ws,
                              const fa_launch *cfg, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* FA_KERNELS_H */
