/*
 * sm90_tiles.h -- tile table of the sm90 (Hopper) FlashAttention forward family.
 *
 * One CTA computes a block_m x head_dim tile of out for one (batch, head), 64 query rows per
 * consumer warpgroup, looping over key blocks of block_n rows held in a ring of `stages`
 * shared-memory slots. The kernel has two shapes of the 384 threads (fwd_sm90.cu):
 *   two consumers    block_m 128: warpgroup 0 produces (TMA), warpgroups 1 and 2 compute;
 *                    every instance of the library;
 *   three consumers  block_m 192: every warpgroup computes, and consumer threads issue the
 *                    TMA loads; no instance of the library, built only by the dev/ programs
 *                    that check and time it (fwd_sm90_consumers.cu, fwd_sm90_seq_check.cu).
 * Pure C (no CUDA includes), so launch.c can compute a launch configuration without a GPU;
 * fwd_sm90.cu instantiates its kernels from the same macros.
 *
 * Shared memory of one CTA (bytes; 16-bit elements; M = block_m, D = head_dim_padded,
 * N = block_n, S = stages):
 *     Q tile                 M * D * 2            (64 rows per consumer warpgroup)
 *     K ring             S * N * D * 2
 *     V ring             S * N * D * 2
 *     O staging              M * D * 2 or 0       (only where it fits the opt-in limit; else
 *                                                   O is staged in the V ring (head_dim 256) or
 *                                                   in each warpgroup's Q rows; fwd_sm90.cu)
 *     mbarriers, counters    FA_SM90_BARRIER_BYTES
 *     alignment slack        1024                 (128-byte swizzle wants 1024-byte tiles)
 *   D=64,  N=128, S=2 (both):    16384 + 2*2*16384 + 16384 + 256 + 1024 =  99584
 *   D=128, N=176, S=2 (full):    32768 + 2*2*45056 +     0 + 256 + 1024 = 214272
 *   D=128, N=128, S=2 (causal, and full with seqlen_k <= 1024):
 *                                32768 + 2*2*32768 + 32768 + 256 + 1024 = 197888
 *   D=256, N=80,  S=2 (full, and causal with seqlen_k > 2048):
 *                                65536 + 2*2*40960 +     0 + 256 + 1024 = 230656
 *   D=256, N=64,  S=2 (causal, seqlen_k <= 2048):
 *                                65536 + 2*2*32768 +     0 + 256 + 1024 = 197888
 * (opt-in limit 232448). head_dim 64 leaves room for up to 4 stages (165120; measured no
 * faster than 2). Three consumers at head_dim 64 (M = 192, S = 3: their refills are issued
 * one block later than a producer's): 24576 + 2*3*16384 + 24576 + 256 + 1024 = 148736.
 *
 * Paged k/v needs block_n to divide page_size (one key block, one page, one TMA box); where a
 * head dim has two instances the dividing one is taken (fa_sm90_short_keys), and
 * fa_sm90_seq_unsupported (fwd_sm90.cu) refuses a page size that neither divides.
 *
 * Usage: fa_tile t; if (fa_sm90_tile(&params, &t) == 0) ... t.smem_bytes ...
 */
#ifndef FA_SM90_TILES_H
#define FA_SM90_TILES_H

#include "../launch_contract.h"
#include "kernels.h"

/* Query rows of a tile: 64 per consumer warpgroup. */
#define FA_SM90_BLOCK_M(consumers) (64 * (consumers))
#define FA_SM90_BARRIER_BYTES 256
#define FA_SM90_SMEM_ALIGN 1024

/* K/V ring depth per head dim. head_dim 128 and 256 fill the shared memory with 2 stages;
 * head_dim 64 could take up to 4. */
#define FA_SM90_STAGES_HD64 2
#define FA_SM90_STAGES_HD128 2
#define FA_SM90_STAGES_HD256 2
#define FA_SM90_STAGES_3WG 3
#define FA_SM90_STAGES(hd, consumers)                                                             \
    ((consumers) == 3 ? FA_SM90_STAGES_3WG                                                        \
     : (hd) == 64     ? FA_SM90_STAGES_HD64                                                       \
     : (hd) == 128    ? FA_SM90_STAGES_HD128                                                      \
                      : FA_SM90_STAGES_HD256)

/* Key-block rows per head dim. A multiple of 16 (one wgmma k-step of P V) and at most 256 (one TMA box, one wgmma N). head_dim 128 full attention takes
 * the wider 176 (measured better from seqlen 2k up; 128 is better at 512-1k); causal keeps 128
 * so fewer keys are masked. head_dim 64 uses 128 both ways: measured equal to 192 from 8k up
 * and up to 14% faster below (192 also wastes a third of its last block at seqlen 512, 1k). */
#define FA_SM90_BLOCK_N_HD64 128
#define FA_SM90_BLOCK_N_HD64_CAUSAL 128
#define FA_SM90_BLOCK_N_HD128 176
#define FA_SM90_BLOCK_N_HD128_CAUSAL 128
#define FA_SM90_BLOCK_N_HD256 80
#define FA_SM90_BLOCK_N_HD256_CAUSAL 80

