/*
 * sm80_bwd_kernel.cuh -- the sm80 backward main kernel's skeleton: the CTA's query-block range
 * (block_range.h), K/V and the first Q/dO block, the walk over q heads x query blocks with
 * the copies of the next block slotted between the GEMMs, the epilogue; and the instance
 * table (dtype per head dim), expanded per head dim in bwd_sm80_hd<D>.cu. bwd_sm80.cu's top
 * comment has the design.
 *
 * One query block (h, m), with the block-wide barriers that order the single Q/dO buffers
 * (schedule 0; config SCHEDULE):
 *   S, P, dP, dS (P and dS to smem)                        reads Q, dO, K, V, lse, delta
 *   __syncthreads                                           P, dS visible; Q/dO/lse/delta
 *                                                           of phase 1 read
 *   dK += dS^T Q
 *   __syncthreads, copy next Q, lse, delta                  Q free
 *   dV += P^T dO
 *   __syncthreads, copy next dO                             dO free
 *   dQ = dS K, added to dq_accum
 *   wait for the copies, __syncthreads                      next block visible; P, dS free
 * Q's copy overlaps dV and dQ, dO's overlaps dQ. Schedule 1 (head_dim 128) runs dK and dV
 * back to back and copies both after one barrier: a barrier fewer, both copies over dQ only.
 * Where the time goes at head_dim 128 (H200, 16k tokens, schedule 0 at 170 TFLOP/s; each
 * variant left one part out): S/dP/P/dS 34%, dQ GEMM and adds 25% (of which the fp32 adds
 * 16%), dK and dV GEMMs 14%, waiting for the Q/dO copies 11%, the two mid-block barriers 4%.
 *
 * softcap and the mask kind are runtime here (the softcap branch is taken once per block and
 * selects one of two inlined copies of the elementwise pass; the mask costs nothing outside
 * the masked blocks): 6 instances instead of 36 keep the build short.
 */
#ifndef FA_SM80_BWD_KERNEL_CUH
#define FA_SM80_BWD_KERNEL_CUH

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "sm80_bwd_config.cuh"
#include "sm80_bwd_epilogue.cuh"
#include "sm80_bwd_load.cuh"
#include "sm80_bwd_math.cuh"

namespace fa_sm80 {

/* The CTA's place and its walk: query blocks m_min <= m < m_max of each q head of the group
   (block_range.h), step it = (h - first head) * (m_max - m_min) + (m - m_min). Thread 0
   stores the block indices, the trip count and the range in shared memory before the
   prologue's barrier, and every later use reads them back there, as it reads its warp's step
   counter (advanced by lane 0): ptxas treats %ctaid as one value however often it is read,
   kept these scalars live across the main loop and spilled them, the GEMMs' fragments taking
   every other register; recomputing the range at each use cost 4 x ~100 instructions a step.
   Layout (ints): n_block, hk, batch, n_iters, m_min, m_max, m_full_min, m_full_max, then one
   step per warp. */
constexpr int kWalkInts = 8;

template <class C>
struct CtaWalk {
    int batch, hk, n_block, key0, len_q, len_k;
    fa_mask mask;
    fa_row_block_range range;

