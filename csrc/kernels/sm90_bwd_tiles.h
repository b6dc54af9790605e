/*
 * sm90_bwd_tiles.h -- tile table of the sm90 (Hopper) backward main kernel (bwd_sm90.cu).
 *
 * head_dim 64 and 128: one CTA owns BLOCK_N = 128 keys of one kv head, 64 per consumer
 * warpgroup (the wgmma M of S^T = K Q^T), and walks the query blocks of BLOCK_M = 64 rows that
 * see them. Per consumer thread (fp32 registers): dK and dV, D / 2 each, for the CTA's life;
 * per query block S^T and dP^T, 32 each, which become 16-bit fragments of 16 each, then half
 * a dQ row block, D / 4. 128-row query blocks at head_dim 64 (FlashAttention-3's tile there)
 * spilled: S^T and dP^T of 64 each beside dK, dV and the walk passed the 240 of setmaxnreg.
 *
 * head_dim 256 would need 256 registers for dK and dV alone that way, so there the two
 * warpgroups share BLOCK_N = 64 keys and split the rest instead: warpgroup c computes S^T and
 * dP^T for query rows 32c .. 32c + 31 of the block (16 registers each), writes P^T and dS^T
 * to shared memory, and after the meeting owns head_dim columns 128c .. 128c + 127 of dK, dV
 * and dQ (64 registers each). Shared memory has no room for a separate dQ staging area there:
 * each warpgroup stages its dQ half in its own columns of the step's Q and dO slots, which
 * only its dK and dV GEMMs read after the meeting, and the slot is freed once the dQ warp has
 * read them (sm90_bwd_config.cuh).
 *
 * Pure C, so launch logic and CI tests size it without a GPU.
 *
 * Shared memory (bytes; 16-bit elements; D = head_dim_padded, M = BLOCK_M, N = BLOCK_N,
 * S = stages):
 *     K, V                 2 * N * D * 2          (the CTA's keys, for its whole life)
 *     Q ring           S *     M * D * 2
 *     dO ring          S *     M * D * 2
 *     dS^T, two            2 * N * M * 2          (read by both warpgroups' dQ GEMM)
 *     P^T, two             2 * N * M * 2          (D = 256 only: read by both dV GEMMs)
 *     dQ staging               M * D * 4          (D < 256: fp32, both halves, for the TMA reduction)
 *     lse, delta       S * 2 * M * 4              (with Q and dO: base-2 lse and delta per row)
 *     mbarriers            FA_SM90_BARRIER_BYTES
 *     alignment slack      FA_SM90_SMEM_ALIGN
 *   D=64,  N=128, M=64, S=2:  32768 + 16384 + 16384 + 32768 + 16384 + 1024 + 256 + 1024 = 116992
 *   D=128, N=128, M=64, S=2:  65536 + 32768 + 32768 + 32768 + 32768 + 1024 + 256 + 1024 = 198912
 *   D=256, N=64,  M=64, S=2:  65536 + 65536 + 65536 + 16384 + 16384 + 1024 + 256 + 1024 = 231680
 */
#ifndef FA_SM90_BWD_TILES_H
#define FA_SM90_BWD_TILES_H

#include <limits.h>

#include "../launch_contract.h"
#include "kernels.h"
#include "sm90_tiles.h"

#define FA_SM90_BWD_BLOCK_M 64
#define FA_SM90_BWD_STAGES 2
/* Key-owning warpgroups (64 keys each) below head_dim 256; shared keys, split rows at 256. */
#define FA_SM90_BWD_SPLIT_ROWS(hd) ((hd) > 128)
#define FA_SM90_BWD_BLOCK_N(hd) (FA_SM90_BWD_SPLIT_ROWS(hd) ? 64 : 64 * FA_NUM_CONSUMER_WARPGROUPS)

