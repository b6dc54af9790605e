/*
 * backward.c -- the backward op of the C API: its parameter rules, its plan of three launches
 * and a workspace, and the call that issues them.
 *
 *   fa_bwd_pre    delta = rowsum(dout * out); zeroes dq_accum (and the dq turn counters);
 *                 the sink gradient's per-block partial sums
 *   fa_<fam>_bwd  the main kernel: one CTA per key block and kv head; dk, dv written,
 *                 dS K added into dq_accum
 *   fa_bwd_post   dq = softmax_scale * dq_accum in q's dtype; dsinks
 * (kernels/kernels.h states each kernel's grid and duties.) The plan's workspace holds
 * dq_accum (fp32, batch * heads_q * seqlen_q * head_dim), delta, the sink partials and, when
 * deterministic, one turn counter per (batch, head, query block) of the main kernel.
 *
 * Main kernels: the sm90 family's (bwd_sm90.cu: head_dim up to 256, uniform and packed
 * batches) and the sm80 family's (everything else; it runs on sm_90 too). auto takes the sm90
 * one on sm_90 where it serves the problem (choose_backward_family). The preprocess and
 * postprocess are built with the sm80 family, which every backward needs.
 */
#include <stdio.h>
#include <string.h>

#include "device_buffer.h"
#include "fa_internal.h"
#include "kernels/kernels.h"
#include "launch_contract.h"
#include "plan.h"
#ifdef FA_WITH_SM80
#include "kernels/sm80_bwd_tiles.h"
#endif
#ifdef FA_WITH_SM90
#include "kernels/sm90_bwd_tiles.h"
#endif

void fa_grad_params_init(fa_grad_params *g)
{
    memset(g, 0, sizeof *g);
    g->struct_size = sizeof *g;
}

/* The first sized layout of fa_grad_params is the whole of today's struct. */
#define FA_GRAD_PARAMS_MIN_SIZE sizeof(fa_grad_params)

fa_status fa_grad_params_resolve(const fa_params *p, const fa_grad_params *in,
                                 fa_grad_params *out)
{
    if (!in)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "grad params must not be NULL");
    fa_grad_params_init(out);
    const fa_status s = fa_resolve_sized(out, in, in->struct_size, FA_GRAD_PARAMS_MIN_SIZE,
                                         sizeof *in, "grad", "fa_grad_params_init");
    if (s != FA_OK)
        return s;
    /* Packed rows are addressed from the entry's first row alone (common/seqlen.h). */
    if (p->cu_seqlens_q)
        out->do_batch_stride = out->dq_batch_stride = 0;
    if (p->cu_seqlens_k)
        out->dk_batch_stride = out->dv_batch_stride = 0;
    return FA_OK;
}

/* Nothing for the kernels: no (batch, head) pair, or no rows and no keys (dsinks, if any, is
 * then zero). */
static int backward_empty(const fa_params *p)
{
    return p->batch == 0 || p->heads_q == 0 || (p->seqlen_q == 0 && p->seqlen_k == 0);
}

/* 16-byte bases and strides of whole 16-byte units, as the forward's arrays (launch.c). */
static fa_status check_layout(const char *name, const void *ptr, int batch, int64_t sb, int rows,
                              int64_t sr, int heads, int64_t sh)
{
    if (((uintptr_t)ptr) % 16 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "%s must be 16-byte aligned for the GPU kernels, got address %p", name, ptr);
    if ((batch > 1 && sb % 8) || (rows > 1 && sr % 8) || (heads > 1 && sh % 8))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "%s strides must be multiples of 8 elements (16 bytes) for the GPU kernels, "
                       "got (batch %lld, seq %lld, head %lld)",
                       name, (long long)sb, (long long)sr, (long long)sh);
    return FA_OK;
}

