/*
 * sm80_tiles.h -- tile table of the sm80 kernel family (mma.sync FlashAttention forward,
 * fwd_sm80.cu): block sizes and the shared-memory layout, as plain C so the launch logic and
 * the CPU tests compute a launch without a GPU. The kernel templates read the same macros.
 *
 *   fa_sm80_tile(&params, &tile) -> 0, or -1 unless params.head_dim is a multiple of 8
 *   in [8, 256]. head_dim runs on the next instantiated size (64, 128, 256): the missing columns
 *   are zero-filled on load and never stored. dtype, mask and softcap do not change the tile
 *   (softcap changes SUB_N at head_dim 128, inside the kernel only).
 *
 * Thread layout (launch_contract.h): 12 warps, each owning 16 query rows (one m16 tile):
 *   D_SPLIT 1: 12 row groups, BLOCK_M 192;
 *   D_SPLIT 2: (head_dim 256) the two warps of a row group each compute S over one half of
 *              head_dim, add the partner's partial S from shared memory (both then hold the
 *              same full S), and each accumulates one half of the O columns: 16 x 256 fp32 O
 *              per warp (128 registers) plus Q fragments would not fit 168 registers. BLOCK_M 96.
 *   BLOCK_M = 12 / D_SPLIT * 16.
 * Measured and dropped (benches/NOTES.md): 32 rows per warp (they halve the ldmatrix traffic
 * per mma but need 2 x (O + Q) = head_dim registers per lane: at head_dim 64 it needed SUB_N
 * 16 and ran 10-20% slower, at 128 it does not fit), and warps splitting each key block with
 * a merge of their O in the epilogue (KEY_SPLIT 2 or 3, slower at head_dim 128).
 *
 * Shared memory (bytes; rows are head_dim_padded * 2 bytes, XOR-swizzled in 16-byte chunks):
 *   stage s at s * STAGE_BYTES: K block (BLOCK_N rows) then V block (BLOCK_N rows)
 *   S exchange (D_SPLIT 2 only) after the stages: 12 warps * 16 rows * BLOCK_N * 4 bytes
 *   Q (BLOCK_M rows) at (STAGES - 1) * STAGE_BYTES: overlaps the last stage (and the
 *     exchange), which are first written after every warp has moved Q into registers
 *   epilogue, after the last K/V block was read: O staging for the store (BLOCK_M rows) at 0
 *   total = max(STAGES * STAGE_BYTES + XCHG, (STAGES - 1) * STAGE_BYTES + Q, O staging),
 *   plus 2 * STAGES 8-byte mbarriers in static shared memory
 *
 *   hd  BLOCK_M BLOCK_N SUB_N stages stage  stages+xchg    Q region       epilogue  total
 *   64   192     128     64     2    32768  65536 + 0      32768 + 24576  24576     65536
 *   128  192      96     48     2    49152  98304 + 0      49152 + 49152  49152     98304
 *   256   96      32     32     2    32768  65536 + 24576  32768 + 49152  49152     90112
 *   every total (+ 32 bytes of mbarriers) <= 101376 (99 KB: the opt-in limit of sm_86/sm_89,
 *   e.g. an L4).
 */
#ifndef FA_SM80_TILES_H
#define FA_SM80_TILES_H

#include "kernels.h"
#include "../launch_contract.h"

#define FA_SM80_SMEM_LIMIT 101376

/* Per head_dim_padded:
   BLOCK_N   key rows per pipeline stage;
   SUB_N     key columns of S a warp holds at once: the online softmax runs per sub-block;
   SUB_N_SOFTCAP  the same for the softcap instances: at head_dim 128 the tanh pass over 48
             keys spilled on sm_90 (ptxas), 32 keys do not;
   STAGES    depth of the cp.async ring;
   MBAR      1: the mbarrier ring, one warpgroup loads each block and no block-wide barrier
             runs in the main loop; 0: every thread loads, one __syncthreads per block (the S
             exchange of D_SPLIT 2 needs it);
   QK_AHEAD  1: in unmasked blocks S of the next sub-block is computed before the softmax of
             the current one (needs BLOCK_N / SUB_N >= 2 and registers for two S). */
#define FA_SM80_HD64_BLOCK_N 128
#define FA_SM80_HD64_SUB_N 64
#define FA_SM80_HD64_SUB_N_SOFTCAP 64
#define FA_SM80_HD64_D_SPLIT 1
#define FA_SM80_HD64_STAGES 2
#define FA_SM80_HD64_MBAR 1
#define FA_SM80_HD64_QK_AHEAD 1
#define FA_SM80_HD128_BLOCK_N 96
#define FA_SM80_HD128_SUB_N 48
#define FA_SM80_HD128_SUB_N_SOFTCAP 32
#define FA_SM80_HD128_D_SPLIT 1
#define FA_SM80_HD128_STAGES 2
#define FA_SM80_HD128_MBAR 1
#define FA_SM80_HD128_QK_AHEAD 0
#define FA_SM80_HD256_BLOCK_N 32
#define FA_SM80_HD256_SUB_N 32
#define FA_SM80_HD256_SUB_N_SOFTCAP 32
#define FA_SM80_HD256_D_SPLIT 2
#define FA_SM80_HD256_STAGES 2
#define FA_SM80_HD256_MBAR 0
#define FA_SM80_HD256_QK_AHEAD 0

