/*
 * sm80_tiles.h -- tile table of the sm80 kernel family (mma.sync FlashAttention forward,
 * fwd_sm80.cu): block sizes and the shared-memory layout, as plain C so the launch logic and
 * the CPU tests compute a launch without a GPU. The kernel templates read the same macros.
 *
 *   fa_sm80_tile(head_dim, dtype, causal, &tile) -> 0, or -1 unless head_dim is a multiple of 8
 *   in [8, 256]. head_dim runs on the next instantiated size (64, 128, 256): the missing columns
 *   are zero-filled on load and never stored. dtype and causal do not change the tile.
 *
 * Thread layout (launch_contract.h): 12 warps, each owning 16 query rows.
 *   head_dim 64, 128:  D_SPLIT 1, BLOCK_M = 12 * 16 = 192; a warp computes S and O for its
 *                      rows over the whole head_dim.
 *   head_dim 256:      D_SPLIT 2, BLOCK_M = 6 * 16 = 96; the two warps of a row group each
 *                      compute S over one half of head_dim, add the partner's partial S from
 *                      shared memory (both then hold the same full S), and each accumulates
 *                      one half of the O columns. 16 x 256 fp32 O per warp (128 registers) plus
 *                      Q fragments would not fit the 168-register budget of 384 threads.
 *
 * Shared memory (bytes; rows are head_dim_padded * 2 bytes, XOR-swizzled in 16-byte chunks):
 *   stage s at s * STAGE_BYTES: K block (BLOCK_N rows) then V block (BLOCK_N rows)
 *   S exchange (D_SPLIT 2 only) after the stages: 12 warps * 16 rows * BLOCK_N * 4 bytes
 *   Q (BLOCK_M rows) at STAGE_BYTES: overlaps stage 1 (and the exchange), which are first
 *     written after every warp has moved Q into registers
 *   O staging for the store (BLOCK_M rows) at 0, after the last K/V block was read
 *   total = max(STAGES * STAGE_BYTES + XCHG, STAGE_BYTES + Q, O)
 *
 *   hd  BLOCK_M BLOCK_N SUB_N  stage = 2*BN*hd*2  stages+xchg      Q at 1 stage   total
 *   64   192     128    128    32768             65536 + 0        32768 + 24576  65536
 *   128  192      64     32    32768             65536 + 0        32768 + 49152  81920
 *   256   96      32     32    32768             65536 + 24576    32768 + 49152  90112
 *   every total <= 101376 (99 KB: the opt-in limit of sm_86/sm_89, e.g. an L4).
 */
#ifndef FA_SM80_TILES_H
#define FA_SM80_TILES_H

#include "kernels.h"
#include "../launch_contract.h"

#define FA_SM80_ROWS_PER_WARP 16
#define FA_SM80_STAGES 2
#define FA_SM80_SMEM_LIMIT 101376

/* BLOCK_N: key rows per pipeline stage (one barrier per block). SUB_N: key columns of S a
   warp holds at once; the online softmax runs per sub-block. For head_dim 128, 16 x 64 fp32 S
   next to 64 O and 32 Q registers leaves ptxas too little room under 168, so S is computed
   32 keys at a time while the stage stays 64 keys deep. */
#define FA_SM80_HD64_BLOCK_N 128
#define FA_SM80_HD64_SUB_N 128
#define FA_SM80_HD64_D_SPLIT 1
#define FA_SM80_HD128_BLOCK_N 64
#define FA_SM80_HD128_SUB_N 32
#define FA_SM80_HD128_D_SPLIT 1
#define FA_SM80_HD256_BLOCK_N 32
#define FA_SM80_HD256_SUB_N 32
#define FA_SM80_HD256_D_SPLIT 2

#define FA_SM80_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Layout arithmetic shared by the host table and the kernel (16-bit elements). */
#define FA_SM80_BLOCK_M(d_split) (FA_NUM_WARPS_PER_BLOCK / (d_split) * FA_SM80_ROWS_PER_WARP)
#define FA_SM80_ROW_BYTES(hdp) ((hdp) * 2)
#define FA_SM80_KV_BYTES(hdp, bn) ((bn) * FA_SM80_ROW_BYTES(hdp))
#define FA_SM80_STAGE_BYTES(hdp, bn) (2 * FA_SM80_KV_BYTES(hdp, bn))
#define FA_SM80_Q_OFFSET(hdp, bn) FA_SM80_STAGE_BYTES(hdp, bn)
#define FA_SM80_XCHG_OFFSET(hdp, bn) (FA_SM80_STAGES * FA_SM80_STAGE_BYTES(hdp, bn))
#define FA_SM80_XCHG_BYTES(bn, d_split) \
    ((d_split) > 1 ? FA_NUM_WARPS_PER_BLOCK * FA_SM80_ROWS_PER_WARP * (bn) * 4 : 0)
#define FA_SM80_SMEM_BYTES(hdp, bn, d_split)                                                  \
    FA_SM80_MAX(FA_SM80_MAX(FA_SM80_XCHG_OFFSET(hdp, bn) + FA_SM80_XCHG_BYTES(bn, d_split),   \
                            FA_SM80_Q_OFFSET(hdp, bn) +                                       \
                                FA_SM80_BLOCK_M(d_split) * FA_SM80_ROW_BYTES(hdp)),           \
                FA_SM80_BLOCK_M(d_split) * FA_SM80_ROW_BYTES(hdp))

FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES(64, FA_SM80_HD64_BLOCK_N, FA_SM80_HD64_D_SPLIT) == 65536,
                 "hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES(128, FA_SM80_HD128_BLOCK_N, FA_SM80_HD128_D_SPLIT) == 81920,
                 "hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES(256, FA_SM80_HD256_BLOCK_N, FA_SM80_HD256_D_SPLIT) == 90112,
                 "hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES(256, FA_SM80_HD256_BLOCK_N, FA_SM80_HD256_D_SPLIT) <=
                     FA_SM80_SMEM_LIMIT,
                 "every sm80 config fits 99 KB of shared memory");

/* Fills *t for (head_dim, dtype, causal); returns 0, or -1 if head_dim is not a multiple of 8
   in [8, 256]. Pure arithmetic: the launch logic and CI tests call it without a GPU. */
static inline int fa_sm80_tile(int head_dim, fa_dtype dtype, int causal, fa_tile *t)
{
    int hdp, block_n, d_split;
    (void)dtype;
    (void)causal;
    if (t == NULL || head_dim < 8 || head_dim > 256 || head_dim % 8 != 0)
        return -1;
    if (head_dim <= 64) {
        hdp = 64;
        block_n = FA_SM80_HD64_BLOCK_N;
        d_split = FA_SM80_HD64_D_SPLIT;
    } else if (head_dim <= 128) {
        hdp = 128;
        block_n = FA_SM80_HD128_BLOCK_N;
        d_split = FA_SM80_HD128_D_SPLIT;
    } else {
        hdp = 256;
        block_n = FA_SM80_HD256_BLOCK_N;
        d_split = FA_SM80_HD256_D_SPLIT;
    }
    t->block_m = FA_SM80_BLOCK_M(d_split);
    t->block_n = block_n;
    t->stages = FA_SM80_STAGES;
    t->head_dim_padded = hdp;
    t->smem_bytes = (size_t)FA_SM80_SMEM_BYTES(hdp, block_n, d_split);
    t->persistent = 0;
    return 0;
}

#endif /* FA_SM80_TILES_H */