/* p and g resolved; p already passed fa_check_params. */
static fa_status check_grad(const fa_params *p, const fa_grad_params *g, int gpu)
{
    if (backward_empty(p))
        return FA_OK;
    const int rows = p->seqlen_q > 0, keys = p->seqlen_k > 0;
    if (rows && (!p->out || !p->lse || !g->dout || !g->dq))
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       "the backward needs out, lse (the forward's), dout and dq pointers");
    if (keys && (!g->dk || !g->dv))
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "the backward needs dk and dv pointers");
    if (!p->sinks != !g->dsinks)
        return fa_fail(FA_ERR_INVALID_ARGUMENT,
                       p->sinks ? "sinks were given: dsinks (heads_q float32) must be too"
                                : "dsinks was given without sinks");
    if (p->seqused_k || p->kv_batch_idx || p->block_table)
        return fa_fail(FA_ERR_UNSUPPORTED,
                       "the backward takes uniform or packed (cu_seqlens) batches; seqused_k, "
                       "kv_batch_idx and block_table (KV caches) are forward-only");
    if (!gpu)
        return FA_OK;
    fa_status s;
    const int q_batches = p->cu_seqlens_q ? 1 : p->batch, k_batches = p->cu_seqlens_k ? 1 : p->batch;
    const int q_rows = p->cu_seqlens_q ? p->total_q : p->seqlen_q;
    const int k_rows = p->cu_seqlens_k ? p->total_k : p->seqlen_k;
    if (rows && ((s = check_layout("dout", g->dout, q_batches, g->do_batch_stride, q_rows,
                                   g->do_row_stride, p->heads_q, g->do_head_stride)) != FA_OK ||
                 (s = check_layout("dq", g->dq, q_batches, g->dq_batch_stride, q_rows,
                                   g->dq_row_stride, p->heads_q, g->dq_head_stride)) != FA_OK))
        return s;
    if (keys && ((s = check_layout("dk", g->dk, k_batches, g->dk_batch_stride, k_rows,
                                   g->dk_row_stride, p->heads_kv, g->dk_head_stride)) != FA_OK ||
                 (s = check_layout("dv", g->dv, k_batches, g->dv_batch_stride, k_rows,
                                   g->dv_row_stride, p->heads_kv, g->dv_head_stride)) != FA_OK))
        return s;
    if (g->dsinks && ((uintptr_t)g->dsinks) % 4 != 0)
        return fa_fail(FA_ERR_INVALID_ARGUMENT, "dsinks must be 4-byte aligned");
    return FA_OK;
}

/* Resolves both structs into *p and *g and applies every rule. */
static fa_status resolve_and_check(const fa_params *pc, const fa_grad_params *gc, int gpu,
                                   fa_params *p, fa_grad_params *g)
{
    fa_status s = fa_params_resolve(pc, p);
    if (s != FA_OK || (s = fa_grad_params_resolve(p, gc, g)) != FA_OK ||
        (s = fa_check_params(p, gpu)) != FA_OK)
        return s;
    return check_grad(p, g, gpu);
}

fa_status fa_check_grad_params(const fa_params *pc, const fa_grad_params *gc, int gpu)
{
    fa_params p;
    fa_grad_params g;
    return resolve_and_check(pc, gc, gpu, &p, &g);
}

/* ------------------------------------------------------------------------------------------ */
/* Workspace                                                                                   */

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The layout of the workspace at `base` (NULL: offsets from 0, to size it); returns its bytes. */
static size_t carve_workspace(const fa_params *p, const fa_grad_params *g, int block_m,
                              char *base, fa_bwd_workspace *ws)
{
    const size_t rows = (size_t)p->batch * p->heads_q * p->seqlen_q;
    size_t at = 0;
    memset(ws, 0, sizeof *ws);
    ws->block_m = block_m;
    ws->dq_accum = (float *)(base + at);
    at += align256(rows * p->head_dim * sizeof(float));
    ws->delta = (float *)(base + at);
    at += align256(rows * sizeof(float));
    if (p->sinks) {
        ws->dsink_part = (float *)(base + at);
        at += align256((size_t)p->batch * p->heads_q * ceil_div(p->seqlen_q, FA_BWD_PRE_ROWS) *
                       sizeof(float));
    }
    if (g->deterministic) {
        ws->dq_lock = (int *)(base + at);
        at += align256((size_t)p->batch * p->heads_q * ceil_div(p->seqlen_q, block_m) * sizeof(int));
    }
    return at;
}

