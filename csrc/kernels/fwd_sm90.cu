/*
 * fwd_sm90.cu -- FlashAttention forward for Hopper (sm_90a): warp-specialised TMA + wgmma.
 *
 *   out[b, i, h, :] = softmax_j(hook(scale * q[b, i, h, :] . k[b, j, h/G, :])) v[b, j, h/G, :]
 *   q, out (batch, seqlen_q, heads_q, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim);
 *   any element strides with unit head_dim stride; float16 or bfloat16; head_dim a multiple of
 *   8 up to 256 (run as 64, 128 or 256 with zero padding); lse float32 (batch, heads_q, seqlen_q).
 *   Instances per head dim: mask kind (none, causal, window: common/mask.h, sm90_mask.cuh) x
 *   softcap hook (common/score.h) x dtype; sinks are a runtime pointer read once per tile at the
 *   row end. Key blocks outside a tile's window (common/block_range.h) are never loaded.
 *
 * CTA = 384 threads = 3 warpgroups, persistent over 128-row query tiles (sm90_scheduler.cuh):
 *   warpgroup 0, producer: one thread issues every TMA load -- per tile the two 64-row halves
 *     of Q (one per consumer warpgroup, each with its own full/empty mbarrier pair), K and V
 *     blocks into a ring of FA_SM90_STAGES(head_dim) slots with full/empty mbarriers.
 *     It keeps 24 registers (setmaxnreg) so the consumers can hold 240.
 *   warpgroups 1 and 2, consumers: 64 query rows each. S = Q K^T by wgmma with both operands
 *     in shared memory (K-major, 128-byte swizzle); online softmax in registers; O += P V by
 *     wgmma with P in registers (the S accumulator fragment packed to 16 bit is the A fragment)
 *     and V read transposed (MN-major) straight from its row-major tile. Epilogue: stmatrix
 *     into a staging area, TMA store (sm90_epilogue.cuh). Where shared memory allows (head_dim
 *     64; head_dim 128 causal, and full over at most 1024 keys) O has a staging buffer of its own and each warpgroup frees its Q
 *     rows right after its last Q K^T, so the next tile's Q load overlaps this tile's tail;
 *     head_dim 256 stages O in the V ring instead (FA_SM90_O_IN_V_*), which also frees Q after
 *     the last Q K^T; only the next tile's first V load waits for the store to read the ring.
 *     Otherwise O is staged in the warpgroup's Q rows, freed once the store has read them.
 * Overlaps and variants, each a compile-time switch (-D...=0 builds the variant without it;
 * the per-head-dim defaults are the measured best, benches/NOTES.md):
 *   FA_SM90_PINGPONG[_HD64|_HD64_CAUSAL|_HD128|_HD256]  the consumer warpgroups take turns
 *                             issuing their GEMMs (named barriers), so one's softmax runs under
 *                             the other's GEMMs (on: head_dim 128; off: 64, 256);
 *   FA_SM90_INTRA_WG_OVERLAP  S_next = Q K_{j-1}^T and O += P_j V_j are issued together in one
 *                             turn; the softmax of S_next follows while P_j V_j is in flight;
 *   FA_SM90_SPLIT_SOFTMAX_WAIT[_HD64|_HD128|_HD256]  keeps the softmax of S_next ahead of the
 *                             wait for P_j V_j in the SASS (ptxas otherwise hoists that wait
 *                             above the softmax; see consumer_mainloop); on for head_dim 64, 128;
 *   FA_SM90_O_STAGING         (sm90_tiles.h) the separate O staging buffer described above;
 *   FA_SM90_O_IN_V_HD128, FA_SM90_O_IN_V_HD256  O staged in the V ring where it has no buffer
 *                             of its own (on: head_dim 256);
 *   FA_SM90_MAX_CHAINS        independent chains of the row max (1);
 *   FA_SM90_POLY_EXP2_HD{64,128,256}  eighths of the exponentials on the FMA pipe (0);
 *   FA_SM90_STAGES_HD*, FA_SM90_BLOCK_N_HD* (sm90_tiles.h)  ring depth and key-block size;
 *   FA_SM90_SHORT_SEQLEN_K    (sm90_tiles.h) head_dim 128 full attention over at most this many
 *                             keys runs its own 128-key-block instance (1024; 0 turns it off);
 *   FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL  (sm90_tiles.h) likewise for head_dim 256 causal, with
 *                             64-key blocks (2048; 0 turns it off);
 *   FA_SM90_LAZY_RESCALE[_HD64|_HD128|_HD256]  softmax form (sm90_softmax.cuh): 0 eager,
 *                             1 lazy (O rescaled only when a row max outgrows its reference by
 *                             2^8); lazy for every head dim;
 *   FA_SM90_WG_KEY_RANGE      causal without pingpong (head_dim 256): each consumer warpgroup
 *                             skips the key blocks above its own rows' diagonal;
 *   FA_SM90_PAIR_TILES        causal tiles run in pairs of equal work per CTA (sm90_scheduler.cuh).
 *
 * Build: nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *          -gencode arch=compute_90a,code=sm_90a -I csrc csrc/kernels/fwd_sm90.cu
 * The tensor maps are encoded per call through the runtime's driver entry point, so nothing
 * links libcuda and the module loads on a machine without a driver.
 */
#include <cuda.h>  // CUtensorMap and the cuTensorMapEncodeTiled types only; no libcuda symbol is linked
#include <cuda_runtime.h>

#include <atomic>
#include <cfloat>
#include <cstdint>
#include <cstring>

#include "../launch_contract.h"
#include "kernels.h"
#include "sm90_epilogue.cuh"
#include "sm90_mask.cuh"
#include "sm90_ptx.cuh"
#include "sm90_scheduler.cuh"
#include "sm90_softmax.cuh"
#include "sm90_tiles.h"
#include "sm90_wgmma.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "fwd_sm90.cu uses wgmma and setmaxnreg: build it for sm_90a (-gencode arch=compute_90a,code=sm_90a)"
#endif

