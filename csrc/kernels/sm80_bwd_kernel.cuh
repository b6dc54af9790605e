/*
 * sm80_bwd_kernel.cuh -- the sm80 backward main kernel's skeleton: the CTA's query-block range
 * (block_range.h), K/V and the first Q/dO block, the walk over q heads x query blocks with
 * the copies of the next block slotted between the GEMMs, the epilogue; and the instance
 * table (dtype per head dim), expanded per head dim in bwd_sm80_hd<D>.cu. bwd_sm80.cu's top
 * comment has the design.
 *
 * One query block (h, m), with the block-wide barriers that order a single Q/dO stage
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
 * With two stages (the wide tier) the step starts by copying the next block's Q, lse, delta
 * and dO into the other stage, which the previous step was done with at its last barrier,
 * and has only the two barriers that order P and dS.
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

/* The CTA's place and its walk: query blocks m_min <= m < m_max of each q head h of the group
   (block_range.h), in the order (h, m), m fastest. Thread 0 stores the block indices, the end
   of the walk and the range in shared memory before the prologue's barrier, and every later
   use reads them back there, as it reads its warp's position (h, m) (advanced by lane 0, m
   then h, with no division): ptxas treats %ctaid as one value however often it is read, kept
   these scalars live across the main loop and spilled them, the GEMMs' fragments taking every
   other register; recomputing the range at each use cost 4 x ~100 instructions a step, and
   deriving (h, m) from a step count (a division and a remainder by the range's length, 5 a
   step) 109 of the 840 instructions of a step at head_dim 128.
   Layout (ints): n_block, hk, batch, h_end (the group's last q head + 1), m_min, m_max,
   m_full_min, m_full_max, then per warp (h, m) and, with two stages, the step's stage. */
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
    __device__ __forceinline__ void save(unsigned char *smem, BwdEntrySlot slot, int h_end) const
    {
        int *ids = reinterpret_cast<int *>(smem + C::kIdsOffset);
        ids[0] = n_block;
        ids[1] = hk;
        ids[2] = batch;
        ids[3] = h_end;
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
    __device__ __forceinline__ int first_head(const BwdArgs &p) const { return hk * p.heads_per_kv; }
};

/* A step's place in the walk: q head h, query block m. */
struct WarpPos {
    int h, m;
};

/* This warp's (h, m) in shared memory: read by every lane at each use; advanced by lane 0 once
   the warp's lanes are past their last read of the step. */
template <class C>
__device__ __forceinline__ uint32_t warp_pos_addr(uint32_t smem_base)
{
    return smem_base + C::kIdsOffset + 4 * kWalkInts + (reread_thread_index() >> 5) * 4 * C::kWarpPosInts;
}

/* The stage whose Q, dO, lse and delta the warp's step reads (0 with one stage). */
template <class C>
__device__ __forceinline__ int warp_stage(uint32_t smem_base)
{
    if constexpr (C::kStages == 1)
        return 0;
    else
        return ld_shared_s32(warp_pos_addr<C>(smem_base) + 8);
}

template <class C>
__device__ __forceinline__ WarpPos warp_pos(uint32_t smem_base)
{
    const uint32_t at = warp_pos_addr<C>(smem_base);
    return WarpPos{ld_shared_s32(at), ld_shared_s32(at + 4)};
}

/* The walk's end and the range's bounds, read back from shared memory. */
template <class C>
__device__ __forceinline__ int walk_h_end(uint32_t smem_base)
{
    return ld_shared_s32(smem_base + C::kIdsOffset + 12);
}

/* The step after pos: the next query block of the head, or the next head's first. */
template <class C>
__device__ __forceinline__ WarpPos next_pos(uint32_t smem_base, WarpPos pos)
{
    const int m_min = ld_shared_s32(smem_base + C::kIdsOffset + 16);
    const int m_max = ld_shared_s32(smem_base + C::kIdsOffset + 20);
    return pos.m + 1 < m_max ? WarpPos{pos.h, pos.m + 1} : WarpPos{pos.h + 1, m_min};
}

template <class C>
__device__ __forceinline__ void advance_warp_pos(uint32_t smem_base)
{
    __syncwarp();
    if ((reread_thread_index() & 31) == 0) {
        const WarpPos next = next_pos<C>(smem_base, warp_pos<C>(smem_base));
        const uint32_t at = warp_pos_addr<C>(smem_base);
        st_shared_s32(at, next.h);
        st_shared_s32(at + 4, next.m);
        if constexpr (C::kStages == 2)
            st_shared_s32(at + 8, ld_shared_s32(at + 8) ^ 1);
    }
    __syncwarp();
}

/* Saves the CTA's walk to shared memory for the steps (thread 0) and sets each warp's position
   to the first step; returns the number of steps. */
