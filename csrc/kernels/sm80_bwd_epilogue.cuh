/*
 * sm80_bwd_epilogue.cuh -- what leaves the CTA: each query block's dQ (added into the fp32
 * dq_accum, in key-block order when deterministic), and at the end dK and dV.
 *
 *   dq_accum[b, h, row, :] += dS K      (unscaled; the postprocess multiplies by softmax_scale;
 *                                        rows laid out like the LSE: fa_lse_index)
 *   dk[b, key, hk, :] = softmax_scale * dK,   dv[b, key, hk, :] = dV   (16-bit)
 * Deterministic order (kernels.h): the CTA of key block n adds to query block m of head h
 * when dq_lock[b, h, m] == n - (m's first key block); one thread polls with acquire, the
 * block meets at a barrier, adds, meets again, and one thread releases the next key block.
 * dK and dV are staged through shared memory (over K and V, whose last reader has passed a
 * barrier) as swizzled 16-bit rows, then stored as coalesced 16-byte rows.
 */
#ifndef FA_SM80_BWD_EPILOGUE_CUH
#define FA_SM80_BWD_EPILOGUE_CUH

#include "../common/block_range.h"
#include "../common/seqlen.h"
#include "dq_turns.cuh"
#include "sm80_bwd_config.cuh"

namespace fa_sm80 {

/* dst[row, col] += the warp's dQ tile of pass PASS; dst is row 0 of the query block in dq_accum (rows of
   head_dim floats), rows_valid the block's rows inside seqlen_q. Two floats per reduction:
   four (lane pairs swapping halves through a shuffle) ran 2% slower at head_dim 128 on an
   H200, the adds costing 16% of the kernel's time either way. Each row's address is formed
   once and the n8 tiles' columns are constant offsets from it (formed per reduction, the
   64-bit address arithmetic took 14 instructions a reduction). */
template <class C, int PASS>
__device__ __forceinline__ void dq_add(const float (&acc)[C::kDqMT][C::kDqNT][4], float *dst,
                                       int rows_valid, int head_dim)
{
    const int tid = reread_thread_index();
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / C::kDqWD, wd = warp % C::kDqWD;
    const int r_lo = wm * C::kDqM + (lane >> 2);
    const int col0 = PASS * C::kDqPassCols + wd * C::kDqD; /* the warp's first column */
    /* head_dim is a multiple of 8: an n8 tile is wholly inside or wholly past it */
    const int tiles_in = (head_dim - col0) >> 3;
    float *const lane_dst = dst + static_cast<int64_t>(r_lo) * head_dim + col0 + 2 * (lane & 3);
#pragma unroll
    for (int mt = 0; mt < C::kDqMT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int dr = 16 * mt + 8 * h;
            if (r_lo + dr >= rows_valid)
                continue;
            float *const row = lane_dst + static_cast<int64_t>(dr) * head_dim;
#pragma unroll
            for (int nt = 0; nt < C::kDqNT; ++nt)
                if (nt < tiles_in)
                    red_add_f32x2(row + nt * 8, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
        }
    }
}

/* Waits for this CTA's turn at query block m of head h (deterministic only; dq_turns.cuh). */
__device__ __forceinline__ void dq_turn_wait(const BwdArgs &p, const fa_mask &mask, int batch,
                                             int h, int m, int n_block, int block_m, int block_n,
                                             int tid)
{
    if (tid == 0) {
        const int turn = dq_turn_of(mask, m, n_block, block_m, block_n);
        const int *lock = dq_turn_counter(p.dq_lock, batch, p.heads_q, h, p.lock_blocks, m);
        while (ld_acquire_gpu_s32(lock) != turn) {
        }
    }
    __syncthreads();
}

/* Passes the turn at query block m of head h to the next key block (deterministic only). */
__device__ __forceinline__ void dq_turn_pass(const BwdArgs &p, int batch, int h, int m, int tid)
{
    __syncthreads(); /* every thread's adds are issued */
    if (tid == 0) {
        __threadfence();
        red_release_gpu_add_s32(dq_turn_counter(p.dq_lock, batch, p.heads_q, h, p.lock_blocks, m),
                                1);
    }
}

/* dK (times softmax_scale) and dV of the CTA's keys [key0, key0 + BN) of entry e and kv head
   hk, at k's row addressing (seqlen.h; unpaged) with dk's and dv's strides; keys past e.len_k
   and columns past head_dim are not stored. The caller has passed a barrier after the last
   read of K and V. */
template <class C, bool BF16, bool SEQ>
__device__ __forceinline__ void store_dkdv(const BwdArgs &p, unsigned char *smem,
                                           float (&dk)[C::kKvMT][C::kKvNT][4],
                                           float (&dv)[C::kKvMT][C::kKvNT][4], const fa_seqlen &e,
                                           int batch, int hk, int key0)
{
    const int lane = reread_thread_index() & 31, warp = reread_thread_index() >> 5;
    const int wn = warp / C::kKvWD, wd = warp % C::kKvWD;
    const float scale = p.softmax_scale;
#pragma unroll
    for (int mt = 0; mt < C::kKvMT; ++mt) {
        const int r = wn * C::kKvM + mt * 16 + (lane >> 2); /* r and r + 8 share a swizzle */
        unsigned char *k_lo = smem + C::kKOffset + r * C::kRowBytes + (lane & 3) * 4;
        unsigned char *v_lo = smem + C::kVOffset + r * C::kRowBytes + (lane & 3) * 4;
#pragma unroll
        for (int nt = 0; nt < C::kKvNT; ++nt) {
            const uint32_t off = swizzle(r, wd * C::kKvD / 8 + nt);
            *reinterpret_cast<uint32_t *>(k_lo + off) =
                pack2<BF16>(dk[mt][nt][0] * scale, dk[mt][nt][1] * scale);
            *reinterpret_cast<uint32_t *>(k_lo + 8 * C::kRowBytes + off) =
                pack2<BF16>(dk[mt][nt][2] * scale, dk[mt][nt][3] * scale);
            *reinterpret_cast<uint32_t *>(v_lo + off) = pack2<BF16>(dv[mt][nt][0], dv[mt][nt][1]);
            *reinterpret_cast<uint32_t *>(v_lo + 8 * C::kRowBytes + off) =
                pack2<BF16>(dv[mt][nt][2], dv[mt][nt][3]);
        }
    }
    __syncthreads();
    const int tid = reread_thread_index();
    const int chunk = tid % C::kChunksPerRow;
    if (chunk * 8 >= p.head_dim)
        return;
    /* keys of this entry only: packed, the ones past len_k are the next entry's */
    const int rows_valid = min(C::kBN, e.len_k - key0);
    const fa_seq_layout layout = layout_of<SEQ>(p);
    uint16_t *dk_base =
        static_cast<uint16_t *>(p.dk) +
        fa_k_row_offset(&layout, &e, batch, 0, p.dk_batch_stride, p.dk_row_stride) +
        static_cast<int64_t>(hk) * p.dk_head_stride + chunk * 8;
    uint16_t *dv_base =
        static_cast<uint16_t *>(p.dv) +
        fa_k_row_offset(&layout, &e, batch, 0, p.dv_batch_stride, p.dv_row_stride) +
        static_cast<int64_t>(hk) * p.dv_head_stride + chunk * 8;
#pragma unroll
    for (int i = 0; i < (C::kBN + C::kRowsPerPass - 1) / C::kRowsPerPass; ++i) {
        const int r = tid / C::kChunksPerRow + i * C::kRowsPerPass;
        if (r < rows_valid) {
            const uint32_t off = r * C::kRowBytes + swizzle(r, chunk);
            const int key = key0 + r;
            *reinterpret_cast<uint4 *>(dk_base + static_cast<int64_t>(key) * p.dk_row_stride) =
                *reinterpret_cast<const uint4 *>(smem + C::kKOffset + off);
            *reinterpret_cast<uint4 *>(dv_base + static_cast<int64_t>(key) * p.dv_row_stride) =
                *reinterpret_cast<const uint4 *>(smem + C::kVOffset + off);
        }
    }
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_BWD_EPILOGUE_CUH */
