/*
 * kvcache.c -- the KV-cache op of the C API (flashattn.h, fa_kvcache): its rules, its plan and
 * the call that issues it. kernels/kernels.h states each kernel's grid and duties.
 *
 *   fa_append   (k_new given) entry b's seqlen_new new keys and values written into its cache
 *               at rows cache_seqlens[b] ..; with per-entry lengths it also writes the entry's
 *               key count cache_seqlens[b] + seqlen_new into the workspace (seqused)
 *   main        attention of q over each entry's first cache_seqlens[b] + seqlen_new keys:
 *               the split-KV decode kernel when the packed rows of an entry (seqlen_q * G,
 *               the q heads of a kv head sharing each K/V byte) are few or splits were asked
 *               for, else the forward family's kernel with the cache as its k/v. Where that
 *               family's kernel appends (sm90) and the cache is dense, it reads the new keys
 *               from k_new and v_new and copies them into the cache itself, and there is no
 *               fa_append: the chunked-prefill call is one launch (appends_in_main)
 *   fa_combine  (num_splits > 1) the splits' partial outputs merged by their LSE
 *
 * The split count (num_splits == 0; kernels.h's fa_kvcache_splits) follows the wave rule of
 * FlashAttention 3's heuristic: the decode grid has ctas = m_tiles * heads_kv * batch CTAs
 * and each may be cut into s splits of at least FA_SPLIT_MIN_KEYS keys (from seqlen_k, the
 * cache's capacity: the used lengths live on the device and a captured graph must not depend
 * on them). With one CTA per SM, s splits
 * fill w = ctas * s / sm_count waves; the plan takes the smallest s whose efficiency
 * w / ceil(w) is within FA_SPLIT_WAVE_SHARE of the best s up to FA_MAX_SPLITS and two waves,
 * and 1 when ctas already fill 80% of the SMs. Why (H200, dev/decode_check.cu --bench,
 * benches/NOTES.md "Serving v2"): one decode CTA streams its keys at a bounded rate, so the
 * time falls with every CTA a wave gains, while each further wave costs a few microseconds of
 * its own. At B = 1, GQA 32:8, 8k keys (8 CTAs unsplit), decode + combine from a CUDA graph
 * took 15.2 us with 16 splits (efficiency 0.97), 16.5 with 14 (0.85, FlashAttention 3's
 * pick), 18.7 with 8 and 22.8 with 32 (two waves).
 *
 * Workspace (256-byte aligned pieces): seqused (batch int32) when the append writes it;
 * o_partial and lse_partial (kernels.h) when num_splits > 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fa_internal.h"
#include "kernels/kernels.h"
#include "plan.h"

#define FA_DECODE_MAX_ROWS 128 /* packed rows per entry up to which the decode kernel runs */

void fa_kvcache_params_init(fa_kvcache_params *c)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
}

#define FA_KVCACHE_PARAMS_MIN_SIZE sizeof(fa_kvcache_params)

static fa_status resolve_cache(const fa_kvcache_params *in, fa_kvcache_params *out)
{
    if (!in)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "kvcache params must not be NULL");
    fa_kvcache_params_init(out);
    return fa_resolve_sized(out, in, in->struct_size, FA_KVCACHE_PARAMS_MIN_SIZE, sizeof *in,
                            "kvcache", "fa_kvcache_params_init");
}

