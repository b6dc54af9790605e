/*
 * sm80_bwd_tiles.h -- tile table of the sm80 family's backward main kernel (bwd_sm80.cu):
 * block sizes and the shared-memory layout, as plain C so the launch logic and the CPU tests
 * size a launch without a GPU. The kernel templates read the same macros.
 *
 *   fa_sm80_bwd_tile(&params, &grads, smem_optin, &tile) -> 0, or -1 unless params.head_dim
 *   is a multiple of 8 in [8, 256]. head_dim runs on the next instantiated size (64, 128,
 *   256): the missing columns are zero-filled on load and never stored. The device's opt-in
 *   shared memory per block (smem_optin, bytes) picks the tier: the wide tile where it fits
 *   (sm_80's 163 KB and sm_90's 227 KB take it), the narrow one, which fits the 99 KB of
 *   sm_86/sm_89, elsewhere. dtype, mask, softcap and determinism do not change the tile.
 *
 * A CTA owns BLOCK_N keys of one kv head; K and V stay in shared memory for its life, dK and
 * dV in registers. Query blocks of BLOCK_M rows stream through Q and dO buffers (with their
 * lse and delta rows). Narrow: one stage, the next block's Q and dO copied as soon as the
 * current block's last reader of each is done (the GEMM order frees them before dQ runs);
 * that wait cost 11% of the time at head_dim 128 (benches/NOTES.md), and 99 KB leaves no room
 * for a second. Wide at head_dim 64 and 128: two stages, the next block's copied into the
 * other one when the step starts, so the copy runs under the whole step and the step needs no
 * barrier for it (at 256 a second stage does not fit 163 KB: one, as narrow).
 *
 * BLOCK_M and BLOCK_N are set by the 12 warps and their registers: every GEMM of a query block
 * (S and dP BLOCK_M x BLOCK_N, dK and dV BLOCK_N x head_dim, dQ BLOCK_M x head_dim) is cut
 * into whole warp tiles with as few shared-memory bytes per mma as 168 registers a thread
 * allow without a spill (sm80_bwd_config.cuh has the warp layouts). dK and dV take 64 of them
 * whatever the tile, which holds BLOCK_N at 192, 96 and 48 for head_dim 64, 128 and 256. The
 * wide tiles take 64-row query blocks where the narrow ones take 48: a third more FLOPs per
 * query block against the same per-block work (barriers, the walk, the copies' set-up) and
 * 10-23% fewer ldmatrix bytes per FLOP (ldmatrix.x4 per MFLOP, from the warp layouts: hd 64
 * 163 narrow, 146 wide; hd 128 167, 146; hd 256 238, 183). At head_dim 256 the wide tile's
 * dQ runs in two passes over head_dim: a 64-row dQ tile whole (64 fp32 per thread over 8
 * warps) beside dK and dV spilled.
 *
 * Shared memory (bytes; Q/dO/K/V rows are head_dim_padded * 2 bytes, XOR-swizzled in 16-byte
 * chunks; P and dS rows are BLOCK_N * 2 + 16 bytes, the 16 bytes of padding spread the 8 rows
 * of an ldmatrix phase over all banks):
 *   K at 0 (BLOCK_N rows), V (BLOCK_N rows), per stage Q (BLOCK_M rows) and dO (BLOCK_M rows),
 *   P (BLOCK_M rows), dS (BLOCK_M rows), per stage lse (BLOCK_M floats) and delta (BLOCK_M
 *   floats), the ids (160 bytes with one stage, 208 with two): the CTA's block indices, the
 *   walk's end, query-block range, each warp's step (and stage), and a packed batch's entry;
 *   the kernel reads them back from here, see sm80_bwd_kernel.cuh. The epilogue stages dK and
 *   dV over K and V.
 *
 *   tier    hd   BLOCK_M BLOCK_N stages  K+V     Q+dO    P+dS    lse+delta+ids  total
 *   narrow  64     48     192      1     49152   12288   38400    544           100384
 *   narrow  128    48      96      1     49152   24576   19968    544            94240
 *   narrow  256    32      48      1     49152   32768    7168    416            89504
 *   wide    64     64     192      2     49152   32768   51200   1232           134352
 *   wide    128    64      96      2     49152   65536   26624   1232           142544
 *   wide    256    64      48      1     49152   65536   14336    672           129696
 *   narrow totals <= 101376 (99 KB), wide <= 166912 (sm_80's 163 KB); no mbarriers.
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
#define FA_SM80_BWD_WIDE_HD64_BLOCK_M 64
#define FA_SM80_BWD_WIDE_HD64_BLOCK_N 192
#define FA_SM80_BWD_WIDE_HD128_BLOCK_M 64
#define FA_SM80_BWD_WIDE_HD128_BLOCK_N 96
#define FA_SM80_BWD_WIDE_HD256_BLOCK_M 64
#define FA_SM80_BWD_WIDE_HD256_BLOCK_N 48
/* the wide tier's bound: the opt-in shared memory of sm_80 (A100), the smallest part it serves */
#define FA_SM80_BWD_WIDE_SMEM_LIMIT 166912