/* ------------------------------------------------------------------------------------------ */
/* Plan                                                                                        */

/* The family whose backward serves the request. auto takes the sm90 backward on sm_90 where
 * it serves p (fa_sm90_bwd_unsupported) and the sm80 family's elsewhere; the choice is the
 * main launch's kernel name in the record. An explicit sm90 that does not serve p is an error. */
static fa_status choose_backward_family(const fa_params *p, const fa_grad_params *g,
                                        const fa_device *dev, fa_kernel_family *family)
{
    fa_status s;
    if (p->family == FA_KERNEL_SM90) {
        if ((s = fa_choose_family(FA_KERNEL_SM90, dev->major, dev->minor, family)) != FA_OK)
            return s;
#ifdef FA_WITH_SM90
        const char *why = fa_sm90_bwd_unsupported(p, g);
        if (why)
            return fa_fail(FA_ERR_UNSUPPORTED,
                           "kernel family sm90 has no backward for this problem: %s "
                           "(kernel='sm80' or 'auto')",
                           why);
#endif
        if (!fa_family_built(FA_KERNEL_SM80))
            return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                           "the backward's preprocess and postprocess are built with the sm80 "
                           "family (FLASHATTN_C_ARCHS with a plain arch such as 80)");
        return FA_OK;
    }
    if (!fa_family_built(FA_KERNEL_SM80))
        return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH,
                       "this build has no backward kernel: the backward needs the sm80 family "
                       "(FLASHATTN_C_ARCHS with a plain arch such as 80)");
    if ((s = fa_choose_family(p->family, dev->major, dev->minor, family)) != FA_OK)
        return s;
#ifdef FA_WITH_SM90
    if (*family == FA_KERNEL_SM90 && fa_sm90_bwd_unsupported(p, g) == NULL)
        return FA_OK;
#endif
    (void)g;
    *family = FA_KERNEL_SM80;
    return FA_OK;
}

typedef struct {
    fa_plan plan;
    int pre, main, post;         /* indices into plan.launches; main -1: no keys */
    fa_kernel_family family;     /* the main kernel's */
    fa_tile tile;
} backward_plan;

/* Empty sizes launch nothing; counting them as 1 keeps a plan well formed for display. */
static int64_t at_least_1(int64_t v) { return v > 0 ? v : 1; }

/* The preprocess or the postprocess (kind "bwd_pre" or "bwd_post"): FA_BWD_PRE_ROWS query rows
 * of one q head per CTA. */
static fa_status plan_rows_launch(const fa_params *p, const char *kind, fa_kernel_family family,
                                  const fa_device *dev, fa_launch *cfg)
{
    char name[FA_KERNEL_NAME_MAX];
    snprintf(name, sizeof name, "%s_%s%s", kind, fa_dtype_short(p->dtype), p->sinks ? "_sinks" : "");
    fa_launch_start(cfg, name, family, dev);
    cfg->block_m = FA_BWD_PRE_ROWS;
    const int64_t row_blocks = p->seqlen_q > 0 ? ceil_div(p->seqlen_q, FA_BWD_PRE_ROWS) : 1;
    return fa_launch_grid(cfg, row_blocks, at_least_1(p->heads_q), at_least_1(p->batch),
                          "(row blocks, heads_q, batch)", dev);
}

