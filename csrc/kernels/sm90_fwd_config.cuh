/*
 * sm90_fwd_config.cuh -- what one sm90 forward instance is: its kernel arguments, its
 * shared-memory layout and mbarrier slots, and the overlaps chosen for its head dim.
 *
 * Config<head_dim, block_n, mask kind, softcap, bf16> derives every offset from sm90_tiles.h's
 * numbers and checks that both agree on the total (the host computes launches from the tile
 * table alone). Shared memory, in order: Q (128 rows), the K ring, the V ring, O staging where
 * it fits, the mbarriers; each swizzled tile on a 1024-byte boundary.
 * Device and host; included by the sm90 forward's files.
 */
#ifndef FA_SM90_FWD_CONFIG_CUH
#define FA_SM90_FWD_CONFIG_CUH

#include <cuda.h>  // CUtensorMap only; no libcuda symbol is linked
#include <cstdint>

#include "../common/score.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm90_ptx.cuh"
#include "sm90_scheduler.cuh"
#include "sm90_tiles.h"

// 128 * 24 + 256 * 240 = 64512 <= 65536 registers of the SM.
#define FA_SM90_PRODUCER_REGS 24
#define FA_SM90_CONSUMER_REGS 240

static_assert(FA_THREADS_PER_BLOCK == 384 && FA_NUM_WARPGROUPS == 3, "three warpgroups of 128 threads");
static_assert(FA_NUM_CONSUMER_WARPGROUPS == 2, "a producer beside two consumer warpgroups of 64 query rows");
static_assert(128 * FA_SM90_PRODUCER_REGS + 256 * FA_SM90_CONSUMER_REGS <= 65536, "register file budget");

