/*
 * fwd_sm90.cu -- FlashAttention forward for Hopper (sm_90a): warp-specialised TMA + wgmma.
 *
 *   out[b, i, h, :] = softmax_j(hook(scale * q[b, i, h, :] . k[b, j, h/G, :])) v[b, j, h/G, :]
 *   q, out (batch, seqlen_q, heads_q, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim);
 *   any element strides with unit head_dim stride; float16 or bfloat16; head_dim a multiple of
 *   8 up to 256 (run as 64, 128 or 256 with zero padding); lse float32 (batch, heads_q, seqlen_q).
 *   Sequence layouts (common/seqlen.h): packed q and/or k/v (cu_seqlens, lse (heads_q,
 *   total_q)), seqused_k, kv_batch_idx, and paged k/v whose page_size is a multiple of the
 *   instance's key block; fa_sm90_seq_unsupported below names what it refuses. Each entry is
 *   its own sequence: its lengths set its mask, its block range and its stores; rows and keys
 *   a box reads past them (the next packed entry, a cache's unused tail) are never stored
 *   and never weigh: their scores are masked to P = 0 and, where that memory may hold NaN,
 *   their V rows are zeroed in shared memory (sm90_scheduler.cuh, sm90_fwd_mainloop.cuh).
 *   Instances per head dim: mask kind (none, causal, window: common/mask.h, sm90_mask.cuh) x
 *   softcap hook (common/score.h) x dtype; sinks are a runtime pointer read once per tile at the
 *   row end. Key blocks outside a tile's window (common/block_range.h) are never loaded.
 *
 * CTA = 384 threads = 3 warpgroups, persistent over 128-row query tiles (sm90_scheduler.cuh):
 *   warpgroup 0, producer: one thread issues every TMA load -- per tile the two 64-row halves
 *     of Q (one per consumer warpgroup, each with its own full/empty mbarrier pair), K and V
 *     blocks into a ring of FA_SM90_STAGES(head_dim) slots with full/empty mbarriers.
 *     It keeps 24 registers (setmaxnreg) so the consumers can hold 240.
 *   warpgroups 1 and 2, consumers: 64 query rows each. S = Q K^T by wgmma with both operands
 *     in shared memory (K-major, 128-byte swizzle); online softmax in registers; O += P V by
 *     wgmma with P in registers (the S accumulator fragment packed to 16 bit is the A fragment)
 *     and V read transposed (MN-major) straight from its row-major tile. Epilogue: stmatrix
 *     into a staging area, TMA store (sm90_epilogue.cuh). Where shared memory allows (head_dim
 *     64; head_dim 128 causal, and full over at most 1024 keys) O has a staging buffer of its
 *     own and each warpgroup frees its Q rows right after its last Q K^T, so the next tile's Q
 *     load overlaps this tile's tail; head_dim 256 stages O in the V ring instead, which also
 *     frees Q after the last Q K^T; only the next tile's first V load waits for the store to
 *     read the ring. Otherwise O is staged in the warpgroup's Q rows, freed once the store has
 *     read them.
 * The kernel also has a second shape of the 384 threads, three consumer warpgroups of 64 rows
 * (192-row tiles) whose own threads issue the TMA loads (sm90_fwd_kernel.cuh,
 * sm90_pipeline.cuh): it serves head_dim 64 at 168 registers a thread without spills, and
 * dev/fwd_sm90_consumers.cu builds, checks and times it against this shape. No instance of
 * the library uses it (sm90_tiles.h).
 * Overlaps, chosen per head dim (the measured best, benches/NOTES.md; the variants that lost
 * were removed from this file after 170495f, and NOTES records what each measured):
 *   pingpong (head_dim 128): the consumer warpgroups take turns issuing their GEMMs (named
 *     barriers), so one's softmax runs under the other's GEMMs;
 *   S_next = Q K_{j-1}^T and O += P_j V_j issued together in one turn; the softmax of S_next
 *     follows while P_j V_j is in flight (every head dim);
 *   split softmax wait (head_dim 64, 128): keeps the softmax of S_next ahead of the wait for
 *     P_j V_j in the SASS (ptxas otherwise hoists that wait above the softmax);
 *   O staging (sm90_tiles.h) and O in the V ring (head_dim 256), described above;
 *   lazy rescaling (sm90_softmax.cuh): O rescaled only when a row max outgrows its reference
 *     by 2^8;
 *   per-warpgroup key range (causal without pingpong, 64-key blocks): each consumer warpgroup
 *     skips the key blocks above its own rows' diagonal;
 *   paired tiles (causal, two or more tiles per CTA): tiles run in pairs of equal work per CTA
 *     (sm90_scheduler.cuh).
 *
 * Files: sm90_fwd_config.cuh (arguments, shared-memory layout, per-head-dim choices),
 * sm90_pipeline.cuh (the K/V ring and its TMA loads), sm90_fwd_mainloop.cuh (a warpgroup's
 * key loop), sm90_fwd_kernel.cuh (roles, tile loop, store), sm90_epilogue.cuh, sm90_softmax.cuh,
 * sm90_mask.cuh, sm90_scheduler.cuh, sm90_tensor_map.h (host TMA maps), sm90_fwd_launch.cuh
 * (an instance's arguments and launch); sm90_instances.def lists the instances, each head dim
 * compiled in its own fwd_sm90_hd<D>.cu. This file routes the family's calls by head dim.
 *
 * Build (each of fwd_sm90.cu, fwd_sm90_hd64.cu, fwd_sm90_hd128.cu, fwd_sm90_hd256.cu):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *        -gencode arch=compute_90a,code=sm_90a -I csrc csrc/kernels/fwd_sm90_hd128.cu
 */