/* The main kernel of the family, tile t: one CTA per key block and kv head. */
static fa_status plan_main_launch(const fa_params *p, const fa_grad_params *g, fa_kernel_family family,
                                  const fa_tile *t, const fa_device *dev, fa_launch *cfg)
{
    char name[FA_KERNEL_NAME_MAX];
    snprintf(name, sizeof name, "bwd_%s_hd%d_%s%s%s%s", fa_family_name(family), t->head_dim_padded,
             fa_dtype_short(p->dtype), fa_mask_suffix(p), p->softcap > 0.0f ? "_softcap" : "",
             g->deterministic ? "_det" : "");
    fa_launch_start(cfg, name, family, dev);
    fa_launch_take_tile(cfg, t);
    const int64_t key_blocks = p->seqlen_k > 0 ? ceil_div(p->seqlen_k, t->block_n) : 1;
    return fa_launch_grid(cfg, key_blocks, at_least_1(p->heads_kv), at_least_1(p->batch),
                          "(key blocks, heads_kv, batch)", dev);
}

/* The family's tile for p on dev; -1 where it has none. */
static int backward_tile(fa_kernel_family family, const fa_params *p, const fa_grad_params *g,
                         const fa_device *dev, fa_tile *t)
{
#ifdef FA_WITH_SM90
    if (family == FA_KERNEL_SM90)
        return fa_sm90_bwd_tile(p, g, t);
#endif
#ifdef FA_WITH_SM80
    if (family == FA_KERNEL_SM80)
        return fa_sm80_bwd_tile(p, g, dev->smem_optin, t);
#endif
    (void)p, (void)g, (void)dev, (void)t;
    return -1;
}

/* Preprocess, main kernel (none when no entry has a key), postprocess, and the workspace. */
static fa_status plan_backward(const fa_params *p, const fa_grad_params *g, const fa_device *dev,
                               backward_plan *bp)
{
    fa_status s;
    fa_kernel_family family;
    if ((s = choose_backward_family(p, g, dev, &family)) != FA_OK)
        return s;
    memset(bp, 0, sizeof *bp);
    bp->family = family;
    if (backward_tile(family, p, g, dev, &bp->tile) != 0)
        return fa_fail(FA_ERR_UNSUPPORTED, "kernel family %s has no backward tile for head_dim %d",
                       fa_family_name(family), p->head_dim);
    fa_plan *plan = &bp->plan;
    int n = 0;
    bp->pre = n;
    if ((s = plan_rows_launch(p, "bwd_pre", family, dev, &plan->launches[n++])) != FA_OK)
        return s;
    bp->main = -1;
    if (p->seqlen_k > 0 || p->batch == 0 || p->heads_q == 0) {
        bp->main = n;
        if ((s = plan_main_launch(p, g, family, &bp->tile, dev, &plan->launches[n++])) != FA_OK)
            return s;
    }
    bp->post = n;
    if ((s = plan_rows_launch(p, "bwd_post", family, dev, &plan->launches[n++])) != FA_OK)
        return s;
    plan->num_launches = n;
    plan->main_launch = bp->main >= 0 ? bp->main : bp->post;
    fa_bwd_workspace ws;
    plan->workspace_bytes = carve_workspace(p, g, bp->tile.block_m, NULL, &ws);
    return fa_plan_validate(plan, dev);
}