namespace fa_sm90 {

// Map extents per layout (sm90_fwd_launch.cuh; coordinates in sm90_scheduler.cuh):
//   q, out  (head_dim, seqlen_q, heads_q, batch), or (head_dim, total_q, heads_q, 1) packed
//   k, v    (head_dim, seqlen_k, heads_kv, batch or kv_batches with kv_batch_idx),
//           (head_dim, total_k, heads_kv, 1) packed, (head_dim, page_size, heads_kv, kv_batches) paged
//   appended k, v  (head_dim, seqlen_new, heads_kv, batch)
// The KV-cache op's appended keys and values (sched.seq.seqlen_new > 0), (batch, seqlen_new,
// heads_kv, head_dim), and the caches they are copied into (copy_appended_keys). Index 0: keys,
// 1: values; strides in elements, (batch, row, head).
struct CacheCopy {
    const uint16_t *src[2];
    uint16_t *dst[2];
    int64_t src_stride[2][3], dst_stride[2][3];
    int rows;                                    // batch * seqlen_new
    int pieces;                                  // 16-byte pieces of a row: head_dim / 8 <= 32
    int heads_per_pass;                          // heads a warp copies at once: 32 / pieces
};

struct KernelParams {  // CUtensorMap carries its own 128-byte alignment
    CUtensorMap tmap_q;      // box 64 x 64 (one warpgroup's rows)
    CUtensorMap tmap_k;      // box 64 x block_n
    CUtensorMap tmap_v;      // as k
    CUtensorMap tmap_o;      // box 64 x 64 (one warpgroup's rows)
    CUtensorMap tmap_k_new;  // sched.seq.seqlen_new > 0: the appended keys, box as k
    CUtensorMap tmap_v_new;  // and values
    CacheCopy append;        // sched.seq.seqlen_new > 0
    float *lse;          // NULL: not written
    // out as a pointer too, for the rows a TMA store would write past their packed entry.
    void *out;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int head_dim;
    SchedulerArgs sched;
    fa_score score;                   // scale_log2 and the softcap hook (common/score.h)
    int window_left, window_right;    // kMask == FA_MASK_LOCAL: the window, causal folded in
    const float *sinks;               // NULL, or one logit per q head
};

// Named barrier ids (0 is __syncthreads).
enum : uint32_t {
    kBarPingpongBase = 1,  // + consumer index: "this warpgroup may issue its GEMMs"
    kBarEpilogueBase = 3,  // + consumer index: the warpgroup's own 128 threads
    kBarOInV = 5,          // both consumer warpgroups: every P V of the tile has read the V ring
                           // (head_dim 256, two consumers: epilogue ids 3 and 4 only)
};

// kConsumers_: FA_NUM_CONSUMER_WARPGROUPS (warpgroup 0 produces; every instance of the
// library) or 3 (every warpgroup computes and consumer threads issue the loads:
// sm90_fwd_kernel.cuh, sm90_pipeline.cuh; head_dim 64, built by dev/fwd_sm90_consumers.cu).
template <int kHeadDim_, int kBlockN_, int kMask_, bool kSoftcap_, bool kBf16_,
          int kConsumers_ = FA_NUM_CONSUMER_WARPGROUPS, int kFmaEighths_ = 0>
struct Config {
    static constexpr int kConsumers = kConsumers_;
    static constexpr int kFmaEighths = kFmaEighths_;  // of the key loop's exponentials on the FMA pipe (sm90_softmax.cuh)
    static constexpr bool kProducerWarpgroup = kConsumers < FA_NUM_WARPGROUPS;
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kMask = kMask_;  // fa_mask_kind
    static constexpr bool kCausal = kMask == FA_MASK_CAUSAL;
    // Reads the KV-cache op's appended keys (sm90_scheduler.cuh's key_origin_shift): the window
    // instances, whose lower key edge hides the keys below the shifted origin at no extra cost;
    // the causal and full instances are left without the code.
    static constexpr bool kAppends = kMask == FA_MASK_LOCAL;
    static constexpr bool kSoftcap = kSoftcap_;
    static constexpr bool kBf16 = kBf16_;
    static constexpr int kBlockM = FA_SM90_BLOCK_M(kConsumers);
    static constexpr int kStages = FA_SM90_STAGES(kHeadDim, kConsumers);
    static constexpr int kChunks = kHeadDim / 64;  // 64-column (128-byte) swizzle chunks
    static constexpr uint32_t kQChunkBytes = kBlockM * 128;
    static constexpr uint32_t kKVChunkBytes = kBlockN * 128;
    static constexpr uint32_t kQBytes = kChunks * kQChunkBytes;
    static constexpr uint32_t kKVSlotBytes = kChunks * kKVChunkBytes;
    static constexpr uint32_t kWgRowsBytes = 64 * 128;  // offset of consumer c + 1's rows from c's in a Q chunk
    static constexpr bool kOStaging = FA_SM90_HAS_O_STAGING(kBlockM, kHeadDim, kBlockN, kStages);
    // No buffer of its own: O staged in the V ring (head_dim 256) or else in the Q rows.
    static constexpr bool kOInV = !kOStaging && kHeadDim == 256;
    static constexpr uint32_t kOChunkBytes = 64 * 128;         // one warpgroup's 64 rows of a chunk
    static constexpr uint32_t kOWgBytes = kChunks * kOChunkBytes;
    static constexpr uint32_t kOffQ = 0;
    static constexpr uint32_t kOffK = kOffQ + kQBytes;
    static constexpr uint32_t kOffV = kOffK + kStages * kKVSlotBytes;
    static constexpr uint32_t kOffO = kOffV + kStages * kKVSlotBytes;
    static constexpr uint32_t kOffBar = kOffO + (kOStaging ? kConsumers * kOWgBytes : 0);
    static constexpr uint32_t kSmemBytes = kOffBar + FA_SM90_BARRIER_BYTES + FA_SM90_SMEM_ALIGN;
    static constexpr bool kPingpong = kHeadDim == 128 && kConsumers == 2;  // a two-consumer overlap
    static constexpr bool kSplitSoftmaxWait = kHeadDim != 256;
    // Only where a key block is narrower than the tile can a block boundary fall between the two
    // warpgroups' diagonals; elsewhere it is only more code (head_dim 64 causal, 128-key blocks,
    // measured 2-9% slower with it).
    static constexpr bool kWgKeyRange = kCausal && !kPingpong && kBlockN < kBlockM;