static int compare_int64(const void *x, const void *y)
{
    const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

/* Cache slots (entry or page, row) that two entries' appends would both write: the entries
   would race. Dense caches collide through a repeated kv_batch_idx, paged ones through pages
   that two block_table rows share where both append. FA_OK when every slot is written once. */
static fa_status check_appends_apart(const fa_params *p, const fa_kvcache_params *c)
{
    if (c->seqlen_new == 0 || p->batch < 2 || (!p->kv_batch_idx && !p->block_table))
        return FA_OK;
    const int64_t n = (int64_t)p->batch * c->seqlen_new;
    int64_t *slots = malloc((size_t)n * 2 * sizeof *slots);
    if (!slots)
        return fa_fail(FA_ERR_OUT_OF_MEMORY, "KV-cache append check: out of memory");
    const int64_t rows = p->block_table ? p->page_size : p->seqlen_k;
    int64_t *sorted = slots + n;
    for (int b = 0; b < p->batch; b++) {
        const int start = c->cache_seqlens ? c->cache_seqlens[b] : c->cache_seqlen;
        for (int j = 0; j < c->seqlen_new; j++) {
            const int key = start + j;
            const int64_t holder =
                p->block_table ? p->block_table[(int64_t)b * p->block_table_stride + key / p->page_size]
                               : p->kv_batch_idx[b];
            slots[(int64_t)b * c->seqlen_new + j] = holder * rows + (p->block_table ? key % p->page_size : key);
        }
    }
    memcpy(sorted, slots, (size_t)n * sizeof *slots);
    qsort(sorted, (size_t)n, sizeof *sorted, compare_int64);
    int64_t twice = -1;
    for (int64_t i = 1; i < n && twice < 0; i++)
        if (sorted[i] == sorted[i - 1])
            twice = sorted[i];
    int first = -1, second = -1;
    for (int64_t i = 0; twice >= 0 && i < n; i++)
        if (slots[i] == twice && first < 0)
            first = (int)(i / c->seqlen_new);
        else if (slots[i] == twice && (int)(i / c->seqlen_new) != first)
            second = (int)(i / c->seqlen_new);
    free(slots);
    if (twice < 0)
        return FA_OK;
    return fa_fail(FA_ERR_INVALID_ARGUMENT,
                   "entries %d and %d would both append into %s %lld, row %lld (%s): appends "
                   "must not overlap", first, second, p->block_table ? "page" : "cache entry",
                   (long long)(twice / rows), (long long)(twice % rows),
                   p->block_table ? "block_table rows share the page" : "cache_batch_idx repeats it");
}

/* Host arrays: each entry's cache_seqlens leaves room for the new keys, and no two appends
   overlap. */
static fa_status check_host_values(const fa_params *p, const fa_kvcache_params *c)
{
    const int limit = p->seqlen_k - c->seqlen_new;
    for (int b = 0; c->cache_seqlens && b < p->batch; b++)
        if (c->cache_seqlens[b] < 0 || c->cache_seqlens[b] > limit)
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "cache_seqlens[%d] = %d: with %d new keys it must be in [0, %d] (each "
                           "entry's cache holds %d keys)",
                           b, c->cache_seqlens[b], c->seqlen_new, limit, p->seqlen_k);
    return check_appends_apart(p, c);
}

/* The op's rules on top of fa_check_params (which p, the caches as k and v, passes first). */
static fa_status check_cache(const fa_params *p, const fa_kvcache_params *c, int gpu)
{
    if (p->seqused_k)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "the KV-cache op derives seqused_k from cache_seqlens; leave it NULL");
    if (p->cu_seqlens_q || p->cu_seqlens_k)
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "the KV-cache op takes (batch, seqlen_q, heads, head_dim) queries; "
                       "cu_seqlens are not supported with a cache");
    if (c->seqlen_new < 0 || c->cache_seqlen < 0 || c->num_splits < 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "seqlen_new (%d), cache_seqlen (%d) and num_splits (%d) must be >= 0",
                       c->seqlen_new, c->cache_seqlen, c->num_splits);
    if (!c->k_new != !c->v_new || (c->seqlen_new > 0 && !c->k_new))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "k_new and v_new come together, and seqlen_new > 0 needs them");
    if (c->seqlen_new > p->seqlen_k || (!c->cache_seqlens && c->cache_seqlen > p->seqlen_k - c->seqlen_new))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "cache_seqlen (%d) + seqlen_new (%d) exceed the cache's %d keys",
                       c->cache_seqlen, c->seqlen_new, p->seqlen_k);
    if (!gpu)
        return check_host_values(p, c);
    const int64_t unit = 8;
    const void *ptrs[2] = {c->k_new, c->v_new};
    const int64_t strides[2][3] = {{c->kn_batch_stride, c->kn_row_stride, c->kn_head_stride},
                                   {c->vn_batch_stride, c->vn_row_stride, c->vn_head_stride}};
    for (int t = 0; t < 2 && c->seqlen_new > 0; t++)
        if (((uintptr_t)ptrs[t]) % 16 != 0 || (p->batch > 1 && strides[t][0] % unit) ||
            (c->seqlen_new > 1 && strides[t][1] % unit) || (p->heads_kv > 1 && strides[t][2] % unit))
            return fa_fail(FA_ERR_INVALID_ARGUMENT,
                           "%s must be 16-byte aligned with strides of whole 8-element units for "
                           "the GPU kernels", t ? "v_new" : "k_new");
    if (((uintptr_t)c->cache_seqlens) % 4 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "cache_seqlens must be a 4-byte aligned int32 array");
    return FA_OK;
}