/* head_dim 128 full attention over at most FA_SM90_SHORT_SEQLEN_K keys takes 128-key blocks:
 * 512 and 1024 keys are then whole blocks, where 176 leaves a part-filled last block (H200,
 * bf16, one run against FA_SM90_SHORT_SEQLEN_K=0: 525 vs 489 TFLOP/s at 512 keys, 608 vs 583 at
 * 1k; benches/NOTES.md). Longer sequences keep 176. */
#define FA_SM90_BLOCK_N_HD128_SHORT 128
#define FA_SM90_SHORT_SEQLEN_K 1024
/* head_dim 256 causal over at most FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL keys takes 64-key
 * blocks: two per 128-row diagonal, so each warpgroup's rows end on a block boundary and fewer
 * masked scores are computed (against 80, same run: +8% at 512 keys, -1% at 1k, +7% at 2k,
 * +2% at 4k, -2% at 8k and 16k; benches/NOTES.md, sm90 v5). A window takes the causal
 * tiles, short ones included. */
#define FA_SM90_BLOCK_N_HD256_CAUSAL_SHORT 64
#define FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL 2048

/* masked: causal or a window (fa_mask_kind other than FA_MASK_NONE). */
#define FA_SM90_BLOCK_N(hd, masked, short_keys)                                          \
    ((hd) == 64    ? ((masked) ? FA_SM90_BLOCK_N_HD64_CAUSAL : FA_SM90_BLOCK_N_HD64)      \
     : (hd) == 128 ? ((masked)       ? FA_SM90_BLOCK_N_HD128_CAUSAL                       \
                      : (short_keys) ? FA_SM90_BLOCK_N_HD128_SHORT                        \
                                     : FA_SM90_BLOCK_N_HD128)                             \
                   : ((masked) ? ((short_keys) ? FA_SM90_BLOCK_N_HD256_CAUSAL_SHORT       \
                                               : FA_SM90_BLOCK_N_HD256_CAUSAL)            \
                               : FA_SM90_BLOCK_N_HD256))
/* Whether a problem with seqlen_k keys counts as short for its head dim and mask (the third
 * argument above); only head_dim 128 full and head_dim 256 masked have a short instance.
 * Paged k/v may take the other instance (fa_sm90_short_keys). */
#define FA_SM90_SHORT_KEYS(hd, masked, seqlen_k)                                                   \
    ((hd) == 128 && !(masked)  ? FA_SM90_SHORT_SEQLEN_K > 0 && (seqlen_k) <= FA_SM90_SHORT_SEQLEN_K \
     : (hd) == 256 && (masked) ? FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL > 0 &&                        \
                                     (seqlen_k) <= FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL             \
                               : 0)

/* Whether a head dim and mask have a short-keys instance (sm90_instances.def). */
#define FA_SM90_HAS_SHORT_KEYS(hd, masked) (((hd) == 128 && !(masked)) || ((hd) == 256 && (masked)))

#define FA_SM90_SMEM_OPTIN_LIMIT 232448 /* H100 / H200: 227 KB per block after opt-in */

#define FA_SM90_Q_BYTES(bm, hd) ((size_t)(bm) * (size_t)(hd) * 2u)
#define FA_SM90_KV_SLOT_BYTES(hd, bn) ((size_t)(bn) * (size_t)(hd) * 2u)
#define FA_SM90_SMEM_BYTES_NO_O(bm, hd, bn, stages)                                      \
    (FA_SM90_Q_BYTES(bm, hd) + 2u * (size_t)(stages) * FA_SM90_KV_SLOT_BYTES(hd, bn) +   \
     (size_t)FA_SM90_BARRIER_BYTES + (size_t)FA_SM90_SMEM_ALIGN)
#define FA_SM90_HAS_O_STAGING(bm, hd, bn, stages)                                        \
    (FA_SM90_SMEM_BYTES_NO_O(bm, hd, bn, stages) + FA_SM90_Q_BYTES(bm, hd) <= FA_SM90_SMEM_OPTIN_LIMIT)
#define FA_SM90_SMEM_BYTES(bm, hd, bn, stages)                                           \
    (FA_SM90_SMEM_BYTES_NO_O(bm, hd, bn, stages) +                                       \
     (FA_SM90_HAS_O_STAGING(bm, hd, bn, stages) ? FA_SM90_Q_BYTES(bm, hd) : (size_t)0))

