/*
 * sm90_fwd_mainloop.cuh -- one consumer warpgroup's key loop of the sm90 forward.
 *
 * Per key block n, from n_max - 1 down to n_min (common/block_range.h):
 *   S = Q K_n^T (wgmma, both operands in shared memory), the score hook and the mask
 *   (score_mod: sm90_mask.cuh over common/score.h and common/mask.h), the online softmax
 *   (sm90_softmax.cuh), then O += P V_n with P packed in registers as the A operand.
 * Each turn issues the next block's Q K^T together with this block's P V, so the softmax of
 * one block runs under the other's GEMM; with pingpong (head_dim 128) the two warpgroups also
 * take turns at the tensor cores.
 * Keys at or past the entry's len_k are masked to P = 0. Only the first block (n_max - 1) can
 * hold such keys; where the layout leaves arbitrary memory there (seqused_k, pages), the
 * consumer zeroes its V rows past len_k before the tile's key loop (zero_v_tail: up to
 * block_n x head_dim x 2 bytes, 16 per thread and store), so the loop itself is the same for
 * every layout.
 * Device-only.
 */
#ifndef FA_SM90_FWD_MAINLOOP_CUH
#define FA_SM90_FWD_MAINLOOP_CUH

#include "sm90_fwd_config.cuh"
#include "sm90_mask.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_ptx.cuh"
#include "sm90_softmax.cuh"
#include "sm90_wgmma.cuh"

namespace fa_sm90 {

// S (64 x kBlockN) = Q rows of this warpgroup x K^T; first k-step overwrites (scale-d 0).
template <class Cfg>
__device__ __forceinline__ void issue_qk(float (&s)[Cfg::kBlockN / 2], uint32_t q_rows, uint32_t k_slot) {
    wgmma_ss_kmajor<Cfg::kBlockN, Cfg::kHeadDim, Cfg::kBf16>(s, q_rows, Cfg::kQChunkBytes, k_slot, Cfg::kKVChunkBytes);
}

// O (64 x kHeadDim) += P (registers) x V; V is the MN-major B operand (transpose-B).
template <class Cfg>
__device__ __forceinline__ void issue_pv(float (&o)[Cfg::kHeadDim / 2], const uint32_t (&p)[Cfg::kBlockN / 4],
                                         uint32_t v_slot, bool first) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk) {
        // k-step kk: keys 16kk..16kk+15 = 16 rows of 128 bytes in every 64-column chunk;
        // LBO steps over the chunks along N (head_dim), SBO over 8-key groups along K.
        const uint64_t desc_v = make_smem_desc(v_slot + kk * 2048, Cfg::kKVChunkBytes, 1024);
        Wgmma<Cfg::kHeadDim>::template rs<Cfg::kBf16>(o, p[4 * kk + 0], p[4 * kk + 1], p[4 * kk + 2],
                                                       p[4 * kk + 3], desc_v, (first && kk == 0) ? 0 : 1);
    }
}

template <class Cfg>
__device__ __forceinline__ void pingpong_sync(int consumer) {
    if constexpr (Cfg::kPingpong) bar_sync(kBarPingpongBase + consumer, 2 * 128);
}

template <class Cfg>
__device__ __forceinline__ void pingpong_arrive(int consumer) {
    if constexpr (Cfg::kPingpong) bar_arrive(kBarPingpongBase + (consumer ^ 1), 2 * 128);
}

// The key blocks that rows [row_begin, row_begin + rows) of a sequence visit (common/block_range.h).
template <class Cfg>
__device__ __forceinline__ fa_block_range rows_block_range(const fa_mask &mask, int row_begin, int rows) {
    return fa_block_range_span(&mask, row_begin, rows, Cfg::kBlockN);
}

// The entry's mask in the key numbering of its blocks: from key_origin_shift keys below key 0
// where keys are appended (sm90_scheduler.cuh), else from key 0.
template <class Cfg>
__device__ __forceinline__ fa_mask sequence_mask(const KernelParams &prm, const fa_seqlen &len) {
    if constexpr (Cfg::kAppends) {
        const int shift = key_origin_shift<Cfg>(prm.sched.seq, len);
        const int keys = len.len_k + prm.sched.seq.seqlen_new + shift;
        fa_mask m = make_mask<Cfg::kMask>(len.len_q, keys, prm.window_left, prm.window_right);
        m.first_key = shift;
        return m;
    }
    return make_mask<Cfg::kMask>(len.len_q, len.len_k, prm.window_left, prm.window_right);
}

