/*
 * sm90_bwd_config.cuh -- what one sm90 backward instance is: its kernel arguments, its
 * shared-memory layout and mbarrier slots (sm90_bwd_tiles.h has the byte table), and the
 * CTA's walk over the query blocks that see its keys.
 *
 * BwdConfig<head_dim, bf16> derives every offset from sm90_bwd_tiles.h's numbers and checks
 * that both agree on the total. Each swizzled tile starts on a 1024-byte boundary and is a
 * stack of [rows][64 elements] chunks, one 128-byte line per row (sm90_ptx.cuh,
 * make_smem_desc):
 *   K, V      [D/64][N keys][128 B]      loaded once (TMA)
 *   Q, dO     [D/64][M rows][128 B]      a ring of S slots each (TMA)
 *   dS^T      [N keys][128 B]            two buffers, alternating by query block: written by
 *                                        both warpgroups (stmatrix), read by both dQ GEMMs
 *   P^T       [N keys][128 B]            head_dim 256 only (kSplitRows): as dS^T, read by both
 *                                        dV GEMMs
 *   dQ        2 x [D/64][M rows][128 B]  fp32, each consumer's half of the block's dS K, staged
 *                                        for the dQ warp's TMA reduction into dq_accum; at
 *                                        head_dim 256 in the step's Q and dO slots instead
 *                                        (dq_staging)
 *   lse, delta  M floats per slot        written by the row-stats warp with each Q / dO slot
 * Device and host; included by bwd_sm90.cu.
 */
#ifndef FA_SM90_BWD_CONFIG_CUH
#define FA_SM90_BWD_CONFIG_CUH

#include <cuda.h>  // CUtensorMap only
#include <cstdint>

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "dq_turns.cuh"
#include "kernels.h"
#include "sm90_bwd_tiles.h"
#include "sm90_fwd_config.cuh"  // FA_SM90_PRODUCER_REGS, FA_SM90_CONSUMER_REGS

namespace fa_sm90 {

// Map extents: q, dout (head_dim, seqlen_q, heads_q, batch), box 64 x M; k, v (head_dim,
// seqlen_k, heads_kv, batch), box 64 x N; dq_accum, fp32 (head_dim, seqlen_q, heads_q, batch),
// box 32 x M (tmap_dq_row: 32 x 1). Packed rows: (total, 1) in place of (seqlen, batch)
// (sm90_fwd_launch.cuh).
struct BwdParams {
    CUtensorMap tmap_q, tmap_k, tmap_v, tmap_do, tmap_dq, tmap_dq_row;
    const float *lse;    // (batch, heads_q, seqlen_q), natural log, as the forward wrote it
    const float *delta;  // rowsum(dout * out), lse's layout (the preprocess)
    void *dk, *dv;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
    fa_seq_layout seq;
    int heads_q, heads_per_kv, head_dim;
    int window_left, window_right;  // normalised by fa_mask_make, causal folded in
    fa_score score;
    float softmax_scale;
    int deterministic;   // dQ added in key-block order (dq_turns.cuh)
    int *dq_lock;        // deterministic: the turn counters, lock_blocks per (batch, q head)
    int lock_blocks;
    fa_key_block_order key_blocks;  // CTA blockIdx.x's key block
};

// Named barrier ids (0 is __syncthreads).
enum : uint32_t {
    kBarDsReady = 1,    // both consumer warpgroups: their dS^T rows of the block are in shared memory
    kBarDqFull = 2,     // + consumer: its dQ half is staged (the consumer and the dQ warp)
    kBarDqEmpty = 4,    // + consumer: the reduction has read the staged half
    kBarDqSlot = 6,     // head_dim 256: + consumer * stages + slot, in place of kBarDqFull (dq_full_bar)
    kBarWgReads = 2,    // head_dim 256: + consumer: its four warps' GEMMs have read what dQ is
                        // staged over (the ids of kBarDqFull, which head_dim 256 does not use)
};
constexpr uint32_t kDqBarThreads = 128 + FA_WARP_SIZE;

template <int kHeadDim_, bool kBf16_>
struct BwdConfig {
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr bool kBf16 = kBf16_;
    // Below head_dim 256 each consumer owns 64 of the CTA's keys; at 256 both share its 64 keys
    // and consumer c takes query rows 32c .. 32c + 31 of S^T and dP^T, then head_dim columns
    // c D/2 .. of dK, dV and dQ (sm90_bwd_tiles.h).
    static constexpr bool kSplitRows = FA_SM90_BWD_SPLIT_ROWS(kHeadDim);
    static constexpr int kBlockM = FA_SM90_BWD_BLOCK_M;
    static constexpr int kBlockN = FA_SM90_BWD_BLOCK_N(kHeadDim);
    static constexpr int kStages = FA_SM90_BWD_STAGES;
    static constexpr int kChunks = kHeadDim / 64;
    static constexpr int kScoreCols = kSplitRows ? kBlockM / 2 : kBlockM;  // query columns of a consumer's S^T
    static constexpr int kKeyCols = kSplitRows ? kHeadDim / 2 : kHeadDim;  // head_dim columns of its dK, dV
    static constexpr int kDqCols = kHeadDim / 2;  // each consumer's half of the dQ columns
    // setmaxnreg counts. At head_dim 256 the dQ warp spilled 20-36 bytes in 24 registers (its
    // staging lies in two ring slots, in 4 chunks per half); the consumers need fewer than 232.
    static constexpr int kProducerRegs = kSplitRows ? 32 : FA_SM90_PRODUCER_REGS;
    static constexpr int kConsumerRegs = kSplitRows ? 232 : FA_SM90_CONSUMER_REGS;
    static constexpr uint32_t kKVChunkBytes = kBlockN * 128;
    static constexpr uint32_t kKVBytes = kChunks * kKVChunkBytes;
    static constexpr uint32_t kRowChunkBytes = kBlockM * 128;  // a 64-column chunk of Q or dO
    static constexpr uint32_t kRowSlotBytes = kChunks * kRowChunkBytes;
    static constexpr uint32_t kDsChunkBytes = kBlockN * 128;
    static constexpr uint32_t kDsBytes = kDsChunkBytes;
    static constexpr uint32_t kWgKeyBytes = kSplitRows ? 0 : 64 * 128;  // offset of consumer 1's keys in a chunk
    static constexpr uint32_t kOffK = 0;
    static constexpr uint32_t kOffV = kOffK + kKVBytes;
    static constexpr uint32_t kOffQ = kOffV + kKVBytes;
    static constexpr uint32_t kOffDo = kOffQ + kStages * kRowSlotBytes;
    static constexpr uint32_t kOffDs = kOffDo + kStages * kRowSlotBytes;
    static constexpr int kDqChunks = kDqCols / 32;  // 32 fp32 columns = one 128-byte swizzled line
    static constexpr uint32_t kDqChunkBytes = 64 * 128;
    static constexpr uint32_t kDqWgBytes = kDqChunks * kDqChunkBytes;
    static constexpr uint32_t kOffP = kOffDs + 2 * kDsBytes;
    static constexpr uint32_t kOffDq = kOffP + (kSplitRows ? 2 * kDsBytes : 0);
    static constexpr uint32_t kOffLse = kOffDq + (kSplitRows ? 0 : FA_NUM_CONSUMER_WARPGROUPS * kDqWgBytes);
    static constexpr uint32_t kOffDelta = kOffLse + kStages * kBlockM * 4;
    static constexpr uint32_t kOffBar = kOffDelta + kStages * kBlockM * 4;
    static constexpr uint32_t kSmemBytes = kOffBar + FA_SM90_BARRIER_BYTES + FA_SM90_SMEM_ALIGN;

