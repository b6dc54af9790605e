/*
 * sm90_pipeline.cuh -- the K/V ring between the loads and the consumer warpgroups.
 *
 * A ring of Cfg::kStages slots per tensor (K and V), each with a full mbarrier (the TMA load
 * landed: one arrival with the byte count) and an empty one (every consumer warp is done with
 * the slot: kSlotReleaseArrivals). Loads and consumers walk the same slot sequence, each with
 * its own RingPos; the phase parity flips whenever the slot index wraps. Boxes are placed by
 * TMA (row, batch) coordinates of the sequence layout (sm90_scheduler.cuh). The loads take any
 * Cfg with the forward's layout names (kOffK, kOffV, kBarKFull, ...), so another op's kernel
 * reuses them with its own layout.
 * Who loads:
 *   two consumers: the producer thread, every block, after waiting for its slot's empty barrier;
 *   three consumers: consumer threads. A tile's first kStages blocks are issued one tile ahead
 *     by the thread 0 of the last warpgroup done with the previous tile (load_tile_start, when
 *     every slot is released); block i + kStages of
 *     a tile goes into block i's slot, issued by the warp that releases block i's V last:
 *     every consumer warp counts on the slot's release count modulo kSlotReleaseArrivals
 *     (atom.inc, acq_rel), and the one that completes the count loads (ConsumerRing::release_v).
 *     Every warp releases K before V, so K's slot is free then too. Nothing in the key loop
 *     waits to load. dev/sm90_ring_model.py runs this protocol under random interleavings of
 *     the 12 warps. The ring needs 3 slots: a warp waits for K(t + 1) while it still holds
 *     V(t - 1), and with 2 slots only the last release of V(t - 1) would load K(t + 1).
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

// The barriers, destination and map of a load of K (kv_index 0) or V (1) into ring slot `slot`.
struct BlockLoad {
    uint32_t full, empty, dst;
    const CUtensorMap *tmap;
};

template <class Cfg>
__device__ __forceinline__ BlockLoad block_load(const KernelParams &prm, uint32_t smem, int slot, int kv_index,
                                                bool appended) {
    BlockLoad b;
    const uint32_t bars = smem + Cfg::kOffBar;
    b.full = bars + 8 * ((kv_index ? Cfg::kBarVFull : Cfg::kBarKFull) + slot);
    b.empty = bars + 8 * ((kv_index ? Cfg::kBarVEmpty : Cfg::kBarKEmpty) + slot);
    b.dst = smem + (kv_index ? Cfg::kOffV : Cfg::kOffK) + slot * Cfg::kKVSlotBytes;
    b.tmap = appended ? (kv_index ? &prm.tmap_v_new : &prm.tmap_k_new) : (kv_index ? &prm.tmap_v : &prm.tmap_k);
    return b;
}

// Loads the key block whose first key is at `at` (key_block_at) as b says.
template <class Cfg>
__device__ __forceinline__ void issue_block_load(const BlockLoad &b, TmaRow at, int head_kv) {
    mbarrier_arrive_expect_tx(b.full, Cfg::kKVSlotBytes);
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c)
        cp_async_bulk_tensor_4d_g2s(b.dst + c * Cfg::kKVChunkBytes, b.tmap, b.full, 64 * c, at.row, head_kv, at.batch);
}

// Into ring slot `slot`, which no consumer reads any more.
template <class Cfg>
__device__ __forceinline__ void load_block(const KernelParams &prm, uint32_t smem, int slot, KeyBlockAt at,
                                           int head_kv, int kv_index) {
    issue_block_load<Cfg>(block_load<Cfg>(prm, smem, slot, kv_index, at.appended), at.at, head_kv);
}

// Into the ring slot at pos, once every consumer warp has released it.
template <class Cfg>
__device__ __forceinline__ void producer_load_block(const KernelParams &prm, uint32_t smem, const RingPos &pos,
                                                    KeyBlockAt at, int head_kv, int kv_index) {
    const BlockLoad b = block_load<Cfg>(prm, smem, pos.slot, kv_index, at.appended);
    mbarrier_wait(b.empty, pos.phase ^ 1u);
    issue_block_load<Cfg>(b, at.at, head_kv);
}

template <class Cfg>
__device__ __forceinline__ void producer_load_kv(const KernelParams &prm, uint32_t smem, RingPos &pos,
                                                 KeyBlockAt at, int head_kv) {
    producer_load_block<Cfg>(prm, smem, pos, at, head_kv, 0);
    producer_load_block<Cfg>(prm, smem, pos, at, head_kv, 1);
    pos.advance(Cfg::kStages);
}

// Consumer wg's 64 Q rows of the tile whose first row is at `at` (q_tma_row), once nothing
// reads the rows there. Rows past the tensor read as zeros; rows past a packed entry are the
// next entry's, computed on and never stored (store_tile).
template <class Cfg>
__device__ __forceinline__ void load_q_rows(const KernelParams &prm, uint32_t smem, int wg, TmaRow at, int head_q) {
    const uint32_t q_full = smem + Cfg::kOffBar + 8 * (Cfg::kBarQFull + wg);
    mbarrier_arrive_expect_tx(q_full, Cfg::kQBytes / Cfg::kConsumers);
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c)
        cp_async_bulk_tensor_4d_g2s(smem + Cfg::kOffQ + c * Cfg::kQChunkBytes + wg * Cfg::kWgRowsBytes, &prm.tmap_q,
                                    q_full, 64 * c, at.row + 64 * wg, head_q, at.batch);
}

// The tile's Q rows, each consumer warpgroup's once it has freed them.
template <class Cfg>
__device__ __forceinline__ void producer_load_q(const KernelParams &prm, uint32_t smem, uint32_t q_phase,
                                                TmaRow at, int head_q) {
#pragma unroll
    for (int wg = 0; wg < Cfg::kConsumers; ++wg) {
        mbarrier_wait(smem + Cfg::kOffBar + 8 * (Cfg::kBarQEmpty + wg), q_phase ^ 1u);
        load_q_rows<Cfg>(prm, smem, wg, at, head_q);
    }
}

// Three consumers: the blocks of the current tile that a V release refills (see above). The
// tile's batch entry and kv head wait in shared memory (TileOfConsumer), not in registers.
struct TileRefill {
    int next;  // the block that the next V release of the tile loads, counting down
    int last;  // the tile's last block (0 but under a window); none past it
};

// Three consumers: the tile a consumer warpgroup is on, for the refills its warps issue.
// Written by its thread 0 for its next tile once all its warps have released the current
// tile's blocks, read after the warpgroup's next named barrier.
struct TileOfConsumer {
    int batch, head_kv;
};

template <class Cfg>
__device__ __forceinline__ uint32_t tile_of_consumer_addr(uint32_t smem, int consumer) {
    return smem + Cfg::kOffTileOfConsumer + consumer * (uint32_t)sizeof(TileOfConsumer);
}

template <class Cfg>
struct ConsumerRing {
    uint32_t bars;
    uint32_t k_base, v_base;
    RingPos k, v;
    int lane;
    const KernelParams *prm;  // three consumers: the refills' tensor maps and layout
    TileRefill refill;

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
        if constexpr (!Cfg::kProducerWarpgroup) {
            if (lane == 0 && refill.next >= refill.last) {
                const uint32_t count = bars - Cfg::kOffBar + Cfg::kOffReleaseCount + 4 * v.slot;
                if (atom_inc_acq_rel_shared(count, Cfg::kSlotReleaseArrivals - 1) == Cfg::kSlotReleaseArrivals - 1)
                    refill_slot(v.slot, refill.next);
            }
            --refill.next;
        }
        v.advance(Cfg::kStages);
    }
    // K and V of block n of this warp's current tile into `slot`: rare (once per block and
    // CTA), so the tile and its entry are read again here, not kept through the key loop.
    __device__ __forceinline__ void refill_slot(int slot, int n) {
        const uint32_t smem = bars - Cfg::kOffBar;
        const uint32_t tile = tile_of_consumer_addr<Cfg>(smem, threadIdx.x / 128);
        const int batch = (int)ld_shared_u32(tile), head_kv = (int)ld_shared_u32(tile + 4);
        const fa_seqlen e = fa_seqlen_at(&prm->sched.seq, batch);
        const KeyBlockAt at = key_block_at<Cfg>(prm->sched.seq, e, batch, n);
        load_block<Cfg>(*prm, smem, slot, at, head_kv, 0);
        load_block<Cfg>(*prm, smem, slot, at, head_kv, 1);
    }
};

// A consumer warp's ring: both positions at the start, this lane's index, the arguments.
template <class Cfg>
__device__ __forceinline__ ConsumerRing<Cfg> consumer_ring(const KernelParams &prm, uint32_t smem, int lane) {
    ConsumerRing<Cfg> ring;
    ring.bars = smem + Cfg::kOffBar;
    ring.k_base = smem + Cfg::kOffK;
    ring.v_base = smem + Cfg::kOffV;
    ring.k = RingPos{0, 0u};
    ring.v = RingPos{0, 0u};
    ring.lane = lane;
    ring.prm = &prm;
    return ring;
}

}  // namespace fa_sm90

#endif /* FA_SM90_PIPELINE_CUH */
