/*
 * sm80_epilogue.cuh -- the end of a tile: each row's finalisation (score.h: 1 / sum and the
 * LSE, with the sink in the denominator), O staged through shared memory as 16-bit rows,
 * then 16-byte coalesced stores; and the whole output of a tile whose rows see no key.
 *
 *   out[row, :] = O[row, :] * inv,   lse[row] = top + log(total)   (fa_row_finalize)
 * O staging: BLOCK_M rows of head_dim_padded * 2 bytes at smem offset 0, the swizzle of the
 * K/V stages; it reuses the stages, so it starts after every warp is done reading them.
 * Indices are re-read from %tid / %ctaid rather than held across the main loop.
 */
#ifndef FA_SM80_EPILOGUE_CUH
#define FA_SM80_EPILOGUE_CUH

#include "../common/score.h"
#include "sm80_config.cuh"
#include "sm80_softmax.cuh"

namespace fa_sm80 {

template <class C, bool BF16, fa_mask_kind MASK>
__device__ __forceinline__ void store_tile(const Args &p, RowState<C> &st, unsigned char *smem,
                                           int seqlen_q)
{
    const int tid = reread_thread_index();
    const int lane = tid & 31;
    const int d_half = (tid >> 5) % C::kDS;
    const int row_group = (tid >> 5) / C::kDS;
    const int row0 =
        m_block_of<MASK>(reread_block_index_x(), static_cast<int>(gridDim.x)) * C::kBlockM;
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
        float *lse_row = p.lse + (static_cast<int64_t>(batch) * p.heads_q + head) * seqlen_q + row0;
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (row0 + r + h * 8 < seqlen_q)
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
    uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                      static_cast<int64_t>(batch) * p.o_batch_stride +
                      static_cast<int64_t>(head) * p.o_head_stride;
    const int rows_valid = min(C::kBlockM, seqlen_q - row0);
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
                uint16_t *dst = o_ptr + static_cast<int64_t>(row0 + rr) * p.o_row_stride + chunk * 8;
                *reinterpret_cast<uint4 *>(dst) = val;
            }
        }
    }
}

/* A tile whose rows see no key (block_range.h's empty range): out = 0 and the LSE of an empty
   row, -inf or the sink (score.h). Rows [row0, row_end). */
template <class C>
__device__ __forceinline__ void store_empty_tile(const Args &p, int batch, int head, int row0,
                                                 int row_end, int seqlen_q)
{
    const int tid = reread_thread_index(); /* shares nothing with the main path's indices */
    float inv, lse;
    fa_row_finalize(-INFINITY, 0.f, fa_sink(p.sinks, head), &inv, &lse);
    if (p.lse != nullptr && tid < C::kBlockM && row0 + tid < row_end)
        p.lse[(static_cast<int64_t>(batch) * p.heads_q + head) * seqlen_q + row0 + tid] = lse;
    const int chunk = tid % C::kChunksPerRow;
    if (chunk * 8 >= p.head_dim)
        return;
    uint16_t *o_ptr = static_cast<uint16_t *>(p.out) +
                      static_cast<int64_t>(batch) * p.o_batch_stride +
                      static_cast<int64_t>(head) * p.o_head_stride + chunk * 8;
    for (int r = row0 + tid / C::kChunksPerRow; r < row_end; r += C::kRowsPerPass)
        *reinterpret_cast<uint4 *>(o_ptr + static_cast<int64_t>(r) * p.o_row_stride) =
            make_uint4(0u, 0u, 0u, 0u);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_EPILOGUE_CUH */