// Pingpong per head dim: FA_SM90_PINGPONG=0 turns it off everywhere.
#ifndef FA_SM90_PINGPONG
#define FA_SM90_PINGPONG 1
#endif
#ifndef FA_SM90_PINGPONG_HD64
#define FA_SM90_PINGPONG_HD64 0
#endif
#ifndef FA_SM90_PINGPONG_HD64_CAUSAL
#define FA_SM90_PINGPONG_HD64_CAUSAL 0
#endif
#ifndef FA_SM90_PINGPONG_HD128
#define FA_SM90_PINGPONG_HD128 1
#endif
#ifndef FA_SM90_PINGPONG_HD256
#define FA_SM90_PINGPONG_HD256 0
#endif
#ifndef FA_SM90_INTRA_WG_OVERLAP
#define FA_SM90_INTRA_WG_OVERLAP 1
#endif
// Per head dim; FA_SM90_SPLIT_SOFTMAX_WAIT=0 turns it off everywhere.
#ifndef FA_SM90_SPLIT_SOFTMAX_WAIT
#define FA_SM90_SPLIT_SOFTMAX_WAIT 1
#endif
#ifndef FA_SM90_SPLIT_SOFTMAX_WAIT_HD64
#define FA_SM90_SPLIT_SOFTMAX_WAIT_HD64 1
#endif
#ifndef FA_SM90_SPLIT_SOFTMAX_WAIT_HD128
#define FA_SM90_SPLIT_SOFTMAX_WAIT_HD128 1
#endif
#ifndef FA_SM90_SPLIT_SOFTMAX_WAIT_HD256
#define FA_SM90_SPLIT_SOFTMAX_WAIT_HD256 0
#endif
// Independent chains of the row max (sm90_softmax.cuh): 1, 2 or 4.
#ifndef FA_SM90_MAX_CHAINS
#define FA_SM90_MAX_CHAINS 1
#endif
// Eighths of the exponentials computed on the FMA pipe instead of MUFU (sm90_softmax.cuh).
#ifndef FA_SM90_POLY_EXP2_HD64
#define FA_SM90_POLY_EXP2_HD64 0
#endif
#ifndef FA_SM90_POLY_EXP2_HD128
#define FA_SM90_POLY_EXP2_HD128 0
#endif
#ifndef FA_SM90_POLY_EXP2_HD256
#define FA_SM90_POLY_EXP2_HD256 0
#endif

// Softmax form per head dim (sm90_softmax.cuh): 0 eager (O rescaled every block), 1 lazy (O
// rescaled only when a row's max outgrows its reference by 2^8). FA_SM90_LAZY_RESCALE=0 turns
// it off everywhere. Lazy everywhere: head_dim 64 gained 0-4% from it once its softmax ran
// under its own P V (split wait, no pingpong); with pingpong and the P V wait hoisted above
// the softmax it had measured 2-4% slower at causal (benches/NOTES.md, sm90 v4 and v5).
#ifndef FA_SM90_LAZY_RESCALE
#define FA_SM90_LAZY_RESCALE 1
#endif
#ifndef FA_SM90_LAZY_RESCALE_HD64
#define FA_SM90_LAZY_RESCALE_HD64 1
#endif
#ifndef FA_SM90_LAZY_RESCALE_HD128
#define FA_SM90_LAZY_RESCALE_HD128 1
#endif
#ifndef FA_SM90_LAZY_RESCALE_HD256
#define FA_SM90_LAZY_RESCALE_HD256 1
#endif

// Causal without pingpong: each consumer warpgroup visits only the key blocks its own 64 rows
// see, and hands the tile's others straight back to the producer (0: both visit the tile's).
// With pingpong the two warpgroups must take the same number of turns, so they share the range.
#ifndef FA_SM90_WG_KEY_RANGE
#define FA_SM90_WG_KEY_RANGE 1
#endif

// Causal with at least two tiles per CTA: each CTA runs tiles in pairs of equal total work
// (sm90_scheduler.cuh). 0: one by one, longest first, for every causal problem.
#ifndef FA_SM90_PAIR_TILES
#define FA_SM90_PAIR_TILES 1
#endif

// Where O has no staging buffer of its own (sm90_tiles.h), stage it in the V ring instead of
// the warpgroup's Q rows: Q is then free after the last Q K^T and the next tile's Q and first
// K block load under this tile's tail; only the next tile's first V waits for the O store to
// have read the ring. 0 per head dim: stage in Q rows.
#ifndef FA_SM90_O_IN_V_HD128
#define FA_SM90_O_IN_V_HD128 0
#endif
#ifndef FA_SM90_O_IN_V_HD256
#define FA_SM90_O_IN_V_HD256 1
#endif

// 128 * 24 + 256 * 240 = 64512 <= 65536 registers of the SM.
#define FA_SM90_PRODUCER_REGS 24
#define FA_SM90_CONSUMER_REGS 240

static_assert(FA_THREADS_PER_BLOCK == 384 && FA_NUM_WARPGROUPS == 3, "1 producer + 2 consumer warpgroups");
static_assert(FA_NUM_CONSUMER_WARPGROUPS == 2, "two consumer warpgroups of 64 query rows");
static_assert(128 * FA_SM90_PRODUCER_REGS + 256 * FA_SM90_CONSUMER_REGS <= 65536, "register file budget");