template <class C, bool SEQ>
__device__ __forceinline__ int save_walk(const CtaWalk<C, SEQ> &w, const BwdArgs &p, unsigned char *smem,
                                         BwdEntrySlot slot)
{
    const int n_iters = p.heads_per_kv * w.blocks();
    if (threadIdx.x == 0)
        w.save(smem, slot, w.first_head(p) + p.heads_per_kv);
    if ((threadIdx.x & 31) == 0) {
        int *pos = reinterpret_cast<int *>(smem + C::kIdsOffset) + kWalkInts + (threadIdx.x >> 5) * C::kWarpPosInts;
        pos[0] = w.first_head(p);
        pos[1] = w.range.m_min;
        if constexpr (C::kStages == 2)
            pos[2] = 0;
    }
    return n_iters;
}

/* K and V, and the first step's Q (with lse, delta) and dO (stage 0), waited for. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_first_step(const BwdArgs &p, uint32_t smem_base)
{
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::direct(p);
    const int h = w.first_head(p), row0 = w.range.m_min * C::kBM;
    load_kv<C, SEQ>(smem_base, p, w.entry, w.batch, w.hk, w.key0);
    load_q_stats<C, SEQ>(smem_base, p, w.entry, w.batch, h, row0, 0);
    load_do<C, SEQ>(smem_base, p, w.entry, w.batch, h, row0, 0);
    cp_async_commit_group();
    cp_async_wait_group<0>();
    __syncthreads();
}

/* The next step's Q (with lse, delta) and/or dO, one commit group; none after the last step.
   One stage: into the buffers the step has just finished reading. Two: into the other stage,
   which the previous step was done with at its last barrier. */
template <class C, bool SEQ, bool Q, bool DO>
__device__ __forceinline__ void copy_next(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot)
{
    const WarpPos next = next_pos<C>(smem_base, warp_pos<C>(smem_base));
    if (next.h < walk_h_end<C>(smem_base)) {
        const int stage = C::kStages == 1 ? 0 : warp_stage<C>(smem_base) ^ 1;
        const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
        if constexpr (Q)
            load_q_stats<C, SEQ>(smem_base, p, w.entry, w.batch, next.h, next.m * C::kBM, stage);
        if constexpr (DO)
            load_do<C, SEQ>(smem_base, p, w.entry, w.batch, next.h, next.m * C::kBM, stage);
        cp_async_commit_group();
    }
}

/* S, dP, then P and dS of the step, as 16-bit rows in shared memory (sdp_block). */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_probs(const BwdArgs &p, uint32_t smem_base, unsigned char *smem,
                                           BwdEntrySlot slot)
{
    const int m = warp_pos<C>(smem_base).m;
    const int stage = warp_stage<C>(smem_base);
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
    const bool masked = fa_row_block_needs_mask(&w.range, m);
    if (p.score.softcap_pre != 0.f)
        sdp_block<C, BF16, true>(smem_base, smem, stage, m * C::kBM, w.key0, w.len_q, masked, w.mask, p.score);
    else
        sdp_block<C, BF16, false>(smem_base, smem, stage, m * C::kBM, w.key0, w.len_q, masked, w.mask, p.score);
}

/* dK += dS^T Q and dV += P^T dO. With one stage, the next step's Q and dO are copied as soon
   as their buffers are read (kSchedule 0: Q between the two GEMMs); with two, the copies were
   issued at the step's start and the GEMMs run with no barrier between them. */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_key_grads(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot,
                                               float (&dk)[C::kKvMT][C::kKvNT][4],
                                               float (&dv)[C::kKvMT][C::kKvNT][4])
{
    if constexpr (C::kStages == 2) {
        kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::q_at(warp_stage<C>(smem_base)));
        kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::do_at(warp_stage<C>(smem_base)));
    } else if constexpr (C::kSchedule == 0) {
        kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
        __syncthreads();
        copy_next<C, SEQ, true, false>(p, smem_base, slot);
        kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
        __syncthreads();
        copy_next<C, SEQ, false, true>(p, smem_base, slot);
    } else {
        kv_gemm<C, BF16>(dk, smem_base, C::kDSOffset, C::kQOffset);
        kv_gemm<C, BF16>(dv, smem_base, C::kPOffset, C::kDOOffset);
        __syncthreads();
        copy_next<C, SEQ, true, false>(p, smem_base, slot);
        copy_next<C, SEQ, false, true>(p, smem_base, slot);
    }
}

