/*
 * dq_turns.cuh -- the deterministic backward's order of dQ additions, shared by both kernel
 * families' main kernels (kernels.h states the contract):
 *
 *   the CTA of key block n adds its dS K into query block m of (batch, q head h) when
 *   dq_lock[(batch * heads_q + h) * lock_blocks + m] == n - n_min(m), then advances it by 1,
 *
 * where n_min(m) is the first key block query block m visits (block_range.h), and both the
 * query block (block_m rows) and the key block (block_n keys) are the kernel's own. The
 * counter is read with acquire (what the key block before added is visible after it) and
 * advanced with release. The preprocess zeroes the counters.
 * Device-only.
 */
#ifndef FA_DQ_TURNS_CUH
#define FA_DQ_TURNS_CUH

#include <stdint.h>

#include "../common/block_range.h"
#include "../common/mask.h"

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

/* The counter of query block m of (batch, h). */
__device__ __forceinline__ int *dq_turn_counter(int *dq_lock, int batch, int heads_q, int h,
                                                int lock_blocks, int m)
{
    return dq_lock + (static_cast<int64_t>(batch) * heads_q + h) * lock_blocks + m;
}

/* Key block n_block's turn at query block m (rows from m * block_m). */
__device__ __forceinline__ int dq_turn_of(const fa_mask &mask, int m, int n_block, int block_m,
                                          int block_n)
{
    const int row0 = m * block_m;
    const fa_block_range r =
        fa_block_range_rows(&mask, row0, min(row0 + block_m, mask.len_q), block_n);
    return n_block - r.n_min;
}

#endif /* FA_DQ_TURNS_CUH */