// Block n's scores through the score hook, then the mask (FlashAttention's order).
template <class Cfg>
__device__ __forceinline__ void score_mod(float (&s)[Cfg::kBlockN / 2], int n, const fa_block_range &range,
                                          const fa_mask &mask, const fa_score &score, int row0, int lane) {
    if constexpr (Cfg::kSoftcap) softcap_scores<Cfg::kBlockN>(s, score.softcap_pre);
    if (block_needs_mask<Cfg::kMask>(range, n)) mask_scores<Cfg::kBlockN, Cfg::kMask>(s, n, row0, mask, lane);
}

// The warpgroup's Q rows are no longer read: where O is staged elsewhere (a buffer of its own
// or the V ring), each warp frees them after the wait that retired its last Q K^T, so the
// producer loads the next tile's rows while this tile finishes. Branch-free: it sits inside
// the key loop. Three consumers load their own rows after the loop (load_tile_start).
template <class Cfg>
__device__ __forceinline__ void release_q_after_last_qk(uint32_t bars, int consumer, int lane, bool last) {
    if constexpr (Cfg::kQFreeAfterLastQk && Cfg::kProducerWarpgroup)
        mbarrier_arrive_if(bars + 8 * (Cfg::kBarQEmpty + consumer), last && lane == 0);
}

// kOInV: the warpgroup's store thread (store_thread) waits until its previous tile's O store
// has read the V ring, then lets the producer refill it. Called once in every tile after a
// CTA's first, as late as that tile allows: under its first Q K^T; before the skip loop of a
// warpgroup that first waits for V blocks it does not use; or, for rows that see no key,
// before the epilogue.
template <class Cfg>
__device__ __forceinline__ void release_o_in_v(uint32_t bars, bool store_thread) {
    if constexpr (Cfg::kOInV) {
        if (store_thread) {
            cp_async_bulk_wait_group_read_0();
            mbarrier_arrive(bars + 8 * Cfg::kBarOFree);
        }
    }
}

// Zeroes rows [from, kBlockN) of a V slot: keys past len_k whose memory may hold NaN or Inf
// (kv_tail_unbounded); their P is exactly 0, but 0 * NaN in P V is not. Rows are whole
// 128-byte lines of every 64-column chunk, so the swizzle does not matter. Both warpgroups
// may zero the same slot: they write the same zeros, and each orders its own stores before
// its wgmma (async proxy) reads them. Once per tile, only for the first block, which is the
// only one that can reach past len_k. Outside the key loop: a branch at the end of its first
// block's softmax measured 2-4% slower on short causal tiles of the uniform layout, where it
// is never taken.
template <class Cfg>
__device__ __forceinline__ void zero_v_tail(uint32_t v_slot, int from, int consumer) {
    const uint32_t tid_in_wg = threadIdx.x % 128;
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c)
        for (uint32_t off = (uint32_t)from * 128u + 16u * tid_in_wg; off < Cfg::kKVChunkBytes; off += 16u * 128u)
            st_shared_v4_zero(v_slot + c * Cfg::kKVChunkBytes + off);
    fence_proxy_async_shared_cta();
    bar_sync(kBarEpilogueBase + consumer, 128);
}

// The tile's first (top) key block: S = Q K_top^T alone, its softmax and P, before O exists.
template <class Cfg>
__device__ __forceinline__ void first_block_probs(ConsumerRing<Cfg> &ring, const fa_block_range &range,
                                                  const fa_mask &mask, const fa_score &score, uint32_t q_rows,
                                                  float scale_log2, int consumer, int row0, bool release_o, int n_min,
                                                  uint32_t &k_slot, float (&s)[Cfg::kBlockN / 2],
                                                  uint32_t (&p)[Cfg::kBlockN / 4], float (&m)[2], float (&l)[2],
                                                  float (&corr)[2]) {
    const int n_top = range.n_max - 1;
    k_slot = ring.wait_k();
    pingpong_sync<Cfg>(consumer);
    wgmma_fence();
    issue_qk<Cfg>(s, q_rows, k_slot);
    wgmma_commit_group();
    pingpong_arrive<Cfg>(consumer);
    release_o_in_v<Cfg>(ring.bars, release_o);
    wgmma_wait_group<0>();
    fence_operands(s);
    ring.release_k();
    release_q_after_last_qk<Cfg>(ring.bars, consumer, ring.lane, n_top == n_min);
    score_mod<Cfg>(s, n_top, range, mask, score, row0, ring.lane);
    online_softmax(s, m, l, scale_log2, corr);
    pack_probs<Cfg::kBf16>(s, p);
}