namespace fa_sm90 {

struct KernelParams {  // CUtensorMap carries its own 128-byte alignment
    CUtensorMap tmap_q;  // (head_dim, seqlen_q, heads_q, batch), box 64 x 64 (one warpgroup's rows)
    CUtensorMap tmap_k;  // (head_dim, seqlen_k, heads_kv, batch), box 64 x block_n
    CUtensorMap tmap_v;  // as k
    CUtensorMap tmap_o;  // (head_dim, seqlen_q, heads_q, batch), box 64 x 64 (one warpgroup's rows)
    float *lse;          // NULL: not written
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
};

template <int kHeadDim_, int kBlockN_, int kMask_, bool kSoftcap_, bool kBf16_>
struct Config {
    static constexpr int kHeadDim = kHeadDim_;
    static constexpr int kBlockN = kBlockN_;
    static constexpr int kMask = kMask_;  // fa_mask_kind
    static constexpr bool kCausal = kMask == FA_MASK_CAUSAL;
    static constexpr bool kSoftcap = kSoftcap_;
    static constexpr bool kBf16 = kBf16_;
    static constexpr int kBlockM = FA_SM90_BLOCK_M;
    static constexpr int kStages = FA_SM90_STAGES(kHeadDim);
    static constexpr int kChunks = kHeadDim / 64;  // 64-column (128-byte) swizzle chunks
    static constexpr uint32_t kQChunkBytes = kBlockM * 128;
    static constexpr uint32_t kKVChunkBytes = kBlockN * 128;
    static constexpr uint32_t kQBytes = kChunks * kQChunkBytes;
    static constexpr uint32_t kKVSlotBytes = kChunks * kKVChunkBytes;
    static constexpr uint32_t kWgRowsBytes = 64 * 128;  // offset of consumer 1's rows in a Q chunk
    static constexpr bool kOStaging = FA_SM90_HAS_O_STAGING(kHeadDim, kBlockN, kStages);
    // No buffer of its own: O staged in the V ring (FA_SM90_O_IN_V_*) or else in the Q rows.
    // The hand-over sits in the overlapped main loop (FA_SM90_INTRA_WG_OVERLAP).
    static constexpr bool kOInV =
        !kOStaging && FA_SM90_INTRA_WG_OVERLAP &&
        (kHeadDim == 128 ? FA_SM90_O_IN_V_HD128 : kHeadDim == 256 ? FA_SM90_O_IN_V_HD256 : 0);
    static constexpr uint32_t kOChunkBytes = 64 * 128;         // one warpgroup's 64 rows of a chunk
    static constexpr uint32_t kOWgBytes = kChunks * kOChunkBytes;
    static constexpr uint32_t kOffQ = 0;
    static constexpr uint32_t kOffK = kOffQ + kQBytes;
    static constexpr uint32_t kOffV = kOffK + kStages * kKVSlotBytes;
    static constexpr uint32_t kOffO = kOffV + kStages * kKVSlotBytes;
    static constexpr uint32_t kOffBar = kOffO + (kOStaging ? 2 * kOWgBytes : 0);
    static constexpr uint32_t kSmemBytes = kOffBar + FA_SM90_BARRIER_BYTES + FA_SM90_SMEM_ALIGN;
    static constexpr bool kPingpong =
        FA_SM90_PINGPONG && (kHeadDim == 64    ? (kMask != FA_MASK_NONE ? FA_SM90_PINGPONG_HD64_CAUSAL : FA_SM90_PINGPONG_HD64)
                             : kHeadDim == 128 ? FA_SM90_PINGPONG_HD128
                                               : FA_SM90_PINGPONG_HD256);
    static constexpr bool kIntraWgOverlap = FA_SM90_INTRA_WG_OVERLAP;
    static constexpr bool kSplitSoftmaxWait =
        FA_SM90_SPLIT_SOFTMAX_WAIT && (kHeadDim == 64    ? FA_SM90_SPLIT_SOFTMAX_WAIT_HD64
                                       : kHeadDim == 128 ? FA_SM90_SPLIT_SOFTMAX_WAIT_HD128
                                                         : FA_SM90_SPLIT_SOFTMAX_WAIT_HD256);
    static constexpr int kMaxChains = FA_SM90_MAX_CHAINS;
    // Only where a key block is narrower than the tile can a block boundary fall between the two
    // warpgroups' diagonals; elsewhere it is only more code (head_dim 64 causal, 128-key blocks,
    // measured 2-9% slower with it).
    static constexpr bool kWgKeyRange = FA_SM90_WG_KEY_RANGE && kCausal && !kPingpong && kBlockN < kBlockM;
    static constexpr int kSoftmaxForm =
        FA_SM90_LAZY_RESCALE ? (kHeadDim == 64    ? FA_SM90_LAZY_RESCALE_HD64
                                : kHeadDim == 128 ? FA_SM90_LAZY_RESCALE_HD128
                                                  : FA_SM90_LAZY_RESCALE_HD256)
                             : 0;
    static constexpr int kPolyEighths = kHeadDim == 64    ? FA_SM90_POLY_EXP2_HD64
                                        : kHeadDim == 128 ? FA_SM90_POLY_EXP2_HD128
                                                          : FA_SM90_POLY_EXP2_HD256;

    // mbarrier slots (8 bytes each). Q has one full/empty pair per consumer warpgroup (its 64 rows).
    static constexpr int kBarQFull = 0, kBarQEmpty = 2;
    static constexpr int kBarKFull = 4, kBarKEmpty = 4 + kStages;
    static constexpr int kBarVFull = 4 + 2 * kStages, kBarVEmpty = 4 + 3 * kStages;
    // kOInV: both warpgroups' O stores of the tile have read the V ring (one arrival each).
    static constexpr int kBarOFree = 4 + 4 * kStages;
    static constexpr int kNumBars = 5 + 4 * kStages;
    // Arrivals that free a warpgroup's Q rows: each of its warps after its last Q K^T (O staged
    // elsewhere), or its store thread once the TMA store has read O staged in Q.
    static constexpr bool kQFreeAfterLastQk = kOStaging || kOInV;
    static constexpr uint32_t kQReleaseArrivals = kQFreeAfterLastQk ? FA_WARPS_PER_WARPGROUP : 1;

    static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "instantiated head dims");
    static_assert(kBlockN % 16 == 0 && kBlockN >= 16 && kBlockN <= 256, "block_n: 16-key steps, one TMA box");
    static_assert(kQChunkBytes % 1024 == 0 && kKVChunkBytes % 1024 == 0 && kWgRowsBytes % 1024 == 0,
                  "every swizzled tile starts on a 1024-byte boundary (descriptor base offset 0)");
    static_assert(kSoftmaxForm == 0 || kSoftmaxForm == 1, "eager or lazy softmax");
    static_assert(kNumBars * 8 <= FA_SM90_BARRIER_BYTES, "mbarriers fit their area");
    static_assert((size_t)kSmemBytes == FA_SM90_SMEM_BYTES(kHeadDim, kBlockN, kStages),
                  "kernel layout and sm90_tiles.h agree on the shared-memory size");
    static_assert(kKVChunkBytes < (1u << 18), "LBO fits the descriptor's 14-bit field");
    static_assert(!kOInV || 2 * kOWgBytes <= kStages * kKVSlotBytes, "O of both warpgroups fits the V ring");
};