fa_status fa_backward_plan(const fa_params *pc, const fa_grad_params *gc, const fa_device *dev,
                           fa_plan *plan)
{
    fa_params p;
    fa_grad_params g;
    backward_plan bp;
    fa_status s = resolve_and_check(pc, gc, 1, &p, &g);
    if (s != FA_OK || (s = plan_backward(&p, &g, dev, &bp)) != FA_OK)
        return s;
    *plan = bp.plan;
    return FA_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Launch                                                                                      */

#ifdef FA_WITH_SM80
typedef cudaError_t (*bwd_launch_fn)(const fa_params *, const fa_grad_params *,
                                     const fa_bwd_workspace *, const fa_launch *, cudaStream_t);

static bwd_launch_fn main_launch_fn(fa_kernel_family family)
{
#ifdef FA_WITH_SM90
    if (family == FA_KERNEL_SM90)
        return fa_sm90_bwd_launch;
#endif
    (void)family;
    return fa_sm80_bwd_launch;
}

static const void *main_kernel_fn(const fa_params *p, const fa_grad_params *g,
                                  const backward_plan *bp)
{
#ifdef FA_WITH_SM90
    if (bp->family == FA_KERNEL_SM90)
        return fa_sm90_bwd_kernel_fn(p, g, &bp->tile);
#endif
    return fa_sm80_bwd_kernel_fn(p, g, &bp->tile);
}

static fa_status issue(const fa_params *p, const fa_grad_params *g, const backward_plan *bp,
                       const fa_bwd_workspace *ws, cudaStream_t stream)
{
    const bwd_launch_fn launch[3] = {fa_bwd_pre_launch, main_launch_fn(bp->family),
                                     fa_bwd_post_launch};
    const int index[3] = {bp->pre, bp->main, bp->post};
    for (int k = 0; k < 3; k++) {
        if (index[k] < 0)
            continue;
        const fa_launch *cfg = &bp->plan.launches[index[k]];
        cudaError_t err = launch[k](p, g, ws, cfg, stream);
        if (err != cudaSuccess)
            return fa_fail_cuda(err, cfg->kernel, __FILE__, __LINE__);
    }
    return FA_OK;
}

/* Every kernel of the plan present for this GPU and opted in before the first launch. */
static fa_status prepare_all(const fa_params *p, const fa_grad_params *g, backward_plan *bp,
                             int device, const fa_device *dev, cudaStream_t stream)
{
    fa_launch *l = bp->plan.launches;
    const void *fns[3] = {fa_bwd_pre_kernel_fn(p),
                          bp->main >= 0 ? main_kernel_fn(p, g, bp) : NULL,
                          fa_bwd_post_kernel_fn(p)};
    const int index[3] = {bp->pre, bp->main, bp->post};
    for (int k = 0; k < 3; k++) {
        if (index[k] < 0)
            continue;
        if (!fns[k])
            return fa_fail(FA_ERR_UNSUPPORTED, "%s is not instantiated in this build",
                           l[index[k]].kernel);
        fa_status s = fa_prepare_kernel(fns[k], device, dev, &l[index[k]], stream);
        if (s != FA_OK)
            return s;
    }
    return FA_OK;
}
#endif

fa_status fa_backward(const fa_params *pc, const fa_grad_params *gc, cudaStream_t stream)
{
    fa_params p;
    fa_grad_params g;
    fa_status s = resolve_and_check(pc, gc, 1, &p, &g);
    if (s != FA_OK)
        return s;
    if (backward_empty(&p)) {
        /* No rows anywhere: each sink's gradient is an empty sum. */
        if (g.dsinks && p.heads_q > 0)
            FA_CUDA_TRY(cudaMemsetAsync(g.dsinks, 0, sizeof(float) * (size_t)p.heads_q, stream));
        return FA_OK;
    }
    int device;
    fa_device dev;
    backward_plan bp;
    if ((s = fa_current_device(&device, &dev)) != FA_OK ||
        (s = plan_backward(&p, &g, &dev, &bp)) != FA_OK)
        return s;
#ifdef FA_WITH_SM80
    if ((s = prepare_all(&p, &g, &bp, device, &dev, stream)) != FA_OK)
        return s;
    fa_workspace w;
    if ((s = fa_workspace_acquire(&p, bp.plan.workspace_bytes, "fa_backward_plan", stream, &w)) != FA_OK)
        return s;
    fa_bwd_workspace ws;
    carve_workspace(&p, &g, bp.tile.block_m, (char *)w.base, &ws);
    s = issue(&p, &g, &bp, &ws, stream);
    s = fa_workspace_release(&w, stream, s);
    if (s != FA_OK)
        return s;
    fa_plan_record(&bp.plan, &p);
    return FA_OK;
#else
    (void)stream;
    return fa_fail(FA_ERR_NO_KERNEL_FOR_ARCH, "this build has no backward kernel");
#endif
}