// One turn of the key loop at block n: S_next = Q K_n^T and O += P_{n+1} V_{n+1} issued
// together, the softmax of S_next under P V, then O rescaled and P packed for the next turn.
// k_slot is block n's K slot (waited for here on the first turn, or always without
// kSplitSoftmaxWait; else by the turn before).
template <class Cfg>
__device__ __forceinline__ void key_block_turn(ConsumerRing<Cfg> &ring, const fa_block_range &range,
                                               const fa_mask &mask, const fa_score &score, float scale_log2,
                                               uint32_t q_rows, int consumer, int row0, int n, bool first_turn,
                                               int n_min, uint32_t &k_slot,
                                               float (&o)[Cfg::kHeadDim / 2], float (&s)[Cfg::kBlockN / 2],
                                               uint32_t (&p)[Cfg::kBlockN / 4], float (&m)[2], float (&l)[2],
                                               float (&corr)[2]) {
    if (!Cfg::kSplitSoftmaxWait || first_turn) k_slot = ring.wait_k();
    const uint32_t v_slot = ring.wait_v();
    pingpong_sync<Cfg>(consumer);
    fence_operands(o);
    fence_operands(p);
    wgmma_fence();
    issue_qk<Cfg>(s, q_rows, k_slot);  // S_next = Q K_n^T
    wgmma_commit_group();
    issue_pv<Cfg>(o, p, v_slot, false);  // O += P_{n+1} V_{n+1}
    wgmma_commit_group();
    pingpong_arrive<Cfg>(consumer);
    wgmma_wait_group<1>();  // S_next is done; P V may still run
    fence_operands(s);
    ring.release_k();
    release_q_after_last_qk<Cfg>(ring.bars, consumer, ring.lane, n == n_min);
    score_mod<Cfg>(s, n, range, mask, score, row0, ring.lane);
    const bool rescale = online_softmax_lazy<Cfg::kFmaEighths>(s, m, l, scale_log2, corr);
    if constexpr (Cfg::kSplitSoftmaxWait) {
        // ptxas hoists wgmma.wait_group 0 to the top of its basic block, which would make
        // the softmax wait for P V. Waiting here for the next K block ends the basic block,
        // so the exponentials stay ahead of the wait and run under P V.
        if (n > n_min) k_slot = ring.wait_k();
    }
    wgmma_wait_group<0>();  // P V done: O and the P registers are free again
    fence_operands(o);
    fence_operands(p);
    ring.release_v();
    if (rescale) rescale_rows(o, corr);
    pack_probs<Cfg::kBf16>(s, p);
}

// The last block's O += P V, which no S overlaps.
template <class Cfg>
__device__ __forceinline__ void last_block_pv(ConsumerRing<Cfg> &ring, int consumer, float (&o)[Cfg::kHeadDim / 2],
                                              uint32_t (&p)[Cfg::kBlockN / 4]) {
    const uint32_t v_slot = ring.wait_v();
    pingpong_sync<Cfg>(consumer);
    fence_operands(o);
    fence_operands(p);
    wgmma_fence();
    issue_pv<Cfg>(o, p, v_slot, false);
    wgmma_commit_group();
    pingpong_arrive<Cfg>(consumer);
    wgmma_wait_group<0>();
    fence_operands(o);
    ring.release_v();
}

// Runs the key blocks n_max-1 .. n_min of one tile; leaves O (unnormalised), m and l. Each
// turn issues S_next = Q K_n^T and O += P_{n+1} V_{n+1} together; the softmax of S_next runs
// while P V is in flight.
template <class Cfg>
__device__ __forceinline__ void consumer_mainloop(ConsumerRing<Cfg> &ring, const fa_block_range &range,
                                                  const fa_mask &mask, const fa_score &score, uint32_t q_rows,
                                                  int consumer, int row0, bool release_o,
                                                  float (&o)[Cfg::kHeadDim / 2], float (&m)[2], float (&l)[2]) {
    constexpr int kNs = Cfg::kBlockN / 2;
    float s[kNs];
    uint32_t p[kNs / 2];
    float corr[2];
    const float scale_log2 = score.scale_log2;
    const int n_min = first_block<Cfg::kMask>(range);
    const int n_top = range.n_max - 1;
    uint32_t k_slot;
    first_block_probs<Cfg>(ring, range, mask, score, q_rows, scale_log2, consumer, row0, release_o, n_min, k_slot, s,
                           p, m, l, corr);
    // O starts here, not at the first P V: an accumulator that is live through the first
    // block's softmax (the wgmma operands are read-write) costs 64-128 registers there.
#pragma unroll
    for (int i = 0; i < Cfg::kHeadDim / 2; ++i) o[i] = 0.f;
#pragma unroll 1
    for (int n = n_top - 1; n >= n_min; --n)
        key_block_turn<Cfg>(ring, range, mask, score, scale_log2, q_rows, consumer, row0, n, n == n_top - 1, n_min,
                            k_slot, o, s, p, m, l, corr);
    last_block_pv<Cfg>(ring, consumer, o, p);
}

}  // namespace fa_sm90

#endif /* FA_SM90_FWD_MAINLOOP_CUH */
