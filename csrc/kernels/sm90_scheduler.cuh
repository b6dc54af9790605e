/*
 * sm90_scheduler.cuh -- the persistent tile order of the sm90 kernel and the per-batch lengths.
 *
 * A tile is (batch, head_q, m_block): 128 query rows of one head. num_tiles =
 * ceil(max_seqlen_q / 128) * heads_q * batch; CTA c handles indices c, c + gridDim.x, ... below
 * num_iters in a fixed order, so the result never depends on timing (no atomics, deterministic).
 *   full:   (batch, head) outer, m_block inner, so CTAs running at the same time share one
 *           head's K/V in L2.
 *   causal, at least two tiles per CTA (pair_tiles): a tile's work grows with m_block, so the
 *           tiles of a head go out in pairs (longest with shortest, second longest with second
 *           shortest, ...) of about equal work, (batch, head) outer as for full attention;
 *           each CTA runs whole pairs, long tile first. Taken one by one in the fixed order used
 *           before (longest first inside L2 sections of heads), the busiest CTA had 1.34x the
 *           mean work (a tile's cost taken as its key blocks + 1; head_dim 256, 1024 keys, 7.75
 *           tiles per CTA); in pairs it has at most one pair more than the mean.
 *   causal, fewer tiles: m_block descending outer, (batch, head) inner: the tiles with the
 *           most key blocks run first (longest-processing-time first).
 * Lengths come from seq_lengths() (common/seqlen.h), which reads cu_seqlens when given (variable-length batches,
 * reserved today) and the uniform lengths otherwise; the main loop never assumes that all
 * batches share one length. Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_SCHEDULER_CUH
#define FA_SM90_SCHEDULER_CUH

#include <stdint.h>

#include "../common/seqlen.h"

namespace fa_sm90 {

struct SchedulerArgs {
    int batch, heads_q, heads_kv;
    int seqlen_q, seqlen_k;            // uniform lengths (the maxima when cu_seqlens are given)
    const int32_t *cu_seqlens_q;       // NULL: every batch has seqlen_q rows
    const int32_t *cu_seqlens_k;
    int num_m_blocks;                  // ceil(seqlen_q / 128)
    int causal;
    int pair_tiles;                    // causal with at least two tiles per CTA: see above
    int num_iters;                     // loop bound of the persistent loop (>= the tile count)
};

struct TileCoord {
    int batch, head_q, head_kv, m_block;  // m_block < 0: no tile at this index (skip it)
};

__device__ __forceinline__ fa_seqlen seq_lengths(const SchedulerArgs &s, int b) {
    return fa_seqlen_of(b, s.seqlen_q, s.seqlen_k, s.cu_seqlens_q, s.cu_seqlens_k);
}

__device__ __forceinline__ TileCoord decode_tile(const SchedulerArgs &s, int tile) {
    const int heads_batches = s.heads_q * s.batch;
    int hb, m_block;
    if (s.pair_tiles) {
        // CTA c takes, round after round, the two tiles of pair c, c + gridDim.x, ...: the
        // longest query block of a head with its shortest, the second longest with the second
        // shortest..., whose key blocks add up to about the same, so every CTA gets the same work.
        const int round = tile / (int)gridDim.x;
        const int pair = tile - round * (int)gridDim.x + (round >> 1) * (int)gridDim.x;
        const int pairs_per_hb = (s.num_m_blocks + 1) >> 1;
        hb = pair / pairs_per_hb;
        const int k = pair - hb * pairs_per_hb;
        m_block = (round & 1) ? k : s.num_m_blocks - 1 - k;
        // Past the last pair, or the middle block of an odd count (a pair of one tile).
        if (hb >= heads_batches || ((round & 1) && 2 * k + 1 == s.num_m_blocks)) {
            hb = 0;
            m_block = -1;
        }
    } else if (s.causal) {
        m_block = s.num_m_blocks - 1 - tile / heads_batches;
        hb = tile % heads_batches;
    } else {
        hb = tile / s.num_m_blocks;
        m_block = tile % s.num_m_blocks;
    }
    TileCoord t;
    t.batch = hb / s.heads_q;
    t.head_q = hb % s.heads_q;
    // Consecutive q heads share a kv head (GQA / MQA).
    t.head_kv = t.head_q / (s.heads_q / s.heads_kv);
    t.m_block = m_block;
    return t;
}

}  // namespace fa_sm90

#endif /* FA_SM90_SCHEDULER_CUH */
