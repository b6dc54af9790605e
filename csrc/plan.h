/*
 * plan.h -- the launch machinery every op's planner shares (launch.c implements it; the
 * forward's planner is in launch.c, the backward's in backward.c).
 *
 * An op's planner resolves and checks its params, chooses a family, fills one fa_launch per
 * kernel (fa_launch_start, fa_launch_take_tile for a main kernel, fa_launch_grid), and
 * validates them all (fa_plan_validate) before anything runs. Its launcher then checks each
 * kernel image and opts it into its shared memory (fa_prepare_kernel), issues the launches, and
 * records the plan (fa_plan_record).
 */
#ifndef FA_PLAN_H
#define FA_PLAN_H

#include "flashattn.h"
#include "kernels/kernels.h" /* fa_tile */

/* Which family serves `requested` on a device major.minor (no CUDA call). */
fa_status fa_choose_family(fa_kernel_family requested, int major, int minor,
                           fa_kernel_family *chosen);
int fa_family_built(fa_kernel_family family);
/* Whether the family's forward kernel can append the KV-cache op's new keys itself
   (fa_run_forward_launch's append). */
int fa_family_appends(fa_kernel_family family);

/* A launch of `kernel` for `dev` with the contract's block; grid and tile fields left 0. */
void fa_launch_start(fa_launch *cfg, const char *kernel, fa_kernel_family family,
                     const fa_device *dev);

/* The main kernel's tile into its launch: shared memory, block sizes, stages, padded head_dim. */
void fa_launch_take_tile(fa_launch *cfg, const fa_tile *t);

/* Sets cfg->grid = (x, y, z), or fails naming `dims` (e.g. "(query blocks, heads_q, batch)")
 * when a dimension exceeds the device's limit. */
fa_status fa_launch_grid(fa_launch *cfg, int64_t x, int64_t y, int64_t z, const char *dims,
                         const fa_device *dev);

/* Every launch of the plan against the contract (block (384,1,1), smem, grid). */
fa_status fa_plan_validate(const fa_plan *plan, const fa_device *dev);

/* fn's image exists for this GPU, it can run the contract's block, and it is opted into
 * cfg->smem_bytes; fills cfg->regs, device and stream. */
fa_status fa_prepare_kernel(const void *fn, int device, const fa_device *dev, fa_launch *cfg,
                            cudaStream_t stream);

/* Records an issued plan for fa_last_plan and logs it when FLASHATTN_C_LOG_LAUNCH is set. */
void fa_plan_record(const fa_plan *plan, const fa_params *p);

/* "fp16" / "bf16" and the mask suffix ("", "_causal", "_window") of kernel names. */
const char *fa_dtype_short(fa_dtype d);
const char *fa_mask_suffix(const fa_params *p);

/* The forward's family for p on dev: p->family resolved, auto taking sm80 for a sequence
 * layout the sm90 kernel lacks (fa_sm90_seq_unsupported). */
fa_status fa_forward_family(const fa_params *p, const fa_device *dev, fa_kernel_family *family);
/* The forward kernel's launch for resolved, checked p (also the KV-cache op's main launch
 * for long query chunks), and running it: its kernel image prepared, then launched. append
 * (NULL but for the KV-cache op, on a family that appends): p's k and v hold each entry's
 * cached keys, and the kernel reads append's new ones where they are and copies them after. */
fa_status fa_plan_forward_launch(const fa_params *p, const fa_device *dev,
                                 fa_kernel_family family, fa_launch *cfg);
fa_status fa_run_forward_launch(const fa_params *p, const fa_kvcache_params *append, fa_launch *cfg,
                                int device, const fa_device *dev, cudaStream_t stream);

/* A plan's device workspace: p->workspace when the caller gave one (checked against `need`;
 * `planner` names the query that sizes it), else a stream-ordered allocation on `stream`
 * (exact under FLASHATTN_C_EXACT_ALLOC) that fa_workspace_release frees after the launches
 * enqueued before it. release returns `status`, or the free's error when status was FA_OK. */
typedef struct {
    void *base;
    int owned, exact;
} fa_workspace;
fa_status fa_workspace_acquire(const fa_params *p, size_t need, const char *planner,
                               cudaStream_t stream, fa_workspace *w);
fa_status fa_workspace_release(fa_workspace *w, cudaStream_t stream, fa_status status);

/* "dense", "packed", "paged", "cache": the sequence layout, for the launch log. */
const char *fa_layout_name(const fa_params *p);

/* The current device and its description. */
fa_status fa_current_device(int *device, fa_device *dev);

#endif /* FA_PLAN_H */