// Consumer warps that release a ring slot: every consumer warp arrives once, after its own wait.
constexpr uint32_t kSlotReleaseArrivals = FA_NUM_CONSUMER_WARPGROUPS * FA_WARPS_PER_WARPGROUP;

// S (64 x kBlockN) = Q rows of this warpgroup x K^T; first k-step overwrites (scale-d 0).
template <class Cfg>
__device__ __forceinline__ void issue_qk(float (&s)[Cfg::kBlockN / 2], uint32_t q_rows, uint32_t k_slot) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kHeadDim / 16; ++kk) {
        // k-step kk: 16 columns = 32 bytes inside 64-column chunk kk / 4. Moving the start address
        // inside a swizzle atom is allowed: the swizzle XOR uses address bits [7:9], unchanged.
        const uint32_t off_q = (kk / 4) * Cfg::kQChunkBytes + (kk % 4) * 32;
        const uint32_t off_k = (kk / 4) * Cfg::kKVChunkBytes + (kk % 4) * 32;
        const uint64_t desc_q = make_smem_desc(q_rows + off_q, 16, 1024);
        const uint64_t desc_k = make_smem_desc(k_slot + off_k, 16, 1024);
        Wgmma<Cfg::kBlockN>::template ss<Cfg::kBf16>(s, desc_q, desc_k, kk > 0 ? 1 : 0);
    }
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
    return fa_block_range_rows(&mask, row_begin, min(row_begin + rows, mask.len_q), Cfg::kBlockN);
}

template <class Cfg>
__device__ __forceinline__ fa_mask sequence_mask(const KernelParams &prm, const fa_seqlen &len) {
    return make_mask<Cfg::kMask>(len.len_q, len.len_k, prm.window_left, prm.window_right);
}

// Block n's scores through the score hook, then the mask (FlashAttention's order).
template <class Cfg>
__device__ __forceinline__ void score_mod(float (&s)[Cfg::kBlockN / 2], int n, const fa_block_range &range,
                                          const fa_mask &mask, const fa_score &score, int row0, int lane) {
    if constexpr (Cfg::kSoftcap) softcap_scores<Cfg::kBlockN>(s, score.softcap_pre);
    if (block_needs_mask<Cfg::kMask>(range, n)) mask_scores<Cfg::kBlockN, Cfg::kMask>(s, n, row0, mask, lane);
}

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

// ------------------------------------------------------------------------------------------ producer

// Loads key block n_block of K (kv_index 0) or V (1) into the ring slot at pos.
template <class Cfg>
__device__ __forceinline__ void producer_load_block(const KernelParams &prm, uint32_t smem, const RingPos &pos,
                                                    int n_block, const TileCoord &tc, int kv_index) {
    const uint32_t bars = smem + Cfg::kOffBar;
    const uint32_t full = bars + 8 * ((kv_index ? Cfg::kBarVFull : Cfg::kBarKFull) + pos.slot);
    const uint32_t empty = bars + 8 * ((kv_index ? Cfg::kBarVEmpty : Cfg::kBarKEmpty) + pos.slot);
    const uint32_t dst = smem + (kv_index ? Cfg::kOffV : Cfg::kOffK) + pos.slot * Cfg::kKVSlotBytes;
    const CUtensorMap *tmap = kv_index ? &prm.tmap_v : &prm.tmap_k;

    mbarrier_wait(empty, pos.phase ^ 1u);
    mbarrier_arrive_expect_tx(full, Cfg::kKVSlotBytes);
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c)
        cp_async_bulk_tensor_4d_g2s(dst + c * Cfg::kKVChunkBytes, tmap, full, 64 * c, n_block * Cfg::kBlockN,
                                    tc.head_kv, tc.batch);
}

template <class Cfg>
__device__ __forceinline__ void producer_load_kv(const KernelParams &prm, uint32_t smem, RingPos &pos, int n_block,
                                                 const TileCoord &tc) {
    producer_load_block<Cfg>(prm, smem, pos, n_block, tc, 0);
    producer_load_block<Cfg>(prm, smem, pos, n_block, tc, 1);
    pos.advance(Cfg::kStages);
}

template <class Cfg>
__device__ __forceinline__ void producer_load_q(const KernelParams &prm, uint32_t smem, uint32_t q_phase,
                                                const TileCoord &tc) {
    const uint32_t bars = smem + Cfg::kOffBar;
#pragma unroll
    for (int wg = 0; wg < FA_NUM_CONSUMER_WARPGROUPS; ++wg) {
        const uint32_t q_full = bars + 8 * (Cfg::kBarQFull + wg);
        mbarrier_wait(bars + 8 * (Cfg::kBarQEmpty + wg), q_phase ^ 1u);
        mbarrier_arrive_expect_tx(q_full, Cfg::kQBytes / 2);
#pragma unroll
        for (int c = 0; c < Cfg::kChunks; ++c)
            cp_async_bulk_tensor_4d_g2s(smem + Cfg::kOffQ + c * Cfg::kQChunkBytes + wg * Cfg::kWgRowsBytes,
                                        &prm.tmap_q, q_full, 64 * c, tc.m_block * Cfg::kBlockM + 64 * wg,
                                        tc.head_q, tc.batch);
    }
}