/* The attention p describes once the append has run: each entry's key count from
 * cache_seqlens (+ seqlen_new, through the append's seqused) or one uniform count. */
static fa_params attention_params(const fa_params *p, const fa_kvcache_params *c,
                                  const int32_t *seqused)
{
    fa_params a = *p;
    if (c->cache_seqlens)
        a.seqused_k = c->seqlen_new > 0 ? seqused : c->cache_seqlens;
    else
        a.seqlen_k = c->cache_seqlen + c->seqlen_new;
    return a;
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

typedef struct {
    fa_plan plan;
    int append, main, combine; /* indices into plan.launches; -1: absent */
    int decode;                /* 1: main is the decode kernel; 0: the forward family's */
    int appending;             /* 1: main appends k_new and v_new itself; no append launch */
    int num_splits;
    fa_tile tile;
    size_t seqused_bytes, partial_bytes;
} kvcache_plan;

/* The append (new k and v into the cache at cache_seqlens) as launch *n. */
static fa_status plan_append(const fa_params *p, const fa_kvcache_params *c, const fa_device *dev,
                             kvcache_plan *kp, int *n)
{
    if (!fa_family_built(FA_KERNEL_SM80))
        return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                       "the KV-cache append is built with the sm80 family, absent here");
    char name[FA_KERNEL_NAME_MAX];
    kp->append = *n;
    snprintf(name, sizeof name, "kvcache_append_%s", fa_dtype_short(p->dtype));
    fa_launch *cfg = &kp->plan.launches[(*n)++];
    fa_launch_start(cfg, name, FA_KERNEL_SM80, dev);
    cfg->block_m = FA_APPEND_ROWS;
    const int64_t blocks = ((int64_t)c->seqlen_new + FA_APPEND_ROWS - 1) / FA_APPEND_ROWS;
    kp->seqused_bytes = c->cache_seqlens ? align256(sizeof(int32_t) * (size_t)p->batch) : 0;
    return fa_launch_grid(cfg, blocks, p->heads_kv, p->batch, "(row blocks, heads_kv, batch)",
                          dev);
}

/* Whether the main launch, the forward family's kernel, appends the new keys itself
 * (fa_family_appends) rather than after an append launch. Dense caches only: the kernel reads
 * the appended keys in key blocks of their own, which start where the cached keys end, and a
 * cached block would then straddle pages. Its copy counts the new rows (batch x seqlen_new)
 * in an int with room for a grid's stride, and its key numbering reaches up to a block past
 * seqlen_k. */
static int appends_in_main(const fa_params *p, const fa_kvcache_params *c, fa_kernel_family fam)
{
    return c->seqlen_new > 0 && !p->block_table && fa_family_appends(fam) &&
           (int64_t)p->batch * c->seqlen_new <= INT32_MAX / 2 && p->seqlen_k <= INT32_MAX - 256;
}

/* The attention of an appending main launch (fa_sm90_launch_appending's p): each entry's
 * cached keys in k and v, seqused_k = cache_seqlens, and the seqlen_new more that the kernel
 * reads itself; or, with one length for all, seqlen_k = all the keys, as attention_params.
 * Only the window instances read appended keys (sm90_fwd_config.cuh, kAppends), so a call
 * without a window gets one that hides nothing: a left bound of seqlen_k - 1 keys, which no
 * row's span reaches past (mask.h: row i's keys start at i + len_k - len_q - left <= 0). */
static fa_params appending_params(const fa_params *p, const fa_kvcache_params *c)
{
    fa_params a = *p;
    if (c->cache_seqlens)
        a.seqused_k = c->cache_seqlens;
    else
        a.seqlen_k = c->cache_seqlen + c->seqlen_new;
    if (fa_params_mask_kind(&a) != FA_MASK_LOCAL)
        a.window_left = a.seqlen_k - 1;
    return a;
}

/* The params of the plan's forward-family main launch, a being attention_params'. */
static fa_params forward_main_params(const kvcache_plan *kp, const fa_params *p,
                                     const fa_kvcache_params *c, const fa_params *a)
{
    return kp->appending ? appending_params(p, c) : *a;
}

/* The split-KV decode kernel over a, the attention the call runs (rows packed query rows per
 * entry and kv head), as launch *n, and when it splits, the combine after it. */
