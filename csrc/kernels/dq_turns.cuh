/*
 * dq_turns.cuh -- the deterministic backward's order of dQ additions, shared by both kernel
 * families' main kernels (kernels.h states the contract):
 *
 *   the CTA of key block n adds its dS K into query block m of (batch, q head h) when
 *   dq_lock[(batch * heads_q + h) * lock_blocks + m] == n_max(m) - 1 - n, then advances it by 1,
 *
 * where n_max(m) is one past the last key block query block m visits (block_range.h), and both
 * the query block (block_m rows) and the key block (block_n keys) are the kernel's own. The
 * counter is read with acquire (what the key block before added is visible after it) and
 * advanced with release. The preprocess zeroes the counters.
 *
 * Why the last key block goes first: a key block walks its query blocks upwards from the first
 * that sees it, and under a causal or sliding-window mask it is the last key block of that
 * first query block. So the key block above has already passed there, and key block n waits
 * at its step s only for key block n + 1's step s - 1 or earlier: CTAs that start together
 * never stall on each other. In first-key-block order, key block n would wait at its first
 * step for all n blocks below (a wave along the diagonal; 0.60x the atomics' speed, causal).
 * For the turns to be reachable the CTA of key block n + 1 must start no later than that of n,
 * so a deterministic grid runs its key blocks last first (fa_key_block_order).
 * Device-only.
 */
#ifndef FA_DQ_TURNS_CUH
#define FA_DQ_TURNS_CUH

#include <stdint.h>

#include "../common/mask.h"
#include "kernels.h"

__device__ __forceinline__ int ld_acquire_gpu_s32(const int *p)
{
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void red_release_gpu_add_s32(int *p, int v)
{
    asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

/* The key block this CTA owns (kernels.h): every key block a turn waits for started before it,
 * since CTAs start in blockIdx order. */
__device__ __forceinline__ int dq_turn_key_block(const fa_key_block_order &order)
{
    return order.first + order.step * static_cast<int>(blockIdx.x);
}

/* The counter of query block m of (batch, h). */
__device__ __forceinline__ int *dq_turn_counter(int *dq_lock, int batch, int heads_q, int h,
                                                int lock_blocks, int m)
{
    return dq_lock + (static_cast<int64_t>(batch) * heads_q + h) * lock_blocks + m;
}

/* Key block n_block's turn at query block m (rows from m * block_m), which it visits. Span
 * ends grow with the row, so the block's last row has the highest: n_max(m) of
 * fa_block_range_rows, from that row alone. */
__device__ __forceinline__ int dq_turn_of(const fa_mask &mask, int m, int n_block, int block_m,
                                          int block_n)
{
    const int last_row = min((m + 1) * block_m, mask.len_q) - 1;
    return fa_mask_row(&mask, last_row).hi / block_n - n_block;
}

#endif /* FA_DQ_TURNS_CUH */