// One thread. Visits exactly the tiles and key blocks the consumers visit, in the same order.
template <class Cfg>
__device__ __forceinline__ void producer(const KernelParams &prm, uint32_t smem) {
    const SchedulerArgs &sched = prm.sched;
    const uint32_t bars = smem + Cfg::kOffBar;
    prefetch_tensormap(&prm.tmap_q);
    prefetch_tensormap(&prm.tmap_k);
    prefetch_tensormap(&prm.tmap_v);
    prefetch_tensormap(&prm.tmap_o);
    RingPos kv{0, 0u};
    uint32_t q_phase = 0;
    uint32_t o_free_phase = 0;
    for (int tile = blockIdx.x; tile < sched.num_iters; tile += gridDim.x) {
        const TileCoord tc = decode_tile(sched, tile);
        const fa_seqlen len = seq_lengths(sched, tc.batch);
        if (tc.m_block < 0 || tc.m_block * Cfg::kBlockM >= len.len_q) continue;
        const fa_block_range range =
            rows_block_range<Cfg>(sequence_mask<Cfg>(prm, len), tc.m_block * Cfg::kBlockM, Cfg::kBlockM);
        if constexpr (Cfg::kOInV) {
            // K and Q of the tile go out while the previous tile's O may still sit in the V ring;
            // the first V waits for both of its stores to have read it (once per tile, so the
            // parity stays in step even for a tile without keys).
            if (range.n_max > 0) producer_load_block<Cfg>(prm, smem, kv, range.n_max - 1, tc, 0);
            producer_load_q<Cfg>(prm, smem, q_phase, tc);
            mbarrier_wait(bars + 8 * Cfg::kBarOFree, o_free_phase ^ 1u);
            o_free_phase ^= 1u;
            if (range.n_max > 0) {
                producer_load_block<Cfg>(prm, smem, kv, range.n_max - 1, tc, 1);
                kv.advance(Cfg::kStages);
            }
        } else {
            // The first K/V block goes out before Q: its slot is freed by the previous tile's main
            // loop, while each Q half is free only once its warpgroup is done with the previous tile.
            if (range.n_max > 0) producer_load_kv<Cfg>(prm, smem, kv, range.n_max - 1, tc);
            producer_load_q<Cfg>(prm, smem, q_phase, tc);
        }
        q_phase ^= 1u;
        for (int n = range.n_max - 2; n >= first_block<Cfg::kMask>(range); --n)
            producer_load_kv<Cfg>(prm, smem, kv, n, tc);
    }
}

// ------------------------------------------------------------------------------------------ consumers

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