    __device__ __forceinline__ static CtaWalk make(const BwdArgs &p, int n_block, int hk,
                                                   int batch)
    {
        CtaWalk w;
        w.n_block = n_block;
        w.batch = batch;
        w.hk = hk;
        const fa_seqlen len = fa_seqlen_of(batch, p.seqlen_q, p.seqlen_k, nullptr, nullptr);
        w.len_q = len.len_q;
        w.len_k = len.len_k;
        w.key0 = n_block * C::kBN;
        w.mask = make_bwd_mask(p, w.len_q, w.len_k);
        return w;
    }
    /* from blockIdx: before the prologue's barrier */
    __device__ __forceinline__ static CtaWalk direct(const BwdArgs &p)
    {
        CtaWalk w = make(p, blockIdx.x, blockIdx.y, blockIdx.z);
        w.range = fa_block_range_cols(&w.mask, w.key0, w.key0 + C::kBN, C::kBM);
        return w;
    }
    /* thread 0, before the prologue's barrier */
    __device__ __forceinline__ void save(unsigned char *smem, int n_iters) const
    {
        int *ids = reinterpret_cast<int *>(smem + C::kIdsOffset);
        ids[0] = n_block;
        ids[1] = hk;
        ids[2] = batch;
        ids[3] = n_iters;
        ids[4] = range.m_min;
        ids[5] = range.m_max;
        ids[6] = range.m_full_min;
        ids[7] = range.m_full_max;
    }
    /* from the copy in shared memory: after the prologue's barrier */
    __device__ __forceinline__ static CtaWalk saved(const BwdArgs &p, uint32_t smem_base)
    {
        const uint32_t ids = smem_base + C::kIdsOffset;
        CtaWalk w = make(p, ld_shared_s32(ids), ld_shared_s32(ids + 4), ld_shared_s32(ids + 8));
        w.range.m_min = ld_shared_s32(ids + 16);
        w.range.m_max = ld_shared_s32(ids + 20);
        w.range.m_full_min = ld_shared_s32(ids + 24);
        w.range.m_full_max = ld_shared_s32(ids + 28);
        return w;
    }
    __device__ __forceinline__ int blocks() const { return range.m_max - range.m_min; }
    __device__ __forceinline__ int head(const BwdArgs &p, int it) const
    {
        return hk * p.heads_per_kv + it / blocks();
    }
    __device__ __forceinline__ int block(int it) const { return range.m_min + it % blocks(); }
};

/* This warp's step counter in shared memory: read by every lane at each use; advanced by lane 0
   once the warp's lanes are past their last read of the step. */
template <class C>
__device__ __forceinline__ uint32_t warp_step_addr(uint32_t smem_base)
{
    return smem_base + C::kIdsOffset + 4 * kWalkInts + (reread_thread_index() >> 5) * 4;
}

template <class C>
__device__ __forceinline__ int warp_step(uint32_t smem_base)
{
    return ld_shared_s32(warp_step_addr<C>(smem_base));
}

template <class C>
__device__ __forceinline__ void advance_warp_step(uint32_t smem_base)
{
    const uint32_t at = warp_step_addr<C>(smem_base);
    __syncwarp();
    if ((reread_thread_index() & 31) == 0)
        st_shared_s32(at, ld_shared_s32(at) + 1);
    __syncwarp();
}

template <int HDP, bool BF16>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) bwd_sm80_kernel(const BwdArgs p)
{
    using C = BwdConfig<HDP>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);

    int n_iters;
    {
        const CtaWalk<C> w = CtaWalk<C>::direct(p);
        if (w.key0 >= w.len_k)
            return;
        n_iters = p.heads_per_kv * w.blocks();
        if (threadIdx.x == 0)
            w.save(smem, n_iters);
        if ((threadIdx.x & 31) == 0)
            reinterpret_cast<int *>(smem + C::kIdsOffset)[kWalkInts + (threadIdx.x >> 5)] = 0;
    }

    float dk[C::kKvMT][C::kKvNT][4], dv[C::kKvMT][C::kKvNT][4];
    zero_acc(dk);
    zero_acc(dv);

    if (n_iters > 0) {
        {
            const CtaWalk<C> w = CtaWalk<C>::direct(p);
            const int h = w.head(p, 0), row0 = w.block(0) * C::kBM;
            load_kv<C>(smem_base, p, w.batch, w.hk, w.key0, w.len_k);
            load_q_stats<C>(smem_base, p, w.batch, h, row0, w.len_q);
            load_do<C>(smem_base, p, w.batch, h, row0, w.len_q);
            cp_async_commit_group();
            cp_async_wait_group<0>();
            __syncthreads();
        }

        const uint32_t n_iters_at = smem_base + C::kIdsOffset + 12;
        /* the next block's Q (with lse, delta) and dO, each committed as one group */
        auto copy_next_q = [&]() {
            if (warp_step<C>(smem_base) + 1 < ld_shared_s32(n_iters_at)) {
                const int it = warp_step<C>(smem_base);
                const CtaWalk<C> w = CtaWalk<C>::saved(p, smem_base);
                load_q_stats<C>(smem_base, p, w.batch, w.head(p, it + 1),
                                w.block(it + 1) * C::kBM, w.len_q);
                cp_async_commit_group();
            }
        };
        auto copy_next_do = [&]() {
            if (warp_step<C>(smem_base) + 1 < ld_shared_s32(n_iters_at)) {
                const int it = warp_step<C>(smem_base);
                const CtaWalk<C> w = CtaWalk<C>::saved(p, smem_base);
                load_do<C>(smem_base, p, w.batch, w.head(p, it + 1), w.block(it + 1) * C::kBM,
                           w.len_q);
                cp_async_commit_group();
            }
        };
#pragma unroll 1
        while (warp_step<C>(smem_base) < ld_shared_s32(n_iters_at)) {
            {
                const int it = warp_step<C>(smem_base);
                const CtaWalk<C> w = CtaWalk<C>::saved(p, smem_base);
                const int m = w.block(it);
                const bool masked = fa_row_block_needs_mask(&w.range, m);
                if (p.score.softcap_pre != 0.f)
                    sdp_block<C, BF16, true>(smem_base, smem, m * C::kBM, w.key0, w.len_q, masked,
                                             w.mask, p.score);
                else
                    sdp_block<C, BF16, false>(smem_base, smem, m * C::kBM, w.key0, w.len_q,
                                              masked, w.mask, p.score);
            }
            __syncthreads();

            if constexpr (C::kSchedule == 0) {
                kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
                __syncthreads();
                copy_next_q();
                kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
                __syncthreads();
                copy_next_do();
            } else {
                kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
                kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
                __syncthreads();
                copy_next_q();
                copy_next_do();
            }

            {
                const int warp = reread_thread_index() >> 5;
                float dq[1][C::kDqNT][4];
                if (warp < C::kDqWarps)
                    dq_gemm<C, BF16>(dq, smem_base);
                const int it = warp_step<C>(smem_base);
                const CtaWalk<C> w = CtaWalk<C>::saved(p, smem_base);
                const int h = w.head(p, it), m = w.block(it);
                const int tid = reread_thread_index();
                if (p.deterministic)
                    dq_turn_wait(p, w.mask, w.batch, h, m, w.n_block, C::kBM, C::kBN, tid);
                if (warp < C::kDqWarps) {
                    const int64_t bh = static_cast<int64_t>(w.batch) * p.heads_q + h;
                    float *dst = p.dq_accum + (bh * p.seqlen_q + m * C::kBM) * p.head_dim;
                    dq_add<C>(dq, dst, min(C::kBM, w.len_q - m * C::kBM), p.head_dim);
                }
                if (p.deterministic)
                    dq_turn_pass(p, w.batch, h, m, tid);
            }

            advance_warp_step<C>(smem_base);
            cp_async_wait_group<0>();
            __syncthreads();
        }
    }

    __syncthreads(); /* the saved indices are visible also where no block was walked */
    const CtaWalk<C> w = CtaWalk<C>::saved(p, smem_base);
    store_dkdv<C, BF16>(p, smem, dk, dv, w.batch, w.hk, w.key0, w.len_k);
}

typedef void (*bwd_kernel_t)(const BwdArgs);

template <int HDP>
bwd_kernel_t pick_bwd_dtype(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return bwd_sm80_kernel<HDP, false>;
    case FA_BFLOAT16: return bwd_sm80_kernel<HDP, true>;
    default: return nullptr;
    }
}

} /* namespace fa_sm80 */

/* The backward kernel of head dim HD that serves p, or NULL. */
#define FA_SM80_BWD_DEFINE_HEAD_DIM(HD)                                                          \
    extern "C" const void *fa_sm80_bwd_hd##HD##_kernel(const fa_params *p)                      \
    {                                                                                            \
        return reinterpret_cast<const void *>(fa_sm80::pick_bwd_dtype<HD>(p->dtype));           \
    }

#endif /* FA_SM80_BWD_KERNEL_CUH */