#define FA_SM90_BWD_SMEM_BYTES(hd)                                                          \
    (4u * (size_t)FA_SM90_BWD_BLOCK_N(hd) * (size_t)(hd) +                                  \
     4u * (size_t)FA_SM90_BWD_STAGES * (size_t)FA_SM90_BWD_BLOCK_M * (size_t)(hd) +         \
     (FA_SM90_BWD_SPLIT_ROWS(hd) ? 8u : 4u) * (size_t)FA_SM90_BWD_BLOCK_N(hd) *             \
         (size_t)FA_SM90_BWD_BLOCK_M +                                                      \
     (FA_SM90_BWD_SPLIT_ROWS(hd) ? 0u : 4u * (size_t)FA_SM90_BWD_BLOCK_M * (size_t)(hd)) + \
     8u * (size_t)FA_SM90_BWD_STAGES * (size_t)FA_SM90_BWD_BLOCK_M +                        \
     (size_t)FA_SM90_BARRIER_BYTES + (size_t)FA_SM90_SMEM_ALIGN)

FA_STATIC_ASSERT(FA_SM90_BWD_SMEM_BYTES(64) == 116992, "hd64 layout matches the table above");
FA_STATIC_ASSERT(FA_SM90_BWD_SMEM_BYTES(128) == 198912, "hd128 layout matches the table above");
FA_STATIC_ASSERT(FA_SM90_BWD_SMEM_BYTES(256) == 231680, "hd256 layout matches the table above");
FA_STATIC_ASSERT(FA_SM90_BWD_SMEM_BYTES(256) <= FA_SM90_SMEM_OPTIN_LIMIT &&
                     FA_SM90_BWD_SMEM_BYTES(128) <= FA_SM90_SMEM_OPTIN_LIMIT &&
                     FA_SM90_BWD_SMEM_BYTES(64) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "the sm90 backward tiles fit the 227 KB opt-in shared memory");

/* Why the sm90 backward does not serve p and g, or NULL when it does (pure host). */
static inline const char *fa_sm90_bwd_unsupported(const fa_params *p, const fa_grad_params *g)
{
    (void)g;
    if (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16)
        return "the sm90 backward takes float16 or bfloat16";
    if (fa_head_dim_padded(p->head_dim) == 0)
        return "the sm90 backward has head_dim up to 256 (a multiple of 8)";
    if (p->seqused_k || p->kv_batch_idx || p->block_table)
        return "the sm90 backward takes uniform or packed (cu_seqlens) batches";
    /* TMA coordinates are 32-bit, and a box may start up to a block before the end. */
    if ((p->cu_seqlens_q && p->total_q > INT_MAX - FA_SM90_BWD_BLOCK_M) ||
        (p->cu_seqlens_k && p->total_k > INT_MAX - FA_SM90_BWD_BLOCK_N(128)))
        return "the sm90 backward takes packed batches of fewer than 2^31 - 128 rows; longer "
               "ones run on the sm80 family's backward";
    return NULL;
}

/* Fills *t for the instance of head_dim_padded hd (64, 128 or 256); returns 0, or -1 for
 * another hd. */
static inline int fa_sm90_bwd_tile_of_head_dim(int hd, fa_tile *t)
{
    if (t == NULL || (hd != 64 && hd != 128 && hd != 256))
        return -1;
    t->head_dim_padded = hd;
    t->block_m = FA_SM90_BWD_BLOCK_M;
    t->block_n = FA_SM90_BWD_BLOCK_N(hd);
    t->stages = FA_SM90_BWD_STAGES;
    t->smem_bytes = FA_SM90_BWD_SMEM_BYTES(hd);
    t->persistent = 0;
    return 0;
}

/* Fills *t for p (its head_dim alone sets the tile); returns 0, or -1 where
 * fa_sm90_bwd_unsupported names a reason. */
static inline int fa_sm90_bwd_tile(const fa_params *p, const fa_grad_params *g, fa_tile *t)
{
    if (p == NULL || t == NULL || fa_sm90_bwd_unsupported(p, g) != NULL)
        return -1;
    return fa_sm90_bwd_tile_of_head_dim(fa_head_dim_padded(p->head_dim), t);
}

#endif /* FA_SM90_BWD_TILES_H */
