/*
 * sm90_pipeline.cuh -- the K/V ring between the producer and the consumer warpgroups.
 *
 * A ring of Cfg::kStages slots per tensor (K and V), each with a full mbarrier (the TMA load
 * landed: one arrival with the byte count) and an empty one (every consumer warp is done with
 * the slot: kSlotReleaseArrivals). Producer and consumers walk the same slot sequence, each
 * with its own RingPos; the phase parity flips whenever the slot index wraps. Boxes are placed
 * by TMA (row, batch) coordinates of the sequence layout (sm90_scheduler.cuh). The loads take
 * any Cfg with the forward's layout names (kOffK, kOffV, kBarKFull, ...), so another op's
 * kernel reuses them with its own layout.
 * Device-only.
 */
#ifndef FA_SM90_PIPELINE_CUH
#define FA_SM90_PIPELINE_CUH

#include "sm90_fwd_config.cuh"
#include "sm90_ptx.cuh"

namespace fa_sm90 {

// Ring position: slot and the parity of its current phase.
struct RingPos {
    int slot;
    uint32_t phase;
    __device__ __forceinline__ void advance(int stages) {
        if (++slot == stages) {
            slot = 0;
            phase ^= 1u;
        }
    }
};

// Loads the key block whose first key is at `at` (kv_tma_row) of K (kv_index 0) or V (1) into
// the ring slot at pos.
template <class Cfg>
__device__ __forceinline__ void producer_load_block(const KernelParams &prm, uint32_t smem, const RingPos &pos,
                                                    TmaRow at, int head_kv, int kv_index) {
    const uint32_t bars = smem + Cfg::kOffBar;
    const uint32_t full = bars + 8 * ((kv_index ? Cfg::kBarVFull : Cfg::kBarKFull) + pos.slot);
    const uint32_t empty = bars + 8 * ((kv_index ? Cfg::kBarVEmpty : Cfg::kBarKEmpty) + pos.slot);
    const uint32_t dst = smem + (kv_index ? Cfg::kOffV : Cfg::kOffK) + pos.slot * Cfg::kKVSlotBytes;
    const CUtensorMap *tmap = kv_index ? &prm.tmap_v : &prm.tmap_k;

    mbarrier_wait(empty, pos.phase ^ 1u);
    mbarrier_arrive_expect_tx(full, Cfg::kKVSlotBytes);
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c)
        cp_async_bulk_tensor_4d_g2s(dst + c * Cfg::kKVChunkBytes, tmap, full, 64 * c, at.row, head_kv, at.batch);
}

template <class Cfg>
__device__ __forceinline__ void producer_load_kv(const KernelParams &prm, uint32_t smem, RingPos &pos, TmaRow at,
                                                 int head_kv) {
    producer_load_block<Cfg>(prm, smem, pos, at, head_kv, 0);
    producer_load_block<Cfg>(prm, smem, pos, at, head_kv, 1);
    pos.advance(Cfg::kStages);
}

// The tile's 128 Q rows from `at` (q_tma_row of its first row), one 64-row half per consumer
// warpgroup. Rows past the tensor read as zeros; rows past a packed entry are the next
// entry's, computed on and never stored (store_tile).
template <class Cfg>
__device__ __forceinline__ void producer_load_q(const KernelParams &prm, uint32_t smem, uint32_t q_phase,
                                                TmaRow at, int head_q) {
    const uint32_t bars = smem + Cfg::kOffBar;
#pragma unroll
    for (int wg = 0; wg < FA_NUM_CONSUMER_WARPGROUPS; ++wg) {
        const uint32_t q_full = bars + 8 * (Cfg::kBarQFull + wg);
        mbarrier_wait(bars + 8 * (Cfg::kBarQEmpty + wg), q_phase ^ 1u);
        mbarrier_arrive_expect_tx(q_full, Cfg::kQBytes / 2);
#pragma unroll
        for (int c = 0; c < Cfg::kChunks; ++c)
            cp_async_bulk_tensor_4d_g2s(smem + Cfg::kOffQ + c * Cfg::kQChunkBytes + wg * Cfg::kWgRowsBytes,
                                        &prm.tmap_q, q_full, 64 * c, at.row + 64 * wg, head_q, at.batch);
    }
}

template <class Cfg>
struct ConsumerRing {
    uint32_t bars;
    uint32_t k_base, v_base;
    RingPos k, v;
    int lane;

    __device__ __forceinline__ uint32_t wait_k() {
        mbarrier_wait(bars + 8 * (Cfg::kBarKFull + k.slot), k.phase);
        return k_base + k.slot * Cfg::kKVSlotBytes;
    }
    __device__ __forceinline__ uint32_t wait_v() {
        mbarrier_wait(bars + 8 * (Cfg::kBarVFull + v.slot), v.phase);
        return v_base + v.slot * Cfg::kKVSlotBytes;
    }
    // After this warp's wgmma_wait covering the slot's last reader.
    __device__ __forceinline__ void release_k() {
        if (lane == 0) mbarrier_arrive(bars + 8 * (Cfg::kBarKEmpty + k.slot));
        k.advance(Cfg::kStages);
    }
    __device__ __forceinline__ void release_v() {
        if (lane == 0) mbarrier_arrive(bars + 8 * (Cfg::kBarVEmpty + v.slot));
        v.advance(Cfg::kStages);
    }
};

}  // namespace fa_sm90

#endif /* FA_SM90_PIPELINE_CUH */
