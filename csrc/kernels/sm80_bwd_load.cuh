/*
 * sm80_bwd_load.cuh -- global -> shared copies of the sm80 backward: the CTA's K and V (once),
 * and per query block its Q, dO, lse and delta rows.
 *
 * Tiles go through the forward's load_tile_async (sm80_load.cuh): 16-byte cp.async into
 * XOR-swizzled rows, rows past the sequence and chunks past head_dim zero-filled. lse and
 * delta rows are 4-byte copies (their rows start anywhere), zero past seqlen_q; the maths
 * tells such rows apart by their index, not by these values.
 *
 * Every thread issues its copies and commits them as one group; the caller waits and then
 * meets the others at a __syncthreads before anything reads the region. Thread indices are
 * read afresh at each copy (reread_thread_index): otherwise the per-thread row offsets and
 * pointers are hoisted out of the main loop and held in registers the GEMMs need.
 */
#ifndef FA_SM80_BWD_LOAD_CUH
#define FA_SM80_BWD_LOAD_CUH

#include "sm80_bwd_config.cuh"
#include "sm80_load.cuh"

namespace fa_sm80 {

/* Row 0 of the (batch, head) slice of a (batch, seqlen, heads, head_dim) tensor. */
__device__ __forceinline__ const uint16_t *head_slice(const void *base, int64_t batch_stride,
                                                     int64_t head_stride, int batch, int head)
{
    return static_cast<const uint16_t *>(base) + static_cast<int64_t>(batch) * batch_stride +
           static_cast<int64_t>(head) * head_stride;
}

/* This thread's copy index and whether its 16-byte chunk lies inside head_dim (a chunk past
   it is zero-filled by load_tile_async). */
template <class C>
__device__ __forceinline__ int copy_thread(const BwdArgs &p, bool &col_ok)
{
    const int tid = reread_thread_index();
    col_ok = (tid % C::kChunksPerRow) * 8 < p.head_dim;
    return tid;
}

/* K and V rows [key0, key0 + BN) of kv head hk. */
template <class C>
__device__ __forceinline__ void load_kv(uint32_t smem_base, const BwdArgs &p, int batch, int hk,
                                        int key0, int len_k)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    load_tile_async<C, C::kBN, kThreads>(
        smem_base + C::kKOffset, head_slice(p.k, p.k_batch_stride, p.k_head_stride, batch, hk),
        p.k_row_stride, key0, len_k, col_ok, tid);
    load_tile_async<C, C::kBN, kThreads>(
        smem_base + C::kVOffset, head_slice(p.v, p.v_batch_stride, p.v_head_stride, batch, hk),
        p.v_row_stride, key0, len_k, col_ok, tid);
}

/* Q rows [row0, row0 + BM) of q head h, and their lse and delta. */
template <class C>
__device__ __forceinline__ void load_q_stats(uint32_t smem_base, const BwdArgs &p, int batch,
                                             int h, int row0, int len_q)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    load_tile_async<C, C::kBM, kThreads>(
        smem_base + C::kQOffset, head_slice(p.q, p.q_batch_stride, p.q_head_stride, batch, h),
        p.q_row_stride, row0, len_q, col_ok, tid);
    if (tid < 2 * C::kBM) {
        const bool is_delta = tid >= C::kBM;
        const int r = is_delta ? tid - C::kBM : tid;
        const float *rows = (is_delta ? p.delta : p.lse) +
                            (static_cast<int64_t>(batch) * p.heads_q + h) * p.seqlen_q;
        const bool ok = row0 + r < len_q;
        cp_async_4(smem_base + (is_delta ? C::kDeltaOffset : C::kLseOffset) + r * 4,
                   ok ? rows + row0 + r : rows, ok ? 4u : 0u);
    }
}

/* dO rows [row0, row0 + BM) of q head h. */
template <class C>
__device__ __forceinline__ void load_do(uint32_t smem_base, const BwdArgs &p, int batch, int h,
                                        int row0, int len_q)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    load_tile_async<C, C::kBM, kThreads>(
        smem_base + C::kDOOffset,
        head_slice(p.dout, p.do_batch_stride, p.do_head_stride, batch, h), p.do_row_stride, row0,
        len_q, col_ok, tid);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_BWD_LOAD_CUH */
