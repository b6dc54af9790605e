/*
 * plan.h -- the launch machinery every op's planner shares (launch.c implements it; the
 * forward's planner is in launch.c, the backward's in backward.c).
 *
 * An op's planner resolves and checks its params, chooses a family, fills one fa_launch per
 * kernel (fa_launch_start + fa_launch_grid), and validates them all (fa_plan_validate) before
 * anything runs. Its launcher then checks each kernel image and opts it into its shared
 * memory (fa_prepare_kernel), issues the launches, and records the plan (fa_plan_record).
 */
#ifndef FA_PLAN_H
#define FA_PLAN_H

#include "flashattn.h"

/* Which family serves `requested` on a device major.minor (no CUDA call). */
fa_status fa_choose_family(fa_kernel_family requested, int major, int minor,
                           fa_kernel_family *chosen);
int fa_family_built(fa_kernel_family family);

/* A launch of `kernel` for `dev` with the contract's block; grid and tile fields left 0. */
void fa_launch_start(fa_launch *cfg, const char *kernel, fa_kernel_family family,
                     const fa_device *dev);

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

/* The current device and its description. */
fa_status fa_current_device(int *device, fa_device *dev);

#endif /* FA_PLAN_H */
