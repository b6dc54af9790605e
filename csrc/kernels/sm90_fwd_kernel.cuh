/*
 * sm90_fwd_kernel.cuh -- the sm90 forward kernel: its roles and its tile loop.
 *
 * 384 threads = 3 warpgroups, in one of two shapes (Cfg::kConsumers):
 *   two consumers: warpgroup 0 drops to FA_SM90_PRODUCER_REGS registers and one of its
 *     threads issues every TMA load (producer); warpgroups 1 and 2 rise to
 *     FA_SM90_CONSUMER_REGS and each computes 64 query rows of every 128-row tile;
 *   three consumers: warpgroups 0, 1 and 2 each compute 64 rows of a 192-row tile at the
 *     launch's 168 registers, and their threads issue the loads (load_tile_start here, the
 *     ring's refills in sm90_pipeline.cuh).
 * A consumer runs the key loop of sm90_fwd_mainloop.cuh, then store_tile. Loads and consumers
 * walk the persistent tile order of sm90_scheduler.cuh and the same key blocks per tile, so
 * they never exchange indices: each reads the tile's entry (lengths, row origins:
 * common/seqlen.h) at the tile's start and derives the mask, the key-block range and the TMA
 * coordinates from it alone.
 * The KV-cache op's appended keys (seq.seqlen_new > 0; instances with Cfg::kAppends, the
 * window ones) are read from maps of their own, in key blocks that start where the cached keys
 * end (sm90_scheduler.cuh), and the consumer warps copy them into the cache before their first
 * tile (copy_appended_keys): the op's chunked prefill is this one launch. Producer registers
 * (24) leave no room for the copy: any code beside the producer's in warpgroup 0 made ptxas
 * spill the producer loop.
 * Device-only; instantiated by fwd_sm90.cu.
 */
#ifndef FA_SM90_FWD_KERNEL_CUH
#define FA_SM90_FWD_KERNEL_CUH

#include "sm90_epilogue.cuh"
#include "sm90_fwd_config.cuh"
#include "sm90_fwd_mainloop.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_ptx.cuh"
#include "sm90_scheduler.cuh"
#include "sm90_softmax.cuh"