static fa_status plan_decode(const fa_params *p, const fa_kvcache_params *c, const fa_params *a,
                             int64_t rows, const fa_device *dev, kvcache_plan *kp, int *n)
{
    fa_status s;
    fa_kernel_family fam;
    if ((s = fa_choose_family(FA_KERNEL_SM80, dev->major, dev->minor, &fam)) != FA_OK)
        return s;
    if (p->family == FA_KERNEL_SM90)
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "kernel family sm90 has no split-KV decode kernel; this call (%lld "
                       "packed query rows per entry, num_splits %d) runs the sm80 family's",
                       (long long)rows, c->num_splits);
    if (fa_decode_tile(a, dev->smem_optin, &kp->tile) != 0)
        return fa_fail(FA_ERR_UNSUPPORTED, "the decode kernel has no tile for head_dim %d",
                       p->head_dim);
    const char *dt = fa_dtype_short(p->dtype);
    const fa_tile *t = &kp->tile;
    const int64_t m_tiles = rows > 0 ? (rows + t->block_m - 1) / t->block_m : 1;
    const int64_t ctas = m_tiles * p->heads_kv * p->batch;
    int splits = c->num_splits > 0 ? c->num_splits
                                    : fa_kvcache_splits(ctas, a->seqlen_k, dev->sm_count);
    const int key_blocks = (a->seqlen_k + t->block_n - 1) / t->block_n;
    if (splits > key_blocks)
        splits = key_blocks > 0 ? key_blocks : 1;
    kp->num_splits = splits;
    char name[FA_KERNEL_NAME_MAX];
    snprintf(name, sizeof name, "decode_sm80_hd%d_%s%s%s%s", t->head_dim_padded, dt,
             fa_mask_suffix(a), p->softcap > 0.0f ? "_softcap" : "", splits > 1 ? "_split" : "");
    fa_launch *cfg = &kp->plan.launches[(*n)++];
    fa_launch_start(cfg, name, FA_KERNEL_SM80, dev);
    fa_launch_take_tile(cfg, t);
    if ((s = fa_launch_grid(cfg, m_tiles * splits, p->heads_kv, p->batch,
                            "(splits x row tiles, heads_kv, batch)", dev)) != FA_OK ||
        splits == 1)
        return s;
    const size_t row_count = (size_t)splits * p->batch * p->heads_q * p->seqlen_q;
    kp->partial_bytes = align256(row_count * (size_t)p->head_dim * sizeof(float)) +
                        align256(row_count * sizeof(float));
    kp->combine = *n;
    snprintf(name, sizeof name, "combine_%s%s", dt, p->sinks ? "_sinks" : "");
    fa_launch *combine = &kp->plan.launches[(*n)++];
    fa_launch_start(combine, name, FA_KERNEL_SM80, dev);
    const int combine_rows = fa_combine_rows(p->head_dim, splits);
    combine->block_m = combine_rows;
    const int64_t row_blocks = ((int64_t)p->seqlen_q * p->heads_q + combine_rows - 1) / combine_rows;
    return fa_launch_grid(combine, row_blocks, p->batch, 1, "(row blocks, batch)", dev);
}

/* Plans from resolved, checked params: every launch is checked against the contract here. */
static fa_status plan_kvcache(const fa_params *p, const fa_kvcache_params *c, const fa_device *dev,
                              kvcache_plan *kp)
{
    fa_status s;
    memset(kp, 0, sizeof *kp);
    kp->append = kp->main = kp->combine = -1;
    const fa_params a = attention_params(p, c, NULL);
    const int64_t rows = (int64_t)p->seqlen_q * (p->heads_q / p->heads_kv);
    fa_plan *plan = &kp->plan;
    fa_kernel_family fam = FA_KERNEL_AUTO;
    kp->decode = c->num_splits > 1 || rows <= FA_DECODE_MAX_ROWS;
    if (!kp->decode && (s = fa_forward_family(&a, dev, &fam)) != FA_OK)
        return s;
    kp->appending = !kp->decode && appends_in_main(p, c, fam);
    int n = 0;
    if (c->seqlen_new > 0 && !kp->appending && (s = plan_append(p, c, dev, kp, &n)) != FA_OK)
        return s;
    if (p->seqlen_q == 0) { /* an append alone */
        plan->num_launches = n;
        plan->main_launch = 0;
        plan->workspace_bytes = kp->seqused_bytes;
        return fa_plan_validate(plan, dev);
    }
    kp->main = n;
    if (kp->decode) {
        if ((s = plan_decode(p, c, &a, rows, dev, kp, &n)) != FA_OK)
            return s;
    } else {
        kp->num_splits = 1;
        const fa_params m = forward_main_params(kp, p, c, &a);
        fa_launch *main = &plan->launches[n++];
        if ((s = fa_plan_forward_launch(&m, dev, fam, main)) != FA_OK)
            return s;
        const size_t named = strlen(main->kernel);
        if (kp->appending)
            snprintf(main->kernel + named, sizeof main->kernel - named, "_append");
    }
    plan->num_launches = n;
    plan->main_launch = kp->main;
    plan->workspace_bytes = kp->seqused_bytes + kp->partial_bytes;
    return fa_plan_validate(plan, dev);
}