/* Layout arithmetic shared by the host table and the kernel (16-bit elements); st stages of
   Q, dO, lse and delta (1 narrow, 2 wide). Q and dO of stage s lie at the Q and dO offsets plus
   s times the Q/dO stage bytes, lse and delta likewise after dS. */
#define FA_SM80_BWD_NARROW_STAGES 1
/* wide: two stages where 163 KB hold them; at head_dim 256 a second stage (64 KB of Q and dO)
   does not fit */
#define FA_SM80_BWD_WIDE_HD64_STAGES 2
#define FA_SM80_BWD_WIDE_HD128_STAGES 2
#define FA_SM80_BWD_WIDE_HD256_STAGES 1
#define FA_SM80_BWD_ROW_BYTES(hdp) ((hdp) * 2)
#define FA_SM80_BWD_PS_ROW_BYTES(bn) ((bn) * 2 + 16)
#define FA_SM80_BWD_QDO_STAGE_BYTES(hdp, bm) (2 * (bm) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_STATS_STAGE_BYTES(bm) (2 * (bm) * 4)
#define FA_SM80_BWD_K_OFFSET(hdp, bm, bn) 0
#define FA_SM80_BWD_V_OFFSET(hdp, bm, bn) ((bn) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_Q_OFFSET(hdp, bm, bn) (2 * (bn) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_DO_OFFSET(hdp, bm, bn)                                                     \
    (FA_SM80_BWD_Q_OFFSET(hdp, bm, bn) + (bm) * FA_SM80_BWD_ROW_BYTES(hdp))
#define FA_SM80_BWD_P_OFFSET(hdp, bm, bn, st)                                                  \
    (FA_SM80_BWD_Q_OFFSET(hdp, bm, bn) + (st) * FA_SM80_BWD_QDO_STAGE_BYTES(hdp, bm))
#define FA_SM80_BWD_DS_OFFSET(hdp, bm, bn, st)                                                 \
    (FA_SM80_BWD_P_OFFSET(hdp, bm, bn, st) + (bm) * FA_SM80_BWD_PS_ROW_BYTES(bn))
#define FA_SM80_BWD_LSE_OFFSET(hdp, bm, bn, st)                                                \
    (FA_SM80_BWD_DS_OFFSET(hdp, bm, bn, st) + (bm) * FA_SM80_BWD_PS_ROW_BYTES(bn))
#define FA_SM80_BWD_DELTA_OFFSET(hdp, bm, bn, st) (FA_SM80_BWD_LSE_OFFSET(hdp, bm, bn, st) + (bm) * 4)
#define FA_SM80_BWD_IDS_OFFSET(hdp, bm, bn, st)                                                \
    (FA_SM80_BWD_LSE_OFFSET(hdp, bm, bn, st) + (st) * FA_SM80_BWD_STATS_STAGE_BYTES(bm))
/* the walk (8 ints), per warp of 12 its step (h, m) and its stage where there are two, then the
   CTA's batch entry (5 ints, packed batches; 32 bytes) */
#define FA_SM80_BWD_ENTRY_AT(st) (32 + 12 * 4 * ((st) + 1))
#define FA_SM80_BWD_IDS_BYTES(st) (FA_SM80_BWD_ENTRY_AT(st) + 32)
#define FA_SM80_BWD_SMEM_BYTES(hdp, bm, bn, st)                                                \
    (FA_SM80_BWD_IDS_OFFSET(hdp, bm, bn, st) + FA_SM80_BWD_IDS_BYTES(st))

