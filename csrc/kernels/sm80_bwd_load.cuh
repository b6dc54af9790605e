/*
 * sm80_bwd_load.cuh -- global -> shared copies of the sm80 backward: the CTA's K and V (once),
 * and per query block its Q, dO, lse and delta rows.
 *
 * Tiles go through the forward's load_tile_async (sm80_load.cuh): 16-byte cp.async into
 * XOR-swizzled rows, rows past the entry's lengths and chunks past head_dim zero-filled. lse
 * and delta rows are 4-byte copies (their rows start anywhere), zero past len_q; the maths
 * tells such rows apart by their index, not by these values. Rows and the lse/delta index
 * come from seqlen.h for the CTA's batch entry (fa_seqlen e): in a packed batch the rows
 * past an entry's lengths are the next entry's, and are never read.
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

/* Row 0 of entry e's rows of head `head` in a tensor laid out like q (q, dout) or like k
   (k, v): row_offset is seqlen.h's offset of the entry's row 0 (fa_q_row_offset or
   fa_k_row_offset; rows are never paged here, so row i is at row 0 + i * row_stride). */
__device__ __forceinline__ const uint16_t *head_slice(const void *base, int64_t row_offset,
                                                     int64_t head_stride, int head)
{
    return static_cast<const uint16_t *>(base) + row_offset +
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

/* K and V keys [key0, key0 + BN) of entry e (batch index `batch`) and kv head hk; keys past
   e.len_k zero-filled. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_kv(uint32_t smem_base, const BwdArgs &p, const fa_seqlen &e,
                                        int batch, int hk, int key0)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    const fa_seq_layout layout = layout_of<SEQ>(p);
    load_tile_async<C, C::kBN, kThreads>(
        smem_base + C::kKOffset,
        head_slice(p.k,
                   fa_k_row_offset(&layout, &e, batch, 0, p.k_batch_stride, p.k_row_stride),
                   p.k_head_stride, hk),
        p.k_row_stride, key0, e.len_k, col_ok, tid);
    load_tile_async<C, C::kBN, kThreads>(
        smem_base + C::kVOffset,
        head_slice(p.v,
                   fa_k_row_offset(&layout, &e, batch, 0, p.v_batch_stride, p.v_row_stride),
                   p.v_head_stride, hk),
        p.v_row_stride, key0, e.len_k, col_ok, tid);
}

/* Q rows [row0, row0 + BM) of entry e and q head h, and their lse and delta (fa_lse_index:
   (batch, heads_q, seqlen_q), or (heads_q, total_q) packed), into stage `stage`; rows past
   e.len_q zero-filled. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_q_stats(uint32_t smem_base, const BwdArgs &p,
                                             const fa_seqlen &e, int batch, int h, int row0,
                                             int stage)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    const fa_seq_layout layout = layout_of<SEQ>(p);
    load_tile_async<C, C::kBM, kThreads>(
        smem_base + C::q_at(stage),
        head_slice(p.q, fa_q_row_offset(&e, batch, 0, p.q_batch_stride, p.q_row_stride),
                   p.q_head_stride, h),
        p.q_row_stride, row0, e.len_q, col_ok, tid);
    if (tid < 2 * C::kBM) {
        const bool is_delta = tid >= C::kBM;
        const int r = is_delta ? tid - C::kBM : tid;
        const float *rows = (is_delta ? p.delta : p.lse) +
                            fa_lse_index(&layout, &e, batch, p.heads_q, h, 0);
        const bool ok = row0 + r < e.len_q;
        cp_async_4(smem_base + (is_delta ? C::delta_at(stage) : C::lse_at(stage)) + r * 4,
                   ok ? rows + row0 + r : rows, ok ? 4u : 0u);
    }
}

/* dO rows [row0, row0 + BM) of entry e and q head h (q's row addressing, dout's strides), into
   stage `stage`. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_do(uint32_t smem_base, const BwdArgs &p, const fa_seqlen &e,
                                        int batch, int h, int row0, int stage)
{
    bool col_ok;
    const int tid = copy_thread<C>(p, col_ok);
    load_tile_async<C, C::kBM, kThreads>(
        smem_base + C::do_at(stage),
        head_slice(p.dout, fa_q_row_offset(&e, batch, 0, p.do_batch_stride, p.do_row_stride),
                   p.do_head_stride, h),
        p.do_row_stride, row0, e.len_q, col_ok, tid);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_BWD_LOAD_CUH */