    // mbarrier slots (8 bytes each). A full barrier completes with the TMA bytes and the 32
    // arrivals of the row-stats warp; an empty one with an arrival from every consumer thread,
    // and at head_dim 256 the dQ warp's once it has read the dQ staged in the slot.
    static constexpr int kBarKV = 0;
    static constexpr int kBarQFull = 1, kBarQEmpty = 1 + kStages;
    static constexpr int kBarDoFull = 1 + 2 * kStages, kBarDoEmpty = 1 + 3 * kStages;
    static constexpr int kNumBars = 1 + 4 * kStages;
    static constexpr uint32_t kFullArrivals = 1 + FA_WARP_SIZE;
    static constexpr uint32_t kEmptyArrivals = FA_NUM_CONSUMER_WARPGROUPS * 128 + (kSplitRows ? 1 : 0);

    // Shared addresses of ring slot `slot`'s Q, dO, base-2 lse and delta.
    static __device__ __forceinline__ uint32_t q_slot(uint32_t smem, int slot) { return smem + kOffQ + slot * kRowSlotBytes; }
    static __device__ __forceinline__ uint32_t do_slot(uint32_t smem, int slot) { return smem + kOffDo + slot * kRowSlotBytes; }
    static __device__ __forceinline__ uint32_t lse_slot(uint32_t smem, int slot) { return smem + kOffLse + slot * kBlockM * 4; }
    static __device__ __forceinline__ uint32_t delta_slot(uint32_t smem, int slot) { return smem + kOffDelta + slot * kBlockM * 4; }

    // Consumer c's first key in the CTA's, first query row of the block in its S^T, and first
    // head_dim column of its dK and dV.
    static __device__ __forceinline__ int key_offset(int c) { return kSplitRows ? 0 : 64 * c; }
    static __device__ __forceinline__ int score_col0(int c) { return kSplitRows ? c * kScoreCols : 0; }
    static __device__ __forceinline__ int key_col0(int c) { return kSplitRows ? c * kKeyCols : 0; }

