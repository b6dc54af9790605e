/*
 * sm80_bwd_tiles.h -- tile table of the sm80 family's backward main kernel (bwd_sm80.cu):
 * block sizes and the shared-memory layout, as plain C so the launch logic and the CPU tests
 * size a launch without a GPU. The kernel templates read the same macros.
 *
 *   fa_sm80_bwd_tile(&params, &grads, &tile) -> 0, or -1 unless params.head_dim is a multiple
 *   of 8 in [8, 256]. head_dim runs on the next instantiated size (64, 128, 256): the missing
 *   columns are zero-filled on load and never stored. dtype, mask, softcap and determinism do
 *   not change the tile.
 *
 * A CTA owns BLOCK_N keys of one kv head; K and V stay in shared memory for its life, dK and
 * dV in registers. Query blocks of BLOCK_M rows stream through single Q and dO buffers: the
 * next block's Q and dO are copied as soon as the current block's last reader of each is
 * done (the GEMM order frees them before dQ runs), so no second buffer is needed. 99 KB (the
 * opt-in limit of sm_86/sm_89) leaves no room for one: at head_dim 128 a second Q/dO pair
 * would cost 24 KB on top of 94.
 *
 * BLOCK_M and BLOCK_N are set by the 12 warps: every GEMM of a query block (S and dP
 * BLOCK_M x BLOCK_N, dK and dV BLOCK_N x head_dim, dQ BLOCK_M x head_dim) is cut into whole
 * warp tiles with as few shared-memory bytes per mma as registers allow (sm80_bwd_config.cuh
 * has the warp layouts): about 90 KB of ldmatrix traffic per MFLOP at these tiles, against
 * about 63 in the forward, whose Q stays in registers.
 *
 * Shared memory (bytes; Q/dO/K/V rows are head_dim_padded * 2 bytes, XOR-swizzled in 16-byte
 * chunks; P and dS rows are BLOCK_N * 2 + 16 bytes, the 16 bytes of padding spread the 8 rows
 * of an ldmatrix phase over all banks):
 *   K at 0 (BLOCK_N rows), V (BLOCK_N rows), Q (BLOCK_M rows), dO (BLOCK_M rows),
 *   P (BLOCK_M rows), dS (BLOCK_M rows), lse (BLOCK_M floats), delta (BLOCK_M floats), the
 *   CTA's block indices, trip count, query-block range and each warp's step counter (80 bytes:
 *   the kernel reads them back from here, see sm80_bwd_kernel.cuh); the epilogue stages dK
 *   and dV over K and V.
 *
 *   hd   BLOCK_M BLOCK_N  K+V     Q+dO    P+dS    lse+delta+ids  total
 *   64     48     192     49152   12288   38400   464            100304
 *   128    48      96     49152   24576   19968   464             94160
 *   256    32      48     49152   32768    7168   336             89424
 *   every total <= 101376 (99 KB); no mbarriers.
 */
#ifndef FA_SM80_BWD_TILES_H
#define FA_SM80_BWD_TILES_H

#include "kernels.h"
#include "sm80_tiles.h"
#include "../launch_contract.h"

#define FA_SM80_BWD_HD64_BLOCK_M 48
#define FA_SM80_BWD_HD64_BLOCK_N 192
#define FA_SM80_BWD_HD128_BLOCK_M 48
#define FA_SM80_BWD_HD128_BLOCK_N 96
#define FA_SM80_BWD_HD256_BLOCK_M 32
#define FA_SM80_BWD_HD256_BLOCK_N 48