namespace fa_sm90 {

// One thread. Visits exactly the tiles and key blocks the consumers visit, in the same order.
template <class Cfg>
__device__ __forceinline__ void producer(const KernelParams &prm, uint32_t smem) {
    const SchedulerArgs &sched = prm.sched;
    const uint32_t bars = smem + Cfg::kOffBar;
    prefetch_tensormap(&prm.tmap_q);
    prefetch_tensormap(&prm.tmap_k);
    prefetch_tensormap(&prm.tmap_v);
    prefetch_tensormap(&prm.tmap_o);
    if (Cfg::kAppends && sched.seq.seqlen_new > 0) {
        prefetch_tensormap(&prm.tmap_k_new);
        prefetch_tensormap(&prm.tmap_v_new);
    }
    RingPos kv{0, 0u};
    uint32_t q_phase = 0;
    uint32_t o_free_phase = 0;
    for (int tile = blockIdx.x; tile < sched.order.num_iters; tile += gridDim.x) {
        const TileCoord tc = decode_tile(sched, tile);
        const fa_seqlen e = fa_seqlen_at(&sched.seq, tc.batch);
        if (tc.m_block < 0 || tc.m_block * Cfg::kBlockM >= e.len_q) continue;
        const fa_block_range range =
            rows_block_range<Cfg>(sequence_mask<Cfg>(prm, e), tc.m_block * Cfg::kBlockM, Cfg::kBlockM);
        const TmaRow q_at = q_tma_row(sched.seq, e, tc.batch, tc.m_block * Cfg::kBlockM);
        // Key blocks are looked up only inside the visited range (paged: an entry's pages end there).
        const KeyBlockAt top =
            range.n_max > 0 ? key_block_at<Cfg>(sched.seq, e, tc.batch, range.n_max - 1) : KeyBlockAt{};
        if constexpr (Cfg::kOInV) {
            // K and Q of the tile go out while the previous tile's O may still sit in the V ring;
            // the first V waits for both of its stores to have read it (once per tile, so the
            // parity stays in step even for a tile without keys).
            if (range.n_max > 0) producer_load_block<Cfg>(prm, smem, kv, top, tc.head_kv, 0);
            producer_load_q<Cfg>(prm, smem, q_phase, q_at, tc.head_q);
            mbarrier_wait(bars + 8 * Cfg::kBarOFree, o_free_phase ^ 1u);
            o_free_phase ^= 1u;
            if (range.n_max > 0) {
                producer_load_block<Cfg>(prm, smem, kv, top, tc.head_kv, 1);
                kv.advance(Cfg::kStages);
            }
        } else {
            // The first K/V block goes out before Q: its slot is freed by the previous tile's main
            // loop, while each Q half is free only once its warpgroup is done with the previous tile.
            if (range.n_max > 0) producer_load_kv<Cfg>(prm, smem, kv, top, tc.head_kv);
            producer_load_q<Cfg>(prm, smem, q_phase, q_at, tc.head_q);
        }
        q_phase ^= 1u;
        for (int n = range.n_max - 2; n >= first_block<Cfg::kMask>(range); --n)
            producer_load_kv<Cfg>(prm, smem, kv, key_block_at<Cfg>(sched.seq, e, tc.batch, n), tc.head_kv);
    }
}

// When keys are appended, each consumer warp copies its share of them and of their values
// into the cache (rows len_k .. of each entry, after its cached keys) before its first tile, while the
// tile's first loads are on their way. The grid's consumer warps take the (entry, key) rows in
// turn, keys before values; a warp copies all kv heads of its row, 16 bytes per lane, up to
// kInFlight of them loaded before any is stored. Nothing in this launch reads those rows of
// the cache (the key loop reads appended keys from their own maps), so the copy is ordered
// against nothing in it; the stream's next launch sees it whole.
template <int kTensor>
__device__ __forceinline__ void copy_appended_rows(const KernelParams &prm, int first_row, int row_step, int col,
                                                   int head0) {
    constexpr int kInFlight = 4;
    const fa_seq_layout &seq = prm.sched.seq;
    const CacheCopy &c = prm.append;
    const int heads_kv = prm.sched.heads_kv, step = c.heads_per_pass;
    int b = 0, b_row0 = 0;  // the entry of row r, and its first row (no division in the loop)
#pragma unroll 1
    for (int r = first_row; r < c.rows; r += row_step) {
        while (r >= b_row0 + seq.seqlen_new) {
            ++b;
            b_row0 += seq.seqlen_new;
        }
        const int i = r - b_row0;
        const fa_seqlen e = fa_seqlen_at(&seq, b);
        const int key = e.len_k + i;  // after the entry's cached keys
        const uint16_t *src = c.src[kTensor] + b * c.src_stride[kTensor][0] + i * c.src_stride[kTensor][1] + col;
        uint16_t *dst = c.dst[kTensor] + e.kv_batch * c.dst_stride[kTensor][0] + key * c.dst_stride[kTensor][1] + col;
#pragma unroll 1
        for (int h0 = head0; h0 < heads_kv; h0 += kInFlight * step) {
            uint4 piece[kInFlight];
#pragma unroll
            for (int u = 0; u < kInFlight; ++u)
                if (h0 + u * step < heads_kv)
                    piece[u] = *reinterpret_cast<const uint4 *>(src + (h0 + u * step) * c.src_stride[kTensor][2]);
#pragma unroll
            for (int u = 0; u < kInFlight; ++u)
                if (h0 + u * step < heads_kv)
                    *reinterpret_cast<uint4 *>(dst + (h0 + u * step) * c.dst_stride[kTensor][2]) = piece[u];
        }
    }
}

template <class Cfg>
__device__ __forceinline__ void copy_appended_keys(const KernelParams &prm, int consumer_idx, int warp_in_wg,
                                                   int lane) {
    constexpr int kCopyWarps = Cfg::kConsumers * FA_WARPS_PER_WARPGROUP;
    const int pieces = prm.append.pieces, head0 = lane / pieces;
    if (head0 >= prm.append.heads_per_pass) return;
    const int first_row = blockIdx.x * kCopyWarps + consumer_idx * FA_WARPS_PER_WARPGROUP + warp_in_wg;
    copy_appended_rows<0>(prm, first_row, gridDim.x * kCopyWarps, 8 * (lane % pieces), head0);
    copy_appended_rows<1>(prm, first_row, gridDim.x * kCopyWarps, 8 * (lane % pieces), head0);
}

// Three consumers: the loads of this CTA's first tile at or after `tile` with rows, issued
// before its key loop by the calling warpgroup's thread 0 -- its own 64 Q rows (nothing reads
// them any more: the warpgroup has met after its last Q K^T), and, by the last of the three
// warpgroups to get here, the tile's first kStages key blocks from ring position kv: all
// three have met after their last reads of the previous tile, so every slot is released and
// nobody waits (the empty barriers are still checked). The tile's later blocks are refilled
// from the key loop (sm90_pipeline.cuh), which finds the tile in the warpgroup's
// TileOfConsumer, written here.
// "Last" is one count per CTA (kOffTileStarts), taken only at tiles with key blocks: a
// warpgroup passes a tile without any with no wait on the ring, so its count for the next
// tile could land among the others' counts for this one and make two "last"s. At a tile with
// blocks nobody can count for the next one before this one's first block is loaded, which
// the last count does (dev/sm90_ring_model.py; --count-keyless shows the double load).
template <class Cfg>
__device__ __forceinline__ void load_tile_start(const KernelParams &prm, uint32_t smem, int tile, RingPos kv,
                                                int consumer_idx) {
    const SchedulerArgs &sched = prm.sched;
    for (; tile < sched.order.num_iters; tile += gridDim.x) {
        const TileCoord tc = decode_tile(sched, tile);
        const fa_seqlen e = fa_seqlen_at(&sched.seq, tc.batch);
        if (tc.m_block < 0 || tc.m_block * Cfg::kBlockM >= e.len_q) continue;
        const uint32_t tile_of = tile_of_consumer_addr<Cfg>(smem, consumer_idx);
        st_shared_u32(tile_of, (uint32_t)tc.batch);
        st_shared_u32(tile_of + 4, (uint32_t)tc.head_kv);
        load_q_rows<Cfg>(prm, smem, consumer_idx, q_tma_row(sched.seq, e, tc.batch, tc.m_block * Cfg::kBlockM),
                         tc.head_q);
        const fa_block_range range =
            rows_block_range<Cfg>(sequence_mask<Cfg>(prm, e), tc.m_block * Cfg::kBlockM, Cfg::kBlockM);
        if (range.n_max == 0) return;
        if (atom_inc_acq_rel_shared(smem + Cfg::kOffTileStarts, Cfg::kConsumers - 1) != Cfg::kConsumers - 1) return;
        const int n_end = max(first_block<Cfg::kMask>(range), range.n_max - Cfg::kStages);
        for (int n = range.n_max - 1; n >= n_end; --n)
            producer_load_kv<Cfg>(prm, smem, kv, key_block_at<Cfg>(sched.seq, e, tc.batch, n), tc.head_kv);
        return;
    }
}

// The tile's O (normalised by inv_l) and lse out of one warpgroup. O goes through its staging
// rows: every warp of this warpgroup has retired its last Q K^T, so its Q rows can take O; a
// staging buffer of its own must first have been read by the previous tile's store; the V
// ring, once both warpgroups' last P V retired (the producer refills it only after these
// stores have read it).
// One TMA store per 64-column chunk writes the warpgroup's 64 rows, clipped at the tensor's
// end. Packed rows end inside the tensor: the warpgroup whose rows cross its entry's end (one
// per entry and head) writes its rows below len_q itself, from the staging rows, and one past
// the end writes none (the rows beyond are the next entry's, or outside every entry).
// The entry's rows are looked up again here rather than kept through the key loop, where
// every register counts (head_dim 256 spilled); unpacked, it is only arithmetic on arguments.
template <class Cfg>
__device__ __forceinline__ void store_tile(const KernelParams &prm, uint32_t smem, const TileCoord &tc,
                                           int consumer_idx, int warp_in_wg, int lane,
                                           const float (&o)[Cfg::kHeadDim / 2], const float (&inv_l)[2],
                                           bool has_keys, const float (&lse)[2]) {
    const SchedulerArgs &sched = prm.sched;
    const fa_seqlen e = fa_seqlen_at(&sched.seq, tc.batch);
    const int tid_in_wg = warp_in_wg * 32 + lane;
    const int wg_row0 = tc.m_block * Cfg::kBlockM + consumer_idx * 64;
    // Broadcast from lane 0 so that the compiler sees a warp-uniform branch: derived from the
    // warpgroup index it is not provably so, and the barrier in the per-thread branch then cost
    // registers through the key loop (head_dim 256 and 128 with 176-key blocks spilled).
    const bool tma_store =
        __shfl_sync(0xffffffffu, sched.seq.cu_seqlens_q == nullptr || wg_row0 + 64 <= e.len_q, 0);
    const uint32_t o_rows = Cfg::kOStaging ? smem + Cfg::kOffO + consumer_idx * Cfg::kOWgBytes
                            : Cfg::kOInV   ? smem + Cfg::kOffV + consumer_idx * Cfg::kOWgBytes
                                           : smem + Cfg::kOffQ + consumer_idx * Cfg::kWgRowsBytes;
    const uint32_t o_chunk_bytes = (Cfg::kOStaging || Cfg::kOInV) ? Cfg::kOChunkBytes : Cfg::kQChunkBytes;
    if (Cfg::kOStaging && tid_in_wg == 0) cp_async_bulk_wait_group_read_0();
    if constexpr (Cfg::kOInV)
        bar_sync(kBarOInV, 2 * 128);
    else
        bar_sync(kBarEpilogueBase + consumer_idx, 128);
    stage_output<Cfg::kHeadDim, Cfg::kBf16>(o, inv_l, has_keys, o_rows, o_chunk_bytes, warp_in_wg, lane);
    fence_proxy_async_shared_cta();
    bar_sync(kBarEpilogueBase + consumer_idx, 128);
    if (tma_store) {
        if (tid_in_wg == 0) {
            const TmaRow at = q_tma_row(sched.seq, e, tc.batch, wg_row0);
#pragma unroll
            for (int c = 0; c < Cfg::kChunks; ++c)
                cp_async_bulk_tensor_4d_s2g(&prm.tmap_o, o_rows + c * o_chunk_bytes, 64 * c, at.row, tc.head_q,
                                            at.batch);
            cp_async_bulk_commit_group();
            if constexpr (!Cfg::kQFreeAfterLastQk) {
                // The producer may overwrite these Q rows once the store has read them.
                cp_async_bulk_wait_group_read_0();
                mbarrier_arrive(smem + Cfg::kOffBar + 8 * (Cfg::kBarQEmpty + consumer_idx));
            }
        }
    } else {
        const int rows = min(max(e.len_q - wg_row0, 0), 64);
        uint16_t *out_row0 = static_cast<uint16_t *>(prm.out) +
                             fa_q_row_offset(&e, tc.batch, wg_row0, prm.o_batch_stride, prm.o_row_stride) +
                             (int64_t)tc.head_q * prm.o_head_stride;
        store_rows_direct<Cfg::kHeadDim>(out_row0, prm.o_row_stride, rows, prm.head_dim, o_rows, o_chunk_bytes,
                                         tid_in_wg);
        // Every thread's reads of the staging rows are done before they are handed on (the Q
        // rows to the producer here, the V ring or the staging buffer to the next tile).
        bar_sync(kBarEpilogueBase + consumer_idx, 128);
        if (!Cfg::kQFreeAfterLastQk && tid_in_wg == 0)
            mbarrier_arrive(smem + Cfg::kOffBar + 8 * (Cfg::kBarQEmpty + consumer_idx));
    }
    float *lse_entry =
        prm.lse ? prm.lse + fa_lse_index(&sched.seq, &e, tc.batch, sched.heads_q, tc.head_q, 0) : nullptr;
    store_lse(lse_entry, wg_row0 + warp_in_wg * 16 + (lane >> 2), e.len_q, lse, lane);
}

// The key blocks of this warpgroup's 64 rows from wg_row0: the tile's range, or under a causal
// mask its lowest blocks. Derived from the warpgroup index, the range is not provably
// warp-uniform to the compiler, which then keeps the loop bounds in vector registers (head_dim
// 256 causal spilled); broadcast from lane 0 it is.
template <class Cfg>
__device__ __forceinline__ fa_block_range warpgroup_range(const fa_mask &mask, const fa_block_range &range,
                                                          int wg_row0) {
    fa_block_range wg_range = range;
    if constexpr (Cfg::kWgKeyRange) {
        wg_range = rows_block_range<Cfg>(mask, wg_row0, 64);
        wg_range.n_max = __shfl_sync(0xffffffffu, wg_range.n_max, 0);
        wg_range.n_full_max = __shfl_sync(0xffffffffu, wg_range.n_full_max, 0);
    }
    return wg_range;
}

// One tile's O (unnormalised), m and l for this warpgroup, once its Q is in: the key loop, after
// the V rows of the first block past len_k are zeroed where memory there is not (a warpgroup
// whose rows see no key frees Q and the V ring at once). o_store_pending: this warpgroup's
// previous O store may still be reading the V ring (kOInV); it is released on the way.
template <class Cfg>
__device__ __forceinline__ void attend_tile(const KernelParams &prm, ConsumerRing<Cfg> &ring, const fa_mask &mask,
                                            const fa_block_range &wg_range, uint32_t q_rows,
                                            int consumer_idx, int row0, bool store_thread, bool o_store_pending,
                                            float (&o)[Cfg::kHeadDim / 2], float (&m)[2], float (&l)[2]) {
    if (wg_range.n_max > 0) {
        // The first block's keys from len_k on, where memory past len_k is not zero-filled by
        // TMA: their V rows are zeroed before any P V reads them. Its V is waited for before
        // the first Q K^T then; with O staged in the V ring, that V is loaded only once this
        // warpgroup's previous O store has read the ring, so release that first.
        // Counted from the blocks' origin. Appended keys end the keys, and their maps with them.
        const int v_keys = mask.len_k - (wg_range.n_max - 1) * Cfg::kBlockN;
        const bool appended = Cfg::kAppends && prm.sched.seq.seqlen_new > 0;
        if (kv_tail_unbounded(prm.sched.seq) && !appended && v_keys < Cfg::kBlockN) {
            if (o_store_pending) release_o_in_v<Cfg>(ring.bars, store_thread);
            o_store_pending = false;
            zero_v_tail<Cfg>(ring.wait_v(), v_keys, consumer_idx);
        }
        consumer_mainloop<Cfg>(ring, wg_range, mask, prm.score, q_rows, consumer_idx, row0,
                               o_store_pending && store_thread, o, m, l);
    } else {
        release_q_after_last_qk<Cfg>(ring.bars, consumer_idx, ring.lane, true);  // rows that see no key never read Q
        if (o_store_pending) release_o_in_v<Cfg>(ring.bars, store_thread);
    }
}

template <class Cfg>
__device__ __forceinline__ void consumer(const KernelParams &prm, uint32_t smem, int consumer_idx, int warp_in_wg,
                                         int lane) {
    const SchedulerArgs &sched = prm.sched;
    const int tid_in_wg = warp_in_wg * 32 + lane;
    const uint32_t bars = smem + Cfg::kOffBar;
    const uint32_t q_full = bars + 8 * (Cfg::kBarQFull + consumer_idx);
    // This warpgroup's 64 Q rows; where O has neither a buffer of its own nor the V ring, the
    // same bytes stage its O rows (store_tile).
    const uint32_t q_rows = smem + Cfg::kOffQ + consumer_idx * Cfg::kWgRowsBytes;

    ConsumerRing<Cfg> ring = consumer_ring<Cfg>(prm, smem, lane);
    if (Cfg::kAppends && sched.seq.seqlen_new > 0) copy_appended_keys<Cfg>(prm, consumer_idx, warp_in_wg, lane);
    if constexpr (!Cfg::kProducerWarpgroup) {
        if (tid_in_wg == 0) load_tile_start<Cfg>(prm, smem, blockIdx.x, ring.v, consumer_idx);
        bar_sync(kBarEpilogueBase + consumer_idx, 128);  // the warpgroup's TileOfConsumer is written
    }

    float o[Cfg::kHeadDim / 2];
    uint32_t q_phase = 0;
    // kOInV: this warpgroup's previous O store may still be reading the V ring.
    bool o_store_pending = false;
    const bool store_thread = tid_in_wg == 0;

    // Consumer 0 issues first: consumer 1 hands it the first turn.
    if (Cfg::kPingpong && consumer_idx == 1) bar_arrive(kBarPingpongBase + 0, 2 * 128);

#pragma unroll 1
    for (int tile = blockIdx.x; tile < sched.order.num_iters; tile += gridDim.x) {
        const TileCoord tc = decode_tile(sched, tile);
        const fa_seqlen e = fa_seqlen_at(&sched.seq, tc.batch);
        if (tc.m_block < 0 || tc.m_block * Cfg::kBlockM >= e.len_q) continue;
        const fa_mask mask = sequence_mask<Cfg>(prm, e);
        const fa_block_range range = rows_block_range<Cfg>(mask, tc.m_block * Cfg::kBlockM, Cfg::kBlockM);
        const int wg_row0 = tc.m_block * Cfg::kBlockM + consumer_idx * 64;  // first query row of this warpgroup
        const int row0 = wg_row0 + warp_in_wg * 16 + (lane >> 2);          // this thread's first row
        // The producer loads the tile's key blocks; this warpgroup's rows may see fewer of them.
        const fa_block_range wg_range = warpgroup_range<Cfg>(mask, range, wg_row0);
        if constexpr (!Cfg::kProducerWarpgroup)
            ring.refill = TileRefill{range.n_max - 1 - Cfg::kStages, first_block<Cfg::kMask>(range)};
        if (Cfg::kOInV && o_store_pending && range.n_max > wg_range.n_max) {
            release_o_in_v<Cfg>(bars, store_thread);  // the loop below waits for V blocks
            o_store_pending = false;
        }
#pragma unroll 1
        for (int n = range.n_max - 1; n >= wg_range.n_max; --n) {  // blocks above this warpgroup's diagonal
            ring.wait_k();
            ring.release_k();
            ring.wait_v();
            ring.release_v();
        }

        float m[2] = {-INFINITY, -INFINITY};
        float l[2] = {0.f, 0.f};
        mbarrier_wait(q_full, q_phase);
        q_phase ^= 1u;
        attend_tile<Cfg>(prm, ring, mask, wg_range, q_rows, consumer_idx, row0, store_thread, o_store_pending, o,
                         m, l);
        if constexpr (!Cfg::kProducerWarpgroup) {
            bar_sync(kBarEpilogueBase + consumer_idx, 128);  // every warp's last Q K^T has retired
            if (tid_in_wg == 0) load_tile_start<Cfg>(prm, smem, tile + gridDim.x, ring.v, consumer_idx);
        }

        float inv_l[2], lse[2];
        softmax_finalize(m, l, prm.score, fa_sink(prm.sinks, tc.head_q), inv_l, lse);

        store_tile<Cfg>(prm, smem, tc, consumer_idx, warp_in_wg, lane, o, inv_l, wg_range.n_max > 0, lse);
        o_store_pending = Cfg::kOInV;
    }

    // Consumer 1 arrived once more than consumer 0 synced (its hand-over at the start).
    if (Cfg::kPingpong && consumer_idx == 0) bar_sync(kBarPingpongBase + 0, 2 * 128);
    if (tid_in_wg == 0) cp_async_bulk_wait_group_0();
}

template <class Cfg>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) fwd_kernel(const __grid_constant__ KernelParams prm) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    const uint32_t smem = swizzle_aligned_smem(smem_raw);
    const uint32_t bars = smem + Cfg::kOffBar;
    const int warp = threadIdx.x / FA_WARP_SIZE;
    const int lane = threadIdx.x % FA_WARP_SIZE;
    const int warpgroup = warp / FA_WARPS_PER_WARPGROUP;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int wg = 0; wg < Cfg::kConsumers; ++wg) {
            mbarrier_init(bars + 8 * (Cfg::kBarQFull + wg), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarQEmpty + wg), Cfg::kQReleaseArrivals);
        }
