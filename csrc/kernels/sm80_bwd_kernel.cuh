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

template <class C, bool SEQ>
struct CtaWalk {
    int batch, hk, n_block, key0, len_q, len_k;
    fa_seqlen entry; /* seqlen.h: where the entry's rows and keys are */
    fa_mask mask;
    fa_row_block_range range;

    __device__ __forceinline__ static CtaWalk make(const BwdArgs &p, int n_block, int hk,
                                                   int batch, const fa_seqlen &e)
    {
        CtaWalk w;
        w.n_block = n_block;
        w.batch = batch;
        w.hk = hk;
        w.entry = e;
        w.len_q = e.len_q;
        w.len_k = e.len_k;
        w.key0 = n_block * C::kBN;
        w.mask = make_bwd_mask(p, w.len_q, w.len_k);
        return w;
    }
    /* from blockIdx (key blocks from the last when deterministic, dq_turns.cuh) and, SEQ, the
       layout in global memory: before the prologue's barrier */
    __device__ __forceinline__ static CtaWalk direct(const BwdArgs &p)
    {
        const fa_seq_layout layout = layout_of<SEQ>(p);
        const int batch = blockIdx.z;
        CtaWalk w = make(p, dq_turn_key_block(p.key_blocks), blockIdx.y, batch,
                         fa_seqlen_at(&layout, batch));
        w.range = fa_block_range_cols(&w.mask, w.key0, w.key0 + C::kBN, C::kBM);
        return w;
    }
    /* thread 0, before the prologue's barrier */
    __device__ __forceinline__ void save(unsigned char *smem, BwdEntrySlot slot, int n_iters) const
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
        if constexpr (SEQ)
            slot.store(entry);
    }
    /* from the copy in shared memory: after the prologue's barrier */
    __device__ __forceinline__ static CtaWalk saved(const BwdArgs &p, uint32_t smem_base,
                                                    BwdEntrySlot slot)
    {
        const uint32_t ids = smem_base + C::kIdsOffset;
        const int batch = ld_shared_s32(ids + 8);
        fa_seqlen e;
        if constexpr (SEQ) {
            e = slot.load();
        } else {
            const fa_seq_layout layout = layout_of<false>(p);
            e = fa_seqlen_at(&layout, batch);
        }
        CtaWalk w = make(p, ld_shared_s32(ids), ld_shared_s32(ids + 4), batch, e);
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

/* Saves the CTA's walk to shared memory for the steps (thread 0) and zeroes the warps' step
   counters; returns the number of steps. */
template <class C, bool SEQ>
__device__ __forceinline__ int save_walk(const CtaWalk<C, SEQ> &w, const BwdArgs &p, unsigned char *smem,
                                         BwdEntrySlot slot)
{
    const int n_iters = p.heads_per_kv * w.blocks();
    if (threadIdx.x == 0)
        w.save(smem, slot, n_iters);
    if ((threadIdx.x & 31) == 0)
        reinterpret_cast<int *>(smem + C::kIdsOffset)[kWalkInts + (threadIdx.x >> 5)] = 0;
    return n_iters;
}

/* K and V, and the first step's Q (with lse, delta) and dO, waited for. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_first_step(const BwdArgs &p, uint32_t smem_base)
{
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::direct(p);
    const int h = w.head(p, 0), row0 = w.block(0) * C::kBM;
    load_kv<C, SEQ>(smem_base, p, w.entry, w.batch, w.hk, w.key0);
    load_q_stats<C, SEQ>(smem_base, p, w.entry, w.batch, h, row0);
    load_do<C, SEQ>(smem_base, p, w.entry, w.batch, h, row0);
    cp_async_commit_group();
    cp_async_wait_group<0>();
    __syncthreads();
}

/* The next step's Q (with lse, delta), or dO, into the single buffers, one commit group each;
   none after the last step. */
template <class C, bool SEQ, bool DO>
__device__ __forceinline__ void copy_next(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot)
{
    if (warp_step<C>(smem_base) + 1 < ld_shared_s32(smem_base + C::kIdsOffset + 12)) {
        const int it = warp_step<C>(smem_base);
        const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
        if constexpr (DO)
            load_do<C, SEQ>(smem_base, p, w.entry, w.batch, w.head(p, it + 1), w.block(it + 1) * C::kBM);
        else
            load_q_stats<C, SEQ>(smem_base, p, w.entry, w.batch, w.head(p, it + 1),
                                 w.block(it + 1) * C::kBM);
        cp_async_commit_group();
    }
}

/* S, dP, then P and dS of the step, as 16-bit rows in shared memory (sdp_block). */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_probs(const BwdArgs &p, uint32_t smem_base, unsigned char *smem,
                                           BwdEntrySlot slot)
{
    const int it = warp_step<C>(smem_base);
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
    const int m = w.block(it);
    const bool masked = fa_row_block_needs_mask(&w.range, m);
    if (p.score.softcap_pre != 0.f)
        sdp_block<C, BF16, true>(smem_base, smem, m * C::kBM, w.key0, w.len_q, masked, w.mask, p.score);
    else
        sdp_block<C, BF16, false>(smem_base, smem, m * C::kBM, w.key0, w.len_q, masked, w.mask, p.score);
}

/* dK += dS^T Q and dV += P^T dO; the next step's Q and dO are copied as soon as their buffers
   are read (kSchedule 0: Q between the two GEMMs). */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_key_grads(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot,
                                               float (&dk)[C::kKvMT][C::kKvNT][4],
                                               float (&dv)[C::kKvMT][C::kKvNT][4])
{
    if constexpr (C::kSchedule == 0) {
        kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
        __syncthreads();
        copy_next<C, SEQ, false>(p, smem_base, slot);
        kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
        __syncthreads();
        copy_next<C, SEQ, true>(p, smem_base, slot);
    } else {
        kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
        kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
        __syncthreads();
        copy_next<C, SEQ, false>(p, smem_base, slot);
        copy_next<C, SEQ, true>(p, smem_base, slot);
    }
}

/* dQ = dS K of the step, from the warps that hold it, added into dq_accum (rows laid out like
   the LSE, fa_lse_index, head_dim wide); in the key block's turn when deterministic. */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_dq(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot)
{
    const int warp = reread_thread_index() >> 5;
    float dq[C::kDqMT][C::kDqNT][4];
    if (warp < C::kDqWarps)
        dq_gemm<C, BF16>(dq, smem_base);
    const int it = warp_step<C>(smem_base);
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
    const int h = w.head(p, it), m = w.block(it);
    const int tid = reread_thread_index();
    if (p.deterministic)
        dq_turn_wait(p, w.mask, w.batch, h, m, w.n_block, C::kBM, C::kBN, tid);
    if (warp < C::kDqWarps) {
        const fa_seq_layout layout = layout_of<SEQ>(p);
        float *dst = p.dq_accum + fa_lse_index(&layout, &w.entry, w.batch, p.heads_q, h, m * C::kBM) * p.head_dim;
        dq_add<C>(dq, dst, min(C::kBM, w.len_q - m * C::kBM), p.head_dim);
    }
    if (p.deterministic)
        dq_turn_pass(p, w.batch, h, m, tid);
}

/* SEQ false: a uniform batch (layout_of: no layout array), the code of the uniform backward;
   SEQ true: packed cu_seqlens and seqused_k (seqlen.h), the entry kept in shared memory
   (BwdEntrySlot). The host picks by whether p has a layout array. */
template <int HDP, bool BF16, bool SEQ>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) bwd_sm80_kernel(const BwdArgs p)
{
    using C = BwdConfig<HDP>;
    using Walk = CtaWalk<C, SEQ>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);
    __shared__ __align__(4) int entry_ints[SEQ ? kBwdEntryInts : 1];
    const BwdEntrySlot slot{smem_addr(entry_ints)};

    int n_iters;
    {
        const Walk w = Walk::direct(p);
        if (w.key0 >= w.len_k)
            return; /* a key block past a shorter entry's keys: nothing to do */
        n_iters = save_walk<C, SEQ>(w, p, smem, slot);
    }
    float dk[C::kKvMT][C::kKvNT][4], dv[C::kKvMT][C::kKvNT][4];
    zero_acc(dk);
    zero_acc(dv);
    if (n_iters > 0) {
        load_first_step<C, SEQ>(p, smem_base);
        const uint32_t n_iters_at = smem_base + C::kIdsOffset + 12;
#pragma unroll 1
        while (warp_step<C>(smem_base) < ld_shared_s32(n_iters_at)) {
            step_probs<C, BF16, SEQ>(p, smem_base, smem, slot);
            __syncthreads();
            step_key_grads<C, BF16, SEQ>(p, smem_base, slot, dk, dv);
            step_dq<C, BF16, SEQ>(p, smem_base, slot);
            advance_warp_step<C>(smem_base);
            cp_async_wait_group<0>();
            __syncthreads();
        }
    }
    __syncthreads(); /* the saved indices are visible also where no block was walked */
    const Walk w = Walk::saved(p, smem_base, slot);
    store_dkdv<C, BF16, SEQ>(p, smem, dk, dv, w.entry, w.batch, w.hk, w.key0);
}