// The warpgroup's Q rows are no longer read: where O is staged elsewhere (a buffer of its own
// or the V ring), each warp frees them after the wait that retired its last Q K^T, so the
// producer loads the next tile's rows while this tile finishes. Branch-free: it sits inside
// the key loop.
template <class Cfg>
__device__ __forceinline__ void release_q_after_last_qk(uint32_t bars, int consumer, int lane, bool last) {
    if constexpr (Cfg::kQFreeAfterLastQk)
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

// Runs the key blocks n_max-1 .. n_min of one tile; leaves O (unnormalised), m and l.
template <class Cfg>
__device__ __forceinline__ void consumer_mainloop(ConsumerRing<Cfg> &ring, const fa_block_range &range,
                                                  const fa_mask &mask, const fa_score &score, uint32_t q_rows,
                                                  int consumer, int row0, bool release_o,
                                                  float (&o)[Cfg::kHeadDim / 2], float (&m)[2], float (&l)[2]) {
    constexpr int kNs = Cfg::kBlockN / 2;
    float s[kNs];
    uint32_t p[kNs / 2];
    float corr[2];
    const int lane = ring.lane;
    const float scale_log2 = score.scale_log2;
    const int n_min = first_block<Cfg::kMask>(range);

    if constexpr (Cfg::kIntraWgOverlap) {
        const int n_top = range.n_max - 1;
        uint32_t k_slot = ring.wait_k();
        {
            pingpong_sync<Cfg>(consumer);
            wgmma_fence();
            issue_qk<Cfg>(s, q_rows, k_slot);
            wgmma_commit_group();
            pingpong_arrive<Cfg>(consumer);
            release_o_in_v<Cfg>(ring.bars, release_o);
            wgmma_wait_group<0>();
            fence_operands(s);
            ring.release_k();
            release_q_after_last_qk<Cfg>(ring.bars, consumer, lane, n_top == n_min);
            score_mod<Cfg>(s, n_top, range, mask, score, row0, lane);
            online_softmax<Cfg::kPolyEighths, Cfg::kMaxChains>(s, m, l, scale_log2, corr);
            pack_probs<Cfg::kBf16>(s, p);
        }
        // O starts here, not at the first P V: an accumulator that is live through the first
        // block's softmax (the wgmma operands are read-write) costs 64-128 registers there.
#pragma unroll
        for (int i = 0; i < Cfg::kHeadDim / 2; ++i) o[i] = 0.f;
#pragma unroll 1
        for (int n = n_top - 1; n >= n_min; --n) {
            if (!Cfg::kSplitSoftmaxWait || n == n_top - 1) k_slot = ring.wait_k();
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
            release_q_after_last_qk<Cfg>(ring.bars, consumer, lane, n == n_min);
            score_mod<Cfg>(s, n, range, mask, score, row0, lane);
            bool rescale = true;
            if constexpr (Cfg::kSoftmaxForm == 1)
                rescale = online_softmax_lazy<Cfg::kPolyEighths, Cfg::kMaxChains>(s, m, l, scale_log2, corr);
            else
                online_softmax<Cfg::kPolyEighths, Cfg::kMaxChains>(s, m, l, scale_log2, corr);
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
        {
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
    } else {
#pragma unroll 1
        for (int n = range.n_max - 1; n >= n_min; --n) {
            const bool first = n == range.n_max - 1;
            const uint32_t k_slot = ring.wait_k();
            pingpong_sync<Cfg>(consumer);
            wgmma_fence();
            issue_qk<Cfg>(s, q_rows, k_slot);
            wgmma_commit_group();
            pingpong_arrive<Cfg>(consumer);
            wgmma_wait_group<0>();
            fence_operands(s);
            ring.release_k();
            release_q_after_last_qk<Cfg>(ring.bars, consumer, lane, n == n_min);
            score_mod<Cfg>(s, n, range, mask, score, row0, lane);
            online_softmax<Cfg::kPolyEighths, Cfg::kMaxChains>(s, m, l, scale_log2, corr);
            if (!first) rescale_rows(o, corr);
            pack_probs<Cfg::kBf16>(s, p);
            const uint32_t v_slot = ring.wait_v();
            pingpong_sync<Cfg>(consumer);
            fence_operands(o);
            fence_operands(p);
            wgmma_fence();
            issue_pv<Cfg>(o, p, v_slot, first);
            wgmma_commit_group();
            pingpong_arrive<Cfg>(consumer);
            wgmma_wait_group<0>();
            fence_operands(o);
            ring.release_v();
        }
    }
}

template <class Cfg>
__device__ __forceinline__ void consumer(const KernelParams &prm, uint32_t smem, int consumer_idx, int warp_in_wg,
                                         int lane) {
    const SchedulerArgs &sched = prm.sched;
    const int tid_in_wg = warp_in_wg * 32 + lane;
    const uint32_t bars = smem + Cfg::kOffBar;
    const uint32_t q_full = bars + 8 * (Cfg::kBarQFull + consumer_idx);
    const uint32_t q_empty = bars + 8 * (Cfg::kBarQEmpty + consumer_idx);
    // This warpgroup's 64 Q rows; where O has neither a buffer of its own nor the V ring, the
    // same bytes stage its O rows.
    const uint32_t q_rows = smem + Cfg::kOffQ + consumer_idx * Cfg::kWgRowsBytes;

    ConsumerRing<Cfg> ring;
    ring.bars = bars;
    ring.k_base = smem + Cfg::kOffK;
    ring.v_base = smem + Cfg::kOffV;
    ring.k = RingPos{0, 0u};
    ring.v = RingPos{0, 0u};
    ring.lane = lane;

    float o[Cfg::kHeadDim / 2];
    uint32_t q_phase = 0;
    // kOInV: this warpgroup's previous O store may still be reading the V ring.
    bool o_store_pending = false;
    const bool store_thread = tid_in_wg == 0;

    // Consumer 0 issues first: consumer 1 hands it the first turn.
    if (Cfg::kPingpong && consumer_idx == 1) bar_arrive(kBarPingpongBase + 0, 2 * 128);

#pragma unroll 1
    for (int tile = blockIdx.x; tile < sched.num_iters; tile += gridDim.x) {
        const TileCoord tc = decode_tile(sched, tile);
        const fa_seqlen len = seq_lengths(sched, tc.batch);
        if (tc.m_block < 0 || tc.m_block * Cfg::kBlockM >= len.len_q) continue;
        const fa_mask mask = sequence_mask<Cfg>(prm, len);
        const fa_block_range range = rows_block_range<Cfg>(mask, tc.m_block * Cfg::kBlockM, Cfg::kBlockM);
        const int wg_row0 = tc.m_block * Cfg::kBlockM + consumer_idx * 64;  // first query row of this warpgroup
        const int row0 = wg_row0 + warp_in_wg * 16 + (lane >> 2);          // this thread's first row

        // The producer loads the tile's key blocks; this warpgroup's rows may see fewer of them.
        fa_block_range wg_range = range;
        if constexpr (Cfg::kWgKeyRange) {  // causal only: the warpgroup's blocks are the tile's lowest
            wg_range = rows_block_range<Cfg>(mask, wg_row0, 64);
            // Derived from the warpgroup index, the range is not provably warp-uniform to the
            // compiler, which then keeps the loop bounds in vector registers (head_dim 256
            // causal spilled); broadcast from lane 0 it is.
            wg_range.n_max = __shfl_sync(0xffffffffu, wg_range.n_max, 0);
            wg_range.n_full_max = __shfl_sync(0xffffffffu, wg_range.n_full_max, 0);
        }
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
        if (wg_range.n_max > 0) {
            consumer_mainloop<Cfg>(ring, wg_range, mask, prm.score, q_rows, consumer_idx, row0,
                                   o_store_pending && store_thread, o, m, l);
        } else {
            release_q_after_last_qk<Cfg>(bars, consumer_idx, lane, true);  // rows that see no key never read Q
            if (o_store_pending) release_o_in_v<Cfg>(bars, store_thread);
        }
        o_store_pending = false;

        float inv_l[2], lse[2];
        softmax_finalize(m, l, prm.score.scale_log2, fa_sink_log2(prm.sinks, tc.head_q), inv_l, lse);

        // O goes through its staging rows: every warp of this warpgroup has retired its last
        // Q K^T, so its Q rows can take O; a staging buffer of its own must first have been read
        // by the previous tile's store; the V ring, once both warpgroups' last P V retired (the
        // producer refills it only after these stores have read it).
        const uint32_t o_rows = Cfg::kOStaging ? smem + Cfg::kOffO + consumer_idx * Cfg::kOWgBytes
                                : Cfg::kOInV   ? smem + Cfg::kOffV + consumer_idx * Cfg::kOWgBytes
                                               : q_rows;
        const uint32_t o_chunk_bytes = (Cfg::kOStaging || Cfg::kOInV) ? Cfg::kOChunkBytes : Cfg::kQChunkBytes;
        if (Cfg::kOStaging && tid_in_wg == 0) cp_async_bulk_wait_group_read_0();
        if constexpr (Cfg::kOInV)
            bar_sync(kBarOInV, 2 * 128);
        else
            bar_sync(kBarEpilogueBase + consumer_idx, 128);
        stage_output<Cfg::kHeadDim, Cfg::kBf16>(o, inv_l, wg_range.n_max > 0, o_rows, o_chunk_bytes, warp_in_wg, lane);
        fence_proxy_async_shared_cta();
        bar_sync(kBarEpilogueBase + consumer_idx, 128);
        if (tid_in_wg == 0) {
#pragma unroll
            for (int c = 0; c < Cfg::kChunks; ++c)
                cp_async_bulk_tensor_4d_s2g(&prm.tmap_o, o_rows + c * o_chunk_bytes, 64 * c, wg_row0, tc.head_q,
                                            tc.batch);
            cp_async_bulk_commit_group();
            if constexpr (!Cfg::kQFreeAfterLastQk) {
                // The producer may overwrite these Q rows once the store has read them.
                cp_async_bulk_wait_group_read_0();
                mbarrier_arrive(q_empty);
            }
        }
        float *lse_head = prm.lse ? prm.lse + ((int64_t)tc.batch * sched.heads_q + tc.head_q) * sched.seqlen_q
                                  : nullptr;
        store_lse(lse_head, row0, len.len_q, lse, lane);
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
    // 128-byte swizzled tiles must start on 1024-byte boundaries; the launch reserves the slack.
    const uint32_t smem = (smem_addr(smem_raw) + (FA_SM90_SMEM_ALIGN - 1)) & ~(uint32_t)(FA_SM90_SMEM_ALIGN - 1);
    const uint32_t bars = smem + Cfg::kOffBar;
    const int warp = threadIdx.x / FA_WARP_SIZE;
    const int lane = threadIdx.x % FA_WARP_SIZE;
    const int warpgroup = warp / FA_WARPS_PER_WARPGROUP;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int wg = 0; wg < FA_NUM_CONSUMER_WARPGROUPS; ++wg) {
            mbarrier_init(bars + 8 * (Cfg::kBarQFull + wg), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarQEmpty + wg), Cfg::kQReleaseArrivals);
        }
#pragma unroll
        for (int st = 0; st < Cfg::kStages; ++st) {
            mbarrier_init(bars + 8 * (Cfg::kBarKFull + st), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarKEmpty + st), kSlotReleaseArrivals);
            mbarrier_init(bars + 8 * (Cfg::kBarVFull + st), 1);
            mbarrier_init(bars + 8 * (Cfg::kBarVEmpty + st), kSlotReleaseArrivals);
        }
        if constexpr (Cfg::kOInV) mbarrier_init(bars + 8 * Cfg::kBarOFree, FA_NUM_CONSUMER_WARPGROUPS);
        fence_mbarrier_init();
    }
    __syncthreads();

    if (warpgroup == 0) {
        setmaxnreg_dec<FA_SM90_PRODUCER_REGS>();
        if (warp == 0 && lane == 0) producer<Cfg>(prm, smem);
        return;
    }
    setmaxnreg_inc<FA_SM90_CONSUMER_REGS>();
    consumer<Cfg>(prm, smem, warpgroup - 1, warp % FA_WARPS_PER_WARPGROUP, lane);
#endif
}

}  // namespace fa_sm90