#include <cuda_runtime.h>

#include <climits>
#include <cstdio>

#include "kernels.h"
#include "sm90_tiles.h"

// One pair per head dim, defined in fwd_sm90_hd<D>.cu (sm90_fwd_launch.cuh).
#define FA_SM90_HEAD_DIM_ENTRIES(HD)                                                        \
    extern "C" const void *fa_sm90_hd##HD##_kernel_fn(const fa_params *p);                  \
    extern "C" cudaError_t fa_sm90_hd##HD##_launch(const fa_params *p, const fa_kvcache_params *append, \
                                                   const fa_launch *cfg, cudaStream_t stream);
FA_SM90_HEAD_DIM_ENTRIES(64)
FA_SM90_HEAD_DIM_ENTRIES(128)
FA_SM90_HEAD_DIM_ENTRIES(256)
#undef FA_SM90_HEAD_DIM_ENTRIES

extern "C" const void *fa_sm90_kernel_fn(const fa_params *p, const fa_tile *t) {
    (void)t;
    switch (p ? fa_head_dim_padded(p->head_dim) : 0) {
    case 64: return fa_sm90_hd64_kernel_fn(p);
    case 128: return fa_sm90_hd128_kernel_fn(p);
    case 256: return fa_sm90_hd256_kernel_fn(p);
    }
    return nullptr;
}

extern "C" cudaError_t fa_sm90_launch_appending(const fa_params *p, const fa_kvcache_params *append,
                                                const fa_launch *cfg, cudaStream_t stream) {
    if (cfg == nullptr) return cudaErrorInvalidValue;
    switch (p ? fa_head_dim_padded(p->head_dim) : 0) {
    case 64: return fa_sm90_hd64_launch(p, append, cfg, stream);
    case 128: return fa_sm90_hd128_launch(p, append, cfg, stream);
    case 256: return fa_sm90_hd256_launch(p, append, cfg, stream);
    }
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t fa_sm90_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream) {
    return fa_sm90_launch_appending(p, nullptr, cfg, stream);
}

extern "C" int fa_sm90_archs(int *archs, int max) {
    int n = 0;
#if defined(__CUDA_ARCH_LIST__)
    constexpr int list[] = {__CUDA_ARCH_LIST__};
    for (int a : list)
        if (a == 900 && n < max && archs != nullptr) archs[n++] = a / 10;
#else
    (void)archs;
    (void)max;
#endif
    return n;
}

// What of p's sequence layout the sm90 forward cannot run (pure host; NULL: it runs it all):
//   paged k/v with a page_size that no key block of the head dim's instances divides: a key
//     block must lie inside one page, so that one TMA box (page, row) loads it;
//   packed q with total_q past INT32_MAX - 64: a Q box starts up to 63 rows past the last
//     entry, and TMA coordinates are signed 32-bit.
// The message is kept per thread until this thread's next call.
extern "C" const char *fa_sm90_seq_unsupported(const fa_params *p) {
    static thread_local char why[128];
    if (p == nullptr) return nullptr;
    fa_tile t;
    if (p->block_table && fa_sm90_tile(p, &t) == 0 && (p->page_size <= 0 || p->page_size % t.block_n != 0)) {
        // Neither of the head dim's instances divides page_size (fa_sm90_short_keys): name both.
        const int hd = t.head_dim_padded, masked = fa_params_mask_kind(p) != FA_MASK_NONE;
        const int n0 = FA_SM90_BLOCK_N(hd, masked, 0), n1 = FA_SM90_BLOCK_N(hd, masked, 1);
        if (n0 != n1)
            std::snprintf(why, sizeof why, "paged k/v needs page_size a multiple of %d or %d on sm90 (got %d)", n0,
                          n1, p->page_size);
        else
            std::snprintf(why, sizeof why, "paged k/v needs page_size a multiple of %d on sm90 (got %d)", n0,
                          p->page_size);
        return why;
    }
    if (p->cu_seqlens_q && p->total_q > INT_MAX - 64) {
        std::snprintf(why, sizeof why, "packed q needs total_q at most %d on sm90 (got %d)", INT_MAX - 64,
                      p->total_q);
        return why;
    }
    return nullptr;
}