static fa_status resolve_and_check(const fa_params *pc, const fa_kvcache_params *cc, int gpu,
                                   fa_params *p, fa_kvcache_params *c)
{
    fa_status s = fa_params_resolve(pc, p);
    if (s != FA_OK || (s = resolve_cache(cc, c)) != FA_OK)
        return s;
    /* The caches are checked as k and v of their full capacity. */
    if ((s = fa_check_params(p, gpu)) != FA_OK)
        return s;
    return check_cache(p, c, gpu);
}

fa_status fa_kvcache_check(const fa_params *pc, const fa_kvcache_params *cc, int gpu)
{
    fa_params p;
    fa_kvcache_params c;
    return resolve_and_check(pc, cc, gpu, &p, &c);
}

fa_status fa_kvcache_plan(const fa_params *pc, const fa_kvcache_params *cc, const fa_device *dev,
                          fa_plan *plan)
{
    fa_params p;
    fa_kvcache_params c;
    kvcache_plan kp;
    fa_status s = resolve_and_check(pc, cc, 1, &p, &c);
    if (s != FA_OK || (s = plan_kvcache(&p, &c, dev, &kp)) != FA_OK)
        return s;
    *plan = kp.plan;
    return FA_OK;
}

#ifdef FA_WITH_SM80
/* Every kernel of the plan present for this GPU and opted in, then the launches in order. */
static fa_status issue(const fa_params *p, const fa_kvcache_params *c, kvcache_plan *kp,
                       char *base, int device, const fa_device *dev, cudaStream_t stream)
{
    int32_t *seqused = kp->seqused_bytes ? (int32_t *)base : NULL;
    const fa_params a = attention_params(p, c, seqused);
    fa_split_workspace ws;
    ws.num_splits = kp->num_splits;
    ws.o_partial = NULL;
    ws.lse_partial = NULL;
    if (kp->partial_bytes) {
        const size_t row_count = (size_t)kp->num_splits * p->batch * p->heads_q * p->seqlen_q;
        ws.o_partial = (float *)(base + kp->seqused_bytes);
        ws.lse_partial =
            (float *)(base + kp->seqused_bytes + align256(row_count * (size_t)p->head_dim * sizeof(float)));
    }
    fa_launch *l = kp->plan.launches;
    fa_status s;
    if (kp->append >= 0 && (s = fa_prepare_kernel(fa_append_kernel_fn(p), device, dev,
                                                  &l[kp->append], stream)) != FA_OK)
        return s;
    if (kp->main >= 0 && kp->decode) {
        const void *fn = fa_decode_kernel_fn(&a, &kp->tile);
        if (!fn)
            return fa_fail(FA_ERR_UNSUPPORTED, "%s is not instantiated in this build",
                           l[kp->main].kernel);
        if ((s = fa_prepare_kernel(fn, device, dev, &l[kp->main], stream)) != FA_OK)
            return s;
    }
    if (kp->combine >= 0 && (s = fa_prepare_kernel(fa_combine_kernel_fn(p), device, dev,
                                                   &l[kp->combine], stream)) != FA_OK)
        return s;

    cudaError_t err;
    if (kp->append >= 0 && (err = fa_append_launch(p, c, seqused, &l[kp->append], stream)) != cudaSuccess)
        return fa_fail_cuda(err, l[kp->append].kernel, __FILE__, __LINE__);
    if (kp->main < 0)
        return FA_OK;
    if (!kp->decode) {
        const fa_params m = forward_main_params(kp, p, c, &a);
        return fa_run_forward_launch(&m, kp->appending ? c : NULL, &l[kp->main], device, dev, stream);
    }
    if ((err = fa_decode_launch(&a, &ws, &l[kp->main], stream)) != cudaSuccess)
        return fa_fail_cuda(err, l[kp->main].kernel, __FILE__, __LINE__);
    if (kp->combine >= 0 && (err = fa_combine_launch(&a, &ws, &l[kp->combine], stream)) != cudaSuccess)
        return fa_fail_cuda(err, l[kp->combine].kernel, __FILE__, __LINE__);
    return FA_OK;
}
#endif