/* dQ = dS K of the step, from the warps that hold it, added into dq_accum (rows laid out like
   the LSE, fa_lse_index, head_dim wide); in the key block's turn when deterministic. With two
   passes (config kDqPasses) the second half of head_dim follows the first's adds. */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void step_dq(const BwdArgs &p, uint32_t smem_base, BwdEntrySlot slot)
{
    const int warp = reread_thread_index() >> 5;
    float dq[C::kDqMT][C::kDqNT][4];
    if (warp < C::kDqWarps)
        dq_gemm<C, BF16, 0>(dq, smem_base);
    const WarpPos pos = warp_pos<C>(smem_base);
    const CtaWalk<C, SEQ> w = CtaWalk<C, SEQ>::saved(p, smem_base, slot);
    const int h = pos.h, m = pos.m;
    const int tid = reread_thread_index();
    if (p.deterministic)
        dq_turn_wait(p, w.mask, w.batch, h, m, w.n_block, C::kBM, C::kBN, tid);
    if (warp < C::kDqWarps) {
        const fa_seq_layout layout = layout_of<SEQ>(p);
        float *dst = p.dq_accum + fa_lse_index(&layout, &w.entry, w.batch, p.heads_q, h, m * C::kBM) * p.head_dim;
        dq_add<C, 0>(dq, dst, min(C::kBM, w.len_q - m * C::kBM), p.head_dim);
        if constexpr (C::kDqPasses == 2) {
            dq_gemm<C, BF16, 1>(dq, smem_base);
            dq_add<C, 1>(dq, dst, min(C::kBM, w.len_q - m * C::kBM), p.head_dim);
        }
    }
    if (p.deterministic)
        dq_turn_pass(p, w.batch, h, m, tid);
}

/* WIDE: the wide tier's tile (sm80_bwd_tiles.h), else the narrow one. SEQ false: a uniform
   batch (layout_of: no layout array), the code of the uniform backward; SEQ true: packed
   cu_seqlens and seqused_k (seqlen.h), the entry kept in shared memory (BwdEntrySlot). The
   host picks by the planned tile and by whether p has a layout array. */
template <int HDP, bool WIDE, bool BF16, bool SEQ>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) bwd_sm80_kernel(const BwdArgs p)
{
    using C = BwdConfig<HDP, WIDE>;
    using Walk = CtaWalk<C, SEQ>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);
    const BwdEntrySlot slot{smem_base + C::kEntryOffset};

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
#pragma unroll 1
        while (warp_pos<C>(smem_base).h < walk_h_end<C>(smem_base)) {
            if constexpr (C::kStages == 2)
                copy_next<C, SEQ, true, true>(p, smem_base, slot);
            step_probs<C, BF16, SEQ>(p, smem_base, smem, slot);
            __syncthreads();
            step_key_grads<C, BF16, SEQ>(p, smem_base, slot, dk, dv);
            step_dq<C, BF16, SEQ>(p, smem_base, slot);
            advance_warp_pos<C>(smem_base);
            cp_async_wait_group<0>();
            __syncthreads();
        }
    }
    __syncthreads(); /* the saved indices are visible also where no block was walked */
    const Walk w = Walk::saved(p, smem_base, slot);
    store_dkdv<C, BF16, SEQ>(p, smem, dk, dv, w.entry, w.batch, w.hk, w.key0);
}

typedef void (*bwd_kernel_t)(const BwdArgs);

template <int HDP, bool WIDE, bool SEQ>
bwd_kernel_t pick_bwd_dtype(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return bwd_sm80_kernel<HDP, WIDE, false, SEQ>;
    case FA_BFLOAT16: return bwd_sm80_kernel<HDP, WIDE, true, SEQ>;
    default: return nullptr;
    }
}

/* The SEQ instances serve p's layout arrays (packed cu_seqlens, seqused_k); without one, the
   uniform instances run, the code of the uniform batch alone (as the forward's). */
template <int HDP, bool WIDE>
bwd_kernel_t pick_bwd_layout(const fa_params *p)
{
    const bool seq = p->cu_seqlens_q != NULL || p->cu_seqlens_k != NULL ||
                     p->seqused_k != NULL || p->kv_batch_idx != NULL || p->block_table != NULL;
    return seq ? pick_bwd_dtype<HDP, WIDE, true>(p->dtype) : pick_bwd_dtype<HDP, WIDE, false>(p->dtype);
}

/* Whether t has the block sizes of the tier's tile (fa_sm80_bwd_tile planned it). */
template <int HDP, bool WIDE>
bool is_tile_of(const fa_tile *t)
{
    return t->block_m == BwdTileOf<HDP, WIDE>::bm && t->block_n == BwdTileOf<HDP, WIDE>::bn;
}

/* The instance of t's tier for p, or nullptr for block sizes of neither tier. */
template <int HDP>
bwd_kernel_t pick_bwd_tier(const fa_params *p, const fa_tile *t)
{
    if (is_tile_of<HDP, false>(t))
        return pick_bwd_layout<HDP, false>(p);
    if (is_tile_of<HDP, true>(t))
        return pick_bwd_layout<HDP, true>(p);
    return nullptr;
}

} /* namespace fa_sm80 */

/* The backward kernel of head dim HD and tile t that serves p, or NULL. */
#define FA_SM80_BWD_DEFINE_HEAD_DIM(HD)                                                          \
    extern "C" const void *fa_sm80_bwd_hd##HD##_kernel(const fa_params *p, const fa_tile *t)    \
    {                                                                                            \
        return reinterpret_cast<const void *>(fa_sm80::pick_bwd_tier<HD>(p, t));               \
    }

#endif /* FA_SM80_BWD_KERNEL_CUH */
