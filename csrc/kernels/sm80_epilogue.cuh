/*
 * sm80_epilogue.cuh -- the end of a tile: each row's finalisation (score.h: 1 / sum and the
 * LSE, with the sink in the denominator), O staged through shared memory as 16-bit rows,
 * then 16-byte coalesced stores; and the whole output of a tile whose rows see no key.
 *
 *   out[row, :] = O[row, :] * inv,   lse[row] = top + log(total)   (fa_row_finalize)
 * O staging: BLOCK_M rows of head_dim_padded * 2 bytes at smem offset 0, the swizzle of the
 * K/V stages; it reuses the stages, so it starts after every warp is done reading them.
 * Indices are re-read from %tid / %ctaid (and in the SEQ instances the entry's len_q and
 * first packed row from shared memory, EntrySlot) rather than held across the main loop.
 * Rows are those of the CTA's batch entry (seqlen.h): out rows through fa_q_row_offset, LSE
 * entries through fa_lse_index ((batch, heads_q, seqlen_q), or (heads_q, total_q) packed); a
 * row at or past the entry's len_q is never written (packed, it belongs to the next entry).
 */
#ifndef FA_SM80_EPILOGUE_CUH
#define FA_SM80_EPILOGUE_CUH

#include "../common/score.h"
#include "sm80_config.cuh"
#include "sm80_softmax.cuh"

namespace fa_sm80 {

/* What the epilogue needs of the CTA's batch entry, its len_q and first packed row: from the
   slot (SEQ), or the entry the kernel took at its top (uniform: constant-bank lengths). */
template <bool SEQ>
__device__ __forceinline__ fa_seqlen epilogue_entry(EntrySlot slot, const fa_seqlen &uniform)
{
    if constexpr (SEQ)
        return slot.q_side();
    return uniform;
}

template <class C, bool BF16, fa_mask_kind MASK, bool SEQ>
__device__ __forceinline__ void store_tile(const Args &p, RowState<C> &st, unsigned char *smem,
                                           EntrySlot slot, const fa_seqlen &uniform_entry)
{
    const int tid = reread_thread_index();
    const int lane = tid & 31;
    const int d_half = (tid >> 5) % C::kDS;
    const int row_group = (tid >> 5) / C::kDS;
    const int row0 = tile_row0<C, MASK, SEQ>();
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    /* scale[h]: what this lane's O rows g, g + 8 are multiplied by; lse[h] their LSE */
    const float sink = fa_sink(p.sinks, head);
    float scale[2], lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
        fa_row_finalize(fa_row_max_logit(st.m[h], &p.score), st.l[h], sink, &scale[h], &lse[h]);
    }

    __syncthreads(); /* every warp is done reading the K/V stages that the staging reuses */
    const int r = row_group * C::kWarpRows + (lane >> 2); /* r and r + 8 share a swizzle */
    if (p.lse != nullptr && d_half == 0 && (lane & 3) == 0) {
        const fa_seq_layout layout = layout_of<SEQ>(p);
        const fa_seqlen e = epilogue_entry<SEQ>(slot, uniform_entry);
        /* the entry's LSE rows are consecutive: row i at fa_lse_index(row 0) + i */
        float *lse_row = p.lse + fa_lse_index(&layout, &e, batch, p.heads_q, head, 0) + row0;
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (row0 + r + h * 8 < e.len_q)
                lse_row[r + h * 8] = lse[h];
    }
    {
        unsigned char *row_lo_ptr = smem + r * C::kRowBytes + (lane & 3) * 4;
        unsigned char *row_hi_ptr = row_lo_ptr + 8 * C::kRowBytes;
#pragma unroll
        for (int t = 0; t < C::kOTiles; ++t) {
            const uint32_t off = swizzle(r, d_half * C::kWarpDim / 8 + t);
            *reinterpret_cast<uint32_t *>(row_lo_ptr + off) =
                pack2<BF16>(st.o[t][0] * scale[0], st.o[t][1] * scale[0]);
            *reinterpret_cast<uint32_t *>(row_hi_ptr + off) =
                pack2<BF16>(st.o[t][2] * scale[1], st.o[t][3] * scale[1]);
        }
    }
    __syncthreads();
    /* rows of this entry only: with packed rows the ones past len_q are the next entry's */
    const fa_seqlen e = epilogue_entry<SEQ>(slot, uniform_entry);
    /* q's rows are never paged: row i at fa_q_row_offset(row 0) + i * row_stride */
    uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                      fa_q_row_offset(&e, batch, 0, p.o_batch_stride, p.o_row_stride) +
                      static_cast<int64_t>(head) * p.o_head_stride;
    const int rows_valid = min(C::kBlockM, e.len_q - row0);
    const int store_tid = reread_thread_index();
    const int chunk = store_tid % C::kChunksPerRow;
    const int r_first = store_tid / C::kChunksPerRow;
    if (chunk * 8 < p.head_dim) {
#pragma unroll
        for (int i = 0; i < (C::kBlockM + C::kRowsPerPass - 1) / C::kRowsPerPass; ++i) {
            const int rr = r_first + i * C::kRowsPerPass;
            if (rr < rows_valid) {
                const uint4 val =
                    *reinterpret_cast<const uint4 *>(smem + rr * C::kRowBytes + swizzle(rr, chunk));
                uint16_t *dst =
                    o_ptr + static_cast<int64_t>(row0 + rr) * p.o_row_stride + chunk * 8;
                *reinterpret_cast<uint4 *>(dst) = val;
            }
        }
    }
}

/* A tile whose rows see no key (block_range.h's empty range, or an entry with no key): out = 0
   and the LSE of an empty row, -inf or the sink (score.h). Rows [row0, row_end) of entry e of
   the layout, row_end <= e.len_q. */
template <class C>
__device__ __forceinline__ void store_empty_tile(const Args &p, const fa_seq_layout &layout,
                                                 const fa_seqlen &e, int batch, int head,
                                                 int row0, int row_end)
{
    const int tid = reread_thread_index(); /* shares nothing with the main path's indices */
    float inv, lse;
    fa_row_finalize(-INFINITY, 0.f, fa_sink(p.sinks, head), &inv, &lse);
    /* the entry's LSE rows are consecutive, and its q rows are never paged */
    if (p.lse != nullptr && tid < C::kBlockM && row0 + tid < row_end)
        p.lse[fa_lse_index(&layout, &e, batch, p.heads_q, head, 0) + row0 + tid] = lse;
    const int chunk = tid % C::kChunksPerRow;
    if (chunk * 8 >= p.head_dim)
        return;
    uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                      fa_q_row_offset(&e, batch, 0, p.o_batch_stride, p.o_row_stride) +
                      static_cast<int64_t>(head) * p.o_head_stride + chunk * 8;
    for (int r = row0 + tid / C::kChunksPerRow; r < row_end; r += C::kRowsPerPass)
        *reinterpret_cast<uint4 *>(o_ptr + static_cast<int64_t>(r) * p.o_row_stride) =
            make_uint4(0u, 0u, 0u, 0u);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_EPILOGUE_CUH */