fa_status fa_kvcache(const fa_params *pc, const fa_kvcache_params *cc, cudaStream_t stream)
{
    fa_params p;
    fa_kvcache_params c;
    fa_status s = resolve_and_check(pc, cc, 1, &p, &c);
    if (s != FA_OK)
        return s;
    if (p.batch == 0 || p.heads_q == 0 || (p.seqlen_q == 0 && c.seqlen_new == 0))
        return FA_OK;
#ifdef FA_WITH_SM80
    int device;
    fa_device dev;
    kvcache_plan kp;
    if ((s = fa_current_device(&device, &dev)) != FA_OK || (s = plan_kvcache(&p, &c, &dev, &kp)) != FA_OK)
        return s;
    fa_workspace w;
    if ((s = fa_workspace_acquire(&p, kp.plan.workspace_bytes, "fa_kvcache_plan", stream, &w)) != FA_OK)
        return s;
    s = issue(&p, &c, &kp, (char *)w.base, device, &dev, stream);
    if ((s = fa_workspace_release(&w, stream, s)) != FA_OK)
        return s;
    fa_params a = attention_params(&p, &c, NULL);
    fa_plan_record(&kp.plan, &a);
    return FA_OK;
#else
    (void)stream;
    return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH, "the KV-cache op's kernels are built with the sm80 "
                                              "family, absent from this build");
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Host reference                                                                              */

fa_status fa_kvcache_cpu(const fa_params *pc, const fa_kvcache_params *cc)
{
    fa_params p;
    fa_kvcache_params c;
    fa_status s = resolve_and_check(pc, cc, 0, &p, &c);
    if (s != FA_OK)
        return s;
    const fa_seq_layout layout = fa_seq_layout_of(&p);
    int32_t *used = NULL;
    if (c.cache_seqlens && p.batch > 0) {
        if (!(used = malloc(sizeof(int32_t) * (size_t)p.batch)))
            return fa_fail(FA_ERR_OUT_OF_MEMORY, "host KV cache: out of memory");
        for (int b = 0; b < p.batch; b++)
            used[b] = c.cache_seqlens[b] + c.seqlen_new;
    }
    /* The append: element copies through the cache's own row addressing. */
    const size_t es = p.dtype == FA_FLOAT64 ? 8 : p.dtype == FA_FLOAT32 ? 4 : 2;
    for (int b = 0; b < p.batch; b++) {
        const fa_seqlen e = fa_seqlen_at(&layout, b);
        const int start = c.cache_seqlens ? c.cache_seqlens[b] : c.cache_seqlen;
        for (int i = 0; i < c.seqlen_new; i++)
            for (int h = 0; h < p.heads_kv; h++) {
                const int64_t kd = fa_k_row_offset(&layout, &e, b, start + i, p.k_batch_stride,
                                                   p.k_row_stride) + h * p.k_head_stride;
                const int64_t vd = fa_k_row_offset(&layout, &e, b, start + i, p.v_batch_stride,
                                                   p.v_row_stride) + h * p.v_head_stride;
                const int64_t ks = b * c.kn_batch_stride + i * c.kn_row_stride + h * c.kn_head_stride;
                const int64_t vs = b * c.vn_batch_stride + i * c.vn_row_stride + h * c.vn_head_stride;
                memcpy((char *)p.k + kd * (int64_t)es, (const char *)c.k_new + ks * (int64_t)es,
                       es * (size_t)p.head_dim);
                memcpy((char *)p.v + vd * (int64_t)es, (const char *)c.v_new + vs * (int64_t)es,
                       es * (size_t)p.head_dim);
            }
    }
    const fa_params a = attention_params(&p, &c, used);
    s = fa_forward_cpu(&a);
    free(used);
    return s;
}