    // Consumer c's staged dQ half: 32-column fp32 chunks, each a 64-row box of the TMA reduction
    // (8 KB); dq_staging is chunk 0's shared address, dq_chunk_offset(ch) chunk ch's offset
    // from it. At head_dim 256: chunks 0, 1 in the consumer's two 64-column chunks of the step's
    // dO slot (free once its dV GEMM has retired), chunks 2, 3 in its chunks of the Q slot
    // (free once its dK GEMM has); after the meeting no other GEMM reads them (the other
    // consumer's dV and dK read its own columns).
    static __device__ __forceinline__ uint32_t dq_staging(uint32_t smem, int c, int slot) {
        if constexpr (kSplitRows)
            return do_slot(smem, slot) + 2 * c * kRowChunkBytes;
        else
            return smem + kOffDq + c * kDqWgBytes;
    }
    static __device__ __forceinline__ uint32_t dq_chunk_offset(int ch) {
        if constexpr (kSplitRows)
            return (ch % 2) * kRowChunkBytes - (ch / 2) * (kOffDo - kOffQ);  // mod 2^32: the Q slot lies below
        else
            return ch * kDqChunkBytes;
    }
    // The named barrier on which consumer c hands its staged dQ half of a step in slot `slot` to
    // the dQ warp. At head_dim 256 there is no kBarDqEmpty hand-back, and a consumer may finish
    // the next step before the dQ warp has met it for this one: with one id per consumer, those
    // arrivals would land on the same barrier (it completes at its count with nobody waiting,
    // and the dQ warp then waits for good). One id per slot as well: a consumer arrives on a
    // slot's id again only kStages steps later, once the slot has been refilled, which needs
    // the dQ warp's arrival on its empty barriers, after its wait on this id.
    static __device__ __forceinline__ uint32_t dq_full_bar(int c, int slot) {
        if constexpr (kSplitRows)
            return kBarDqSlot + c * kStages + slot;
        else
            return kBarDqFull + c;
    }

    static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "instantiated head dims (sm90_bwd_tiles.h)");
    static_assert(kBlockM == 64, "a query block is one wgmma N of S^T, one 64-row dS^T chunk, the M of dQ");
    static_assert(kBlockN == (kSplitRows ? 64 : 64 * FA_NUM_CONSUMER_WARPGROUPS),
                  "64 keys per consumer warpgroup, or 64 shared by both");
    static_assert(!kSplitRows || (FA_NUM_CONSUMER_WARPGROUPS == 2 && kDqChunkBytes == kRowChunkBytes &&
                                  kDqCols == 2 * 64 && kKeyCols == kDqCols),
                  "a consumer's dQ half fits its own two 64-column chunks of a Q and a dO slot");
    static_assert(kDqCols % 16 == 0, "a dQ half is a whole wgmma N");
    static_assert(kOffQ % 1024 == 0 && kOffDo % 1024 == 0 && kOffDs % 1024 == 0 && kRowSlotBytes % 1024 == 0 &&
                      kDsBytes % 1024 == 0,
                  "every swizzled tile starts on a 1024-byte boundary (descriptor base offset 0)");
    static_assert(kNumBars * 8 <= FA_SM90_BARRIER_BYTES, "mbarriers fit their area");
    static_assert(!kSplitRows || kBarDqSlot + FA_NUM_CONSUMER_WARPGROUPS * kStages <= 16, "16 named barriers");
    static_assert(128 * kProducerRegs + FA_NUM_CONSUMER_WARPGROUPS * 128 * kConsumerRegs <= 384 * 168,
                  "the setmaxnreg counts fit what the launch allocates (168 registers per thread)");
    static_assert((size_t)kSmemBytes == FA_SM90_BWD_SMEM_BYTES(kHeadDim),
                  "kernel layout and sm90_bwd_tiles.h agree on the shared-memory size");
};

// The CTA's keys [key0, key0 + N) of kv head hk in entry batch, and its walk: step it is query
// block m_block(it) of q head head(it), over the group's q heads and the query blocks that see
// the keys (block_range.h). Producer, row-stats warp and consumers all derive it from blockIdx
// (key blocks counted from the last when deterministic, dq_turns.cuh).
struct BwdWalk {
    int batch, hk, key0;
    int heads_per_kv, blocks, steps;
    fa_seqlen e;
    fa_mask mask;
    fa_row_block_range range;

    __device__ __forceinline__ int head(int it) const { return hk * heads_per_kv + it / blocks; }
    __device__ __forceinline__ int m_block(int it) const { return range.m_min + it % blocks; }
};

template <class Cfg>
__device__ __forceinline__ BwdWalk make_walk(const BwdParams &prm) {
    BwdWalk w;
    w.batch = blockIdx.z;
    w.hk = blockIdx.y;
    w.key0 = dq_turn_key_block(prm.key_blocks) * Cfg::kBlockN;
    w.heads_per_kv = prm.heads_per_kv;
    w.e = fa_seqlen_at(&prm.seq, w.batch);
    w.mask = fa_mask_make(w.e.len_q, w.e.len_k, prm.window_left, prm.window_right, 0);
    w.range = fa_block_range_cols(&w.mask, w.key0, w.key0 + Cfg::kBlockN, Cfg::kBlockM);
    w.blocks = w.range.m_max - w.range.m_min;
    w.steps = w.heads_per_kv * w.blocks;
    return w;
}

}  // namespace fa_sm90

#endif /* FA_SM90_BWD_CONFIG_CUH */
