/*
 * tile_order.h -- the order in which a persistent kernel's CTAs take their query tiles.
 *
 * A tile is query block m (0 <= m < num_m_blocks) of one (batch, head) pair hb (0 <= hb <
 * heads_batches, batch-major). CTA c takes loop indices c, c + grid, c + 2 grid, ... below
 * num_iters: the order is fixed, so results never depend on timing. A tile's work is the key
 * blocks it visits, whose count over m has the shape fa_block_range_plateau gives
 * (block_range.h): rising, largest on [begin, end), falling. With a fixed round-robin order
 * the busiest CTA sets the kernel's time, so the order is longest-processing-time first:
 *
 *   plateau first   the plateau's tiles, hb outer and m inner, so that the CTAs running at the
 *                   same time share one head's K/V in L2; then the other query blocks nearest
 *                   the plateau first (one below, one above, in turn), each across every hb.
 *                   Full attention is all plateau (hb outer, m inner); causal (plateau = the
 *                   last block) goes m descending. A sliding window's plateau is every block
 *                   whose window lies inside the keys: at 16k rows with a 4096-key window, 128
 *                   rows a tile and 132 CTAs, hb outer and m inner throughout gave the busiest
 *                   CTA 1.17x the mean work (tile = key blocks + 1.5), this order 1.04x.
 *                   Only where the tail keeps enough of a head's tiles in flight for L2
 *                   (FA_TILE_TAIL_BLOCKS_IN_FLIGHT); else head by head.
 *   pairs           when the work rises to the last block (rising_only: causal, or a window
 *                   whose left edge hides nothing) and every CTA gets two tiles or more: a
 *                   head's longest tile with its shortest, its second longest with its second
 *                   shortest, ..., each pair's work about the same; CTA c runs pairs c, c +
 *                   grid, ... (round r's tile: the long one for even r, the short one for
 *                   odd), hb outer. Against m descending the busiest CTA had 1.34x the mean
 *                   (head_dim 256 causal, 1024 keys, 7.75 tiles per CTA); in pairs it has at
 *                   most one pair more than the mean.
 *
 * Plain C, host and device (hd.h): the kernel decodes its indices with fa_tile_at, the host
 * fills fa_tile_order, and the tests enumerate both on the host.
 */
#ifndef FA_COMMON_TILE_ORDER_H
#define FA_COMMON_TILE_ORDER_H

#include <stdint.h>

#include "block_range.h"
#include "hd.h"

/* The plateau-first order's tail takes each query block across every (batch, head) pair in
 * turn, so a wave of grid tiles holds about grid / heads_batches query blocks of one head,
 * and those share their keys in L2. A 128-row tile does 128 FLOP per byte of K/V it reads
 * cold (4.7 TB/s at 600 TFLOP/s, beyond HBM), so with fewer than this many blocks of a head
 * in flight the tail waits on memory: at head_dim 128, 4096 keys, window 1024 and 64 (batch,
 * head) pairs (2 blocks in flight) it ran 5% slower than head by head (H100,
 * benches/NOTES.md). There, as for full attention, the order is head by head. */
#define FA_TILE_TAIL_BLOCKS_IN_FLIGHT 4

typedef struct {
    int heads_batches;               /* batch * heads: tiles per query block */
    int num_m_blocks;
    int plateau_begin, plateau_end;  /* 0 <= begin < end <= num_m_blocks */
    int pair_tiles;
    int num_iters;                   /* loop indices (>= the tile count; pairs leave gaps) */
} fa_tile_order;

/* The order for heads_batches x num_m_blocks tiles of the given work shape on `grid` CTAs.
 * The tile count must fit in 32 bits with a grid to spare (launch.c); pairs need up to 2 grid
 * more indices than tiles, so past that they are not taken. */
FA_HD fa_tile_order fa_tile_order_make(int heads_batches, int num_m_blocks, fa_block_plateau work, int grid)
{
    fa_tile_order o;
    o.heads_batches = heads_batches;
    o.num_m_blocks = num_m_blocks;
    o.plateau_begin = work.begin;
    o.plateau_end = work.end;
    if (!work.rising_only && (int64_t)heads_batches * FA_TILE_TAIL_BLOCKS_IN_FLIGHT > grid) {
        o.plateau_begin = 0; /* head by head */
        o.plateau_end = num_m_blocks;
    }
    const int64_t tiles = (int64_t)num_m_blocks * heads_batches;
    const int64_t pairs = (int64_t)((num_m_blocks + 1) / 2) * heads_batches;
    const int64_t pair_iters = 2 * (int64_t)grid * ((pairs + grid - 1) / grid);
    o.pair_tiles = work.rising_only && num_m_blocks >= 2 && tiles >= 2 * (int64_t)grid &&
                   pair_iters <= (int64_t)INT32_MAX - grid;
    o.num_iters = o.pair_tiles ? (int)pair_iters : (int)tiles;
    return o;
}

/* The k-th query block off the plateau (0 <= k < num_m_blocks - (end - begin)), nearest first:
 * begin - 1, end, begin - 2, end + 1, ..., then the rest of the longer side. */
FA_HD int fa_tile_off_plateau(const fa_tile_order *o, int k)
{
    const int below = o->plateau_begin, above = o->num_m_blocks - o->plateau_end;
    const int both = fa_imin(below, above);
    if (k < 2 * both)
        return (k & 1) ? o->plateau_end + (k >> 1) : o->plateau_begin - 1 - (k >> 1);
    const int rest = k - 2 * both;
    return below > above ? o->plateau_begin - 1 - both - rest : o->plateau_end + both + rest;
}

/* Loop index `tile` of a kernel of `grid` CTAs: its query block, and its (batch, head) pair
 * in *hb; -1 where the index holds no tile (a gap in the pairs). */
FA_HD int fa_tile_at(const fa_tile_order *o, int tile, int grid, int *hb)
{
    const int hbs = o->heads_batches;
    if (o->pair_tiles) {
        const int round = tile / grid;
        const int pair = tile - round * grid + (round >> 1) * grid;
        const int pairs_per_hb = (o->num_m_blocks + 1) >> 1;
        *hb = pair / pairs_per_hb;
        const int k = pair - *hb * pairs_per_hb;
        /* Past the last pair, or the middle block of an odd count (a pair of one tile). */
        if (*hb >= hbs || ((round & 1) && 2 * k + 1 == o->num_m_blocks)) {
            *hb = 0;
            return -1;
        }
        return (round & 1) ? k : o->num_m_blocks - 1 - k;
    }
    const int plateau = o->plateau_end - o->plateau_begin;
    const int in_plateau = plateau * hbs;
    if (tile < in_plateau) {
        *hb = tile / plateau;
        return o->plateau_begin + (tile - *hb * plateau);
    }
    const int k = (tile - in_plateau) / hbs;
    *hb = tile - in_plateau - k * hbs;
    return fa_tile_off_plateau(o, k);
}

#endif /* FA_COMMON_TILE_ORDER_H */