    // mbarrier slots (8 bytes each). Q has one full/empty pair per consumer warpgroup (its 64 rows).
    static constexpr int kBarQFull = 0, kBarQEmpty = kConsumers;
    static constexpr int kBarKFull = 2 * kConsumers, kBarKEmpty = kBarKFull + kStages;
    static constexpr int kBarVFull = kBarKFull + 2 * kStages, kBarVEmpty = kBarKFull + 3 * kStages;
    // kOInV: both warpgroups' O stores of the tile have read the V ring (one arrival each).
    static constexpr int kBarOFree = kBarKFull + 4 * kStages;
    static constexpr int kNumBars = kBarOFree + 1;
    // Three consumers, after the mbarriers (sm90_pipeline.cuh, sm90_fwd_kernel.cuh): per ring
    // slot, a count of the warps that released it (4 bytes); a count of the warpgroups that
    // reached a tile's start (4); per consumer, its tile's batch entry and kv head (8).
    static constexpr uint32_t kOffReleaseCount = kOffBar + 8 * kNumBars;
    static constexpr uint32_t kOffTileStarts = kOffReleaseCount + 4 * kStages;
    static constexpr uint32_t kOffTileOfConsumer = kOffTileStarts + 4;
    // Arrivals that free a warpgroup's Q rows: each of its warps after its last Q K^T (O staged
    // elsewhere), or its store thread once the TMA store has read O staged in Q.
    static constexpr bool kQFreeAfterLastQk = kOStaging || kOInV;
    static constexpr uint32_t kQReleaseArrivals = kQFreeAfterLastQk ? FA_WARPS_PER_WARPGROUP : 1;
    // Consumer warps that release a ring slot: every consumer warp arrives once, after its own wait.
    static constexpr uint32_t kSlotReleaseArrivals = kConsumers * FA_WARPS_PER_WARPGROUP;

    static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "instantiated head dims");
    static_assert(kBlockN % 16 == 0 && kBlockN >= 16 && kBlockN <= 256, "block_n: 16-key steps, one TMA box");
    static_assert(kQChunkBytes % 1024 == 0 && kKVChunkBytes % 1024 == 0 && kWgRowsBytes % 1024 == 0,
                  "every swizzled tile starts on a 1024-byte boundary (descriptor base offset 0)");
    static_assert(kNumBars * 8 + kStages * 4 + 4 + kConsumers * 8 <= FA_SM90_BARRIER_BYTES,
                  "mbarriers, counters and tiles fit their area");
    static_assert(kConsumers == 2 || (kConsumers == 3 && !kOInV && kOStaging && !kPingpong),
                  "three consumers: O staged in its own buffer, no pingpong");
    static_assert(kConsumers == 2 || kStages >= 3,
                  "three consumers: a warp waits for K(t + 1) holding V(t - 1) (sm90_pipeline.cuh)");
    static_assert((size_t)kSmemBytes == FA_SM90_SMEM_BYTES(kBlockM, kHeadDim, kBlockN, kStages),
                  "kernel layout and sm90_tiles.h agree on the shared-memory size");
    static_assert(kKVChunkBytes < (1u << 18), "LBO fits the descriptor's 14-bit field");
    static_assert(!kOInV || 2 * kOWgBytes <= kStages * kKVSlotBytes, "O of both warpgroups fits the V ring");
};

// The dynamic shared memory's first 1024-byte boundary: 128-byte swizzled tiles must start on
// one (descriptor base offset 0); every sm90 launch reserves FA_SM90_SMEM_ALIGN of slack.
__device__ __forceinline__ uint32_t swizzle_aligned_smem(const void *smem_raw) {
    return (smem_addr(smem_raw) + (FA_SM90_SMEM_ALIGN - 1)) & ~(uint32_t)(FA_SM90_SMEM_ALIGN - 1);
}

}  // namespace fa_sm90

#endif /* FA_SM90_FWD_CONFIG_CUH */