/* Layout arithmetic shared by the host table and the kernel (16-bit elements). */
#define FA_SM80_BWD_ROW_BYTES(hdp) ((hdp) * 2)
#define FA_SM80_BWD_PS_ROW_BYTES(bn) ((bn) * 2 + 16)
#define FA_SM80_BWD_K_OFFSET(hdp, bm, bn) 0
#define FA_SM80_BWD_V_OFFSET(hdp, bm, bn) ((bn) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_Q_OFFSET(hdp, bm, bn) (2 * (bn) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_DO_OFFSET(hdp, bm, bn)                                                     \
    (FA_SM80_BWD_Q_OFFSET(hdp, bm, bn) + (bm) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_P_OFFSET(hdp, bm, bn)                                                      \
    (FA_SM80_BWD_DO_OFFSET(hdp, bm, bn) + (bm) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_DS_OFFSET(hdp, bm, bn)                                                     \
    (FA_SM80_BWD_P_OFFSET(hdp, bm, bn) + (bm) * FA_SM80_BWD_PS_ROW_BYTES(bn))
#define FA_SM80_BWD_LSE_OFFSET(hdp, bm, bn)                                                    \
    (FA_SM80_BWD_DS_OFFSET(hdp, bm, bn) + (bm) * FA_SM80_BWD_PS_ROW_BYTES(bn))
#define FA_SM80_BWD_DELTA_OFFSET(hdp, bm, bn) (FA_SM80_BWD_LSE_OFFSET(hdp, bm, bn) + (bm) * 4)
#define FA_SM80_BWD_IDS_OFFSET(hdp, bm, bn) (FA_SM80_BWD_DELTA_OFFSET(hdp, bm, bn) + (bm) * 4)
#define FA_SM80_BWD_IDS_BYTES 80
#define FA_SM80_BWD_SMEM_BYTES(hdp, bm, bn) (FA_SM80_BWD_IDS_OFFSET(hdp, bm, bn) + FA_SM80_BWD_IDS_BYTES)

#define FA_SM80_BWD_SMEM_BYTES_OF(HD)                                                          \
    FA_SM80_BWD_SMEM_BYTES(HD, FA_SM80_BWD_HD##HD##_BLOCK_M, FA_SM80_BWD_HD##HD##_BLOCK_N)

FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(64) == 100304, "hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(128) == 94160, "hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(256) == 89424, "hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(64) <= FA_SM80_SMEM_LIMIT &&
                     FA_SM80_BWD_SMEM_BYTES_OF(128) <= FA_SM80_SMEM_LIMIT &&
                     FA_SM80_BWD_SMEM_BYTES_OF(256) <= FA_SM80_SMEM_LIMIT,
                 "every sm80 backward config fits 99 KB of shared memory");

/* Fills *t for p's head_dim (nothing else of p or g changes it); returns 0, or -1 if head_dim
   is not a multiple of 8 in [8, 256]. stages 1: Q and dO are single-buffered (see above).
   Pure arithmetic: the launch logic and CI tests call it without a GPU. */
static inline int fa_sm80_bwd_tile(const fa_params *p, const fa_grad_params *g, fa_tile *t)
{
    (void)g;
    if (p == NULL || t == NULL)
        return -1;
    const int head_dim = p->head_dim;
    if (head_dim < 8 || head_dim > 256 || head_dim % 8 != 0)
        return -1;
    if (head_dim <= 64) {
        t->head_dim_padded = 64;
        t->block_m = FA_SM80_BWD_HD64_BLOCK_M;
        t->block_n = FA_SM80_BWD_HD64_BLOCK_N;
        t->smem_bytes = (size_t)FA_SM80_BWD_SMEM_BYTES_OF(64);
    } else if (head_dim <= 128) {
        t->head_dim_padded = 128;
        t->block_m = FA_SM80_BWD_HD128_BLOCK_M;
        t->block_n = FA_SM80_BWD_HD128_BLOCK_N;
        t->smem_bytes = (size_t)FA_SM80_BWD_SMEM_BYTES_OF(128);
    } else {
        t->head_dim_padded = 256;
        t->block_m = FA_SM80_BWD_HD256_BLOCK_M;
        t->block_n = FA_SM80_BWD_HD256_BLOCK_N;
        t->smem_bytes = (size_t)FA_SM80_BWD_SMEM_BYTES_OF(256);
    }
    t->stages = 1;
    t->persistent = 0;
    return 0;
}

#endif /* FA_SM80_BWD_TILES_H */