FA_STATIC_ASSERT(FA_SM90_BLOCK_M(FA_NUM_CONSUMER_WARPGROUPS) == 128 && FA_SM90_BLOCK_M(FA_NUM_WARPGROUPS) == 192,
                 "each consumer warpgroup owns 64 query rows (the wgmma M)");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(128, 256, FA_SM90_BLOCK_N_HD256, FA_SM90_STAGES(256, 2)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 256 tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(128, 128, FA_SM90_BLOCK_N_HD128, FA_SM90_STAGES(128, 2)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 128 tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(128, 256, FA_SM90_BLOCK_N_HD256_CAUSAL_SHORT, FA_SM90_STAGES(256, 2)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 256 causal short-sequence tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(128, 128, FA_SM90_BLOCK_N_HD128_SHORT, FA_SM90_STAGES(128, 2)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 128 short-sequence tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(128, 64, FA_SM90_BLOCK_N_HD64, FA_SM90_STAGES(64, 2)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 64 tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_SMEM_BYTES(192, 64, FA_SM90_BLOCK_N_HD64, FA_SM90_STAGES(64, 3)) <= FA_SM90_SMEM_OPTIN_LIMIT,
                 "head_dim 64 three-consumer tile fits the 227 KB opt-in shared memory");
FA_STATIC_ASSERT(FA_SM90_STAGES_HD64 >= 2 && FA_SM90_STAGES_HD64 <= 4 && FA_SM90_STAGES_HD128 >= 2 &&
                 FA_SM90_STAGES_HD128 <= 4 && FA_SM90_STAGES_HD256 >= 2 && FA_SM90_STAGES_HD256 <= 4 &&
                 FA_SM90_STAGES_3WG >= 3 && FA_SM90_STAGES_3WG <= 4,
                 "2 to 4 K/V stages, 3 or 4 with three consumers (the mbarrier area holds 7 + 4 * 4 "
                 "barriers and 4 counters)");
FA_STATIC_ASSERT(FA_SM90_BLOCK_N_HD64 % 16 == 0 && FA_SM90_BLOCK_N_HD64_CAUSAL % 16 == 0 &&
                 FA_SM90_BLOCK_N_HD128 % 16 == 0 && FA_SM90_BLOCK_N_HD128_CAUSAL % 16 == 0 &&
                 FA_SM90_BLOCK_N_HD128_SHORT % 16 == 0 && FA_SM90_BLOCK_N_HD256_CAUSAL_SHORT % 16 == 0 &&
                 FA_SM90_BLOCK_N_HD256 % 16 == 0 && FA_SM90_BLOCK_N_HD256_CAUSAL % 16 == 0,
                 "block_n is a whole number of 16-key wgmma k-steps");

/* The short-keys choice for p (hd = its padded head dim, masked = its mask kind is not
 * FA_MASK_NONE): by seqlen_k (the longest entry's keys), except for paged k/v, which the kernel
 * runs only with a key block that divides page_size (a block then lies inside one page, one TMA
 * box): where the head dim has both instances and only the other one's block divides
 * page_size, that one. The kernel dispatch and the launch tile both take it from here. */
static inline int fa_sm90_short_keys(const fa_params *p, int hd, int masked) {
    const int by_length = FA_SM90_SHORT_KEYS(hd, masked, p->seqlen_k) ? 1 : 0;
    if (p->block_table && p->page_size > 0 && FA_SM90_HAS_SHORT_KEYS(hd, masked) &&
        p->page_size % FA_SM90_BLOCK_N(hd, masked, by_length) != 0 &&
        p->page_size % FA_SM90_BLOCK_N(hd, masked, !by_length) == 0)
        return !by_length;
    return by_length;
}

/* Fills *t for a 16-bit (float16 / bfloat16) problem (head_dim, dtype, mask kind, seqlen_k and,
 * when paged, page_size of *p) on `consumers` consumer warpgroups (2, or 3 at head_dim 64).
 * Returns -1, leaving *t untouched, when head_dim is not a multiple of 8 in [8, 256], dtype is
 * not a 16-bit type, or the shape has no instance there. */
static inline int fa_sm90_tile_of_shape(const fa_params *p, int consumers, fa_tile *t) {
    if (p == NULL || t == NULL) return -1;
    int hd = fa_head_dim_padded(p->head_dim);
    if (hd == 0 || (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16)) return -1;
    if (consumers != FA_NUM_CONSUMER_WARPGROUPS && !(consumers == FA_NUM_WARPGROUPS && hd == 64)) return -1;
    t->block_m = FA_SM90_BLOCK_M(consumers);
    /* A window takes the causal tiles: its masked blocks sit at the edges as causal ones do. */
    const int masked = fa_params_mask_kind(p) != FA_MASK_NONE;
    t->block_n = FA_SM90_BLOCK_N(hd, masked, fa_sm90_short_keys(p, hd, masked));
    t->stages = FA_SM90_STAGES(hd, consumers);
    t->head_dim_padded = hd;
    t->smem_bytes = FA_SM90_SMEM_BYTES(t->block_m, hd, t->block_n, t->stages);
    t->persistent = 1;
    return 0;
}

/* The library's tile: two consumer warpgroups beside a producer. */
static inline int fa_sm90_tile(const fa_params *p, fa_tile *t) {
    return fa_sm90_tile_of_shape(p, FA_NUM_CONSUMER_WARPGROUPS, t);
}

#endif /* FA_SM90_TILES_H */