#define FA_SM80_BWD_SMEM_BYTES_OF(HD)                                                          \
    FA_SM80_BWD_SMEM_BYTES(HD, FA_SM80_BWD_HD##HD##_BLOCK_M, FA_SM80_BWD_HD##HD##_BLOCK_N,    \
                           FA_SM80_BWD_NARROW_STAGES)
#define FA_SM80_BWD_WIDE_SMEM_BYTES_OF(HD)                                                     \
    FA_SM80_BWD_SMEM_BYTES(HD, FA_SM80_BWD_WIDE_HD##HD##_BLOCK_M,                             \
                           FA_SM80_BWD_WIDE_HD##HD##_BLOCK_N, FA_SM80_BWD_WIDE_HD##HD##_STAGES)

FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(64) == 100384, "hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(128) == 94240, "hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(256) == 89504, "hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_SMEM_BYTES_OF(64) <= FA_SM80_SMEM_LIMIT &&
                     FA_SM80_BWD_SMEM_BYTES_OF(128) <= FA_SM80_SMEM_LIMIT &&
                     FA_SM80_BWD_SMEM_BYTES_OF(256) <= FA_SM80_SMEM_LIMIT,
                 "every narrow sm80 backward config fits 99 KB of shared memory");
FA_STATIC_ASSERT(FA_SM80_BWD_WIDE_SMEM_BYTES_OF(64) == 134352, "wide hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_WIDE_SMEM_BYTES_OF(128) == 142544, "wide hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_WIDE_SMEM_BYTES_OF(256) == 129696, "wide hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM80_BWD_WIDE_SMEM_BYTES_OF(64) <= FA_SM80_BWD_WIDE_SMEM_LIMIT &&
                     FA_SM80_BWD_WIDE_SMEM_BYTES_OF(128) <= FA_SM80_BWD_WIDE_SMEM_LIMIT &&
                     FA_SM80_BWD_WIDE_SMEM_BYTES_OF(256) <= FA_SM80_BWD_WIDE_SMEM_LIMIT,
                 "every wide sm80 backward config fits sm_80's 163 KB of shared memory");

/* *t for one tier's block sizes and Q/dO stages at head_dim_padded hdp. */
static inline void fa_sm80_bwd_fill_tile(fa_tile *t, int hdp, int block_m, int block_n, int stages)
{
    t->head_dim_padded = hdp;
    t->block_m = block_m;
    t->block_n = block_n;
    t->smem_bytes = (size_t)FA_SM80_BWD_SMEM_BYTES(hdp, block_m, block_n, stages);
    t->stages = stages;
    t->persistent = 0;
}

/* *t for head dim HD: its wide tier where smem_optin bytes hold it, else its narrow one. */
#define FA_SM80_BWD_FILL_TIER(t, HD, smem_optin)                                                      \
    ((smem_optin) >= FA_SM80_BWD_WIDE_SMEM_BYTES_OF(HD)                                               \
         ? fa_sm80_bwd_fill_tile(t, HD, FA_SM80_BWD_WIDE_HD##HD##_BLOCK_M,                            \
                                 FA_SM80_BWD_WIDE_HD##HD##_BLOCK_N, FA_SM80_BWD_WIDE_HD##HD##_STAGES) \
         : fa_sm80_bwd_fill_tile(t, HD, FA_SM80_BWD_HD##HD##_BLOCK_M, FA_SM80_BWD_HD##HD##_BLOCK_N,   \
                                 FA_SM80_BWD_NARROW_STAGES))

/* Fills *t for p's head_dim on a device with smem_optin bytes of opt-in shared memory per
   block (nothing else of p or g changes it); returns 0, or -1 if head_dim is not a multiple
   of 8 in [8, 256]. stages: the Q/dO buffers (see above). Pure arithmetic: the
   launch logic and CI tests call it without a GPU. */
static inline int fa_sm80_bwd_tile(const fa_params *p, const fa_grad_params *g, int smem_optin,
                                   fa_tile *t)
{
    (void)g;
    if (p == NULL || t == NULL)
        return -1;
    const int hdp = fa_head_dim_padded(p->head_dim);
    if (hdp == 0)
        return -1;
    if (hdp == 64)
        FA_SM80_BWD_FILL_TIER(t, 64, smem_optin);
    else if (hdp == 128)
        FA_SM80_BWD_FILL_TIER(t, 128, smem_optin);
    else
        FA_SM80_BWD_FILL_TIER(t, 256, smem_optin);
    return 0;
}

#endif /* FA_SM80_BWD_TILES_H */