#define FA_SM80_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Layout arithmetic shared by the host table and the kernel (16-bit elements). */
#define FA_SM80_BLOCK_M(ds) (FA_NUM_WARPS_PER_BLOCK / (ds) * 16)
#define FA_SM80_ROW_BYTES(hdp) ((hdp) * 2)
#define FA_SM80_KV_BYTES(hdp, bn) ((bn) * FA_SM80_ROW_BYTES(hdp))
#define FA_SM80_STAGE_BYTES(hdp, bn) (2 * FA_SM80_KV_BYTES(hdp, bn))
#define FA_SM80_Q_OFFSET(hdp, bn, st) (((st) - 1) * FA_SM80_STAGE_BYTES(hdp, bn))
#define FA_SM80_XCHG_OFFSET(hdp, bn, st) ((st) * FA_SM80_STAGE_BYTES(hdp, bn))
#define FA_SM80_XCHG_BYTES(bn, ds) ((ds) > 1 ? FA_NUM_WARPS_PER_BLOCK * 16 * (bn) * 4 : 0)
/* epilogue: O staging for the store (BLOCK_M rows) */
#define FA_SM80_EPILOGUE_BYTES(hdp, bm) ((bm) * FA_SM80_ROW_BYTES(hdp))
#define FA_SM80_SMEM_BYTES(hdp, bn, ds, st)                                                    \
    FA_SM80_MAX(FA_SM80_MAX(FA_SM80_XCHG_OFFSET(hdp, bn, st) + FA_SM80_XCHG_BYTES(bn, ds),     \
                            FA_SM80_Q_OFFSET(hdp, bn, st) +                                    \
                                FA_SM80_BLOCK_M(ds) * FA_SM80_ROW_BYTES(hdp)),                 \
                FA_SM80_EPILOGUE_BYTES(hdp, FA_SM80_BLOCK_M(ds)))

#define FA_SM80_SMEM_BYTES_OF(HD)                                                              \
    FA_SM80_SMEM_BYTES(HD, FA_SM80_HD##HD##_BLOCK_N, FA_SM80_HD##HD##_D_SPLIT,                  \
                       FA_SM80_HD##HD##_STAGES)
#define FA_SM80_BLOCK_M_OF(HD) FA_SM80_BLOCK_M(FA_SM80_HD##HD##_D_SPLIT)

FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES_OF(64) == 65536, "hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES_OF(128) == 98304, "hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES_OF(256) == 90112, "hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_SMEM_BYTES_OF(128) + 2 * FA_SM80_HD128_STAGES * 8 <= FA_SM80_SMEM_LIMIT,
                 "every sm80 config fits 99 KB of shared memory, mbarriers included");

/* Fills *t for p's head_dim (dtype, mask, softcap and sequence lengths do not change it);
   returns 0, or -1 if head_dim is not a multiple of 8 in [8, 256]. Pure arithmetic: the launch
   logic and CI tests call it without a GPU. */
static inline int fa_sm80_tile(const fa_params *p, fa_tile *t)
{
    if (p == NULL || t == NULL)
        return -1;
    const int hdp = fa_head_dim_padded(p->head_dim);
    if (hdp == 0)
        return -1;
    if (hdp == 64) {
        t->head_dim_padded = 64;
        t->block_m = FA_SM80_BLOCK_M_OF(64);
        t->block_n = FA_SM80_HD64_BLOCK_N;
        t->stages = FA_SM80_HD64_STAGES;
        t->smem_bytes = (size_t)FA_SM80_SMEM_BYTES_OF(64);
    } else if (hdp == 128) {
        t->head_dim_padded = 128;
        t->block_m = FA_SM80_BLOCK_M_OF(128);
        t->block_n = FA_SM80_HD128_BLOCK_N;
        t->stages = FA_SM80_HD128_STAGES;
        t->smem_bytes = (size_t)FA_SM80_SMEM_BYTES_OF(128);
    } else {
        t->head_dim_padded = 256;
        t->block_m = FA_SM80_BLOCK_M_OF(256);
        t->block_n = FA_SM80_HD256_BLOCK_N;
        t->stages = FA_SM80_HD256_STAGES;
        t->smem_bytes = (size_t)FA_SM80_SMEM_BYTES_OF(256);
    }
    t->persistent = 0;
    return 0;
}

#endif /* FA_SM80_TILES_H */
