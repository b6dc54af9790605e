/*
 * sm90_scheduler.cuh -- the persistent tile order of the sm90 kernel, and where a tile's entry
 * keeps its rows.
 *
 * A tile is (batch, head_q, m_block): 128 query rows of one head. num_tiles =
 * ceil(max_seqlen_q / 128) * heads_q * batch; CTA c handles loop indices c, c + gridDim.x, ...
 * below num_iters in the fixed order of common/tile_order.h (longest-processing-time first:
 * full attention (batch, head) outer and m_block inner, causal in pairs or m_block descending,
 * windows their inner query blocks first), so the result never depends on timing (no atomics,
 * deterministic). The host sizes the order by the longest entry; a tile whose m_block starts
 * at or past its own entry's len_q (a shorter packed entry) is skipped by producer and
 * consumers alike, before any barrier, at the cost of reading the entry's lengths.
 *
 * Rows. An entry's lengths and row origins come from common/seqlen.h (fa_seqlen_at) and
 * nowhere else. The TMA maps (sm90_fwd_launch.cuh) are (head_dim, rows, heads, batches); a
 * (row, batch) coordinate pair is seqlen.h's element offset taken with strides in coordinate
 * units: a row 1, a batch 2^32, and 0 for the batch of a packed tensor (the host passes batch
 * stride 0 there too, and its map has a single batch). So
 *   q, out  (row, batch) = (q_row0 + i, b), or (q_row0 + i, 0) when packed;
 *   k, v    (row, batch) = (k_row0 + j, kv_batch), (k_row0 + j, 0) when packed, or
 *           (j % page_size, block_table[b][j / page_size]) when paged: with page_size a
 *           multiple of block_n a key block lies in one page, so one box loads it.
 * Packed rows go up to total + 63 (a Q box's start), within 32 bits (fa_sm90_seq_unsupported).
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_SCHEDULER_CUH
#define FA_SM90_SCHEDULER_CUH

#include <stdint.h>

#include "../common/seqlen.h"
#include "../common/tile_order.h"

namespace fa_sm90 {

struct SchedulerArgs {
    int batch, heads_q, heads_kv;
    fa_seq_layout seq;                 // lengths (the maxima when packed) and row layout
    fa_tile_order order;               // (batch, head) x ceil(seq.seqlen_q / 128) tiles
};

struct TileCoord {
    int batch, head_q, head_kv, m_block;  // m_block < 0: no tile at this index (skip it)
};

// A TMA (row, batch) coordinate pair of the maps above.
struct TmaRow {
    int row, batch;
};

constexpr int64_t kTmaBatchUnit = (int64_t)1 << 32;

__device__ __forceinline__ TmaRow tma_row(int64_t packed) {
    TmaRow t;
    t.row = (int)(uint32_t)packed;
    t.batch = (int)(packed >> 32);
    return t;
}

// Query row i of entry b (e = fa_seqlen_at(seq, b)) in the q and out maps.
__device__ __forceinline__ TmaRow q_tma_row(const fa_seq_layout &s, const fa_seqlen &e, int b, int i) {
    return tma_row(fa_q_row_offset(&e, b, i, s.cu_seqlens_q ? 0 : kTmaBatchUnit, 1));
}

// Key j of entry b in the k and v maps; paged, j must start a key block (one page lookup).
__device__ __forceinline__ TmaRow kv_tma_row(const fa_seq_layout &s, const fa_seqlen &e, int b, int j) {
    return tma_row(fa_k_row_offset(&s, &e, b, j, s.cu_seqlens_k && !s.block_table ? 0 : kTmaBatchUnit, 1));
}

// Whether the memory past an entry's len_k inside its last key block may hold anything (a KV
// cache filled to seqused_k, or a page's unused tail). TMA zero-fills only past the map's end,
// and P V would turn 0 * NaN into NaN, so such a block's V tail is zeroed (consumer_mainloop).
// Packed k/v without seqused_k holds the next entry's keys there: finite, so P = 0 suffices.
__device__ __forceinline__ bool kv_tail_unbounded(const fa_seq_layout &s) {
    return s.seqused_k != nullptr || s.block_table != nullptr;
}

// Appended keys (s.seqlen_new > 0, dense caches: the KV-cache op's new keys, read from maps of
// their own because the cache gets them only during this launch) must not share a key block
// with cached ones, the entry's e.len_k keys (common/seqlen.h). So key blocks are counted from
// an origin `shift` keys below the entry's key 0, which puts a block boundary where the cached
// keys end: block n holds keys [n * kBlockN - shift, (n + 1) * kBlockN - shift), cached ones
// below e.len_k, appended ones from there. The mask takes the same origin (e.len_k +
// seqlen_new + shift keys, first_key = shift); the rows of k below key 0 lie outside its map,
// which TMA fills with zeros. Only the instances that read appended keys (Cfg::kAppends)
// number keys so; the others from key 0.
template <class Cfg>
__device__ __forceinline__ int key_origin_shift(const fa_seq_layout &s, const fa_seqlen &e) {
    if (!Cfg::kAppends || s.seqlen_new == 0) return 0;
    return (Cfg::kBlockN - e.len_k % Cfg::kBlockN) % Cfg::kBlockN;
}

// Key block n of entry b: its coordinates, and whether they are in the appended keys' maps.
struct KeyBlockAt {
    TmaRow at;
    bool appended;
};

template <class Cfg>
__device__ __forceinline__ KeyBlockAt key_block_at(const fa_seq_layout &s, const fa_seqlen &e, int b, int n) {
    if (!Cfg::kAppends || s.seqlen_new == 0) return KeyBlockAt{kv_tma_row(s, e, b, n * Cfg::kBlockN), false};
    const int key = n * Cfg::kBlockN - key_origin_shift<Cfg>(s, e);
    if (key >= e.len_k) return KeyBlockAt{TmaRow{key - e.len_k, b}, true};
    return KeyBlockAt{TmaRow{key, e.kv_batch}, false};  // may start below row 0
}

__device__ __forceinline__ TileCoord decode_tile(const SchedulerArgs &s, int tile) {
    int hb;
    const int m_block = fa_tile_at(&s.order, tile, (int)gridDim.x, &hb);
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
