/*
 * sm90_scheduler.cuh -- the persistent tile order of the sm90 kernel and the per-batch lengths.
 *
 * A tile is (batch, head_q, m_block): 128 query rows of one head. num_tiles =
 * ceil(max_seqlen_q / 128) * heads_q * batch; CTA c handles tiles c, c + gridDim.x, ... in a fixed
 * order, so the result never depends on timing (no atomics, deterministic).
 *   causal: the (batch, head) pairs are cut into L2 sections of hb_per_section pairs, whose
 *           K/V fit a share of L2 (causal_section_pairs, FA_SM90_L2_SECTION_BYTES); inside a
 *           section m_block descending is the outer index, so the tiles with the most key
 *           blocks run first and the short ones fill the tail (longest-processing-time first),
 *           while the tiles of one head that read the same keys run close in time. (With one
 *           section over all heads, short sequences re-read each head's K/V from DRAM for
 *           every query block.)
 *   full:   (batch, head) outer, m_block inner, so CTAs running at the same time share one
 *           head's K/V in L2.
 * Lengths come from seq_lengths(), which reads cu_seqlens when given (variable-length batches,
 * reserved today) and the uniform lengths otherwise; the main loop never assumes that all
 * batches share one length. Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_SCHEDULER_CUH
#define FA_SM90_SCHEDULER_CUH

#include <stdint.h>

namespace fa_sm90 {

struct SchedulerArgs {
    int batch, heads_q, heads_kv;
    int seqlen_q, seqlen_k;            // uniform lengths (the maxima when cu_seqlens are given)
    const int32_t *cu_seqlens_q;       // NULL: every batch has seqlen_q rows
    const int32_t *cu_seqlens_k;
    int num_m_blocks;                  // ceil(seqlen_q / 128)
    int num_tiles;
    int causal;
    int hb_per_section;                // causal: (batch, head) pairs per L2 section, >= 1
};

struct TileCoord {
    int batch, head_q, head_kv, m_block;
};

struct SeqLengths {
    int len_q, len_k;
};

__device__ __forceinline__ SeqLengths seq_lengths(const SchedulerArgs &s, int b) {
    SeqLengths l;
    l.len_q = s.cu_seqlens_q ? s.cu_seqlens_q[b + 1] - s.cu_seqlens_q[b] : s.seqlen_q;
    l.len_k = s.cu_seqlens_k ? s.cu_seqlens_k[b + 1] - s.cu_seqlens_k[b] : s.seqlen_k;
    return l;
}

__device__ __forceinline__ TileCoord decode_tile(const SchedulerArgs &s, int tile) {
    const int heads_batches = s.heads_q * s.batch;
    int hb, m_block;
    if (s.causal) {
        const int section_tiles = s.hb_per_section * s.num_m_blocks;
        const int section = tile / section_tiles;
        const int i = tile - section * section_tiles;
        const int hb0 = section * s.hb_per_section;
        const int pairs = min(s.hb_per_section, heads_batches - hb0);  // the last section may be short
        m_block = s.num_m_blocks - 1 - i / pairs;
        hb = hb0 + i % pairs;
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

// (batch, head) pairs per causal L2 section, in [1, heads_batches]: as many as have their K
// and V (seqlen_k x head_dim x 2 tensors x 2 bytes, shared by heads_q / heads_kv consecutive
// query heads) in l2_bytes, or all of them when that is fewer than min_pairs (or l2_bytes is
// 0). A section of few heads has its CTAs spread far along each head's key loop, and its K/V
// then leave L2 before they are reused (measured on an H200: head_dim 256 causal over
// 2k-16k keys, sections of 16 down to 2 heads, 7-15% slower than one section; 32 heads and
// more, up to 18% faster).
__host__ __device__ __forceinline__ int causal_section_pairs(int seqlen_k, int head_dim, int heads_q, int heads_kv,
                                                             int heads_batches, long long l2_bytes, int min_pairs) {
    if (heads_batches < 1) return 1;
    if (l2_bytes <= 0) return heads_batches;
    const long long kv_bytes = 4ll * (long long)(seqlen_k > 0 ? seqlen_k : 1) * head_dim;
    const long long group = heads_kv > 0 && heads_q >= heads_kv ? heads_q / heads_kv : 1;
    const long long pairs = l2_bytes * group / kv_bytes;
    return pairs < min_pairs || pairs >= heads_batches ? heads_batches : (int)pairs;
}

}  // namespace fa_sm90

#endif /* FA_SM90_SCHEDULER_CUH */