typedef void (*bwd_kernel_t)(const BwdArgs);

template <int HDP, bool SEQ>
bwd_kernel_t pick_bwd_dtype(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return bwd_sm80_kernel<HDP, false, SEQ>;
    case FA_BFLOAT16: return bwd_sm80_kernel<HDP, true, SEQ>;
    default: return nullptr;
    }
}

/* The SEQ instances serve p's layout arrays (packed cu_seqlens, seqused_k); without one, the
   uniform instances run, the code of the uniform batch alone (as the forward's). */
template <int HDP>
bwd_kernel_t pick_bwd_layout(const fa_params *p)
{
    const bool seq = p->cu_seqlens_q != NULL || p->cu_seqlens_k != NULL ||
                     p->seqused_k != NULL || p->kv_batch_idx != NULL || p->block_table != NULL;
    return seq ? pick_bwd_dtype<HDP, true>(p->dtype) : pick_bwd_dtype<HDP, false>(p->dtype);
}

} /* namespace fa_sm80 */

/* The backward kernel of head dim HD that serves p, or NULL. */
#define FA_SM80_BWD_DEFINE_HEAD_DIM(HD)                                                          \
    extern "C" const void *fa_sm80_bwd_hd##HD##_kernel(const fa_params *p)                      \
    {                                                                                            \
        return reinterpret_cast<const void *>(fa_sm80::pick_bwd_layout<HD>(p));                \
    }

#endif /* FA_SM80_BWD_KERNEL_CUH */