#pragma unroll
        for (int st = 0; st < Cfg::kStages; ++st) {
            mbarrier_init(bars + 8 * (Cfg::kBarKFull + st), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarKEmpty + st), Cfg::kSlotReleaseArrivals);
            mbarrier_init(bars + 8 * (Cfg::kBarVFull + st), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarVEmpty + st), Cfg::kSlotReleaseArrivals);
            if constexpr (!Cfg::kProducerWarpgroup) st_shared_u32(smem + Cfg::kOffReleaseCount + 4 * st, 0u);
        }
        if constexpr (!Cfg::kProducerWarpgroup) st_shared_u32(smem + Cfg::kOffTileStarts, 0u);
        if constexpr (Cfg::kOInV) mbarrier_init(bars + 8 * Cfg::kBarOFree, FA_NUM_CONSUMER_WARPGROUPS);
        fence_mbarrier_init();
    }
    __syncthreads();

    if constexpr (Cfg::kProducerWarpgroup) {
        if (warpgroup == 0) {
            setmaxnreg_dec<FA_SM90_PRODUCER_REGS>();
            if (warp == 0 && lane == 0) producer<Cfg>(prm, smem);
            return;
        }
        setmaxnreg_inc<FA_SM90_CONSUMER_REGS>();
        consumer<Cfg>(prm, smem, warpgroup - 1, warp % FA_WARPS_PER_WARPGROUP, lane);
    } else {
        consumer<Cfg>(prm, smem, warpgroup, warp % FA_WARPS_PER_WARPGROUP, lane);
    }
#endif
}

}  // namespace fa_sm90

#endif /* FA_SM90_FWD_KERNEL_CUH */