// ------------------------------------------------------------------------------------------ host

namespace {

using fa_sm90::Config;
using fa_sm90::KernelParams;

// Whether this file carries sm_90a SASS (the kernels are empty stubs for any other target).
constexpr bool built_for_sm90() {
#if defined(__CUDA_ARCH_LIST__)
    constexpr int archs[] = {__CUDA_ARCH_LIST__};
    for (int a : archs)
        if (a == 900) return true;
#endif
    return false;
}

// Calls f(Config<...>{}) for the instantiation that serves (head_dim, dtype, mask kind,
// softcap); returns false when there is none.
template <class F>
bool dispatch(const fa_params *p, F &&f) {
    const int hd = fa_sm90_head_dim_padded(p->head_dim);
    const int mask = fa_params_mask_kind(p);
    const bool softcap = p->softcap > 0.f;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    if (hd == 0 || (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16)) return false;
    // The block size fa_sm90_tile chose for this problem picks among a head dim's instances.
    const bool masked = mask != FA_MASK_NONE;
    const int block_n = FA_SM90_BLOCK_N(hd, masked, FA_SM90_SHORT_KEYS(hd, masked, p->seqlen_k));
#define FA_SM90_CASE(HD, MASK, SHORT, SOFTCAP, BF16)                                                  \
    if (hd == HD && mask == MASK && softcap == SOFTCAP && bf16 == BF16 &&                             \
        block_n == FA_SM90_BLOCK_N(HD, MASK != FA_MASK_NONE, SHORT)) {                                \
        f(Config<HD, FA_SM90_BLOCK_N(HD, MASK != FA_MASK_NONE, SHORT), MASK, SOFTCAP, BF16>{});       \
        return true;                                                                                  \
    }
#define FA_SM90_CASES(HD, MASK, SHORT)                                                                \
    FA_SM90_CASE(HD, MASK, SHORT, false, false) FA_SM90_CASE(HD, MASK, SHORT, false, true)            \
    FA_SM90_CASE(HD, MASK, SHORT, true, false) FA_SM90_CASE(HD, MASK, SHORT, true, true)
    FA_SM90_CASES(64, FA_MASK_NONE, false)
    FA_SM90_CASES(64, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(64, FA_MASK_LOCAL, false)
    FA_SM90_CASES(128, FA_MASK_NONE, false)
#if FA_SM90_SHORT_SEQLEN_K > 0
    FA_SM90_CASES(128, FA_MASK_NONE, true)
#endif
    FA_SM90_CASES(128, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(128, FA_MASK_LOCAL, false)
    FA_SM90_CASES(256, FA_MASK_NONE, false)
    FA_SM90_CASES(256, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(256, FA_MASK_LOCAL, false)
#if FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL > 0
    FA_SM90_CASES(256, FA_MASK_CAUSAL, true)
    FA_SM90_CASES(256, FA_MASK_LOCAL, true)
#endif
#undef FA_SM90_CASES
#undef FA_SM90_CASE
    return false;
}

typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime already loaded (ABI of CUDA 12.0);
// resolved once, a failure is retried on the next call.
EncodeTiledFn encode_tiled_fn() {
    static std::atomic<EncodeTiledFn> cached{nullptr};
    EncodeTiledFn fn = cached.load(std::memory_order_acquire);
    if (fn != nullptr) return fn;
    void *sym = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &sym, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &sym, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || sym == nullptr) {
        (void)cudaGetLastError();  // the failure is reported as the launch's status, not left behind
        return nullptr;
    }
    fn = reinterpret_cast<EncodeTiledFn>(sym);
    cached.store(fn, std::memory_order_release);
    return fn;
}

// A 4-D map over a (head_dim, rows, heads, batch) tensor with element strides (1, row, head,
// batch), box (64, box_rows, 1, 1), 128-byte swizzle, zero fill outside the tensor.
bool encode_map(EncodeTiledFn encode, CUtensorMap *map, CUtensorMapDataType dtype, const void *base, int head_dim,
                int rows, int heads, int batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                int box_rows) {
    // Empty extents never get a box issued; TMA just needs a legal map.
    const cuuint64_t dims[4] = {(cuuint64_t)head_dim, (cuuint64_t)(rows > 0 ? rows : 1),
                                (cuuint64_t)(heads > 0 ? heads : 1), (cuuint64_t)(batch > 0 ? batch : 1)};
    const int64_t elem_strides[3] = {row_stride, head_stride, batch_stride};
    cuuint64_t strides[3];
    for (int i = 0; i < 3; ++i) {
        const int64_t bytes = elem_strides[i] * 2;
        // The stride of an extent-1 dimension is never used; replace any value TMA would refuse.
        const bool legal = bytes > 0 && bytes % 16 == 0 && bytes < ((int64_t)1 << 40);
        strides[i] = legal || dims[i + 1] != 1 ? (cuuint64_t)bytes : (cuuint64_t)16;
    }
    const cuuint32_t box[4] = {64u, (cuuint32_t)box_rows, 1u, 1u};
    const cuuint32_t unit[4] = {1u, 1u, 1u, 1u};
    return encode(map, dtype, 4, const_cast<void *>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

extern "C" const void *fa_sm90_kernel_fn(const fa_params *p, const fa_tile *t) {
    (void)t;
    if (!built_for_sm90() || p == nullptr) return nullptr;
    const void *fn = nullptr;
    dispatch(p, [&](auto cfg) {
        using Cfg = decltype(cfg);
        fn = reinterpret_cast<const void *>(&fa_sm90::fwd_kernel<Cfg>);
    });
    return fn;
}

extern "C" cudaError_t fa_sm90_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream) {
    if (!built_for_sm90() || p == nullptr || cfg == nullptr) return cudaErrorInvalidValue;
    EncodeTiledFn encode = encode_tiled_fn();
    if (encode == nullptr) return cudaErrorInvalidValue;

    cudaError_t status = cudaErrorInvalidValue;
    const bool found = dispatch(p, [&](auto cfg_tag) {
        using Cfg = decltype(cfg_tag);
        // The launch config must describe this instantiation (launch.c and sm90_tiles.h agree).
        if (cfg->block_n != Cfg::kBlockN || cfg->block_m != Cfg::kBlockM ||
            cfg->head_dim_padded != Cfg::kHeadDim || cfg->smem_bytes < Cfg::kSmemBytes)
            return;
        KernelParams prm;
        std::memset(&prm, 0, sizeof(prm));
        const CUtensorMapDataType dt = Cfg::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
        // seqlen_k == 0 may come with NULL k/v and zero strides. No K/V box is issued then,
        // but the encoder wants a legal map: describe q's memory instead.
        const bool no_keys = p->seqlen_k == 0;
        const bool ok =
            encode_map(encode, &prm.tmap_q, dt, p->q, p->head_dim, p->seqlen_q, p->heads_q, p->batch,
                       p->q_row_stride, p->q_head_stride, p->q_batch_stride, 64) &&
            (no_keys
                 ? encode_map(encode, &prm.tmap_k, dt, p->q, p->head_dim, 1, p->heads_q, p->batch,
                              p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN) &&
                       encode_map(encode, &prm.tmap_v, dt, p->q, p->head_dim, 1, p->heads_q, p->batch,
                                  p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN)
                 : encode_map(encode, &prm.tmap_k, dt, p->k, p->head_dim, p->seqlen_k, p->heads_kv,
                              p->batch, p->k_row_stride, p->k_head_stride, p->k_batch_stride,
                              Cfg::kBlockN) &&
                       encode_map(encode, &prm.tmap_v, dt, p->v, p->head_dim, p->seqlen_k, p->heads_kv,
                                  p->batch, p->v_row_stride, p->v_head_stride, p->v_batch_stride,
                                  Cfg::kBlockN)) &&
            encode_map(encode, &prm.tmap_o, dt, p->out, p->head_dim, p->seqlen_q, p->heads_q, p->batch,
                       p->o_row_stride, p->o_head_stride, p->o_batch_stride, 64);
        if (!ok) return;
        prm.lse = p->lse;
        prm.score = fa_score_make(p->softmax_scale, p->softcap);
        prm.window_left = p->window_left;
        prm.window_right = p->causal ? 0 : p->window_right;
        prm.sinks = p->sinks;
        fa_sm90::SchedulerArgs &s = prm.sched;
        s.batch = p->batch;
        s.heads_q = p->heads_q;
        s.heads_kv = p->heads_kv;
        s.seqlen_q = p->seqlen_q;
        s.seqlen_k = p->seqlen_k;
        s.cu_seqlens_q = p->cu_seqlens_q;
        s.cu_seqlens_k = p->cu_seqlens_k;
        s.num_m_blocks = (p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
        const int num_tiles = s.num_m_blocks * p->heads_q * p->batch;  // <= INT32_MAX - grid (launch.c)
        s.causal = Cfg::kCausal ? 1 : 0;
        // Pairs need up to 2 * grid more loop indices than tiles; past 32 bits (launch.c keeps
        // num_tiles + grid within them) the tiles go one by one instead.
        const int64_t grid_x = cfg->grid[0];
        const int64_t pairs = (int64_t)((s.num_m_blocks + 1) / 2) * p->heads_q * p->batch;
        const int64_t pair_iters = 2 * grid_x * ((pairs + grid_x - 1) / grid_x);
        s.pair_tiles = FA_SM90_PAIR_TILES && Cfg::kCausal && num_tiles >= 2 * grid_x &&
                       pair_iters <= (int64_t)INT32_MAX - grid_x;
        s.num_iters = s.pair_tiles ? (int)pair_iters : num_tiles;

        const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
        const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
        fa_sm90::fwd_kernel<Cfg><<<grid, block, cfg->smem_bytes, stream>>>(prm);
        status = cudaGetLastError();
    });
    return found ? status : cudaErrorInvalidValue;
}

extern "C" int fa_sm90_archs(int *archs, int max) {
    int n = 0;
#if defined(__CUDA_ARCH_LIST__)
    constexpr int list[] = {__CUDA_ARCH_LIST__};
    for (int a : list)
        if (a == 900 && n < max && archs != nullptr) archs[n++] = a / 10;
#else
    (void)archs;
    (void)max;
#endif
    return n;
}
